"""The writer: a colorized input's outputs (sheet, single samples, picks) written atomically, each with its
provenance record and the input's metadata. Every output kind is a case of this one writer."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..files import derived, provenance
from ..files.imageio import encode_image, png_level, write_atomic, write_png_streaming
from ..files.metadata import ImageMeta
from ..model.colorizer import Prediction, PreparedImage
from ..model.render import (
    captioned_sheet,
    sheet_cols,
    sheet_gap,
    sheet_layout,
    sheet_shape,
    sheet_strips,
    sheet_tile,
)
from .plan import BatchOptions, InputItem, ItemResult, release

#: a sheet never has more pixels than this (Pillow's decompression-bomb warning threshold, well under
#: OpenCV's 2^30 and libpng's million-pixel side): past it the tiles shrink to fit, captioned, so every
#: sheet opens in common readers. Full-resolution samples come from --separate or `colorize pick`.
SHEET_MAX_PIXELS = 89_478_485
#: png sheets above this many pixels are written strip by strip (write_png_streaming); smaller ones whole by
#: OpenCV, whose encoder (same 'Up' filter and zlib level) took 44-54 ms against 63-68 ms for an LFW sheet
STREAM_PNG_PIXELS = 16_000_000


@dataclass
class _Decoded:
    item: InputItem
    prep: PreparedImage | None
    alpha: np.ndarray | None
    error: str | None
    started: float
    warnings: list[str] = field(default_factory=list)
    meta: ImageMeta | None = None   # what the outputs keep of the input (EXIF, IPTC, XMP, ICC, DPI)


def _save(path: Path, l_full, alpha, samples: np.ndarray, cols: int, gap: int, fmt: str, opts: BatchOptions,
          record: dict | None = None, meta: ImageMeta | None = None) -> None:
    h, w = l_full.shape
    height, width = sheet_shape(h, w, len(samples), cols, gap)
    parts = sheet_strips(l_full, alpha, samples, cols, gap)
    if fmt == "png" and height * width > STREAM_PNG_PIXELS:
        # streamed: a sheet of a 50-megapixel scan is never whole in memory
        write_png_streaming(path, height, width, 3 if alpha is None else 4, parts, png_level(opts.quality),
                            (provenance.png_chunk(record) if record is not None else b"")
                            + derived.png_chunks(meta, record, (width, height)))
    else:
        _save_whole(path, np.concatenate(list(parts)), fmt, opts, record, meta)


def _save_whole(path: Path, img: np.ndarray, fmt: str, opts: BatchOptions, record: dict | None = None,
                meta: ImageMeta | None = None) -> None:
    data = encode_image(np.ascontiguousarray(img), fmt, opts.quality)
    write_atomic(path, provenance.embed(data, fmt, record, meta))


def _write(dec: _Decoded, pred: Prediction, opts: BatchOptions, model: str | None = None) -> ItemResult:
    try:
        return _write_outputs(dec, pred, opts, model)
    finally:
        release(dec.item)


def _write_outputs(dec: _Decoded, pred: Prediction, opts: BatchOptions, model: str | None) -> ItemResult:
    item = dec.item
    l_full, alpha, ab, weights = dec.prep.l_full, dec.alpha, pred.ab, pred.weights
    h, w = l_full.shape
    gap, cols = sheet_gap(h, w), sheet_cols(len(ab))
    written = []
    try:
        source = provenance.Source.of(item.path)
        # singles first, the sheet last: the sheet's presence marks the input as done for a rerun
        for i, path in enumerate(item.singles):
            record = source.record(sample=i + 1, weight=round(float(weights[i]), 6), seed=opts.seed,
                                   vividness=_vividness(opts), model=model, name=_run_name(item))
            if pred.sheet is not None:   # merged on the device: the single is a tile of the sheet
                _save_whole(path, sheet_tile(pred.sheet, i, h, w, cols, gap), item.fmt, opts, record, dec.meta)
            else:
                _save(path, l_full, alpha, ab[i:i + 1], 1, gap, item.fmt, opts, record, dec.meta)
            written.append(str(path))
        sheet_size = opts.sheet_size if opts.sheet_size is not None else _fitting_tile(h, w, len(ab), cols, gap)
        record = source.record(samples=len(ab), weights=[round(float(x), 6) for x in weights], seed=opts.seed,
                               vividness=_vividness(opts), model=model, name=_run_name(item),
                               layout=sheet_layout(h, w, len(ab), sheet_size))
        if sheet_size is not None:
            _save_whole(item.sheet, captioned_sheet(l_full, alpha, ab, weights, cols, sheet_size), item.fmt,
                        opts, record, dec.meta)
        elif pred.sheet is not None:
            _save_whole(item.sheet, pred.sheet, item.fmt, opts, record, dec.meta)
        else:
            _save(item.sheet, l_full, alpha, ab, cols, gap, item.fmt, opts, record, dec.meta)
        written.append(str(item.sheet))
    except (OSError, ValueError, MemoryError, cv2.error) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).strip() or type(err).__name__
        return ItemResult(str(item.path), "failed", seconds=time.perf_counter() - dec.started,
                          error=f"cannot write output: {reason.splitlines()[-1]}", warnings=dec.warnings)
    return ItemResult(str(item.path), "done", written, [float(w) for w in weights],
                      time.perf_counter() - dec.started, warnings=dec.warnings)


def _fitting_tile(h: int, w: int, n: int, cols: int, gap: int) -> int | None:
    """None when a full-resolution sheet of n samples fits in SHEET_MAX_PIXELS, else the long side of the
    tiles that make it fit."""
    height, width = sheet_shape(h, w, n, cols, gap)
    if height * width <= SHEET_MAX_PIXELS:
        return None
    # captions add a band per row: aim a little under
    return max(16, int(max(h, w) * (SHEET_MAX_PIXELS / (height * width)) ** 0.5 * 0.95))


#: a record names the input's path under the run's root only up to this long (as JSON), so the record
#: stays within the head of the file where readers look for it (provenance.HEAD_BYTES)
MAX_RECORDED_NAME = 1024


def _run_name(item: InputItem) -> str | None:
    """The input's path under the run's root, for `pick` (its outputs' names and seeds), if short enough."""
    name = item.rel.as_posix()
    return name if len(json.dumps(name)) <= MAX_RECORDED_NAME else None


def _vividness(opts: BatchOptions) -> float | None:
    """What a record says of --vividness: nothing at the default (records stay as they were)."""
    return None if opts.vividness == 1.0 else opts.vividness


def write_picks(dec: _Decoded, pred: Prediction, wanted: list[int], opts: BatchOptions,
                model: str | None) -> ItemResult:
    """Chosen samples (1-based ``wanted``) of a decoded input at full resolution, under the names
    ``--separate`` gives them; no sheet."""
    item = dec.item
    h, w = dec.prep.l_full.shape
    written = []
    try:
        source = provenance.Source.of(item.path)
        for n in wanted:
            path = item.singles[n - 1]
            record = source.record(sample=n, weight=round(float(pred.weights[n - 1]), 6), seed=opts.seed,
                                   vividness=_vividness(opts), model=model, name=_run_name(item))
            _save(path, dec.prep.l_full, dec.alpha, pred.ab[n - 1:n], 1, sheet_gap(h, w), item.fmt, opts,
                  record, dec.meta)
            written.append(str(path))
    except (OSError, ValueError, MemoryError, cv2.error) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).strip()
        return ItemResult(str(item.path), "failed", written, seconds=time.perf_counter() - dec.started,
                          error=f"cannot write output: {(reason or type(err).__name__).splitlines()[-1]}")
    return ItemResult(str(item.path), "done", written, [float(pred.weights[n - 1]) for n in wanted],
                      time.perf_counter() - dec.started, warnings=dec.warnings)
