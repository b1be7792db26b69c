"""The program's process settings (common/process.py): the collector paused around start-up, frozen only in
the program, the C allocator's large blocks kept."""

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
