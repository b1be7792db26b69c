"""The paper's metrics on held-out colour photos: grey them, colorize, compare with the truth."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..files.imageio import ImageReadError, read_image
from ..model.color import AB_SCALE, CVAE_SIZE, normalize_u8
from ..model.colorizer import Colorizer, image_seed
from ..model.preprocess import model_views
from ..model.render import merge, sample_sheet
from .data import colourfulness, list_images


def ab_distance(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Mean per-pixel L2 distance in (a, b). pred (..., 2, H, W), truth (2, H, W) -> (...)."""
    return np.sqrt(((pred - truth) ** 2).sum(-3)).mean((-2, -1))


def diversity(samples: np.ndarray) -> float:
    """Mean pairwise per-pixel ab distance between an image's samples (N, 2, H, W)."""
    n = len(samples)
    if n < 2:
        return 0.0
    dists = [ab_distance(samples[i], samples[j]) for i in range(n) for j in range(i + 1, n)]
    return float(np.mean(dists))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


#: a colorization below this colourfulness looks grey (real colour photos: 40-50; DDColor reports 38 on
#: ImageNet val)
NEAR_GREY = 10.0

#: a sample "washes" red when its bottom quarter's mean a* exceeds the rest's by more than this (CIE a* units)
WASH_A_LEVELS = 8.0


def washed(ab: np.ndarray) -> np.ndarray:
    """ab (..., 2, H, W) normalised -> bool (...): the bottom quarter redder than the rest by > 8 a* levels
    (LFW-trained models learned shoulders and clothes there and painted them onto every photo)."""
    a = ab[..., 0, :, :] * AB_SCALE
    q = a.shape[-2] - a.shape[-2] // 4
    return (a[..., q:, :].mean((-2, -1)) - a[..., :q, :].mean((-2, -1))) > WASH_A_LEVELS


@dataclass
class MethodStats:
    """Per-image metric lists for one method."""

    best: list[float] = field(default_factory=list)
    top1: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    diversity: list[float] = field(default_factory=list)
    psnr_best: list[float] = field(default_factory=list)
    colourfulness: list[float] = field(default_factory=list)
    wash: list[float] = field(default_factory=list)  # per image: share of its samples that wash red
    near_grey: list[float] = field(default_factory=list)  # per image: share of its samples under NEAR_GREY

    def add(self, samples: np.ndarray, truth_ab: np.ndarray, l_full: np.ndarray, truth_bgr: np.ndarray) -> None:
        errors = ab_distance(samples, truth_ab)
        self.best.append(float(errors.min()))
        self.top1.append(float(errors[0]))
        self.mean.append(float(errors.mean()))
        self.diversity.append(diversity(samples))
        outs = [merge(l_full, s) for s in samples]
        self.psnr_best.append(max(psnr(o, truth_bgr) for o in outs))
        cf = [colourfulness(o) for o in outs]
        self.colourfulness.append(float(np.mean(cf)))
        self.near_grey.append(float(np.mean([c < NEAR_GREY for c in cf])))
        self.wash.append(float(washed(samples).mean()))

    def summary(self) -> dict:
        return {k: float(np.mean(v)) for k, v in vars(self).items() if v}


@dataclass
class EvaluationResult:
    images: int
    samples: int
    methods: dict[str, dict]
    truth_colourfulness: float
    skipped: list[str]
    truth_wash: float = float("nan")  # share of the true colour fields that "wash" (see washed)

    def to_json(self) -> dict:
        return {"images": self.images, "samples": self.samples, "methods": self.methods,
                "truth_colourfulness": self.truth_colourfulness, "truth_wash": self.truth_wash,
                **self.ratios(), **self.vividness(), "skipped": self.skipped}

    def ratios(self) -> dict:
        """Error-of-best and top-1 of the MDN as multiples of the grey baseline's error."""
        grey = self.methods.get("grey", {}).get("best")
        mdn = self.methods.get("mdn", {})
        if not grey or not mdn:
            return {}
        return {"best_vs_grey": mdn["best"] / grey, "top1_vs_grey": mdn["top1"] / grey}

    def vividness(self) -> dict:
        """Sample 1 against the truth: colourfulness ratio and difference (truth minus sample 1: DDColor's
        delta-CF, positive when faint), and the share of photos whose sample 1 is near-grey."""
        top = self.methods.get("top1")
        if not top or not self.truth_colourfulness > 0:
            return {}
        return {"sample1_colourfulness_vs_truth": top["colourfulness"] / self.truth_colourfulness,
                "sample1_delta_cf": self.truth_colourfulness - top["colourfulness"],
                "sample1_near_grey": top["near_grey"]}


METHOD_NAMES = {
    "mdn": "MDN means (ours)",
    "top1": "most probable only",
    "cvae_normal": "CVAE, z ~ N(0, I)",
    "oracle": "CVAE oracle (true colours' z)",
    "fitted": "decoder, z fitted to the truth",
    "grey": "grey (ab = 0)",
}


