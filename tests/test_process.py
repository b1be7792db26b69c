"""The program's process settings (common/process.py): the collector paused around start-up, frozen only in
the program, the C allocator's large blocks kept, the exit without the interpreter's teardown."""

import gc
import subprocess
import sys

from colorize_cli.common import process


def test_paused_collector_resumes_and_freezes_nothing_outside_the_program():
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    with process.paused_collector():
        assert not gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() == frozen   # a test session is not the program
    gc.disable()
    try:
        with process.paused_collector():
            pass
        assert not gc.isenabled()   # resumes as it was
    finally:
        gc.enable()


def test_the_program_freezes_its_start_up_and_sets_the_allocator():
    # in a process of its own: what the program does to its process stays there
    code = (
        "import gc, platform, sys\n"
        "from colorize_cli.common import process\n"
        "def main():\n"
        "    with process.paused_collector():\n"
        "        junk = [[i] for i in range(1000)]\n"
        "    assert gc.isenabled() and gc.get_freeze_count() >= 1000\n"
        "    print(process._keep_large_blocks() if platform.libc_ver()[0] == 'glibc' else 'not glibc')\n"
        "process.run_program(main)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("True", "not glibc")


def _program(body: str) -> subprocess.CompletedProcess:
    code = "import atexit, sys, threading, time\nfrom colorize_cli.common import process\n" + body
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_the_program_exits_with_its_status_its_output_flushed_and_atexit_run():
    out = _program(
        "atexit.register(lambda: print('atexit ran'))\n"
        "def main():\n"
        "    sys.stdout.write('unflushed')\n"          # no newline: still in the buffer at exit
        "    sys.stderr.write('to stderr')\n"
        "    sys.exit(3)\n"
        "process.run_program(main)\n"
        "print('never')\n")
    assert out.returncode == 3
    assert out.stdout == "unflushedatexit ran\n" and out.stderr == "to stderr"
    # a main that returns: status 0
    assert _program("process.run_program(lambda: print('done'))\nprint('never')\n").stdout == "done\n"


def test_the_program_exits_as_usual_when_it_cannot_end_the_same_way():
    # a thread still running: the interpreter waits for it, as it would have
    out = _program(
        "def late():\n"
        "    time.sleep(0.3)\n"
        "    print('thread finished', flush=True)\n"
        "def main():\n"
        "    threading.Thread(target=late).start()\n"
        "    sys.exit(4)\n"
        "process.run_program(main)\n")
    assert out.returncode == 4 and out.stdout == "thread finished\n"
    # a message for a status: printed, status 1
    out = _program("process.run_program(lambda: sys.exit('no such model'))\n")
    assert out.returncode == 1 and out.stderr.strip() == "no such model"
