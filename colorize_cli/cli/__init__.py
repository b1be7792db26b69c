"""The ``colorize`` command line: one module per command group, a thin layer over the library (torch is
imported only inside commands, so ``colorize --help`` stays fast)."""

from . import bundle, evaluate, info, pick, run, train  # noqa: F401  (each registers its commands on main)
from .app import main

__all__ = ["main"]
