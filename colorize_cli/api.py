"""The library's door: ``from colorize_cli import Colorizer``.

The model's ``Colorizer`` takes BGR uint8 arrays; this one also takes what a Python user has in hand: a path
to an image file (read as the command line reads it: pixel limit, orientation, 16-bit, alpha), a PIL image
(PIL images come back), float arrays in [0, 1], and RGB arrays with ``channels="rgb"``.
"""

from __future__ import annotations

import os

import numpy as np

from .files.imageio import ImageReadError, read_image
from .model import colorizer as _model

__all__ = ["Colorizer"]

ACCEPTED = (f"{_model.ACCEPTED} (or float in [0, 1]; channels='rgb' for RGB order), a PIL image, or a path to "
            f"an image file")


def _pil_image_class():
    try:
        from PIL import Image
    except ImportError:   # Pillow is a dependency; without it, PIL images simply cannot be what was passed
        return None
    return Image.Image


def _from_pil(image) -> np.ndarray:
    """A PIL image -> grey, RGB or RGBA array (RGB order), 8 or 16 bits."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(image).astype(np.uint16 if mode != "I" else np.int64).clip(0, 65535).astype(np.uint16)
    if mode == "L":
        return np.asarray(image)
    if mode in ("LA", "PA", "RGBA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return np.asarray(image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


def _to_uint(image: np.ndarray) -> np.ndarray:
    """Float arrays in [0, 1] -> uint8; other dtypes as they are (the model's Colorizer checks them)."""
    if image.dtype.kind != "f":
        return image
    if image.size and not (np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0):
        raise ValueError(f"expected {ACCEPTED}; got a float array outside [0, 1]")
    return np.round(image.astype(np.float64) * 255.0).astype(np.uint8)


def _swap_rb(image: np.ndarray) -> np.ndarray:
    """RGB(A) <-> BGR(A); grey as it is."""
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[..., [2, 1, 0, *range(3, image.shape[2])]])
    return image


class Colorizer(_model.Colorizer):
    __doc__ = _model.Colorizer.__doc__

    def colorize(self, image, samples: int = 8, seed: int = 0, vividness: float = 1.0,
                 channels: str | None = None):
        """One photo -> ``samples`` full-resolution colorizations, most probable first, and their weights.

        ``image``: a grey (H, W) or (H, W, 1), colour (H, W, 3) or with alpha (H, W, 4) array (uint8, uint16,
        or float in [0, 1]); a PIL image (any mode: the results are PIL images, RGB or RGBA); or a path to an
        image file. ``channels``: the order of an array's colour channels, ``"bgr"`` (OpenCV's, the default)
        or ``"rgb"`` (Pillow's, imageio's, matplotlib's): the results come back in the same order. Anything
        else raises ValueError saying what is accepted. ``vividness``: 1 the model's colours, 0 grey, up to 2.
        Returns (list of ``samples`` images, weights (samples,) float32).
        """
        if channels not in (None, "bgr", "rgb"):
            raise ValueError(f"channels must be 'bgr' or 'rgb', not {channels!r}")
        pil = _pil_image_class()
        if pil is not None and isinstance(image, pil):
            from PIL import Image

            outs, weights = super().colorize(_swap_rb(_from_pil(image)), samples, seed, vividness)
            return [Image.fromarray(_swap_rb(o)) for o in outs], weights
        if isinstance(image, (str, os.PathLike)):
            try:
                img = read_image(image)
            except ImageReadError as err:
                raise ValueError(f"cannot read {os.fspath(image)}: {err}") from err
            image = img.bgr if img.alpha is None else np.dstack([img.bgr, img.alpha])
            rgb = channels == "rgb"
        elif isinstance(image, np.ndarray):
            image = _to_uint(image)
            rgb = channels == "rgb"
            if rgb:
                image = _swap_rb(image)
        else:
            raise ValueError(f"expected {ACCEPTED}; got {type(image).__name__}")
        outs, weights = super().colorize(image, samples, seed, vividness)
        return ([_swap_rb(o) for o in outs] if rgb else outs), weights
