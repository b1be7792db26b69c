"""An optional stage after the two of the paper: re-fit the mixture weights so that they rank the samples.

The seed's MDN loss moves only the component nearest to each photo's latent code, and its weights learn how
often each component is *nearest in the latent space*. Decoded, that is not the same as closest in colour:
on 287 held-out Imagenette photos the top-weighted component of the `general` model was the one whose
colours were closest to the truth in 27% of the photos, and its error was 0.98x that of leaving the photo
grey, while the best of the 8 was 0.77x.

This stage keeps everything the model draws (VGG, the MDN's trunk, the 8 means, the decoder) and re-fits
only the K weight logits of the MDN's last layer, on colour photos (the samples are the same 8
colorizations; their order and weights change). Two objectives:

- ``error`` (default): a ridge regression of each component's colour error on the last layer's input h
  predicts the K errors; the logits are the negated predictions over a temperature, so the most probable
  sample is the one with the least *expected* error, and the temperature (fitted by cross-entropy against
  the closest component) keeps the weights a calibrated chance of being the closest. A cautious sample
  that is never far off ranks above a bold one that is sometimes right and often very wrong, which is
  what a user looking at sample 1 wants (docs/training.md has the figures).
- ``closest``: cross-entropy against the index of the closest decoded mean, with an L2 pull towards the
  trained logits: each weight is the chance that its colorization is the closest.

Off by default: the seed's training is the two stages; `colorize train ranking` is an extra step (the last:
`colorize train refine`, which moves the means, comes before it), and a model card says whether a bundled
model had it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..common.atomic import atomic_write
from ..model.color import normalize_u8
from ..model.colorizer import Colorizer
from ..model.device import autocast
from . import refine
from .data import GREY_CHROMA
from .evaluate import ab_distance


@dataclass
class RankingConfig:
    objective: str = "error"      # "error": least predicted colour error first; "closest": CE on the closest
    ridge: float | None = None    # per photo, of the error regression; None: chosen by 5-fold cross-validation
    steps: int = 600              # the "closest" fit's Adam steps, learning rate and pull
    lr: float = 1e-3
    pull: float = 1e-3            # L2 weight of (logits' weights - trained ones)
    batch_size: int = 16
    grey_chroma: float = GREY_CHROMA   # photos with less mean chroma (CIE units at 64x64) have no colour truth
    chroma_weight: float = 0.0    # error objective: rank by predicted (error - chroma_weight * chroma), so a
                                  # vivid sample comes first where it costs little error (0: error alone)


@dataclass
class RankingData:
    h: np.ndarray        # (N, F) the MDN's last-layer input
    err: np.ndarray      # (N, K) mean ab distance of each component mean's decoding to the truth, at 64x64
    grey: np.ndarray     # (N,) the same for an all-grey colorization (= the truth's mean chroma)
    chroma: np.ndarray | None = None   # (N, K) mean chroma of each component's decoding, the same units


def collect(colorizer: Colorizer, root: str | os.PathLike, rels: list[str], cfg: RankingConfig,
            advance: Callable[[int], None] = lambda n: None, warn: Callable[[str], None] = print) -> RankingData:
    """Per colour photo: the MDN's last-layer input and each component's colour error (refine's views of the
    photos, then their K decodes)."""
    views = refine.collect_views(colorizer, root, rels, cfg.batch_size, cfg.grey_chroma, advance, warn)
    return from_views(colorizer, views, cfg.batch_size)


def from_views(colorizer: Colorizer, views, batch_size: int = 16,
               advance: Callable[[int], None] = lambda n: None) -> RankingData:
    """The same numbers as ``collect`` from photos' kept views (refine.Views: h, L and true ab at 64x64),
    without reading or VGG: the means from h by the MDN's last layer, then the K decodes."""
    k, d = colorizer.mdn.cfg.components, colorizer.mdn.cfg.latent
    fc = colorizer.mdn.fc
    errs, chromas = [], []
    for s in range(0, len(views), batch_size):
        part = views.take(slice(s, s + batch_size))
        with torch.no_grad():
            h = torch.from_numpy(part.h).to(colorizer.device)
            with autocast(colorizer.device, colorizer.bf16):          # as Colorizer.mixture runs it
                means = fc(h)[:, : k * d].float().reshape(len(h), k, d)
            ab = colorizer.decode(means, part.l64).cpu().numpy()                    # (B, K, 2, 64, 64)
        truth = normalize_u8(part.ab64)
        errs.append(np.stack([ab_distance(ab[i], truth[i]) for i in range(len(h))]))
        chromas.append(np.sqrt((ab ** 2).sum(2)).mean((-2, -1)))                       # (B, K)
        advance(len(h))
    return RankingData(views.h.astype(np.float32), np.concatenate(errs), refine.grey_error(views),
                       np.concatenate(chromas).astype(np.float32))


