"""Peak and running memory of `colorize` end to end, in a subprocess.

    python benchmarks/bench_memory.py --files 10000 --marks 1000,10000   # RSS over a long run
    python benchmarks/bench_memory.py --huge 50                          # one 50-megapixel scan

--files: a folder of N LFW-size photos (hard links to the first LFW test images, or synthetic photos
without ../shared), colorized with --samples 8 --json; the resident set size (VmRSS) of the process is read
from /proc when the N-th result line arrives for each N in --marks, and the peak (VmHWM) at the end.
--huge: one photo upscaled to the given megapixels (a real old photo when ../shared is beside the repo),
colorized with --samples 8 to a PNG sheet; peak RSS of the process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
from bench_images import REPO, lfw_images, proc_mib, scan


def _command(inputs: Path, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "colorize_cli", str(inputs), "--output", str(out), "--samples", "8",
            "--device", "cpu", *extra]


def many_files(n: int, marks: list[int], tmp: Path, extra: list[str]) -> None:
    sources = lfw_images(min(n, 200), tmp / "sources")
    inputs = tmp / "inputs"
    inputs.mkdir()
    for i in range(n):   # hard links: N distinct input files without N copies on disk
        src = sources[i % len(sources)]
        os.link(src, inputs / f"{i:06d}_{src.name}")
    cmd = _command(inputs, tmp / "out", ["--json", "--quiet", *extra])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    done = 0
    wanted = sorted(set(marks))
    rows = []
    assert proc.stdout is not None
    for _line in proc.stdout:
        done += 1
        if wanted and done == wanted[0]:
            wanted.pop(0)
            rows.append((done, time.perf_counter() - t0, proc_mib(proc.pid, "VmRSS"), proc_mib(proc.pid, "VmHWM")))
            print(f"{done:>7} files  {rows[-1][1]:8.1f} s  RSS {rows[-1][2]:7.0f} MiB  peak {rows[-1][3]:7.0f} MiB",
                  flush=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    print(f"exit {code}; {done} files in {wall:.1f} s ({done / wall:.2f} img/s incl. start-up); "
          f"peak RSS {usage.ru_maxrss / 1024:.0f} MiB")
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        print(f"RSS growth from {first[0]} to {last[0]} files: {last[2] - first[2]:+.0f} MiB")


def huge_scan(megapixels: float, tmp: Path, extra: list[str]) -> None:
    big = scan(megapixels)
    inputs = tmp / "inputs"
    inputs.mkdir(parents=True)
    path = inputs / "scan.jpg"
    cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 92])
    size = big.shape
    del big
    cmd = _command(inputs, tmp / "out", ["--quiet", *extra])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)})
    # ru_maxrss of the child counts from fork, so it includes this script's RSS at that moment: keep this
    # process small (only numpy and OpenCV here, the input image freed above)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    outs = sorted((tmp / "out").rglob("*.colorized*"))
    out_desc = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.0f} MiB" for p in outs)
    print(f"{size[1]}x{size[0]} ({size[0] * size[1] / 1e6:.1f} MP) input: exit {code}, {wall:.1f} s, "
          f"peak RSS {usage.ru_maxrss / 1024:.0f} MiB; wrote {out_desc}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=0, help="colorize a folder of this many LFW-size photos")
    ap.add_argument("--marks", default="1000,10000", help="file counts at which to read RSS")
    ap.add_argument("--huge", type=float, default=0, help="colorize one scan of this many megapixels")
    ap.add_argument("extra", nargs="*", help="more `colorize` options, after --")
    args = ap.parse_args()
    if not args.files and not args.huge:
        ap.error("give --files N and/or --huge MP")
    tmp = Path(tempfile.mkdtemp(prefix="colorize-mem-"))
    try:
        if args.huge:
            huge_scan(args.huge, tmp / "huge", args.extra)
        if args.files:
            (tmp / "files").mkdir()
            many_files(args.files, [int(m) for m in args.marks.split(",")], tmp / "files", args.extra)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
