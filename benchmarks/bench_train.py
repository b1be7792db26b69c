"""Training throughput of the two stages, fp32 and bf16 autocast, in one run (issue: training speed).

    python benchmarks/bench_train.py [--device cpu] [--steps 4] [--batch-size 32]

Times full optimiser steps (forward, the seed's losses, backward, Adam) on batches of the real input shapes:
the CVAE on (B, 2, 64, 64) ab + (B, 1, 64, 64) L; the MDN on cached VGG features (B, 512, 28, 28), as
`colorize train mdn` trains it. The data path is left out: training reads pre-decoded caches.
"""

from __future__ import annotations

import argparse
import time

import torch

from colorize_cli.model.device import autocast, resolve_device
from colorize_cli.model.networks import CVAE, MDN
from colorize_cli.training.losses import kl_loss, mdn_loss, recon_loss
from colorize_cli.training.train import adam


def _time_steps(step, steps: int, device: torch.device) -> float:
    step()  # warm-up (allocations, kernel choice)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def bench_cvae(device, batch, steps, bf16) -> float:
    torch.manual_seed(0)
    model = CVAE().to(device).train()
    opt = adam(model.parameters(), 5e-5, device)  # as `colorize train` does
    ab = torch.rand(batch, 2, 64, 64, device=device) * 2 - 1
    grey = torch.rand(batch, 1, 64, 64, device=device) * 2 - 1
    weights = torch.rand(batch, 2, 64, 64, device=device) * 10

    def step():
        with autocast(device, bf16):
            mu, logvar, pred = model(ab, grey)
        loss = kl_loss(mu.float(), logvar.float()) * 1e-2 + recon_loss(pred, ab, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch * steps / _time_steps(step, steps, device)


def bench_mdn(device, batch, steps, bf16) -> float:
    torch.manual_seed(0)
    model = MDN().to(device).train()
    opt = adam(model.parameters(), 1e-3, device)
    feats = torch.randn(batch, 512, 28, 28, device=device).relu()
    mu = torch.randn(batch, 64, device=device)
    logvar = torch.zeros(batch, 64, device=device)

    def step():
        with autocast(device, bf16):
            means, weights = model.mixture(feats)
        loss, _ = mdn_loss(means, weights, mu, logvar)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch * steps / _time_steps(step, steps, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    device = resolve_device(args.device)
    rows = []
    for name, fn in (("CVAE", bench_cvae), ("MDN", bench_mdn)):
        fp32 = fn(device, args.batch_size, args.steps, False)
        bf16 = fn(device, args.batch_size, args.steps, True)
        rows.append((name, fp32, bf16))
    print(f"device {device}, batch {args.batch_size}, {args.steps} timed steps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'stage':6} {'fp32 img/s':>11} {'bf16 img/s':>11} {'bf16/fp32':>10}")
    for name, fp32, bf16 in rows:
        print(f"{name:6} {fp32:11.1f} {bf16:11.1f} {bf16 / fp32:9.2f}x")


if __name__ == "__main__":
    main()
