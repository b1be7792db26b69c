"""int8 calibration from photo files: their L through VGG + the MDN trunk, and through the CVAE's condition
encoder with the mixture's means through its decoder, each quantized layer's activation range."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..files.imageio import ImageReadError, read_image
from ..model.color import grey_from_l, normalize_u8
from ..model.int8 import DEFAULT_PERCENTILE, Int8Calibration, Int8Error, calibrate
from ..model.int8_decoder import decoder_ranges, foldable
from ..model.networks import MDN, InferenceCVAE
from ..model.preprocess import model_views
from ..model.vgg import GreyVGGFeatures


def calibrate_photos(vgg: GreyVGGFeatures, mdn: MDN, paths: Sequence[Path], batch_size: int = 16,
                     percentile: float = DEFAULT_PERCENTILE, progress: Callable[[int], None] | None = None,
                     cvae: InferenceCVAE | None = None) -> tuple[Int8Calibration | None, list[str]]:
    """``calibrate`` on photo files (their L only): the calibration (None if none could be read) and one
    line per unreadable file. With ``cvae`` (and a decoder that folds) also the decoder's ranges, measured on
    the mixture's K means as inference decodes them, and the condition encoder's (where it folds too)."""
    skipped: list[str] = []
    grey64: list[torch.Tensor] = []    # the batch in flight's L at 64 px, the CVAE's normalised grey

    def batches() -> Iterator[torch.Tensor]:
        grey: list[np.ndarray] = []
        small: list[np.ndarray] = []
        consumed = 0
        for i, path in enumerate(paths):
            consumed += 1
            try:
                _, lab64, l224 = model_views(read_image(path).bgr)
                grey.append(grey_from_l(l224))
                small.append(normalize_u8(lab64[..., 0]))
            except ImageReadError as err:
                skipped.append(f"{path}: {err}")
            if len(grey) == batch_size or i == len(paths) - 1:
                if grey:
                    grey64[:] = [torch.from_numpy(np.stack(small))[:, None]]
                    yield torch.from_numpy(np.stack(grey))
                if progress is not None:
                    progress(consumed)
                grey, small, consumed = [], [], 0

    def decoder(means: torch.Tensor, weights: torch.Tensor, pct: float) -> list[float]:
        return decoder_ranges(cvae, means, grey64[0], pct)

    use_decoder = cvae is not None and foldable(cvae.decoder)
    try:
        return calibrate(vgg, mdn, batches(), percentile, decoder if use_decoder else None), skipped
    except Int8Error:
        return None, skipped
