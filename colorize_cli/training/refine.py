"""An optional stage after the two of the paper: fine-tune the mixture's means for the best of the K samples.

The seed's MDN learns its K means in the CVAE's latent space, against the colour encoder's code of each
photo, with a loss that moves only the component nearest to that code. What a user sees is the decoded
colours, and what makes a set of samples useful is that one of them is close to the photo's own colours
(error-of-best). Closest in the latent space is not closest in colour: on Imagenette the bundled `general`
model's best of 8 is 0.80x the error of leaving the photo grey, while decoding the colour encoder's code of
the true colours (the CVAE oracle) reaches 0.58x.

This stage keeps VGG, the MDN's trunk and the CVAE as they are and fine-tunes only the K * D rows of the
MDN's last layer that give the means, with the paper's own best-of-K idea moved from the latent space to
colour: per photo, decode all K means, pick the one whose colours are closest to the truth, and descend on
that one's colour error (mean per-pixel ab distance at 64x64, the error-of-best metric itself), back through
the frozen decoder. The last layer's input h does not change, so it is computed once per photo (VGG and
the trunk, the slow part) and kept; an epoch then costs K + 1 decodes and one decoder backward per photo.

Optionally (``decoder_lr`` > 0) the decoder learns on the same loss too, and (``target_gain`` > 1) towards
colour-enhanced targets: a decoder trained on best-of-K alone turns cautious, enhanced targets keep its
samples colourful (docs/training.md, Vividness). h still does not change, so kept views stay valid.

The weight logits are left as they were: they ranked the old means, so run ``colorize train ranking`` on
the result (the manifest's ``refine`` record says so, and a ``ranking`` record of the source is dropped).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..common.atomic import atomic_write
from ..files.imageio import ImageReadError, read_image
from ..model.checkpoint import read_checkpoint, save_checkpoint
from ..model.color import normalize_u8
from ..model.colorizer import Colorizer
from ..model.device import autocast
from ..model.preprocess import model_views
from .data import GREY_CHROMA, lab64_colourfulness, mean_chroma

STATE_FILE = "refine-state.pt"     # in the output folder, beside the bundle: the training state for --resume


@dataclass
class RefineConfig:
    epochs: int = 8
    lr: float = 3e-4               # Adam on the mean rows
    batch_size: int = 32
    bf16: bool = False             # autocast the decoder (the loss and the weights stay fp32)
    seed: int = 0
    grey_chroma: float = GREY_CHROMA   # photos with less mean chroma (CIE units at 64x64) have no colour truth
    # colour-enhanced targets (DDColor trains on the truth pushed x1.2 away from grey): the training target is
    # the true ab times this, clipped to the ab range; held-out errors are always against the truth itself
    target_gain: float = 1.0
    # > 0: the CVAE decoder is fine-tuned too (its weights and BatchNorm affines, the running statistics kept),
    # at this learning rate, on the same best-of-K loss; 0 keeps it frozen (the stage's original recipe)
    decoder_lr: float = 0.0
    # > 0: photos whose true colours are duller than this (colourfulness at 64x64, as `colorize evaluate`
    # measures it; real colour photos 30-50) are left out of training, as BigColor leaves out ImageNet's < 15;
    # held-out photos are all kept
    min_colourfulness: float = 0.0


@dataclass
class Views:
    """What the stage needs of each colour photo; none of it depends on the means."""
    h: np.ndarray        # (N, F) float32: the MDN's last-layer input (no dropout)
    l64: np.ndarray      # (N, 64, 64) uint8: L at the CVAE's size (OpenCV's 8-bit Lab)
    ab64: np.ndarray     # (N, 2, 64, 64) uint8: the true a, b there

    def __len__(self) -> int:
        return len(self.h)

    def take(self, idx) -> Views:
        return Views(self.h[idx], self.l64[idx], self.ab64[idx])

    @staticmethod
    def concat(parts: list[Views]) -> Views:
        return Views(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("h", "l64", "ab64")))


def collect_views(colorizer: Colorizer, root: str | os.PathLike, rels: list[str], batch_size: int = 16,
                  grey_chroma: float = GREY_CHROMA, advance: Callable[[int], None] = lambda n: None,
                  warn: Callable[[str], None] = print) -> Views:
    """Per colour photo of ``rels`` (paths under ``root``): h, L and the true ab at 64x64. Unreadable photos
    are one warning each; grey ones (training's chroma check) are left out."""
    captured = {}
    hook = colorizer.mdn.fc.register_forward_hook(lambda m, i, o: captured.__setitem__("h", i[0]))
    hs, ls, abs_ = [], [], []
    try:
        for start in range(0, len(rels), batch_size):
            batch = []
            for rel in rels[start:start + batch_size]:
                try:
                    img = read_image(Path(root) / rel)
                except ImageReadError as err:
                    warn(f"skipped {rel}: {err}")
                    continue
                _, lab64, l224 = model_views(img.bgr)
                if mean_chroma(lab64) >= grey_chroma:
                    batch.append((lab64, l224))
            advance(min(batch_size, len(rels) - start))
            if not batch:
                continue
            with torch.no_grad():
                colorizer.mixture(np.stack([b[1] for b in batch]))
            hs.append(captured["h"].float().cpu().numpy()[:len(batch)])
            ls.append(np.stack([b[0][..., 0] for b in batch]))
            abs_.append(np.stack([np.moveaxis(b[0][..., 1:], -1, 0) for b in batch]))
    finally:
        hook.remove()
    if not hs:
        raise ValueError(f"no colour photos in {root}")
    return Views(np.concatenate(hs), np.concatenate(ls), np.concatenate(abs_))


def true_colourfulness(views: Views) -> np.ndarray:
    """(N,) each photo's own colourfulness at 64x64 (Hasler & Suesstrunk on its true colours, evaluate's
    measure on the CVAE's grid)."""
    # one photo's (64, 64, 3) Lab at a time: no copy of the whole set
    return np.array([lab64_colourfulness(np.dstack([views.l64[i], *views.ab64[i]]))
                     for i in range(len(views))], np.float64)


def without_dull(views: Views, min_colourfulness: float, warn: Callable[[str], None] = print) -> Views:
    """The photos of ``views`` at least ``min_colourfulness`` colourful (0: all); the rest counted in one
    line."""
    if min_colourfulness <= 0:
        return views
    keep = true_colourfulness(views) >= min_colourfulness
    if not keep.any():
        raise ValueError(f"no training photo is as colourful as --min-colourfulness {min_colourfulness:g}")
    if not keep.all():
        warn(f"left out {int((~keep).sum())} dull photos of {len(views)} (colourfulness at 64x64 "
             f"< {min_colourfulness:g})")
    return views.take(np.flatnonzero(keep))


def mean_rows(colorizer: Colorizer) -> slice:
    """The rows of the MDN's last layer that give the K * D means (before the K weight logits)."""
    k, d = colorizer.mdn.cfg.components, colorizer.mdn.cfg.latent
    return slice(0, k * d)


class MeanTrainer:
    """Best-of-K fine-tuning of the mean rows (K * D, F) and their biases against a frozen decoder."""

    def __init__(self, colorizer: Colorizer, cfg: RefineConfig):
        self.c = colorizer
        self.cfg = cfg
        self.k, self.d = colorizer.mdn.cfg.components, colorizer.mdn.cfg.latent
        rows = mean_rows(colorizer)
        self.weight = colorizer.mdn.fc.weight.detach()[rows].float().clone().requires_grad_(True)
        self.bias = colorizer.mdn.fc.bias.detach()[rows].float().clone().requires_grad_(True)
        self.opt = torch.optim.Adam([self.weight, self.bias], lr=cfg.lr)
        for p in colorizer.cvae.parameters():
            p.requires_grad_(False)
        colorizer.cvae.eval()        # BatchNorm keeps its running statistics; only the means (and decoder) move
        self.decoder_opt = None
        if cfg.decoder_lr > 0:
            params = list(colorizer.cvae.decoder.parameters())
            for p in params:
                p.requires_grad_(True)
            self.decoder_opt = torch.optim.Adam(params, lr=cfg.decoder_lr)

    def _batch(self, views: Views, gain: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dev = self.c.device
        h = torch.from_numpy(views.h).to(dev)
        grey = self.c._cvae_grey[torch.from_numpy(views.l64).to(dev).long()][:, None]   # (B, 1, 64, 64)
        truth = torch.from_numpy(normalize_u8(views.ab64)).to(dev)                       # (B, 2, 64, 64)
        if gain != 1.0:
            truth = (truth * gain).clamp(-1.0, 1.0)     # the decoder's tanh range
        return h, grey, truth

    @staticmethod
    def _distance(ab: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """ab (B, N, 2, 64, 64), truth (B, 2, 64, 64) -> (B, N) mean per-pixel L2 (evaluate's ab_distance);
        the epsilon keeps the square root's gradient finite where a pixel is exact."""
        return ((ab.float() - truth[:, None]) ** 2).sum(2).add(1e-8).sqrt().mean((-2, -1))

    def _means(self, h: torch.Tensor) -> torch.Tensor:
        return (h @ self.weight.T + self.bias).reshape(len(h), self.k, self.d)     # (B, K, D)

    def errors(self, views: Views, bf16: bool = False) -> np.ndarray:
        """(N, K) colour error of each component's decoding, without training (fp32 unless asked: what a
        user gets by default on a CPU without fast bf16)."""
        out = []
        with torch.no_grad():
            for s in range(0, len(views), self.cfg.batch_size):
                h, grey, truth = self._batch(views.take(slice(s, s + self.cfg.batch_size)))
                with autocast(self.c.device, bf16):
                    feats = self.c.cvae.cond_encoder(grey)
                    ab = self.c.cvae.decoder.forward_samples(self._means(h), *feats)
                out.append(self._distance(ab.reshape(len(h), self.k, 2, 64, 64), truth).cpu().numpy())
        return np.concatenate(out)

    def step(self, views: Views) -> float:
        """One optimiser step on a batch; returns its mean best-of-K error."""
        h, grey, truth = self._batch(views, self.cfg.target_gain)
        b = len(h)
        means = self._means(h)
        with torch.no_grad(), autocast(self.c.device, self.cfg.bf16):
            feats = self.c.cvae.cond_encoder(grey)
            ab = self.c.cvae.decoder.forward_samples(means.detach(), *feats)
            best = self._distance(ab.reshape(b, self.k, 2, 64, 64), truth).argmin(1)     # (B,)
        with autocast(self.c.device, self.cfg.bf16):
            ab_best = self.c.cvae.decoder(means[torch.arange(b), best], *feats)          # (B, 2, 64, 64)
        loss = self._distance(ab_best[:, None], truth)[:, 0].mean()
        self.opt.zero_grad(set_to_none=True)
        if self.decoder_opt is not None:
            self.decoder_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.decoder_opt is not None:
            self.decoder_opt.step()
        return float(loss.detach())

    def decoder_state(self) -> dict | None:
        """The decoder's fp32 state (``decoder.*`` keys, as bundles store it) when it is fine-tuned, else None."""
        if self.decoder_opt is None:
            return None
        return {f"decoder.{k}": v.detach().float().cpu().clone()
                for k, v in self.c.cvae.decoder.state_dict().items()}

    def state(self) -> dict:
        state = {"weight": self.weight.detach().clone(), "bias": self.bias.detach().clone(),
                 "optimizer": self.opt.state_dict()}
        if self.decoder_opt is not None:
            state["decoder"] = self.decoder_state()
            state["decoder_optimizer"] = self.decoder_opt.state_dict()
        return state

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            self.weight.copy_(state["weight"])
            self.bias.copy_(state["bias"])
        self.opt.load_state_dict(state["optimizer"])
        if self.decoder_opt is not None:
            self.c.cvae.decoder.load_state_dict({k[len("decoder."):]: v for k, v in state["decoder"].items()})
            self.decoder_opt.load_state_dict(state["decoder_optimizer"])


def grey_error(views: Views) -> np.ndarray:
    """(N,) the error of leaving each photo grey (ab = 0), in the same units (evaluate's ab_distance)."""
    return np.sqrt((normalize_u8(views.ab64) ** 2).sum(1)).mean((-2, -1))


def best_vs_grey(errors: np.ndarray, grey: np.ndarray) -> float:
    return float(errors.min(1).mean() / grey.mean())


def write_rows(source: Path, out: Path, rows: slice, weight: torch.Tensor, bias: torch.Tensor,
               key: str, record: dict, drop: tuple[str, ...] = (), decoder: dict | None = None) -> Path:
    """A copy of the bundle in ``source`` with ``rows`` of its MDN's last layer replaced and ``record`` under
    ``key`` in its manifest (records named in ``drop`` removed); ``decoder`` (an fp32 ``decoder.*`` state)
    replaces its decoder, stored as the bundle stores its weights. Other parts are copied as they are (shared
    parts, such as the bundled models' vgg.pt, are copied in). Each file is written atomically."""
    from ..model.bundle import read_manifest
    from ..model.checkpoint import dequantize_state, quantize_state
    from ..model.registry import part_path

    manifest = read_manifest(source)
    mode = manifest.get("quantization", "fp32")
    mode = mode if mode in ("int8", "fp16") else "fp32"
    out.mkdir(parents=True, exist_ok=True)
    if decoder is not None:
        with atomic_write(out / "decoder.pt") as f:
            torch.save(quantize_state(decoder, mode), f)
    for name in ("cond_encoder", "decoder", "vgg"):
        if name == "decoder" and decoder is not None:
            continue
        src = part_path(source, manifest, name)
        if src.resolve() != (out / f"{name}.pt").resolve():
            with atomic_write(out / f"{name}.pt") as f, open(src, "rb") as r:
                shutil.copyfileobj(r, f)
    stored = torch.load(part_path(source, manifest, "mdn"), map_location="cpu", weights_only=True)
    state = dequantize_state(stored)
    state["fc.weight"][rows] = weight
    state["fc.bias"][rows] = bias
    # quantized per output row: rows not replaced come back bit for bit (their scale is unchanged)
    new = quantize_state(state, mode)
    with atomic_write(out / "mdn.pt") as f:
        torch.save(new, f)
    if (source / "int8.json").is_file() and source.resolve() != out.resolve():
        shutil.copyfile(source / "int8.json", out / "int8.json")
    manifest = {k: v for k, v in manifest.items() if k != "part_files" and k not in drop}
    manifest[key] = record
    with atomic_write(out / "manifest.json") as f:
        f.write((json.dumps(manifest, indent=2) + "\n").encode())
    return out


def trunk_digest(source: Path) -> str:
    """What h depends on: VGG and the MDN's layers before the last (its ``fc.*`` tensors left out), so a bundle
    whose means or weights were re-fitted keeps the digest of its source (and its cached views)."""
    from ..model.bundle import read_manifest
    from ..model.registry import part_path

    manifest = read_manifest(source)
    digest = hashlib.sha256(hashlib.sha256(part_path(source, manifest, "vgg").read_bytes()).digest())
    mdn = torch.load(part_path(source, manifest, "mdn"), map_location="cpu", weights_only=True)
    for key in sorted(mdn):
        if not key.startswith("fc."):
            digest.update(key.encode())
            digest.update(mdn[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def views_cache_file(cache_dir: str | os.PathLike, trunk: str, root: str, rels: list[str],
                     grey_chroma: float = GREY_CHROMA) -> Path:
    """One file per (VGG and trunk, photos, grey threshold): a changed trunk or list is a new file."""
    key = json.dumps([trunk, str(Path(root).resolve()), rels, grey_chroma]).encode()
    return Path(cache_dir) / f"views-{hashlib.sha256(key).hexdigest()[:20]}.npz"


def load_views(path: Path) -> Views:
    with np.load(path) as f:
        return Views(f["h"], f["l64"], f["ab64"])


def save_views(path: Path, views: Views) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        np.savez(f, h=views.h, l64=views.l64, ab64=views.ab64)


def gather_views(colorizer: Colorizer, label: str, root: str, rels: list[str], reporter,
                 grey_chroma: float = GREY_CHROMA, cache_dir: str | os.PathLike | None = None, trunk: str = "",
                 batch_size: int = 16) -> Views:
    """The views of ``rels``: from ``cache_dir`` when a model with the same VGG and trunk (``trunk``, its
    digest) kept them, else collected (with a progress bar) and kept there."""
    cached = None if cache_dir is None else views_cache_file(cache_dir, trunk, root, rels, grey_chroma)
    if cached is not None and cached.is_file():
        views = load_views(cached)
        reporter.log(f"{label}: {len(views)} colour photos from {cached}")
        return views
    bar = reporter.progress(len(rels), f"{label}: VGG and the MDN's trunk ({root})")
    try:
        views = collect_views(colorizer, root, rels, batch_size, grey_chroma, bar.advance, reporter.warn)
    finally:
        bar.close()
    reporter.log(f"{label}: {len(views)} colour photos of {len(rels)} ({root})")
    if cached is not None:
        save_views(cached, views)
    return views


def train_refine(model: str | None, sources: list[tuple[str, list[str]]], out: str | os.PathLike,
                 cfg: RefineConfig | None = None, device: torch.device | str = "cpu",
                 test: tuple[str, list[str]] | None = None, reporter=None, resume: bool = False,
                 cache_dir: str | os.PathLike | None = None) -> Path:
    """Fine-tune the means of ``model`` (a bundle) on the colour photos of ``sources`` ((root, relative paths)
    pairs) for ``cfg.epochs`` epochs and write the bundle to ``out`` after every epoch, with the training state
    beside it (``--resume`` goes on from there). With ``test`` (held-out photos), error-of-best there is
    measured each epoch."""
    from ..model.registry import resolve_model
    from .train import Reporter

    reporter = reporter or Reporter()
    cfg = cfg or RefineConfig()
    source = resolve_model(model)
    if not (source / "manifest.json").is_file():
        raise ValueError(f"{source}: this stage works on a bundle (colorize export makes one from a run)")
    out = Path(out)
    state_path = out / STATE_FILE
    saved = None
    if resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"nothing to resume: {state_path} does not exist")
        saved = read_checkpoint(state_path, "refine")
        if Path(saved["source"]).resolve() != source.resolve():
            raise ValueError(f"{state_path} fine-tunes {saved['source']}, not {source}")
        cfg = RefineConfig(**{**saved["config"], "epochs": cfg.epochs})
    elif state_path.is_file():
        raise ValueError(f"{out} already holds a fine-tuning run: --resume to go on, or choose another --out")
    torch.manual_seed(cfg.seed)
    colorizer = Colorizer.load(str(source), device, int8=False)

    trunk = trunk_digest(source) if cache_dir is not None else ""
    # a source that was itself refined keeps its record under "earlier": the new means start from its means
    from ..model.bundle import read_manifest
    earlier = read_manifest(source).get("refine")

    def gather(label: str, root: str, rels: list[str]) -> Views:
        return gather_views(colorizer, label, root, rels, reporter, cfg.grey_chroma, cache_dir, trunk)

    train = Views.concat([gather("training photos", root, rels) for root, rels in sources])
    train = without_dull(train, cfg.min_colourfulness, reporter.warn)
    held_views = gather("held-out photos", *test) if test is not None else None
    trainer = MeanTrainer(colorizer, cfg)
    history: list[dict] = []
    start_epoch = 0
    if saved is not None:
        trainer.load_state(saved["trainer"])
        history, start_epoch = saved["history"], saved["epoch"]
        reporter.log(f"resumed after epoch {start_epoch}")

    def measure(views: Views) -> float:
        return best_vs_grey(trainer.errors(views), grey_error(views))

    if held_views is not None and not history:
        before = measure(held_views)
        history.append({"epoch": 0, "held_best_vs_grey": before})
        reporter.log(f"held-out ({len(held_views)} photos) error-of-best before: {before:.4f}x grey")
    for epoch in range(start_epoch, cfg.epochs):
        # each epoch's order from (seed, epoch): a resumed run visits the photos as one without a stop would
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        order = order.numpy()
        t0 = time.monotonic()
        bar = reporter.progress(len(train), f"epoch {epoch + 1}/{cfg.epochs}")
        losses = []
        try:
            for s in range(0, len(train), cfg.batch_size):
                idx = order[s:s + cfg.batch_size]
                losses.append(trainer.step(train.take(idx)) * len(idx))
                bar.advance(len(idx))
        finally:
            bar.close()
        entry = {"epoch": epoch + 1, "train_best": float(sum(losses) / len(train)),
                 "seconds": round(time.monotonic() - t0, 1)}
        if held_views is not None:
            entry["held_best_vs_grey"] = measure(held_views)
        history.append(entry)
        record = {"config": asdict(cfg), "epochs": epoch + 1, "history": history,
                  "data": [{"root": str(root), "images": len(rels)} for root, rels in sources],
                  "note": "the weight logits were the source's, fitted to its old means: re-fit them with "
                          "`colorize train ranking`"}
        if isinstance(earlier, dict):
            record["earlier"] = earlier
        write_rows(source, out, mean_rows(colorizer), trainer.weight.detach(), trainer.bias.detach(),
                   "refine", record, drop=("ranking",), decoder=trainer.decoder_state())
        save_checkpoint(state_path, "refine", {"source": str(source), "config": asdict(cfg), "epoch": epoch + 1,
                                                "history": history, "trainer": trainer.state()})
        held_text = f", held-out best {entry['held_best_vs_grey']:.4f}x grey" if held_views is not None else ""
        reporter.log(f"epoch {epoch + 1}: train best {entry['train_best']:.4f}{held_text} "
                     f"({entry['seconds']:.0f} s)")
    return out
