"""The ``colorize`` program's process: Python's cyclic garbage collector around start-up and exit, and the C
allocator's handling of large blocks (a command-line run's fixed and per-batch costs).

The collector: importing torch creates a few hundred thousand objects, and the collector walks all of them
again and again as they are made, then again whenever it collects afterwards, and once more in the
interpreter's last collections at exit. It finds no garbage worth that time: those objects live as long as
the process. So the collector is paused while torch is imported and the model loaded; in the program what
is alive then is frozen (``gc.freeze``: left out of every later collection, the exit's included) and
collections go on as usual for the rest, so a long run's cycles are still freed. Measured (``python -c
"import torch"`` and 100k new objects, 2-core AMD EPYC): 1.83-1.90 s; 1.55-1.65 s with the import paused
only; 1.29-1.32 s paused and frozen.

The allocator: a batch's activations are blocks of up to tens of MB, made and freed per layer. glibc's
malloc gives blocks past a threshold that it moves as they are freed their own mmap, and returns freed
memory at the heap's top to the system: every batch then pays the kernel for fresh zeroed pages. With the
threshold fixed at its largest (32 MB), 256 MB of headroom kept at the top and no trimming (below 2 GB),
they come from the heap and are reused. 128 LFW photos end to end on that CPU: page faults 0.8-0.9 M ->
0.48-0.54 M, system time 1.9-2.1 -> 1.2-1.4 s, wall 12.3-12.5 -> 12.0-12.1 s. The memory kept: 1,500 photos
peaked at 1.53 against 1.35 GiB (resident 1.40 against 1.23 GiB, growing 9 against 53 MiB from the 300th
photo on), one 50 MP scan at 1.24 against 1.18 GiB (benchmarks/bench_memory.py), and written whole
(``--samples 1``) at 1.44 against 1.26 GiB. Paired runs (4 each, 128 LFW photos): 11.94 s on average with
these settings, 12.10 s without the top pad, 12.32 s with none.

The exit: once its command has ended, the interpreter's own exit spent 0.23-0.29 s of a 128-photo run (11.5-12 s
on the same CPU) after the last output, tearing down modules and freeing, one by one, objects whose memory
the system takes back at once (torch's operator libraries among them). The program ends as that exit would,
less the teardown: threads are waited for (the program's own are done by then), ``atexit`` functions run
(Ray's shutdown, temporary folders), stdout and stderr are flushed, then ``os._exit`` with the command's
status: 0.11-0.12 s, the system taking back the process's memory. Where any of that cannot be done the same
way (a thread still running, a status that is not a number, a closed pipe on stdout), the interpreter exits
as usual.

All of this is for the program alone: in another process (a test session, a library user's) objects frozen
now and dropped later would never have their cycles collected, the allocator is that process's to set, and
its exit is its own.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import os
import sys
import threading
from typing import Callable, Iterator

#: whether this process is the ``colorize`` program (set by ``run_program``): it ends with its command
_program = False

#: glibc's mallopt parameters (malloc.h) and the values set
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD = 32 << 20          # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit)
_TOP_PAD = 256 << 20
_TRIM_THRESHOLD = 2**31 - 1        # mallopt takes an int: 2 GB, never in practice


@contextlib.contextmanager
def paused_collector() -> Iterator[None]:
    """No cyclic collection inside (imports, model loading); then, in the program, what is alive is frozen;
    then the collector resumes as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _program:
            gc.freeze()
        if was_enabled:
            gc.enable()


def _keep_large_blocks() -> bool:
    """glibc only (elsewhere nothing is changed): large blocks from the heap, kept for reuse. Whether it
    took."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):   # not glibc (musl, macOS, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    values = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TOP_PAD, _TOP_PAD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return all(mallopt(param, value) == 1 for param, value in values)


def run_program(main: Callable[[], object]) -> None:
    """Run the program's ``main`` (which ends the process, or returns) with the allocator set as above; what
    is alive at its end is left out of the interpreter's final collections, and the process ends without
    the interpreter's teardown (``_exit_now``)."""
    global _program
    _program = True
    _keep_large_blocks()
    try:
        main()
        code = None
    except SystemExit as done:
        code = done.code
    finally:
        gc.freeze()
    _exit_now(code)
    sys.exit(code)


def _exit_now(code: object) -> None:
    """End the process with ``code`` (SystemExit's: None or a number) as the interpreter's exit would, less
    its teardown. Returns where that cannot be done the same way: the caller exits as usual."""
    if code is not None and not isinstance(code, int):
        return                      # a message: the interpreter prints it
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return                      # the interpreter waits for them first
    atexit._run_exitfuncs()         # (and forgets them: they do not run twice)
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return                      # e.g. a closed pipe: the interpreter reports it (status 120)
    os._exit(code or 0)
