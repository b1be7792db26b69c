"""Training on several processes under torchrun (DistributedDataParallel), so that N processes train as one.

``torchrun --nproc-per-node N -m colorize_cli train vae|mdn ...`` starts N copies of the training command;
each learns its place from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT). What
keeps N processes equal to one process on the same global batch:

- batches: every process draws the same seeded order of global batches per epoch (the single-process order)
  and takes its contiguous share of each (``Dist.shard``): DistributedSampler's scheme, reshuffled per epoch;
- noise: dropout masks, the posterior sample and augmentation crops are drawn for the whole global batch from
  a generator seeded per step, each process keeping its rows (``StepNoise``);
- batch statistics: BatchNorm layers normalise by the global batch's mean and variance (``GlobalBatchNorm``,
  one all-reduce per layer, differentiable), as the seed's BatchNorm over 32 photos does;
- gradients: DDP averages them; a loss term summed over the batch (the seed's KL) is scaled by the world size
  on each process so that the average is the global sum.

Rank 0 alone writes checkpoints, sample sheets and log.jsonl; caches are built by rank 0 while the others wait.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.nn as nn

#: how long a process waits for the others at a barrier (rank 0 decoding a large cache, VGG features)
BARRIER_TIMEOUT = timedelta(hours=int(os.environ.get("COLORIZE_DIST_TIMEOUT_HOURS", "6")))


@dataclass
class Dist:
    """This process's place among the training processes (a single process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None   # gloo (CPU) or nccl (CUDA) when world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def rank0_first(self):
        """Rank 0 runs the block first (building a cache); the others run it after, reading what it built."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def per_rank_batch(self, global_batch: int) -> int:
        if global_batch % self.world:
            raise ValueError(f"--batch-size {global_batch} (the global batch) is not a multiple of the "
                             f"{self.world} processes")
        return global_batch // self.world

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This process's contiguous share of a global batch's indices."""
        b = len(idx) // self.world
        return idx[self.rank * b:(self.rank + 1) * b]

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """This process's rows of a tensor drawn for the global batch (first dimension)."""
        b = x.shape[0] // self.world
        return x[self.rank * b:(self.rank + 1) * b]

    def mean(self, values: np.ndarray) -> np.ndarray:
        """The average over processes of per-process figures (float64 on the host)."""
        if not self.active:
            return values
        t = torch.as_tensor(np.asarray(values, dtype=np.float64))
        torch.distributed.all_reduce(t)
        return (t / self.world).numpy()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to train: itself for one process, else DDP over a copy whose BatchNorm layers use the
        global batch's statistics. Checkpoints save the inner module (``model`` itself)."""
        if not self.active:
            return model
        global_batch_norm(model)
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)


def from_env(device: torch.device) -> tuple[Dist, torch.device]:
    """Join torchrun's process group when started by it with WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA; each
    process its LOCAL_RANK's GPU); otherwise a single process on ``device``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=BARRIER_TIMEOUT)
    return Dist(rank, world, local_rank, backend), device


def shutdown(dist: Dist) -> None:
    if dist.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class StepNoise:
    """The random draws of one training step, made for the global batch from a generator seeded by (seed,
    epoch, step) and cut to this process's rows: N processes draw what one process would, and a resumed run
    draws what the uninterrupted run did."""

    def __init__(self, seed: int, dist: Dist, device: torch.device):
        self.seed, self.dist, self.device = seed, dist, device
        self.gen = torch.Generator(device=device)

    def start(self, epoch: int, step: int) -> None:
        self.gen.manual_seed(int(np.random.SeedSequence([self.seed, epoch, step]).generate_state(1)[0]))

    def _global(self, shape) -> tuple[int, ...]:
        return (shape[0] * self.dist.world, *shape[1:])

    def randn(self, shape) -> torch.Tensor:
        """N(0, 1) of this process's ``shape`` (its rows of the global draw), float32."""
        return self.dist.rows(torch.randn(self._global(shape), generator=self.gen, device=self.device))

    def rand(self, shape) -> torch.Tensor:
        return self.dist.rows(torch.rand(self._global(shape), generator=self.gen, device=self.device))


class NoiseDropout(nn.Module):
    """nn.Dropout with its mask from a ``StepNoise`` (drawn for the global batch, so every process drops what
    one process would). The same function: kept units scaled by 1 / (1 - p)."""

    def __init__(self, p: float, noise: StepNoise):
        super().__init__()
        self.p, self.noise = p, noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = (self.noise.rand(x.shape) >= self.p).to(x.dtype)
        return x * keep * (1.0 / (1.0 - self.p))


def noise_dropout(model: nn.Module, noise: StepNoise) -> nn.Module:
    """Swap every nn.Dropout in ``model`` for a NoiseDropout (dropout has no weights: checkpoints unchanged)."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Dropout):
            setattr(model, name, NoiseDropout(child.p, noise))
        else:
            noise_dropout(child, noise)
    return model


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the global batch's: per-channel sums, sums of squares and
    counts all-reduced over the processes (differentiably), so a batch split over N processes is normalised
    as it would be whole. Same parameters and buffers as BatchNorm2d; inference is unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not torch.distributed.is_initialized():
            return super().forward(x)
        xf = x.float()
        c = xf.shape[1]
        # two passes (mean, then squared deviations), as exact as BatchNorm's own variance
        count = torch.tensor([xf.numel() / c], device=xf.device, dtype=torch.float32)
        stats = _AllReduceSum.apply(torch.cat([xf.sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        centred = xf - mean[None, :, None, None]
        var = _AllReduceSum.apply(centred.pow(2).sum((0, 2, 3))) / n      # biased, as BatchNorm normalises
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp_min(1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes, differentiable: the gradient of every process's input is the sum of the
    gradients of the output over processes (each process's loss depends on every process's input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def global_batch_norm(model: nn.Module) -> nn.Module:
    """Turn every BatchNorm2d of ``model`` into a GlobalBatchNorm in place (the same tensors)."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm
    return model

