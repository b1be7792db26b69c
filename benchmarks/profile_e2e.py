"""Where the time of an end-to-end run goes: the `colorize` command in this process, profiled.

    python benchmarks/profile_e2e.py [--images 1024] [--device cuda] [--out DIR] [-- COLORIZE OPTIONS...]

Prints the run's rate, then (1) cProfile of the main thread (the batch loop: wall time per function, waits
included, so a wait on decoding, on the device or on the writers shows as such) and (2) a sampling of every
thread's innermost Python frame every 10 ms, by thread kind (main, I/O threads, others): what the I/O
threads were doing, or whether they sat idle waiting for work. Complements bench_inference.py's rates.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench_images import REPO, lfw_images

sys.path.insert(0, str(REPO))


class FrameSampler:
    """Every ``interval`` s, the innermost frame (function, file:line) of each thread, counted by thread kind."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.counts: dict[str, Counter] = {"main": Counter(), "io": Counter(), "other": Counter()}
        self.ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        me, main_id = threading.get_ident(), threading.main_thread().ident
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            self.ticks += 1
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                kind = "main" if ident == main_id else "io" if names.get(ident, "").startswith("colorize-io") else "other"
                code = frame.f_code
                self.counts[kind][f"{code.co_name} ({Path(code.co_filename).name}:{frame.f_lineno})"] += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def report(self, top: int = 12) -> str:
        lines = []
        for kind, counter in self.counts.items():
            total = sum(counter.values())
            if not total:
                continue
            lines.append(f"{kind}: {total} samples over {self.ticks} ticks "
                         f"(~{total / max(self.ticks, 1):.1f} threads of this kind)")
            for where, n in counter.most_common(top):
                lines.append(f"  {100 * n / total:5.1f}%  {where}")
        return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=None, help="also save the cProfile stats (main.prof) here")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("colorize_args", nargs="*", help="options for colorize, after --")
    args = ap.parse_args()
    from colorize_cli.cli import main as colorize_main

    tmp = Path(tempfile.mkdtemp(prefix="colorize-profile-"))
    try:
        count = len(lfw_images(args.images, tmp / "in"))
        argv = [str(tmp / "in"), "--output", str(tmp / "out"), "--samples", "8", "--device", args.device,
                "--json", *args.colorize_args]
        profiler = cProfile.Profile()
        sink = io.StringIO()
        t0 = time.perf_counter()
        with FrameSampler() as sampler, contextlib.redirect_stdout(sink):
            profiler.enable()
            try:
                code = colorize_main.main(argv, standalone_mode=False)
            except SystemExit as exit_:
                code = exit_.code
            profiler.disable()
        wall = time.perf_counter() - t0
        lines = sink.getvalue().count("\n")
        print(f"colorize {' '.join(args.colorize_args)}: {count} photos, exit {code}, {lines} result lines, "
              f"{wall:.1f} s, {count / wall:.1f} img/s incl. start-up; {os.cpu_count()} cores")
        stats = pstats.Stats(profiler, stream=sys.stdout)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            stats.dump_stats(str(args.out / "main.prof"))
        print("\n== main thread, by cumulative time ==")
        stats.sort_stats("cumulative").print_stats(args.top)
        print("== main thread, by own time ==")
        stats.sort_stats("tottime").print_stats(args.top)
        print("== all threads, sampled innermost frames ==")
        print(sampler.report())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
