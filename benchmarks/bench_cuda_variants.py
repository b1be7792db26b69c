"""The model path on a GPU under variants, one table: batch size, memory layout, cuDNN autotuning,
fp32, CUDA graphs and torch.compile. What the winners are decides Colorizer's CUDA defaults.

    python benchmarks/bench_cuda_variants.py [--passes 20] [--parts batches,layout,graphs,compile,profile]
                                             [--out FILE]

Each variant times the networks alone on inputs already on the GPU (VGG + MDN on L at 224, the mixture
means as latents, condition encoder + decoder for 8 samples at 64), images per second from the median
of 5 timed runs of --passes batches each, with CUDA events. The FLOP count (torch's FlopCounterMode)
gives the achieved TFLOP/s. ``profile`` prints torch.profiler's table of the GPU kernels of 5 steps at
batch 256, most time first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from bench_images import lfw_images
from torch.utils.flop_counter import FlopCounterMode


def _inputs(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    import tempfile

    import cv2

    from colorize_cli.model.colorizer import prepare

    with tempfile.TemporaryDirectory() as tmp:
        preps = [prepare(cv2.imread(str(p))) for p in lfw_images(min(n, 256), Path(tmp))]
    l224 = np.stack([p.l224 for p in preps])
    l64 = np.stack([p.l64 for p in preps])
    reps = -(-n // len(preps))
    l224 = np.concatenate([l224] * reps)[:n]
    l64 = np.concatenate([l64] * reps)[:n]
    from colorize_cli.model.color import grey_from_l

    return torch.from_numpy(grey_from_l(l224)).to(device), torch.from_numpy(l64).to(device)


def make_step(colorizer):
    """The networks of Colorizer.predict on device tensors: grey224 (B, 224, 224) uint8, l64 (B, 64, 64)
    uint8 -> ab (B * 8, 2, 64, 64); bf16 as ``colorizer.bf16``."""

    def step(grey224: torch.Tensor, l64: torch.Tensor) -> torch.Tensor:
        means, weights = colorizer._mixture_eager(grey224)
        z, _ = colorizer.choose_latents(means, weights, 8, [])
        return colorizer._decode_eager(z, (l64.float() * (2 / 255) - 1)[:, None])

    return step


def time_it(fn, batch: int, passes: int) -> float:
    """Images per second: median of 5 runs of ``passes`` calls, CUDA events."""
    for _ in range(3):
        fn()
    if not torch.cuda.is_available():   # a smoke test of this script on a CPU: one untimed-quality run
        t0 = time.perf_counter()
        fn()
        return batch / (time.perf_counter() - t0)
    torch.cuda.synchronize()
    rates = []
    for _ in range(5):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(passes):
            fn()
        stop.record()
        stop.synchronize()
        rates.append(batch * passes / (start.elapsed_time(stop) / 1000))
    return float(np.median(rates))


def main() -> None:
    from colorize_cli.model.colorizer import Colorizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--parts", default="batches,layout,graphs,compile",
                    help="comma-separated: batches, layout, graphs, compile, profile")
    ap.add_argument("--out", default=None, help="also append the table's lines to this file")
    ap.add_argument("--smoke", action="store_true", help="run on the CPU with small batches (checks the script)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    device = torch.device("cpu" if args.smoke else "cuda")
    colorizer = Colorizer.load(None, device, bf16=True)
    torch.set_grad_enabled(False)
    grey_all, l64_all = _inputs(512, device)
    step = make_step(colorizer)
    with FlopCounterMode(display=False) as counter:
        step(grey_all[:2], l64_all[:2])
    gflop = counter.get_total_flops() / 2 / 1e9
    name = "CPU smoke test" if args.smoke else f"GPU {torch.cuda.get_device_name()}"
    lines = [f"{name}, torch {torch.__version__}; {gflop:.1f} GFLOP per image "
             f"(8 samples)", f"{'variant':58} {'img/s':>8} {'TFLOP/s':>8}"]
    print(lines[0], flush=True)

    def row(name: str, rate: float, note: str = "") -> None:
        lines.append(f"{name:58} {rate:8.0f} {rate * gflop / 1e3:8.1f}  {note}")
        print(lines[-1], flush=True)
        if args.out:   # as it goes: a run stopped at its time limit keeps its rows
            with open(args.out, "a") as f:
                f.write(lines[-1] + "\n")

    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")

    sizes = (2, 4) if args.smoke else (64, 128, 256, 512)
    for batch in sizes if "batches" in parts else ():
        g, l = grey_all[:batch], l64_all[:batch]
        row(f"eager bf16 channels_last cudnn.benchmark, batch {batch}", time_it(lambda: step(g, l), batch, args.passes))
    if args.smoke:
        grey_all, l64_all = grey_all[:4], l64_all[:4]
    g, l = grey_all[:256], l64_all[:256]
    nb = len(g)   # 256 (4 in a smoke test)
    if "layout" in parts:
        torch.backends.cudnn.benchmark = False
        row(f"  same, cudnn.benchmark off, batch {nb}", time_it(lambda: step(g, l), nb, args.passes))
        torch.backends.cudnn.benchmark = True
        colorizer.bf16 = False
        row(f"  same, fp32 (TF32 convolutions), batch {nb}", time_it(lambda: step(g, l), nb, max(1, args.passes // 4)))
        colorizer.bf16 = True
        for m in (colorizer.cvae, colorizer.mdn, colorizer.vgg):
            m.to(memory_format=torch.contiguous_format)
        row(f"  same, NCHW (contiguous) weights, batch {nb}", time_it(lambda: step(g, l), nb, args.passes))
        for m in (colorizer.cvae, colorizer.mdn, colorizer.vgg):
            m.to(memory_format=torch.channels_last)

    if "profile" in parts and not args.smoke:
        from torch.profiler import ProfilerActivity, profile

        for _ in range(3):
            step(g, l)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step(g, l)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="device_time_total", row_limit=25, max_name_column_width=70)
        print(table, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(table + "\n")

    # CUDA graph: one capture of the whole step, replayed (the launch gaps go)
    for batch in () if args.smoke or "graphs" not in parts else (64, 256):
        g, l = grey_all[:batch].clone(), l64_all[:batch].clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                step(g, l)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = step(g, l)
        ref = step(g, l)
        graph.replay()
        torch.cuda.synchronize()
        err = (static_out - ref).abs().max().item()
        row(f"CUDA graph of the step, batch {batch}", time_it(graph.replay, batch, args.passes), f"max |d| {err:.2e}")
        del graph, static_out

    if "compile" in parts and not args.smoke:
        g, l = grey_all[:256], l64_all[:256]
        compiled = torch.compile(step)
        t0 = time.perf_counter()
        try:
            out = compiled(g, l)
            torch.cuda.synchronize()
        except Exception as err:  # noqa: BLE001 -- a compiler failure is a result of this variant, reported
            row("torch.compile (default mode), batch 256", float("nan"), f"failed: {type(err).__name__}: {err}"[:200])
        else:
            took = time.perf_counter() - t0
            err = (out - step(g, l)).abs().max().item()
            row("torch.compile (default mode), batch 256", time_it(lambda: compiled(g, l), 256, args.passes),
                f"compile {took:.0f} s, max |d| {err:.2e}")


if __name__ == "__main__":
    main()
