"""The ``colorize`` command line: one module per command group, a thin layer over the library (torch is
imported only inside commands, so ``colorize --help`` stays fast)."""

from ..common.process import run_program
from . import bundle, evaluate, info, pick, run, train  # noqa: F401  (each registers its commands on main)
from .app import main

__all__ = ["main", "program"]


def program() -> None:
    """The ``colorize`` program (its console script and ``python -m colorize_cli``): ``main`` as a process
    that ends with its command (common/process.py: Python's collector and the C allocator set for that)."""
    run_program(main)
