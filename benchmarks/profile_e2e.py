"""Where the time of an end-to-end run goes: the `colorize` command in this process, profiled.

    python benchmarks/profile_e2e.py [--images 1024] [--device cuda] [--no-model] [--out DIR] [-- COLORIZE OPTIONS...]

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


class _NoModel:
    """Stands in for Colorizer with ``--no-model``: predictions ready at once (sheets of grey), so the run
    measures what the batch loop, the decode and the write threads cost by themselves -- the ceiling of the
    CUDA path, where the GPU's share is small, on a machine without one."""

    def __init__(self):
        import torch

        self.device = torch.device("cuda")   # only its type is read: CUDA batch sizes, pipelining, GPU merges
        self.merges_on_device = True
        self.runs_concurrently = True
        self.components = 8
        self.info = {"model": "none (--no-model)"}   # named in each output's record, as a model's name is
        # one read-only array per shape, shared by all predictions: on a GPU they arrive in reused page-locked
        # buffers, and allocating (and page-faulting) fresh ones here would be a cost the real path does not have
        self._arrays: dict[tuple, object] = {}

    def _array(self, shape: tuple, fill: int):
        import numpy as np

        if shape not in self._arrays:
            self._arrays[shape] = np.full(shape, fill, np.uint8 if fill else np.float32)
            self._arrays[shape].flags.writeable = False
        return self._arrays[shape]

    def predict_async(self, l64, l224, samples=8, seeds=None, full=None, vividness=1.0):
        from colorize_cli.model.colorizer import Prediction
        from colorize_cli.model.render import sheet_cols, sheet_gap, sheet_shape

        preds = []
        for i in range(len(l64)):
            pred = Prediction(self._array((samples, 2, 64, 64), 0), self._array((samples,), 0) + 1 / samples)
            if full and full[i] is not None:
                l_full, alpha = full[i]
                h, w = l_full.shape
                shape = sheet_shape(h, w, samples, sheet_cols(samples), sheet_gap(h, w))
                pred.sheet = self._array(shape + (3 if alpha is None else 4,), 128)
            preds.append(pred)

        class Ready:
            def result(self):
                return preds

        return Ready()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=None, help="also save the cProfile stats (main.prof) here")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--no-model", action="store_true",
                    help="predictions made up at once (grey sheets): the pipeline's own cost, as on a GPU")
    ap.add_argument("colorize_args", nargs="*", help="options for colorize, after --")
    args = ap.parse_args()
    from colorize_cli.cli import main as colorize_main

    if args.no_model:
        import torch

        from colorize_cli.model import colorizer, device

        colorizer.Colorizer.load = staticmethod(lambda *a, **k: _NoModel())
        device.resolve_device = lambda spec: torch.device("cuda")

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
