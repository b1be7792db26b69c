"""The paper's second training stage: the MDN, from VGG16 features of the grey image to an 8-component
Gaussian mixture in the latent space of the frozen CVAE encoder."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..files.imageio import encode_image, write_atomic
from ..model.checkpoint import save_checkpoint
from ..model.color import grey_from_l
from ..model.device import autocast
from ..model.networks import CVAE, MDN, MDNConfig, split_mixture
from ..model.render import sample_sheet
from ..model.vgg import build_vgg, resolve_vgg_state
from .data import ImageCache, batch_indices
from .distributed import Dist, StepNoise, noise_dropout
from .losses import mdn_loss
from .train import (
    AugmentedBatches,
    DataSpec,
    QuietReporter,
    Reporter,
    RunPaths,
    TrainConfig,
    _append_log,
    _cvae_batch,
    _epoch_batches,
    _format_record,
    _restore,
    _resume_state,
    _scale,
    _start,
    adam,
    check_batchable,
    load_split,
    load_vae,
)


class FeatureStore:
    """VGG relu4_3 features of a cached image set, float16 (N, 512, 28, 28) in a resumable .npy memmap."""

    def __init__(self, path: Path, n: int):
        self.path = path
        self.progress_path = path.with_suffix(".done")
        shape = (n, 512, 28, 28)
        if path.is_file():
            self.array = np.load(path, mmap_mode="r+")
            if self.array.shape != shape:
                raise ValueError(f"{path} has shape {self.array.shape}, expected {shape}")
        else:
            tmp = path.with_name(path.name + ".part.npy")
            self.array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
            self.array.flush()
            os.replace(tmp, path)
            self.progress_path.write_text("0")
        self.done = int(self.progress_path.read_text()) if self.progress_path.is_file() else 0

    def fill(self, l224: np.ndarray, vgg, device: torch.device, bf16: bool, batch_size: int,
             reporter: Reporter, label: str) -> None:

        n = self.array.shape[0]
        if self.done >= n:
            return
        bar = reporter.progress((n - self.done + batch_size - 1) // batch_size, f"VGG features ({label})")
        for start in range(self.done, n, batch_size):
            stop = min(start + batch_size, n)
            grey = torch.from_numpy(grey_from_l(np.asarray(l224[start:stop]))).to(device)
            with torch.no_grad(), autocast(device, bf16):
                feats = vgg(grey)
            self.array[start:stop] = feats.float().cpu().numpy().astype(np.float16)
            self.array.flush()
            self.done = stop
            self.progress_path.write_text(str(stop))
            bar.advance(1)
        bar.close()

    def batch(self, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.array[idx])).to(device).float()


def _store_key(cache: ImageCache, vgg_state: dict, bf16: bool) -> str:

    h = hashlib.sha256("\0".join(cache.paths).encode("utf-8", "surrogateescape"))
    h.update(vgg_state["0.weight"].float().numpy().tobytes()[:4096])
    h.update(vgg_state["21.weight"].float().numpy().tobytes()[:4096])
    h.update(b"bf16" if bf16 else b"fp32")
    return h.hexdigest()[:16]


@torch.no_grad()
def posterior_targets(vae: CVAE, cache: ImageCache, device: torch.device, batch_size: int, bf16: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """mu, logvar (N, latent) of the frozen colour encoder (eval mode: deterministic)."""
    vae.eval()
    mus, logvars = [], []
    for idx in batch_indices(len(cache), batch_size * 4, None, drop_last=False):
        ab, _ = _cvae_batch(cache, idx, device, None)
        with autocast(device, bf16):
            mu, logvar = vae.encoder(ab)
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    return torch.cat(mus), torch.cat(logvars)


@torch.no_grad()
def evaluate_mdn(mdn: MDN, store: FeatureStore, mu: torch.Tensor, logvar: torch.Tensor, device: torch.device,
                 batch_size: int, bf16: bool, seed: int = 0, kind: str = "nearest") -> float:
    mdn.eval()
    gen = torch.Generator().manual_seed(seed)  # the same posterior samples every epoch
    total, count = 0.0, 0
    for idx in batch_indices(store.array.shape[0], batch_size, None, drop_last=False):
        with autocast(device, bf16):
            means, weights = mdn.mixture(store.batch(idx, device))
        t = torch.from_numpy(idx)
        loss, _ = mdn_loss(means, weights, mu[t].to(device), logvar[t].to(device), generator=gen, kind=kind)
        total += loss.item() * len(idx)
        count += len(idx)
    return total / max(count, 1)


def _sheet_mdn(vae: CVAE, mdn: MDN, cache: ImageCache, store: FeatureStore, device: torch.device, bf16: bool,
               out: Path, n: int = 8) -> None:

    mdn.eval()
    idx = np.arange(min(n, len(cache)))
    ab, grey = _cvae_batch(cache, idx, device, None)
    with torch.no_grad(), autocast(device, bf16):
        means, weights = mdn.mixture(store.batch(idx, device))
        order = torch.argsort(weights, dim=1, descending=True)
        means = torch.gather(means, 1, order[..., None].expand_as(means))
        k = means.shape[1]
        pred = vae.decode(means.reshape(-1, means.shape[-1]), grey.repeat_interleave(k, 0))
    pred = pred.float().cpu().numpy().reshape(len(idx), k, 2, *pred.shape[-2:])
    img = sample_sheet(pred, ab.cpu().numpy(), np.asarray(cache.l224[idx]), cols=k)
    write_atomic(out, encode_image(img, "png"))


def train_mdn(spec: DataSpec, out: str | os.PathLike, cfg: TrainConfig, device: torch.device,
              vae_path: str | os.PathLike | None = None, vgg_weights: str | None = None,
              reporter: Reporter | None = None, resume: bool = False, model_cfg: MDNConfig | None = None,
              dist: Dist | None = None) -> Path:
    """Stage 2: train the MDN on VGG features against the frozen CVAE's posterior; writes RUN/mdn.pt.

    ``dist``: this process's place under torchrun (``distributed.from_env``); rank 0 writes."""
    dist = dist or Dist()
    reporter = (reporter or Reporter()) if dist.main else QuietReporter()
    dist.per_rank_batch(cfg.batch_size)
    paths = RunPaths(Path(out))
    paths.samples.mkdir(parents=True, exist_ok=True)
    vae_path = Path(vae_path) if vae_path else paths.vae
    vae = load_vae(vae_path, device)
    for p in vae.parameters():
        p.requires_grad_(False)
    model_cfg = model_cfg or MDNConfig(latent=vae.cfg.latent)
    state = _resume_state(paths.mdn, resume, reporter)
    if state is not None:
        cfg = replace(TrainConfig(**state["train_config"]), epochs=cfg.epochs)
        model_cfg = MDNConfig(**state["model_config"])
        vgg_state = {k: v.float() for k, v in state["vgg"].items()}
    else:
        vgg_state = resolve_vgg_state(vgg_weights)
    torch.manual_seed(cfg.seed)
    vgg = build_vgg(vgg_state).to(device)
    with dist.rank0_first():
        train, test = load_split(spec, paths, reporter, cfg.max_images)
    check_batchable(len(train), cfg)

    cache_dir = Path(spec.cache_dir) if spec.cache_dir else paths.cache
    # with --augment every epoch sees other crops, so VGG runs live on the training set (a GPU's work);
    # without, its features are computed once into a store, as the seed does. The test set is never augmented.
    stores = {}
    with dist.rank0_first():   # rank 0 computes the features; the others open the finished stores
        for label, data in (("train", train), ("test", test)):
            if data is None or (label == "train" and cfg.augment):
                continue
            store = FeatureStore(cache_dir / f"vgg-{_store_key(data, vgg_state, cfg.bf16)}.npy", len(data))
            store.fill(data.l224, vgg, device, cfg.bf16, 64, reporter, label)
            stores[label] = store
    if cfg.augment:
        vgg.eval()
        for p in vgg.parameters():
            p.requires_grad_(False)
        augmented = AugmentedBatches(train, device, None, cfg.seed, dist=dist)
    else:
        del vgg
        augmented = None
        reporter.log("computing the frozen encoder's posterior for every image")
        train_mu, train_logvar = posterior_targets(vae, train, device, cfg.batch_size, cfg.bf16)
    test_targets = posterior_targets(vae, test, device, cfg.batch_size, cfg.bf16) if test is not None else None

    noise = StepNoise(cfg.seed, dist, device)
    mdn = noise_dropout(MDN(model_cfg).to(device), noise)
    opt = adam(mdn.parameters(), cfg.lr, device)
    start_epoch = _restore(state, mdn, opt)
    net = dist.wrap(mdn, device)
    _start("mdn", cfg, dist, reporter)
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        batches = _epoch_batches(len(train), cfg, epoch)
        bar = reporter.progress(len(batches), f"mdn epoch {epoch + 1}/{cfg.epochs}")
        t0 = time.perf_counter()
        sums = np.zeros(2)
        if augmented is not None:
            augmented.start_epoch(epoch)
        for step, global_idx in enumerate(batches):
            idx = dist.shard(global_idx)
            noise.start(epoch, step)
            if augmented is not None:
                b = augmented.batch(idx, with_vgg_input=True)
                with torch.no_grad(), autocast(device, cfg.bf16):
                    feats = vgg(b["vgg_grey"]).float()
                    mu, logvar = vae.encoder(b["ab"])
                mu, logvar = mu.float(), logvar.float()
            else:
                feats = stores["train"].batch(idx, device)
                t = torch.from_numpy(idx)
                mu, logvar = train_mu[t].to(device), train_logvar[t].to(device)
            eps = noise.randn(mu.shape)   # the posterior sample's draw (before dropout's, in every process)
            with autocast(device, cfg.bf16):
                means, weights = split_mixture(net(feats), model_cfg.components, model_cfg.latent)
            loss, nearest = mdn_loss(means, weights, mu, logvar, kind=cfg.mdn_loss, eps=eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += (loss.item(), nearest.item())
            bar.advance(1, loss=loss.item())
        bar.close()
        sums = dist.mean(sums)
        seconds = time.perf_counter() - t0
        nb = max(len(batches), 1)
        record = {"stage": "mdn", "epoch": epoch + 1, "train_loss": float(sums[0] / nb),
                  "train_dist": float(sums[1] / nb),
                  "seconds": round(seconds, 1), "img_per_s": round(nb * cfg.batch_size / seconds, 1),
                  **_scale(cfg, dist)}
        if not dist.main:
            continue
        if test_targets is not None:
            record["test_loss"] = evaluate_mdn(mdn, stores["test"], *test_targets, device, cfg.batch_size,
                                               cfg.bf16, cfg.seed, cfg.mdn_loss)
        reporter.log(_format_record(record))
        _append_log(paths.log, record)
        save_checkpoint(paths.mdn, "mdn", {
            "model": mdn.state_dict(), "model_config": model_cfg.to_dict(), "train_config": cfg.to_dict(),
            "optimizer": opt.state_dict(), "epoch": epoch + 1, "torch_rng": torch.get_rng_state(),
            "metrics": record, "vae_checkpoint": str(vae_path),
            # the MDN is only meaningful with the features it was trained on: keep them with it (fp16, 15 MB)
            "vgg": {k: v.half() for k, v in vgg_state.items()}})
        if (epoch + 1) % cfg.sample_every == 0 or epoch + 1 == cfg.epochs:
            if test is not None:
                _sheet_mdn(vae, mdn, test, stores["test"], device, cfg.bf16,
                           paths.samples / f"mdn_epoch{epoch + 1:03d}.png")
            elif "train" in stores:
                _sheet_mdn(vae, mdn, train, stores["train"], device, cfg.bf16,
                           paths.samples / f"mdn_epoch{epoch + 1:03d}.png")
    dist.barrier()
    return paths.mdn


