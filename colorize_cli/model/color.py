"""Colour space conversions and the ab gamut: the one place that knows the Lab conventions.

Convention (the seed's): OpenCV 8-bit Lab (L*255/100, a+128, b+128) mapped to [-1, 1] by ``x*2/255-1``.
So a normalised ab value times 128 is (almost exactly) CIE a*/b* in its usual units.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import cv2
import numpy as np

#: model working sizes (H, W)
CVAE_SIZE = 64
VGG_SIZE = 224
#: normalised ab -> CIE ab units, as the seed's loss-weight lookup does (``img_vec * 128``)
AB_SCALE = 128.0


def normalize_u8(x: np.ndarray) -> np.ndarray:
    """uint8 Lab (OpenCV) -> float32 in [-1, 1]."""
    return x.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def denormalize_u8(x: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 0..255 with rounding and clipping."""
    return np.clip((np.asarray(x, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def bgr_to_lab(bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 (H, W, 3) -> normalised Lab float32 (H, W, 3) in [-1, 1].

    Converted in float (no 8-bit Lab rounding) and mapped onto the same scale as the seed's 8-bit values.
    """
    lab = cv2.cvtColor(bgr.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_BGR2LAB)
    lab[..., 0] *= np.float32(255 / 100)
    lab[..., 1:] += np.float32(128)
    return np.clip(lab * np.float32(2 / 255) - np.float32(1), -1, 1)


def lab_to_bgr(lab: np.ndarray) -> np.ndarray:
    """Normalised Lab float (H, W, 3) -> BGR uint8 (H, W, 3), converted in float."""
    raw = (np.asarray(lab, np.float32) + np.float32(1)) * np.float32(255 / 2)
    raw[..., 0] *= np.float32(100 / 255)
    raw[..., 1:] -= np.float32(128)
    bgr = cv2.cvtColor(raw, cv2.COLOR_LAB2BGR)
    return np.clip(bgr * 255 + 0.5, 0, 255).astype(np.uint8)


def l_ab_to_bgr(l_u8: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """L (uint8 OpenCV scale, (H, W)) + normalised ab (H, W, 2) -> BGR uint8 (H, W, 3), in float."""
    # in place and interleaved by cv2.merge: numpy's strided channel writes and temporaries made this 1.8 ms
    # per LFW-size tile, now 1.1 ms (cvtColor itself 0.7), the same bytes
    light = l_u8.astype(np.float32)
    light *= np.float32(100 / 255)
    chroma = np.asarray(ab, np.float32) + np.float32(1)
    chroma *= np.float32(255 / 2)
    chroma -= np.float32(128)
    bgr = cv2.cvtColor(cv2.merge([light, chroma]), cv2.COLOR_LAB2BGR)
    bgr *= np.float32(255)
    bgr += np.float32(0.5)
    np.clip(bgr, 0, 255, out=bgr)
    return bgr.astype(np.uint8)


#: CIE XYZ (D65) -> linear sRGB, OpenCV's XYZ2sRGB_D65 matrix, and the D65 white point OpenCV's Lab uses
XYZ_TO_LINEAR_RGB = ((3.240479, -1.53715, -0.498535),
                     (-0.969256, 1.875991, 0.041556),
                     (0.055648, -0.204043, 1.057311))
D65_WHITE = (0.950456, 1.0, 1.088754)


def l_ab_to_bgr_torch(l_u8, ab):
    """``l_ab_to_bgr`` in torch, on any device: L (..., H, W) uint8 + normalised ab (..., 2, H, W) float32
    -> BGR (..., H, W, 3) uint8.

    OpenCV's float Lab -> BGR formulas (CIE Lab -> XYZ -> linear sRGB -> sRGB gamma), written out so that a GPU
    can merge full-resolution samples. Against cv2.cvtColor it differs by at most one level, on about 0.01%
    of values (OpenCV applies the gamma through a spline table).
    """
    import torch

    light = l_u8.float() * (100 / 255)                                  # (..., H, W) CIE L
    a = (ab[..., 0, :, :] + 1) * 127.5 - 128                            # (..., H, W) CIE a, b
    b = (ab[..., 1, :, :] + 1) * 127.5 - 128
    dark = light <= 8.0                                                  # the linear segment of L(Y)
    y = torch.where(dark, light / 903.3, ((light + 16) / 116) ** 3)
    fy = torch.where(dark, y * 7.787 + 16 / 116, (light + 16) / 116)

    def f_inverse(f):
        return torch.where(f <= 6 / 29, (f - 16 / 116) / 7.787, f ** 3)

    x = f_inverse(fy + a / 500) * D65_WHITE[0]
    z = f_inverse(fy - b / 200) * D65_WHITE[2]
    y = y.expand_as(x)   # L may broadcast over samples: (B, 1, H, W) against ab's (B, N, H, W)
    matrix = torch.tensor(XYZ_TO_LINEAR_RGB, dtype=torch.float32, device=light.device)
    rgb = (torch.stack([x, y, z], -1) @ matrix.T).clamp_(0, 1)          # (..., H, W, 3) linear
    srgb = torch.where(rgb <= 0.0031308, rgb * 12.92, 1.055 * rgb.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)
    return (srgb.flip(-1) * 255 + 0.5).clamp_(0, 255).to(torch.uint8)


@lru_cache(maxsize=1)
def _grey_lut() -> np.ndarray:
    # (256,) uint8: the sRGB grey value whose OpenCV L equals the index (ab = 128, i.e. neutral)
    lab = np.full((1, 256, 3), 128, np.uint8)
    lab[0, :, 0] = np.arange(256, dtype=np.uint8)
    return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)[0, :, 1].copy()


def grey_from_l(l_u8: np.ndarray) -> np.ndarray:
    """The achromatic sRGB image (uint8, same shape) with the given OpenCV L channel.

    Training (colour photos) and inference (grey photos) both feed VGG this, so the network sees the
    same kind of grey image in both.
    """
    l_u8 = np.ascontiguousarray(l_u8, np.uint8)
    if l_u8.size == 0:
        return l_u8.copy()
    # cv2.LUT on a 2-D view: several times faster than numpy's gather on a batch (4-13 vs 25 ms for
    # 128 x 224 x 224), for training's VGG feature cache; inference looks this table up on the model's device
    rows = l_u8.reshape(-1, l_u8.shape[-1]) if l_u8.ndim >= 2 else l_u8.reshape(1, -1)
    return cv2.LUT(rows, _grey_lut()).reshape(l_u8.shape)


def load_data_array(name: str) -> np.ndarray:
    with resources.files("colorize_cli").joinpath("data", name).open("rb") as f:
        return np.load(f, allow_pickle=False)


@lru_cache(maxsize=1)
def gamut_centres() -> np.ndarray:
    """(313, 2) float32 in-gamut ab bin centres (CIE units), the bundled copy of Zhang's pts_in_hull."""
    return load_data_array("pts_in_hull.npy").astype(np.float32)


@lru_cache(maxsize=1)
def zhang_prior() -> np.ndarray:
    """(313,) float64 empirical ImageNet probability of each gamut bin (Zhang et al.)."""
    return load_data_array("prior_probs.npy").astype(np.float64)


def nearest_bin(ab_cie: np.ndarray, centres: np.ndarray | None = None, chunk: int = 65536) -> np.ndarray:
    """Index of the nearest gamut centre for each ab pair. ab_cie: (..., 2) in CIE units -> (...) int64."""
    centres = gamut_centres() if centres is None else centres
    flat = ab_cie.reshape(-1, 2).astype(np.float32)
    out = np.empty(flat.shape[0], np.int64)
    c2 = (centres**2).sum(1)
    for start in range(0, flat.shape[0], chunk):
        part = flat[start:start + chunk]
        # |x-c|^2 = |x|^2 - 2x.c + |c|^2; |x|^2 is constant per row so it does not change the argmin
        d = c2[None, :] - 2.0 * part @ centres.T
        out[start:start + chunk] = d.argmin(1)
    return out.reshape(ab_cie.shape[:-1])


def weights_from_prior(prior: np.ndarray) -> np.ndarray:
    """The seed's raw class-rebalancing weight of each bin: 1 / prior (zero-probability bins get 0)."""
    prior = np.asarray(prior, np.float64)
    w = np.zeros_like(prior)
    nz = prior > 0
    w[nz] = 1.0 / prior[nz]
    return w.astype(np.float32)


class LossWeighter:
    """Per-pixel loss weights of an ab field: the weight of the nearest in-gamut bin.

    The seed looks up a and b separately and then a dict that misses out-of-gamut pairs (and was filled
    wrongly); here each pixel takes its nearest of the 313 in-gamut centres. For the 8-bit ab values the
    training data has, that is one table lookup: ``table[a8, b8]``.
    """

    def __init__(self, bin_weights: np.ndarray, centres: np.ndarray | None = None):
        self.centres = gamut_centres() if centres is None else centres
        self.bin_weights = np.asarray(bin_weights, np.float32)
        levels = normalize_u8(np.arange(256, dtype=np.uint8)) * AB_SCALE
        a, b = np.meshgrid(levels, levels, indexing="ij")
        # (256, 256) float32: weight for OpenCV 8-bit (a, b)
        self.table_u8 = self.bin_weights[nearest_bin(np.stack([a, b], -1), self.centres)]

    @classmethod
    def from_prior(cls, prior: np.ndarray) -> "LossWeighter":
        return cls(weights_from_prior(prior))

    def weights_u8(self, ab_u8: np.ndarray) -> np.ndarray:
        """ab uint8 (..., 2) OpenCV scale -> weights (...) float32."""
        return self.table_u8[ab_u8[..., 0], ab_u8[..., 1]]

    def weights(self, ab_norm: np.ndarray) -> np.ndarray:
        """Normalised ab (2, H, W) float -> weights (2, H, W), the same weight on both channels (as the seed)."""
        idx = nearest_bin(np.moveaxis(ab_norm, 0, -1) * AB_SCALE, self.centres)
        w = self.bin_weights[idx]
        return np.stack([w, w], 0)


def count_prior(ab_u8: np.ndarray, centres: np.ndarray | None = None) -> np.ndarray:
    """Empirical bin probabilities of a set of 8-bit ab fields (..., 2) (``--prior data``)."""
    centres = gamut_centres() if centres is None else centres
    pairs = ab_u8.reshape(-1, 2)
    codes = pairs[:, 0].astype(np.int64) * 256 + pairs[:, 1]
    hist = np.bincount(codes, minlength=256 * 256).reshape(256, 256)
    levels = normalize_u8(np.arange(256, dtype=np.uint8)) * AB_SCALE
    a, b = np.meshgrid(levels, levels, indexing="ij")
    bins = nearest_bin(np.stack([a, b], -1), centres)
    counts = np.bincount(bins.reshape(-1), weights=hist.reshape(-1), minlength=len(centres))
    return counts / max(counts.sum(), 1.0)
