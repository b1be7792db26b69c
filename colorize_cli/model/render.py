"""Turning ab predictions into pictures: full-resolution merges, tiled sheets."""

from __future__ import annotations

import math
from typing import Iterator

import cv2
import numpy as np

from .color import l_ab_to_bgr, l_ab_to_bgr_torch

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


#: rows are merged in strips of about this many pixels, so a 50-megapixel scan needs no full-size float copies
STRIP_PIXELS = 1 << 20


def upsample_ab(ab: np.ndarray, size: tuple[int, int], rows: slice | None = None) -> np.ndarray:
    """Normalised ab (2, h, w) -> (rows, W, 2), or (N, 2, h, w) -> (N, rows, W, 2), float32, bilinear.

    size is the full (H, W); ``rows`` picks a strip of output rows (default: all). cv2.resize's
    pixel-centre convention, computed by cv2.resize (all N samples in one call) when the strip is the
    whole image, else along x by cv2.resize and along y here, for the strip's rows only.
    """
    ab = np.asarray(ab, np.float32)
    n = ab.shape[0] if ab.ndim == 4 else 1
    h_in, w_in = ab.shape[-2:]
    h_out, w_out = size
    rows = rows or slice(0, h_out)
    src = np.ascontiguousarray(np.moveaxis(ab.reshape(2 * n, h_in, w_in), 0, -1))   # (h, w, 2N)
    if rows.start == 0 and rows.stop == h_out:
        up = _resize(src, w_out, h_out)                                              # (H, W, 2N)
    else:
        y0, y1, fy = _taps(h_in, h_out, np.arange(rows.start, rows.stop))
        top, bottom = int(y0.min()), int(y1.max()) + 1
        across = _resize(src[top:bottom], w_out, bottom - top)   # same height: x only, rows untouched
        fy = fy[:, None, None]
        up = across[y0 - top] * (1 - fy) + across[y1 - top] * fy                     # (rows, W, 2N)
    up = up.reshape(up.shape[0], w_out, n, 2)
    return up[:, :, 0] if ab.ndim == 3 else np.moveaxis(up, 2, 0)


#: the most channels OpenCV's Python binding passes to cv2.resize in one array (129 fails in 5.0)
_RESIZE_CHANNELS = 128


def _resize(src: np.ndarray, width: int, height: int) -> np.ndarray:
    """(h, w, C) float32 -> (height, width, C) bilinear, any C >= 2."""
    parts = [cv2.resize(np.ascontiguousarray(src[..., i:i + _RESIZE_CHANNELS]), (width, height),
                        interpolation=cv2.INTER_LINEAR)
             for i in range(0, src.shape[-1], _RESIZE_CHANNELS)]
    parts = [p[..., None] if p.ndim == 2 else p for p in parts]   # cv2 drops a single channel's axis
    return parts[0] if len(parts) == 1 else np.concatenate(parts, -1)


