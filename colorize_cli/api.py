"""The library's door: ``from colorize_cli import Colorizer``.

The model's ``Colorizer`` takes arrays; this one also takes what a Python user has in hand: a path to an
image file (read as the command line reads it: pixel limit, orientation, 16-bit, alpha).
"""

from __future__ import annotations

import os

import numpy as np

from .files.imageio import ImageReadError, read_image
from .model import colorizer as _model

__all__ = ["Colorizer"]


class Colorizer(_model.Colorizer):
    __doc__ = _model.Colorizer.__doc__

    def colorize(self, image: np.ndarray | str | os.PathLike, samples: int = 8, seed: int = 0,
                 vividness: float = 1.0) -> tuple[list[np.ndarray], np.ndarray]:
        """One photo -> ``samples`` full-resolution colorizations, most probable first, and their weights.

        ``image``: what the model's ``Colorizer.colorize`` takes (a grey, BGR or BGRA uint8/uint16 array),
        or a path to an image file. Anything else raises ValueError saying what is accepted.
        """
        if isinstance(image, (str, os.PathLike)):
            try:
                img = read_image(image)
            except ImageReadError as err:
                raise ValueError(f"cannot read {os.fspath(image)}: {err}") from err
            image = img.bgr if img.alpha is None else np.dstack([img.bgr, img.alpha])
        elif not isinstance(image, np.ndarray):
            raise ValueError(f"expected {_model.ACCEPTED}, or a path to an image file; got {type(image).__name__}")
        return super().colorize(image, samples, seed, vividness)
