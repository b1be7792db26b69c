"""The preprocessing training and inference share: one photo's BGR pixels -> the views the networks see."""

from __future__ import annotations

import cv2
import numpy as np

from .color import CVAE_SIZE, VGG_SIZE


def model_views(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BGR uint8 (H, W, 3) -> full-res Lab (H, W, 3), Lab at 64x64 (64, 64, 3), L at 224x224 (224, 224).

    The one resizing path used in training and at inference (area interpolation from the full image), so
    the networks see the same kind of input in both.
    """
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)
    lab64 = cv2.resize(lab, (CVAE_SIZE, CVAE_SIZE), interpolation=cv2.INTER_AREA)
    l224 = cv2.resize(np.ascontiguousarray(lab[..., 0]), (VGG_SIZE, VGG_SIZE), interpolation=cv2.INTER_AREA)
    return lab, lab64, l224
