"""Turning ab predictions into pictures: full-resolution merges, tiled sheets."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .color import l_ab_to_bgr

BORDER = 16


def tile(images: list[np.ndarray], cols: int, gap: int = 0, fill: int = 255) -> np.ndarray:
    """Same-size images (H, W, C) -> one grid image, row-major, ``gap`` px of ``fill`` between tiles."""
    h, w = images[0].shape[:2]
    rows = math.ceil(len(images) / cols)
    shape = (rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap) + images[0].shape[2:]
    out = np.full(shape, fill, images[0].dtype)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = img
    return out


def upsample_ab(ab: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Normalised ab (2, h, w) -> (H, W, 2) float32, bilinear. size is (H, W)."""
    return cv2.resize(np.ascontiguousarray(np.moveaxis(ab, 0, -1), np.float32), (size[1], size[0]),
                      interpolation=cv2.INTER_LINEAR)


def merge(l_u8: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """L (H, W) uint8 + normalised ab (2, h, w) at model size -> BGR (H, W, 3)."""
    return l_ab_to_bgr(l_u8, upsample_ab(ab, l_u8.shape))


def sample_sheet(pred: np.ndarray, truth: np.ndarray, l_u8: np.ndarray, cols: int = 8, tile_px: int = 128
                 ) -> np.ndarray:
    """The seed's ``saveoutput_gt`` layout: predictions | white border | ground truth.

    pred: (B, 2, h, w) reconstructions, or (B, K, 2, h, w) K samples per image (one row each);
    truth: (B, 2, h, w); l_u8: (B, H, W) the L channel at any size.
    """
    ls = [cv2.resize(np.ascontiguousarray(l), (tile_px, tile_px), interpolation=cv2.INTER_AREA) for l in l_u8]
    truth_tiles = [merge(l, t) for l, t in zip(ls, truth)]
    if pred.ndim == 5:
        rows = []
        for l, samples, t in zip(ls, pred, truth_tiles):
            left = tile([merge(l, s) for s in samples], cols=len(samples))
            rows.append(np.concatenate([left, np.full((tile_px, BORDER, 3), 255, np.uint8),
                                        cv2.cvtColor(l, cv2.COLOR_GRAY2BGR), t], axis=1))
        return tile(rows, cols=1)
    left = tile([merge(l, p) for l, p in zip(ls, pred)], cols=cols)
    right = tile(truth_tiles, cols=cols)
    return np.concatenate([left, np.full((left.shape[0], BORDER * 4, 3), 255, np.uint8), right], axis=1)