def logit_rows(colorizer: Colorizer) -> slice:
    """The rows of the MDN's last layer that give the weight logits (after the K * D means)."""
    k, d = colorizer.mdn.cfg.components, colorizer.mdn.cfg.latent
    return slice(k * d, k * (d + 1))


RIDGE_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def fit(data: RankingData, weight: torch.Tensor, bias: torch.Tensor, cfg: RankingConfig
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """New weight-logit rows (K, F) and biases (K,)."""
    if cfg.objective == "error":
        return fit_error(data, cfg)
    if cfg.objective != "closest":
        raise ValueError(f"unknown ranking objective {cfg.objective!r} (error, closest)")
    return fit_closest(data, weight, bias, cfg)


def _enough(n: int) -> None:
    if n < 10:
        raise ValueError(f"{n} colour photos are too few to fit the ranking on")


def _ridge(h: np.ndarray, err: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Least squares err ~ h @ coef + icpt with an L2 penalty of ridge * N on coef. h (N, F), err (N, K)."""
    mean_h, mean_e = h.mean(0), err.mean(0)
    hc = h - mean_h
    gram = hc.T @ hc
    gram[np.diag_indices_from(gram)] += ridge * len(h)
    coef = np.linalg.solve(gram, hc.T @ (err - mean_e))              # (F, K)
    return coef, mean_e - mean_h @ coef


def _top1_error(h: np.ndarray, err: np.ndarray, coef: np.ndarray, icpt: np.ndarray) -> float:
    pick = (h @ coef + icpt).argmin(1)
    return float(err[np.arange(len(pick)), pick].mean())


def choose_ridge(h: np.ndarray, err: np.ndarray, folds: int = 5) -> float:
    """The ridge of RIDGE_GRID whose regression, fitted on 4/5 of the photos, picks the samples of least
    mean error on the other 1/5 (5 folds, a fixed shuffle)."""
    _enough(len(h))
    order = np.random.default_rng(0).permutation(len(h))
    parts = np.array_split(order, folds)
    scores = []
    for ridge in RIDGE_GRID:
        total = 0.0
        for i in range(folds):
            held = parts[i]
            rest = np.concatenate([parts[j] for j in range(folds) if j != i])
            coef, icpt = _ridge(h[rest], err[rest], ridge)
            total += _top1_error(h[held], err[held], coef, icpt) * len(held)
        scores.append(total / len(h))
    return RIDGE_GRID[int(np.argmin(scores))]


def ranking_target(data: RankingData, cfg: RankingConfig) -> np.ndarray:
    """(N, K) what the error objective ranks by, least first: the colour error, less ``chroma_weight`` times
    the sample's chroma (both mean ab distances, from the truth and from grey)."""
    err = data.err.astype(np.float64)
    if cfg.chroma_weight:
        if data.chroma is None:
            raise ValueError("--chroma-weight needs each sample's chroma (collect the photos again)")
        err = err - cfg.chroma_weight * data.chroma.astype(np.float64)
    return err


def fit_error(data: RankingData, cfg: RankingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits = -(predicted error) / T: the regression orders the samples, T (fitted by cross-entropy
    against the closest component, on a log grid) sets how sure the weights are. With ``chroma_weight``,
    the predicted target is error minus that much chroma, and T is fitted against its least component."""
    h, err = data.h.astype(np.float64), ranking_target(data, cfg)
    _enough(len(h))
    ridge = cfg.ridge if cfg.ridge is not None else choose_ridge(h, err)
    coef, icpt = _ridge(h, err, ridge)
    pred = torch.from_numpy(h @ coef + icpt)                          # (N, K) predicted errors
    closest = torch.from_numpy(err.argmin(1))
    spread = float(pred.std()) or 1.0
    temps = spread * np.logspace(-3, 2, 101)
    losses = [float(F.cross_entropy(-pred / t, closest)) for t in temps]
    temp = float(temps[int(np.argmin(losses))])
    return (torch.from_numpy(-coef.T / temp).float(), torch.from_numpy(-icpt / temp).float())


def fit_closest(data: RankingData, weight: torch.Tensor, bias: torch.Tensor, cfg: RankingConfig
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy against the closest component, from the trained rows (K, F), (K,)."""
    h = torch.from_numpy(data.h).float()
    target = torch.from_numpy(data.err.argmin(1))
    w0, b0 = weight.detach().float().clone(), bias.detach().float().clone()
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=cfg.lr)
    for _ in range(cfg.steps):
        loss = F.cross_entropy(h @ w.T + b, target) + cfg.pull * (w - w0).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach(), b.detach()


def ranking_metrics(data: RankingData, weight: torch.Tensor, bias: torch.Tensor) -> dict:
    """Top-1 and best-of-K errors as ratios to grey, and how often the top component is the closest."""
    logits = torch.from_numpy(data.h).float() @ weight.T.float() + bias.float()
    top = logits.argmax(1).numpy()
    grey = float(data.grey.mean())
    out = {"images": int(len(top)), "top1_vs_grey": float(data.err[np.arange(len(top)), top].mean() / grey),
           "best_vs_grey": float(data.err.min(1).mean() / grey),
           "top_is_closest": float((top == data.err.argmin(1)).mean())}
    if data.chroma is not None:   # sample 1's chroma against the truth's (64x64, before the full-res merge)
        out["top1_chroma_vs_truth"] = float(data.chroma[np.arange(len(top)), top].mean() / grey)
    return out


def write_model(source: Path, out: Path, weight: torch.Tensor, bias: torch.Tensor, record: dict) -> Path:
    """A copy of the bundle in ``source`` with the new weight logits in its mdn.pt and ``record`` under
    ``ranking`` in its manifest (refine.write_rows: the means' rows come back bit for bit)."""
    k = bias.shape[0]
    return refine.write_rows(source, out, slice(-k, None), weight, bias, "ranking", record)


def _model_digest(source: Path, colorizer: Colorizer) -> str:
    """The bundle's manifest and parts (shared ones such as vgg may live outside ``source``), the device kind
    and precision: what a photo's collected numbers depend on besides the photo."""
    from ..model.bundle import read_manifest
    from ..model.registry import part_path

    manifest = read_manifest(source)
    digest = hashlib.sha256((source / "manifest.json").read_bytes())
    for name in ("cond_encoder", "decoder", "mdn", "vgg"):
        digest.update(hashlib.sha256(part_path(source, manifest, name).read_bytes()).digest())
    digest.update(f"{colorizer.device.type} {bool(colorizer.bf16)}".encode())
    return digest.hexdigest()


def _cache_file(cache_dir: Path, model_digest: str, root: str, rels: list[str], cfg: RankingConfig) -> Path:
    """One file per (model, photos, grey threshold): a changed model or list is a new file, never a stale one."""
    key = json.dumps([model_digest, str(Path(root).resolve()), rels, cfg.grey_chroma]).encode()
    return cache_dir / f"ranking-{hashlib.sha256(key).hexdigest()[:20]}.npz"


def train_ranking(model: str | None, sources: list[tuple[str, list[str]]], out: str | os.PathLike,
                  cfg: RankingConfig = RankingConfig(), device: torch.device | str = "cpu",
                  test: tuple[str, list[str]] | None = None, reporter=None,
                  cache_dir: str | os.PathLike | None = None) -> Path:
    """Fit the weight logits of ``model`` (a bundle) on the colour photos of ``sources`` ((root, relative
    paths) pairs) and write the re-ranked model to ``out``; with ``test``, measure before and after there.
    With ``cache_dir``, what each photo list gave is kept there: its views (VGG and trunk outputs, shared
    with `train refine` and any model of the same trunk) and this model's decodes of them (reused by a later
    fit of the same model on the same photos)."""
    from ..model.registry import resolve_model
    from .train import Reporter

    reporter = reporter or Reporter()
    source = resolve_model(model)
    if not (source / "manifest.json").is_file():
        raise ValueError(f"{source}: re-ranking works on a bundle (colorize export makes one from a run)")
    colorizer = Colorizer.load(str(source), device, int8=False)
    rows = logit_rows(colorizer)
    weight = colorizer.mdn.fc.weight.detach()[rows].float().cpu()
    bias = colorizer.mdn.fc.bias.detach()[rows].float().cpu()

    model_digest = _model_digest(source, colorizer) if cache_dir is not None else ""   # once, not per list
    trunk = refine.trunk_digest(source) if cache_dir is not None else ""

    def gather(label: str, root: str, rels: list[str]) -> RankingData:
        cached = None if cache_dir is None else _cache_file(Path(cache_dir), model_digest, root, rels, cfg)
        if cached is not None and cached.is_file():
            with np.load(cached) as f:
                if "chroma" in f.files:   # an older cache without it is collected again
                    reporter.log(f"{label}: {len(f['h'])} colour photos from {cached}")
                    return RankingData(f["h"], f["err"], f["grey"], f["chroma"])
        views = refine.gather_views(colorizer, label, root, rels, reporter, cfg.grey_chroma, cache_dir, trunk,
                                    cfg.batch_size)   # kept by `train refine` of the same trunk: no VGG pass
        bar = reporter.progress(len(views), f"{label}: 8 decodes per photo")
        try:
            data = from_views(colorizer, views, cfg.batch_size, bar.advance)
        finally:
            bar.close()
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(cached) as f:
                np.savez(f, h=data.h, err=data.err, grey=data.grey, chroma=data.chroma)
        return data

    parts = [gather("training photos", root, rels) for root, rels in sources]
    data = RankingData(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("h", "err", "grey", "chroma")))
    if cfg.objective == "error" and cfg.ridge is None:     # chosen once, and recorded in the manifest
        cfg = replace(cfg, ridge=choose_ridge(data.h.astype(np.float64), ranking_target(data, cfg)))
        reporter.log(f"ridge {cfg.ridge:g} (5-fold cross-validation on the training photos)")
    new_w, new_b = fit(data, weight, bias, cfg)
    record = {"config": asdict(cfg), "train": {"before": ranking_metrics(data, weight, bias),
                                               "after": ranking_metrics(data, new_w, new_b)},
              "data": [{"root": str(root), "images": len(rels)} for root, rels in sources]}
    if test is not None:
        held = gather("test photos", *test)
        record["test"] = {"before": ranking_metrics(held, weight, bias), "after": ranking_metrics(held, new_w, new_b)}
    for split in ("train", "test"):
        if split in record:
            b, a = record[split]["before"], record[split]["after"]
            reporter.log(f"{split} ({a['images']} colour photos): top-1 {b['top1_vs_grey']:.3f}x -> "
                         f"{a['top1_vs_grey']:.3f}x grey, top is closest {b['top_is_closest']:.0%} -> "
                         f"{a['top_is_closest']:.0%} (best of K: {a['best_vs_grey']:.3f}x); sample 1's chroma "
                         f"{b['top1_chroma_vs_truth']:.2f}x -> {a['top1_chroma_vs_truth']:.2f}x the truth's")
    return write_model(source, Path(out), new_w, new_b, record)
