"""Local run against `colorize --ray` on the same photos, in one run: the overhead of running on Ray.

    python benchmarks/bench_ray.py [--images 256] [--device cpu|cuda] [--actors N] [--repeats 1]

Both are whole `colorize` commands (process start, model load, listing, writing) over copies of the first
N LFW test photos, each into a fresh output folder; --ray starts a local Ray on this machine (or joins
RAY_ADDRESS), which is part of what it costs. Prints one JSON object; the ratio is Ray's seconds over the
local run's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_images import lfw_images  # noqa: E402


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "colorize_cli", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"colorize failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--actors", type=int, default=None, help="--ray-actors (default: the CLI's)")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        lfw_images(args.images, photos)
        common = [str(photos), "--device", args.device, "-q"]
        ray_args = ["--ray"] + (["--ray-actors", str(args.actors)] if args.actors else [])
        local, on_ray = [], []
        for r in range(args.repeats):   # alternated, so drift on a noisy machine hits both
            local.append(timed([*common, "-o", f"{tmp}/local{r}"]))
            on_ray.append(timed([*common, "-o", f"{tmp}/ray{r}", *ray_args]))
    best_local, best_ray = min(local), min(on_ray)
    print(json.dumps({"images": args.images, "device": args.device, "actors": args.actors,
                      "local_s": [round(x, 1) for x in local], "ray_s": [round(x, 1) for x in on_ray],
                      "local_img_per_s": round(args.images / best_local, 2),
                      "ray_img_per_s": round(args.images / best_ray, 2),
                      "ray_over_local": round(best_ray / best_local, 3)}))


if __name__ == "__main__":
    main()
