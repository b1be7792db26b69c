"""int8 calibration from photo files: their L through VGG + the MDN trunk, each layer's activation range."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..files.imageio import ImageReadError, read_image
from ..model.color import grey_from_l
from ..model.int8 import DEFAULT_PERCENTILE, Int8Calibration, Int8Error, calibrate
from ..model.networks import MDN
from ..model.preprocess import model_views
from ..model.vgg import GreyVGGFeatures


def calibrate_photos(vgg: GreyVGGFeatures, mdn: MDN, paths: Sequence[Path], batch_size: int = 16,
                     percentile: float = DEFAULT_PERCENTILE, progress: Callable[[int], None] | None = None
                     ) -> tuple[Int8Calibration | None, list[str]]:
    """``calibrate`` on photo files (their L only): the calibration (None if none could be read) and one
    line per unreadable file."""
    skipped: list[str] = []

    def batches() -> Iterator[torch.Tensor]:
        grey: list[np.ndarray] = []
        consumed = 0
        for i, path in enumerate(paths):
            consumed += 1
            try:
                grey.append(grey_from_l(model_views(read_image(path).bgr)[2]))
            except ImageReadError as err:
                skipped.append(f"{path}: {err}")
            if len(grey) == batch_size or i == len(paths) - 1:
                if grey:
                    yield torch.from_numpy(np.stack(grey))
                if progress is not None:
                    progress(consumed)
                grey, consumed = [], 0

    try:
        return calibrate(vgg, mdn, batches(), percentile), skipped
    except Int8Error:
        return None, skipped
