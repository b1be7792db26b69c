"""The paper's first training stage, the CVAE, and what both stages share: configs, data, reporting, resuming,
checkpoints every epoch. The second stage, the MDN against the frozen CVAE encoder, is in ``mdn``."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..model.checkpoint import read_checkpoint, save_checkpoint
from ..model.color import (
    LossWeighter,
    _grey_lut,
    count_prior,
    normalize_u8,
    zhang_prior,
)
from ..model.device import autocast
from ..model.networks import CVAE, CVAEConfig
from ..model.render import sample_sheet
from .augment import Augment
from .data import ConcatCache, ImageCache, batch_indices, build_cache, list_images
from .distributed import Dist, StepNoise, noise_dropout
from .losses import kl_loss, recon_loss


@dataclass
class TrainConfig:
    """Hyperparameters; the defaults are the seed's."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 5e-5
    kl_weight: float = 1e-2   # CVAE only
    prior: str = "zhang"      # CVAE loss weights: 'zhang' (the seed's ImageNet prior) or 'data'
    bf16: bool = False
    seed: int = 0
    max_images: int | None = None  # cap on training images (smoke runs)
    sample_every: int = 1     # epochs between sample sheets
    augment: bool = False     # random-resized crops and flips (augment.Augment); the seed has none
    mdn_loss: str = "nearest"  # MDN only: 'nearest' (the seed's) or 'soft' (losses.mdn_loss)

    def to_dict(self) -> dict:
        return asdict(self)


VAE_DEFAULTS = TrainConfig(epochs=15, lr=5e-5)
MDN_DEFAULTS = TrainConfig(epochs=7, lr=1e-3)


@dataclass
class DataSource:
    """One image folder; its training and test images listed in files (paths relative to ``root``) or, for
    training without a list, found by walking ``root``."""

    root: str
    train_list: str | None = None
    test_list: str | None = None


@dataclass
class DataSpec:
    """Where training reads: ``root`` with its lists, or several ``sources`` mixed into one training set."""

    root: str | None = None
    train_list: str | None = None
    test_list: str | None = None
    cache_dir: str | None = None
    n_jobs: int = -1
    sources: list[DataSource] = field(default_factory=list)
    skip_grey: bool = True  # leave out photos with no colour (data.is_grey)
    min_colourfulness: float = 0.0   # > 0: leave out training photos duller than this (test photos all kept)

    def all_sources(self) -> list[DataSource]:
        if self.sources:
            return list(self.sources)
        if self.root is None:
            raise ValueError("no training data given")
        return [DataSource(self.root, self.train_list, self.test_list)]


class Reporter:
    """Where training talks to: plain lines by default; the CLI swaps in a rich one."""

    def log(self, message: str) -> None:
        print(message, flush=True)

    def warn(self, message: str) -> None:
        print(message, flush=True)

    def progress(self, total: int, description: str) -> "ProgressHandle":
        return ProgressHandle()