def fit_latents(colorizer: Colorizer, l64: np.ndarray, truth_ab: np.ndarray, steps: int,
                lr: float = 0.05) -> np.ndarray:
    """The decoder's own best: per photo the latent z whose decoding is closest to the true colours, found by
    gradient descent through the frozen decoder (fp32, from z = 0), and its decoding.

    l64 (B, 64, 64) uint8, truth_ab (B, 2, 64, 64) normalised -> ab (B, 1, 2, 64, 64). Needs no colour encoder,
    so bundles can be measured too: whatever colours this cannot give back, no mixture over z can either.
    """
    device = colorizer.device
    grey = colorizer._cvae_grey[torch.from_numpy(l64).to(device).long()][:, None]
    truth = torch.from_numpy(truth_ab).to(device)
    with torch.no_grad():
        feats = colorizer.cvae.cond_encoder(grey)
    z = torch.zeros(len(l64), 1, colorizer.cvae.cfg.latent, device=device, requires_grad=True)
    opt = torch.optim.Adam([z], lr=lr)
    best_err = torch.full((len(l64),), float("inf"), device=device)
    best_ab = torch.zeros_like(truth)
    for step in range(steps + 1):
        ab = colorizer.cvae.decoder.forward_samples(z, *feats).float()      # (B, 2, 64, 64)
        err = (ab - truth).square().sum(1).sqrt().mean((1, 2))             # the metric itself, per photo
        with torch.no_grad():   # each photo keeps its best iterate: never worse than where it started
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_ab[better] = ab[better]
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        err.sum().backward()
        opt.step()
    return best_ab.detach().reshape(len(l64), 1, 2, CVAE_SIZE, CVAE_SIZE).cpu().numpy()


def evaluate(colorizer: Colorizer, root: str | os.PathLike, rel_paths: list[str], samples: int = 8,
             batch_size: int = 32, seed: int = 0, sheet_path: str | os.PathLike | None = None,
             sheet_images: int = 8, progress: Callable[[int], None] | None = None,
             colour_encoder: torch.nn.Module | None = None, fit_steps: int = 0) -> EvaluationResult:
    """Colorize each held-out image from its L alone and score it against its own colours.

    ``colour_encoder`` (the CVAE's encoder of the same model, ab (B, 2, 64, 64) -> mu, logvar): adds the
    oracle, each photo decoded from the posterior mean of its own true colours — the best any MDN could
    pick from this CVAE, so the gap to it is what the MDN loses. ``fit_steps``: adds the decoder's own best
    (``fit_latents``), which needs no colour encoder.
    """
    root = Path(root)
    names = (("mdn", "top1", "cvae_normal") + (("oracle",) if colour_encoder is not None else ())
             + (("fitted",) if fit_steps else ()) + ("grey",))
    stats = {name: MethodStats() for name in names}
    truth_colour: list[float] = []
    truth_wash: list[float] = []
    skipped: list[str] = []
    sheet_rows: list[tuple] = []
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(rel_paths), batch_size):
        batch = []
        for rel in rel_paths[start:start + batch_size]:
            try:
                img = read_image(root / rel)
            except ImageReadError as err:
                skipped.append(f"{rel}: {err}")
                continue
            lab, lab64, l224 = model_views(img.bgr)
            batch.append((rel, img.bgr, np.ascontiguousarray(lab[..., 0]), lab64, l224))
        if not batch:
            continue
        l64 = np.stack([b[3][..., 0] for b in batch])
        l224 = np.stack([b[4] for b in batch])
        preds = colorizer.predict(l64, l224, samples, [image_seed(seed, b[0]) for b in batch])
        z = torch.randn(len(batch), samples, colorizer.cvae.cfg.latent, generator=gen)
        normal_ab = colorizer.decode(z, l64).cpu().numpy()
        truths = np.stack([np.moveaxis(normalize_u8(b[3][..., 1:]), -1, 0) for b in batch])  # (B, 2, 64, 64)
        oracle_ab = [None] * len(batch)
        if colour_encoder is not None:
            with torch.no_grad():
                mu, _ = colour_encoder(torch.from_numpy(truths).to(colorizer.device))
            oracle_ab = colorizer.decode(mu.float()[:, None], l64).cpu().numpy()        # (B, 1, 2, 64, 64)
        fitted_ab = fit_latents(colorizer, l64, truths, fit_steps) if fit_steps else [None] * len(batch)
        for (rel, bgr, l_full, lab64, _), pred, normal, truth_ab, oracle, fitted in zip(
                batch, preds, normal_ab, truths, oracle_ab, fitted_ab):
            stats["mdn"].add(pred.ab, truth_ab, l_full, bgr)
            stats["top1"].add(pred.ab[:1], truth_ab, l_full, bgr)
            stats["cvae_normal"].add(normal, truth_ab, l_full, bgr)
            if oracle is not None:
                stats["oracle"].add(oracle, truth_ab, l_full, bgr)
            if fitted is not None:
                stats["fitted"].add(fitted, truth_ab, l_full, bgr)
            truth_wash.append(float(washed(truth_ab)))
            grey = np.full((1,) + truth_ab.shape, normalize_u8(np.uint8(128)), np.float32)
            stats["grey"].add(grey, truth_ab, l_full, bgr)
            truth_colour.append(colourfulness(bgr))
            if len(sheet_rows) < sheet_images:
                sheet_rows.append((pred.ab, truth_ab, l_full))
        if progress is not None:
            progress(len(batch))
    if sheet_path is not None and sheet_rows:
        from ..files.imageio import encode_image, write_atomic

        img = sample_sheet(np.stack([r[0] for r in sheet_rows]), np.stack([r[1] for r in sheet_rows]),
                           [r[2] for r in sheet_rows], cols=samples)
        write_atomic(sheet_path, encode_image(img, "png"))
    methods = {name: s.summary() for name, s in stats.items()}
    return EvaluationResult(len(truth_colour), samples, methods,
                            float(np.mean(truth_colour)) if truth_colour else float("nan"), skipped,
                            float(np.mean(truth_wash)) if truth_wash else float("nan"))


def evaluation_list(root: str | os.PathLike, list_file: str | None, limit: int | None) -> list[str]:
    rel = list_images(root, list_file)
    return rel[:limit] if limit else rel
