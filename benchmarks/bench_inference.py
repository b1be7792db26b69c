"""Colorizing speed against the seed-style reference, in one run, printing one table.

    python benchmarks/bench_inference.py [--device cpu] [--images 64] [--e2e-images 512] [--repeat 3]
                                         [--model PATH] [--scans]

Rows (all with 8 samples per image):
  (a) seed-style reference: the tutorial's inference loop, fp32 -- VGG + MDN per batch of 32, then per image
      a batch of 32 full CVAE passes (colour encoder, condition encoder, decoder) with the 8 means tiled 4x;
  (b) colorize model-only: Colorizer.predict on batches (condition encoder once per image, decoder per
      sample), fp32 and bf16, with the bf16-vs-fp32 difference of the ab outputs;
  (c) colorize end to end, file to file: the `colorize` command in a subprocess on a folder of LFW photos
      (and with --scans a folder of 2-12 megapixel scans): the rate over the whole wall time including
      start-up and model load, the steady rate (from the arrival times of its --json lines: the results
      after the first quarter, over the time they took), and peak RSS of that process. Each end-to-end row
      runs --repeat times, the runs of the rows interleaved; the median is shown, the range in the notes.
Images: the first N of ../shared/data/lfw-splits/test.txt when ../shared is beside the repo, else synthetic.
The machine this was written on is shared and noisy (the same run varies up to 2x): compare rows of one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import cv2
import numpy as np
import torch
from bench_images import REPO, lfw_images, proc_mib, scan


def _scan_images(folder: Path) -> list[Path]:
    """Four scans of 2, 4, 8 and 12 megapixels."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for mp in (2, 4, 8, 12):
        out.append(folder / f"scan_{mp:02d}mp.jpg")
        cv2.imwrite(str(out[-1]), scan(mp), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return out


def _prepared(paths):
    from colorize_cli.colorizer import prepare

    preps = [prepare(cv2.imread(str(p))) for p in paths]
    return np.stack([p.l64 for p in preps]), np.stack([p.l224 for p in preps])


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def seed_style(colorizer, l64, l224, device, batch=32) -> float:
    """The tutorial's loop, fp32: a full CVAE (with its colour encoder) on 32 tiled copies per image."""
    from colorize_cli.color import normalize_u8
    from colorize_cli.models import CVAE

    cvae = CVAE(colorizer.cvae.cfg).to(device).eval()
    cvae.cond_encoder.load_state_dict(colorizer.cvae.cond_encoder.state_dict())
    cvae.decoder.load_state_dict(colorizer.cvae.decoder.state_dict())
    bf16, colorizer.bf16 = colorizer.bf16, False
    _sync(device)
    t0 = time.perf_counter()
    for start in range(0, len(l64), batch):
        means, weights = colorizer.mixture(l224[start:start + batch])
        for j in range(len(means)):
            grey = torch.from_numpy(normalize_u8(l64[start + j])).to(device)[None, None].repeat(batch, 1, 1, 1)
            color = torch.zeros(batch, 2, 64, 64, device=device)   # the tutorial feeds the batch's colour
            z = means[j].repeat(batch // means.shape[1], 1)
            cvae(color, grey, z)
    _sync(device)
    colorizer.bf16 = bf16
    return len(l64) / (time.perf_counter() - t0)


def model_only(colorizer, l64, l224, device, bf16: bool, batch: int) -> tuple[float, np.ndarray]:
    colorizer.bf16 = bf16
    colorizer.predict(l64[:batch], l224[:batch], 8)   # warm-up
    _sync(device)
    t0 = time.perf_counter()
    outs = []
    for start in range(0, len(l64), batch):
        outs += [p.ab for p in colorizer.predict(l64[start:start + batch], l224[start:start + batch], 8)]
    _sync(device)
    return len(l64) / (time.perf_counter() - t0), np.stack(outs)


@dataclass
class EndToEnd:
    wall: float           # seconds, start to exit
    steady: float         # img/s over the results after the first quarter
    peak_mib: float       # peak RSS


def end_to_end(folder: Path, out: Path, model: str | None, device: str, extra: list[str]) -> EndToEnd:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "colorize_cli", str(folder), "--output", str(out), "--samples", "8",
           "--device", device, "--json", *extra]
    if model:
        cmd += ["--model", model]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE)
    # peak RSS from /proc/PID/status VmHWM (the high-water mark of the process after exec). Not the child's
    # ru_maxrss: on Linux that starts from this benchmark's own RSS at fork time, models and all.
    peak = [0.0]

    def watch() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], proc_mib(proc.pid, "VmHWM"))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    arrivals = [time.perf_counter() - t0 for _ in iter(proc.stdout.readline, b"")]   # one line per input
    proc.wait()
    watcher.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"colorize exited {proc.returncode}")
    q = max(1, len(arrivals) // 4)
    steady = (len(arrivals) - q) / max(arrivals[-1] - arrivals[q - 1], 1e-9) if len(arrivals) > q else float("nan")
    return EndToEnd(wall, steady, peak[0])


def main() -> None:
    from colorize_cli.colorizer import Colorizer
    from colorize_cli.device import cpu_has_fast_bf16, resolve_device

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=64, help="LFW photos for (a) and (b)")
    ap.add_argument("--e2e-images", type=int, default=512, help="LFW photos for (c)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each end-to-end row")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--scans", action="store_true", help="also time a folder of 2-12 megapixel scans")
    ap.add_argument("--skip-seed", action="store_true")
    args = ap.parse_args()
    device = resolve_device(args.device)
    colorizer = Colorizer.load(args.model, device)
    tmp = Path(tempfile.mkdtemp(prefix="colorize-bench-"))
    try:
        paths = lfw_images(args.images, tmp / "lfw")
        l64, l224 = _prepared(paths)
        rows = []
        setting = f"{device.type}, {torch.get_num_threads()} threads"
        if not args.skip_seed:
            seed_rate = seed_style(colorizer, l64, l224, device)
            rows.append(("(a) seed-style reference, model-only", f"{setting}, fp32, batch 32", seed_rate, ""))
        else:
            seed_rate = float("nan")
        fp32_rate, fp32_ab = model_only(colorizer, l64, l224, device, False, args.batch_size)
        rows.append(("(b) colorize model-only", f"{setting}, fp32, batch {args.batch_size}", fp32_rate, ""))
        bf16_rate, bf16_ab = model_only(colorizer, l64, l224, device, True, args.batch_size)
        diff = np.abs(bf16_ab - fp32_ab)
        rows.append(("(b) colorize model-only", f"{setting}, bf16, batch {args.batch_size}", bf16_rate,
                     f"|bf16-fp32| ab: mean {diff.mean():.4f}, max {diff.max():.4f}"))
        use_bf16 = device.type == "cuda" or cpu_has_fast_bf16()
        mode = "bf16" if use_bf16 else "fp32"
        e2e_count = len(lfw_images(args.e2e_images, tmp / "lfw-e2e"))
        batch = ["--batch-size", str(args.batch_size)]
        # name -> (folder, photos in it, extra colorize options)
        jobs = {f"{e2e_count} LFW jpgs -> png sheets": (tmp / "lfw-e2e", e2e_count, batch),
                f"{e2e_count} LFW jpgs -> jpg sheets": (tmp / "lfw-e2e", e2e_count, batch + ["--format", "jpg"])}
        if args.scans:
            jobs["4 scans 2-12 MP -> png sheets"] = (tmp / "scans", len(_scan_images(tmp / "scans")), [])
        runs: dict[str, list[EndToEnd]] = {name: [] for name in jobs}
        for _ in range(args.repeat):
            for name, (folder, _, extra) in jobs.items():
                runs[name].append(end_to_end(folder, tmp / "out", args.model, args.device, extra))
        for name, results in runs.items():
            count = jobs[name][1]
            rates = sorted(count / r.wall for r in results)
            steady = sorted(r.steady for r in results)
            # results arrive a batch at a time: a steady rate needs many batches after the first quarter
            notes = (f"steady {median(steady):.2f} img/s ({steady[0]:.2f}-{steady[-1]:.2f}); "
                     if count >= 8 * args.batch_size else "")
            notes += (f"{len(results)} runs incl. start-up {rates[0]:.2f}-{rates[-1]:.2f} img/s, median wall "
                      f"{median(r.wall for r in results):.1f} s; peak RSS {max(r.peak_mib for r in results):.0f} MiB")
            rows.append((f"(c) end to end, {name}", f"{setting}, {mode}", median(rates), notes))
        print(f"{'row':48} {'settings':26} {'img/s':>8} {'vs (a)':>7}  notes")
        for name, settings, rate, notes in rows:
            print(f"{name:48} {settings:26} {rate:8.2f} {rate / seed_rate:6.1f}x  {notes}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