class QuietReporter(Reporter):
    """What the training processes other than rank 0 report: nothing (rank 0 speaks for all)."""

    def log(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass


class ProgressHandle:
    def advance(self, n: int = 1, **info) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class RunPaths:
    out: Path
    vae: Path = field(init=False)
    mdn: Path = field(init=False)
    log: Path = field(init=False)
    samples: Path = field(init=False)
    cache: Path = field(init=False)

    def __post_init__(self):
        self.vae = self.out / "vae.pt"
        self.mdn = self.out / "mdn.pt"
        self.log = self.out / "log.jsonl"
        self.samples = self.out / "samples"
        self.cache = self.out / "cache"


def _append_log(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _cached(source_root: str, rel: list[str], spec: DataSpec, cache_dir: Path, reporter: Reporter,
            label: str, min_colourfulness: float = 0.0) -> ImageCache:
    bar = reporter.progress(len(rel), f"decoding {label} ({source_root})")
    try:
        return build_cache(source_root, rel, cache_dir, spec.n_jobs, reporter.warn, spec.skip_grey,
                           bar.advance, min_colourfulness)
    finally:
        bar.close()


def _joined(parts: list[ImageCache]) -> ImageCache | ConcatCache | None:
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else ConcatCache(parts)


def load_split(spec: DataSpec, paths: RunPaths, reporter: Reporter, max_images: int | None = None
               ) -> tuple[ImageCache | ConcatCache, ImageCache | ConcatCache | None]:
    """Every source's training and test images, decoded once into the cache and joined (no copy)."""
    cache_dir = Path(spec.cache_dir) if spec.cache_dir else paths.cache
    sources = spec.all_sources()
    if not any(s.test_list for s in sources):
        reporter.log("no --test-list: test losses are not computed")
    train_parts, test_parts = [], []
    for src in sources:
        train_rel = list_images(src.root, src.train_list)
        test_rel = list_images(src.root, src.test_list) if src.test_list else []
        if max_images:
            train_rel, test_rel = train_rel[:max_images], test_rel[:max_images]
        if not train_rel:
            raise ValueError(f"no training images in {src.root}" + (f" ({src.train_list})" if src.train_list else ""))
        reporter.log(f"{src.root}: {len(train_rel)} training and {len(test_rel)} test images (cached in {cache_dir})")
        train_parts.append(_cached(src.root, train_rel, spec, cache_dir, reporter, "training images",
                                   spec.min_colourfulness))
        if test_rel:
            test_parts.append(_cached(src.root, test_rel, spec, cache_dir, reporter, "test images"))
    train, test = _joined(train_parts), _joined(test_parts)
    if len(sources) > 1:
        reporter.log(f"training on {len(train)} images from {len(sources)} sources"
                     + (f", testing on {len(test)}" if test is not None else ""))
    return train, test


def _cvae_batch(cache: ImageCache, idx: np.ndarray, device: torch.device,
                weighter: LossWeighter | None) -> tuple[torch.Tensor, ...]:
    lab = np.asarray(cache.lab64[idx])                                     # (B, 64, 64, 3) uint8
    ab = torch.from_numpy(normalize_u8(lab[..., 1:])).permute(0, 3, 1, 2)  # (B, 2, 64, 64)
    grey = torch.from_numpy(normalize_u8(lab[..., 0]))[:, None]           # (B, 1, 64, 64)
    out = [ab.to(device), grey.to(device)]
    if weighter is not None:
        w = torch.from_numpy(weighter.weights_u8(lab[..., 1:]))[:, None]   # (B, 1, 64, 64), same for a and b
        out.append(w.expand(-1, 2, -1, -1).to(device))
    return tuple(out)


class AugmentedBatches:
    """Training batches through ``Augment`` on the device: the crop is drawn per photo from a generator
    seeded by (seed, epoch), so a resumed run sees the same crops. Views stay on 8-bit levels (rounded), as
    the cache's, so the loss weights are the same table lookup."""

    def __init__(self, cache, device: torch.device, weighter: LossWeighter | None, seed: int,
                 aug: Augment = Augment(), dist: Dist = Dist()):
        self.cache, self.device, self.aug, self.seed, self.dist = cache, device, aug, seed, dist
        self.table = torch.from_numpy(weighter.table_u8).to(device) if weighter is not None else None
        self.grey_lut = torch.from_numpy(_grey_lut()).to(device)
        self.gen = torch.Generator()

    def start_epoch(self, epoch: int) -> None:
        self.gen.manual_seed(self.seed * 100_003 + epoch)

    def batch(self, idx: np.ndarray, with_vgg_input: bool = False) -> dict:
        lab = torch.from_numpy(np.asarray(self.cache.lab64[idx])).to(self.device).permute(0, 3, 1, 2)
        l224 = (torch.from_numpy(np.asarray(self.cache.l224[idx])).to(self.device)[:, None]
                if with_vgg_input else None)
        # crops drawn for the global batch, this process keeping its rows (distributed.StepNoise's rule)
        thetas = self.dist.rows(self.aug.thetas(len(idx) * self.dist.world, self.gen))
        lab, l224 = self.aug.apply(lab.float(), None if l224 is None else l224.float(), thetas)
        lab = lab.round_().clamp_(0, 255)                                   # (B, 3, 64, 64) 8-bit levels
        out = {"ab": lab[:, 1:] * (2 / 255) - 1, "grey": lab[:, :1] * (2 / 255) - 1}
        if self.table is not None:
            a, b = lab[:, 1].long(), lab[:, 2].long()
            out["weights"] = self.table[a, b][:, None].expand(-1, 2, -1, -1)  # (B, 2, 64, 64)
        if l224 is not None:
            # VGG's achromatic sRGB grey of the cropped L (colour.grey_from_l on the device): (B, 224, 224)
            out["vgg_grey"] = self.grey_lut[l224[:, 0].round_().clamp_(0, 255).long()]
        return out


def adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with the fused kernel where this torch has it (on this CPU: 4x faster steps for 33M params)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"))
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr)


def _seeded_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


@torch.no_grad()
def evaluate_vae(model: CVAE, cache: ImageCache, device: torch.device, batch_size: int, bf16: bool,
                 seed: int = 0) -> float:
    """The seed's test loss: unweighted L2 of decoding z ~ N(0, I) (the encoder is not used)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for idx in batch_indices(len(cache), batch_size, None, drop_last=False):
        ab, grey = _cvae_batch(cache, idx, device, None)
        z = torch.randn(len(idx), model.cfg.latent, generator=gen).to(device)
        with autocast(device, bf16):
            pred = model.decode(z, grey)
        total += recon_loss(pred, ab).item() * len(idx)
        count += len(idx)
    return total / max(count, 1)


def _sheet_vae(model: CVAE, cache: ImageCache, device: torch.device, bf16: bool, out: Path, n: int = 16) -> None:
    model.eval()
    idx = np.arange(min(n, len(cache)))
    ab, grey = _cvae_batch(cache, idx, device, None)
    with torch.no_grad(), autocast(device, bf16):
        mu, _ = model.encoder(ab)
        pred = model.decode(mu, grey)  # reconstructions through the posterior mean
    img = sample_sheet(pred.float().cpu().numpy(), ab.cpu().numpy(), np.asarray(cache.l224[idx]), cols=8)
    from ..files.imageio import encode_image, write_atomic

    write_atomic(out, encode_image(img, "png"))


def _resume_state(ckpt_path: Path, resume: bool, reporter: Reporter) -> dict | None:
    if not ckpt_path.is_file():
        return None
    if not resume:
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out")
    state = read_checkpoint(ckpt_path)
    reporter.log(f"resuming {ckpt_path} after epoch {state['epoch']}")
    return state


def _start(stage: str, cfg: TrainConfig, dist: Dist, reporter: Reporter) -> None:
    if dist.active:
        reporter.log(f"{stage}: {dist.world} processes ({dist.backend}), global batch {cfg.batch_size} "
                     f"({cfg.batch_size // dist.world} per process), lr {cfg.lr:g}")


def check_batchable(n: int, cfg: TrainConfig) -> None:
    """Each epoch drops its last partial batch: fewer photos than one batch would train nothing (and log
    zeros). Checked as soon as the photos are known, before any model or feature pass."""
    if n < cfg.batch_size:
        raise ValueError(f"{n} training photos make no batch of {cfg.batch_size}: give more photos or a "
                         f"smaller --batch-size")


def _epoch_batches(n: int, cfg: TrainConfig, epoch: int) -> list[np.ndarray]:
    """The epoch's global batches: the same seeded order in every process (each takes ``Dist.shard``)."""
    return batch_indices(n, cfg.batch_size, _seeded_rng(cfg.seed, epoch), drop_last=True)


def _restore(state: dict | None, model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    """Load a resumed checkpoint's weights, optimiser and RNG; returns the epoch to start from."""
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"])


def train_vae(spec: DataSpec, out: str | os.PathLike, cfg: TrainConfig, device: torch.device,
              reporter: Reporter | None = None, resume: bool = False,
              model_cfg: CVAEConfig = CVAEConfig(), dist: Dist | None = None) -> Path:
    """Stage 1: train the CVAE; writes RUN/vae.pt every epoch, RUN/log.jsonl and RUN/samples/.

    ``dist``: this process's place under torchrun (``distributed.from_env``); rank 0 writes."""
    dist = dist or Dist()
    reporter = (reporter or Reporter()) if dist.main else QuietReporter()
    dist.per_rank_batch(cfg.batch_size)
    paths = RunPaths(Path(out))
    paths.samples.mkdir(parents=True, exist_ok=True)
    state = _resume_state(paths.vae, resume, reporter)
    if state is not None:
        cfg = replace(TrainConfig(**state["train_config"]), epochs=cfg.epochs)
        model_cfg = CVAEConfig(**state["model_config"])
    torch.manual_seed(cfg.seed)
    with dist.rank0_first():
        train, test = load_split(spec, paths, reporter, cfg.max_images)
    check_batchable(len(train), cfg)
    prior = zhang_prior() if cfg.prior == "zhang" else count_prior(np.asarray(train.lab64[..., 1:]))
    weighter = LossWeighter.from_prior(prior)

    noise = StepNoise(cfg.seed, dist, device)
    model = noise_dropout(CVAE(model_cfg).to(device), noise)
    opt = adam(model.parameters(), cfg.lr, device)
    start_epoch = _restore(state, model, opt)
    net = dist.wrap(model, device)
    _start("vae", cfg, dist, reporter)
    augmented = AugmentedBatches(train, device, weighter, cfg.seed, dist=dist) if cfg.augment else None
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        batches = _epoch_batches(len(train), cfg, epoch)
        bar = reporter.progress(len(batches), f"vae epoch {epoch + 1}/{cfg.epochs}")
        t0 = time.perf_counter()
        sums = np.zeros(3)
        if augmented is not None:
            augmented.start_epoch(epoch)
        for step, global_idx in enumerate(batches):
            idx = dist.shard(global_idx)
            noise.start(epoch, step)
            if augmented is not None:
                b = augmented.batch(idx)
                ab, grey, w = b["ab"], b["grey"], b["weights"]
            else:
                ab, grey, w = _cvae_batch(train, idx, device, weighter)
            eps = noise.randn((len(idx), model_cfg.latent))
            with autocast(device, cfg.bf16):
                mu, logvar, pred = net(ab, grey, eps=eps)
            # the seed's KL is summed over the batch: this process's share times the world size, so that
            # DDP's average over processes is the global batch's sum
            kl = kl_loss(mu.float(), logvar.float()) * dist.world
            rec = recon_loss(pred, ab, w)
            loss = kl * cfg.kl_weight + rec
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                l2 = recon_loss(pred.detach(), ab)
            sums += (loss.item(), kl.item(), l2.item())
            bar.advance(1, loss=loss.item())
        bar.close()
        sums = dist.mean(sums)
        seconds = time.perf_counter() - t0
        nb = max(len(batches), 1)
        record = {"stage": "vae", "epoch": epoch + 1, "train_loss": float(sums[0] / nb),
                  "train_kl": float(sums[1] / nb), "train_recon_l2": float(sums[2] / nb), "seconds": round(seconds, 1),
                  "img_per_s": round(nb * cfg.batch_size / seconds, 1), **_scale(cfg, dist)}
        if not dist.main:
            continue   # rank 0 evaluates and writes; the others go on to the next epoch's first all-reduce
        if test is not None:
            record["test_recon_l2"] = evaluate_vae(model, test, device, cfg.batch_size, cfg.bf16, cfg.seed)
        reporter.log(_format_record(record))
        _append_log(paths.log, record)
        save_checkpoint(paths.vae, "vae", {
            "model": model.state_dict(), "model_config": model_cfg.to_dict(), "train_config": cfg.to_dict(),
            "optimizer": opt.state_dict(), "epoch": epoch + 1, "torch_rng": torch.get_rng_state(),
            "metrics": record})
        if (epoch + 1) % cfg.sample_every == 0 or epoch + 1 == cfg.epochs:
            _sheet_vae(model, test if test is not None else train, device, cfg.bf16,
                       paths.samples / f"vae_epoch{epoch + 1:03d}.png")
    dist.barrier()   # the others return once the last checkpoint is written
    return paths.vae


def _scale(cfg: TrainConfig, dist: Dist) -> dict:
    """How the run was spread, in every log record: processes, global batch, learning rate."""
    return {"world_size": dist.world, "global_batch": cfg.batch_size, "lr": cfg.lr}


_QUIET_KEYS = ("stage", "epoch", "world_size", "global_batch", "lr")


def _format_record(r: dict) -> str:
    parts = [f"{r['stage']} epoch {r['epoch']}"]
    for k, v in r.items():
        if k not in _QUIET_KEYS:
            parts.append(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}")
    return " | ".join(parts)


def load_vae(path: str | os.PathLike, device: torch.device) -> CVAE:
    state = read_checkpoint(path, "vae")
    model = CVAE(CVAEConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def iter_records(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)