def _taps(n_in: int, n_out: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of bilinear resampling at output positions ``idx`` (pixel centres)."""
    pos = np.clip((idx.astype(np.float32) + 0.5) * np.float32(n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def merge(l_u8: np.ndarray, ab: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """L (H, W) uint8 + normalised ab (2, h, w) at model size -> BGR (H, W, 3), strip by strip.

    ``out``: an (H, W, 3) uint8 array (or view) to fill instead of a new one.
    """
    h, w = l_u8.shape
    out = np.empty((h, w, 3), np.uint8) if out is None else out
    for rows in strips(h, w):
        out[rows] = merge_rows(l_u8, ab, rows)
    return out


def merge_rows(l_u8: np.ndarray, ab: np.ndarray, rows: slice) -> np.ndarray:
    """Rows ``rows`` of ``merge(l_u8, ab)``: (len(rows), W, 3) uint8."""
    return l_ab_to_bgr(l_u8[rows], upsample_ab(ab, l_u8.shape, rows))


def strips(h: int, w: int) -> list[slice]:
    step = max(1, STRIP_PIXELS // max(w, 1))
    return [slice(top, min(top + step, h)) for top in range(0, h, step)]


def sheet_cols(n: int) -> int:
    """Tiles per sheet row for n samples."""
    return min(n, 4)


def sheet_gap(h: int, w: int) -> int:
    """White pixels between the tiles of a sheet of (h, w) images."""
    return max(2, min(h, w) // 100)


def sheet_tile(sheet: np.ndarray, index: int, h: int, w: int, cols: int, gap: int) -> np.ndarray:
    """Tile ``index`` of a whole sheet (a view)."""
    r, c = divmod(index, cols)
    return sheet[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w]


#: per call of the device merge, at most this many full-resolution sample pixels (float32 intermediates of
#: about 40 bytes each: 64 M pixels are about 2.5 GB of GPU memory)
DEVICE_MERGE_PIXELS = 64 << 20


def sheets_on_device(l_fulls: list[np.ndarray], alphas: list[np.ndarray | None], ab) -> list:
    """Whole sheets, laid out as ``sheet_strips`` lays them, merged where ``ab`` lives (a GPU).

    l_fulls: B arrays (H, W) uint8; alphas: B of (H, W) uint8 or None; ab: (B, N, 2, h, w) float32 tensor.
    Returns B host tensors (sheet_H, sheet_W, 3 or 4) uint8 whose copies from a GPU may still be under
    way: synchronise with the device before reading them. Images of one size and kind go through
    together (upsampling, Lab -> BGR and tiling batched), in chunks of DEVICE_MERGE_PIXELS.
    """
    import torch
    import torch.nn.functional as F

    from .device import to_host, upload

    n = ab.shape[1]
    groups: dict[tuple, list[int]] = {}
    for i, (l_u8, alpha) in enumerate(zip(l_fulls, alphas)):
        groups.setdefault((l_u8.shape, alpha is not None), []).append(i)
    out: list = [None] * len(l_fulls)
    for ((h, w), has_alpha), members in groups.items():
        step = max(1, DEVICE_MERGE_PIXELS // (n * h * w))
        for start in range(0, len(members), step):
            chunk = members[start:start + step]
            light = upload([l_fulls[i] for i in chunk], ab.device)[:, None]   # (b, 1, H, W)
            up = F.interpolate(ab[chunk].flatten(0, 1), size=(h, w), mode="bilinear", align_corners=False)
            tiles = l_ab_to_bgr_torch(light, up.view(len(chunk), n, 2, h, w))   # (b, N, H, W, 3)
            if has_alpha:
                alpha = upload([alphas[i] for i in chunk], ab.device)
                tiles = torch.cat([tiles, alpha[:, None, :, :, None].expand(-1, n, -1, -1, -1)], -1)
            host = to_host(_tile_torch(tiles, sheet_cols(n), sheet_gap(h, w)))
            for j, i in enumerate(chunk):
                out[i] = host[j]
    return out


def _tile_torch(tiles, cols: int, gap: int):
    """(b, N, H, W, C) uint8 -> (b, sheet_H, sheet_W, C): row-major tiles, ``gap`` px of white between."""
    import torch

    b, n, h, w, c = tiles.shape
    rows = -(-n // cols)
    # each tile with its gap below and to the right, then the last row's and column's gaps cut off
    canvas = torch.full((b, rows, h + gap, cols, w + gap, c), 255, dtype=torch.uint8, device=tiles.device)
    if rows * cols > n:   # a short last row: white tiles
        tiles = torch.cat([tiles, tiles.new_full((b, rows * cols - n, h, w, c), 255)], 1)
    canvas[:, :, :h, :, :w] = tiles.view(b, rows, cols, h, w, c).transpose(2, 3)
    height, width = sheet_shape(h, w, n, cols, gap)
    return canvas.view(b, rows * (h + gap), cols * (w + gap), c)[:, :height, :width].contiguous()


def sheet_shape(h: int, w: int, n: int, cols: int, gap: int) -> tuple[int, int]:
    rows = -(-n // cols)
    return rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap


def sheet_strips(l_u8: np.ndarray, alpha: np.ndarray | None, samples: np.ndarray, cols: int, gap: int
                 ) -> Iterator[np.ndarray]:
    """A sheet of full-resolution colorizations, generated top to bottom in row strips.

    l_u8 (H, W); alpha (H, W) or None; samples (N, 2, h, w) normalised ab; tiles row-major, ``gap`` px of
    white between them. Yields (rows, sheet_W, 3 or 4) uint8 strips; never the whole sheet at once.
    """
    h, w = l_u8.shape
    n = len(samples)
    channels = 3 if alpha is None else 4
    width = sheet_shape(h, w, n, cols, gap)[1]
    for r in range(-(-n // cols)):
        if r:
            yield np.full((gap, width, channels), 255, np.uint8)
        row_samples = samples[r * cols:(r + 1) * cols]
        for rows in strips(h, width):
            buf = np.full((rows.stop - rows.start, width, channels), 255, np.uint8)
            ups = upsample_ab(row_samples, (h, w), rows)          # (cols, rows, W, 2)
            for c, up in enumerate(ups):
                x0 = c * (w + gap)
                buf[:, x0:x0 + w, :3] = l_ab_to_bgr(l_u8[rows], up)
                if alpha is not None:
                    buf[:, x0:x0 + w, 3] = alpha[rows]
            yield buf


#: height of the caption band under each tile of a captioned sheet (px)
CAPTION_PX = 26


def _caption(text: str, width: int, channels: int) -> np.ndarray:
    """A white band (CAPTION_PX, width, channels) with ``text`` in black, shrunk to fit narrow tiles."""
    band = np.full((CAPTION_PX, width, channels), 255, np.uint8)
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1
    (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    if tw > width - 8:
        scale *= max(0.2, (width - 8) / tw)
        (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    colour = (0, 0, 0, 255)[:channels]
    cv2.putText(band, text, (4, (CAPTION_PX + th) // 2), font, scale, colour, thick, cv2.LINE_AA)
    return band


def sheet_layout(h: int, w: int, n: int, tile_long: int | None) -> dict:
    """Where the tiles of a sheet of n samples of an (h, w) photo lie, for the gallery page: ``tile`` [w, h]
    of each colorization, a ``caption`` band of that height under each (captioned sheets), ``gap`` px between
    tiles, ``cols`` per row; tile i is at column i % cols, row i // cols."""
    if tile_long is not None:
        scale = min(1.0, tile_long / max(h, w))
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
    return {"cols": sheet_cols(n), "tile": [w, h], "caption": CAPTION_PX if tile_long is not None else 0,
            "gap": sheet_gap(h, w)}


def captioned_sheet(l_u8: np.ndarray, alpha: np.ndarray | None, samples: np.ndarray, weights: np.ndarray,
                    cols: int, tile_long: int) -> np.ndarray:
    """A sheet sized to look at: each colorization at most ``tile_long`` px on its long side, a caption band
    under it ("1   31%": the sample number and its mixture weight).

    l_u8 (H, W) full-resolution L; alpha (H, W) or None; samples (N, 2, h, w) normalised ab; weights (N,).
    Returns (rows, cols) of captioned tiles as one (H', W', 3 or 4) uint8 array (small: no strips needed).
    """
    h, w = l_u8.shape
    scale = min(1.0, tile_long / max(h, w))
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    if scale < 1:   # area-average the lightness first: the merge then works at tile size
        l_u8 = cv2.resize(l_u8, (tw, th), interpolation=cv2.INTER_AREA)
        alpha = None if alpha is None else cv2.resize(alpha, (tw, th), interpolation=cv2.INTER_AREA)
    channels = 3 if alpha is None else 4
    tiles = []
    for i, (ab, weight) in enumerate(zip(samples, weights)):
        img = merge(l_u8, ab)
        if alpha is not None:
            img = np.dstack([img, alpha])
        tiles.append(np.concatenate([img, _caption(f"{i + 1}   {100 * float(weight):.0f}%", tw, channels)], 0))
    return tile(tiles, cols, sheet_gap(th, tw))


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
