"""What one core of this CPU can multiply: int8 (u8/s8 -> s32), bf16 and fp32 matrix products, in multiply-adds
per second, one thread. The ceiling for the networks' convolutions (VGG16 to relu4_3 + the MDN: 22.6 G
multiply-adds per photo; the CVAE with 8 samples: ~6 G), which oneDNN lowers to the same kind of products.

    python benchmarks/bench_int8_peak.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

#: (M, N, K): a VGG conv4 layer's im2col product (28 x 28 positions x 16 photos, 512 out, 256 x 9 in), a square
#: one, and the shape of VGG's first layers (many positions, few channels)
SHAPES = ((12544, 512, 2304), (2048, 1024, 1024), (12544, 64, 576))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def rate(fn, macs: int, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return macs / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{cpu_name()}, torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, one thread; G multiply-adds per second (best of {args.repeat})")
    print(f"{'M x N x K':>20}  {'int8':>6}  {'bf16':>6}  {'fp32':>6}")
    for m, n, k in SHAPES:
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
        b = torch.randint(-128, 128, (k, n), dtype=torch.int8)
        macs = m * n * k
        int8 = rate(lambda: torch._int_mm(a, b), macs, args.repeat)
        ab, bb = a.bfloat16(), b.bfloat16()
        bf16 = rate(lambda: ab @ bb, macs, args.repeat)
        af, bf = a.float(), b.float()
        fp32 = rate(lambda: af @ bf, macs, args.repeat)
        print(f"{f'{m} x {n} x {k}':>20}  {int8:6.0f}  {bf16:6.0f}  {fp32:6.0f}")


if __name__ == "__main__":
    main()
