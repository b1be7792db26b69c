"""Colorizing many files: finding inputs, naming outputs, and a bounded decode -> model -> write stream."""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from . import metadata, provenance
from .atomic import CLAIM_SUFFIX, HOST, owner_alive, read_claim, remove_stale
from .colorizer import Colorizer, Prediction, PreparedImage, image_seed, prepare
from .metadata import ImageMeta
from .imageio import (MAX_PIXELS, ImageReadError, encode_image, is_image_path, png_level, read_image,
                      write_atomic, write_png_streaming)
from .render import (captioned_sheet, sheet_cols, sheet_gap, sheet_layout, sheet_shape, sheet_strips,
                     sheet_tile)

OUTPUT_TAG = ".colorized"
FORMATS = ("png", "jpg", "webp")
#: --format auto: the output format follows the input's (what keeps an archive's sizes in proportion)
AUTO_FORMAT = {".jpg": "jpg", ".jpeg": "jpg", ".jpe": "jpg", ".webp": "webp"}   # anything else: png
#: --sheet-size default: each tile's long side. With --format auto's jpg at quality 90 (progressive,
#: optimised Huffman tables) the 8-sample sheets of the 13 DDColor test photos took 2.91x their inputs'
#: bytes (512 px: 3.25x; 640 px: 4.7x; full-resolution png: 59x). ``None``: full resolution, no captions
DEFAULT_SHEET_SIZE = 480


def output_format(path: Path, fmt: str) -> str:
    return AUTO_FORMAT.get(path.suffix.lower(), "png") if fmt == "auto" else fmt
#: full-resolution pixels of the inputs in one model batch at most (their L planes wait for the writers)
MAX_BATCH_PIXELS = 100_000_000
#: on a GPU, sheets of inputs up to this size are merged there whole (an 8-sample sheet of 2 MP is 48 MB
#: on the host); larger ones go through the CPU's strips, which never hold a whole sheet
DEVICE_SHEET_MAX_PIXELS = 2_000_000
#: host memory (page-locked) for the GPU-merged sheets of one batch, at most: a batch closes early past it
DEVICE_SHEET_BATCH_BYTES = 512 << 20
#: GPU-merged sheets waiting for the writers, at most (bytes); the batch loop waits for writes beyond it
HELD_SHEET_BYTES = 1 << 30
#: a sheet never has more pixels than this (Pillow's decompression-bomb warning threshold, well under
#: OpenCV's 2^30 and libpng's million-pixel side): past it the tiles shrink to fit, captioned, so every
#: sheet opens in common readers. Full-resolution samples come from --separate or `colorize pick`.
SHEET_MAX_PIXELS = 89_478_485
#: png sheets above this many pixels are written strip by strip (write_png_streaming); smaller ones whole by
#: OpenCV, whose encoder (same 'Up' filter and zlib level) took 44-54 ms against 63-68 ms for an LFW sheet
STREAM_PNG_PIXELS = 16_000_000


def default_batch_size(device_type: str) -> int:
    """Images per model batch when --batch-size is not given."""
    return 128 if device_type == "cuda" else 16


@dataclass
class BatchOptions:
    samples: int = 8
    output_dir: Path | None = None   # mirror the input tree here; None: beside each input
    separate: bool = False
    fmt: str = "png"                 # png, jpg, webp, or auto (follows each input's format)
    quality: int | None = None
    sheet_size: int | None = None    # tiles at most this many px on their long side, captioned; None: full
    batch_size: int | None = None   # None: default_batch_size(device)
    seed: int = 0
    overwrite: bool = False
    workers: int = field(default_factory=lambda: max(os.cpu_count() or 1, 2))
    max_pixels: int = MAX_PIXELS        # inputs larger than this (from their header) are refused
    device_sheets: bool | None = None   # merge sheets on the model's device; None: where it is a GPU
                                        # (either way only inputs up to DEVICE_SHEET_MAX_PIXELS)
    run_id: str = field(default_factory=lambda: f"{HOST}-{os.getpid()}-{time.time_ns()}")
                                        # in this run's claims: a Ray job's retried inputs are its own


#: an InputItem's sheet record not read yet
_UNREAD = object()


@dataclass
class InputItem:
    path: Path            # the file to read
    rel: Path             # its path under the folder it was found in (mirrored under --output)
    sheet: Path = None    # type: ignore[assignment]
    singles: list[Path] = field(default_factory=list)
    conflict: str | None = None   # why it cannot have an output of its own (never overwrite another's)
    fmt: str = "png"              # its outputs' format (--format, or the input's own under auto)
    claim: Path | None = None     # this run's claim on it while it is being colorized (see _claim)
    # the sheet's record as plan_outputs read it (None: no sheet or no record; _UNREAD: not read), so the
    # first skip check reads no file again; the check after claiming reads afresh
    sheet_record: object = field(default_factory=lambda: _UNREAD)


@dataclass
class ItemResult:
    input: str
    status: str                      # done | skipped | failed
    outputs: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)   # what the decoder said (a JPEG corrupt mid-file)

    def to_json(self) -> dict:
        return {"input": self.input, "status": self.status, "outputs": self.outputs, "weights": self.weights,
                "seconds": round(self.seconds, 4), "error": self.error, "warnings": self.warnings}


def is_output_name(name: str) -> bool:
    return OUTPUT_TAG in name


@dataclass
class Discovery:
    items: list[InputItem]
    ignored: int = 0          # files that are not images, or outputs of an earlier run
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)   # "FOLDER: why" for folders that cannot be listed
    linked: int = 0           # symlinked folders followed
    loops: list[str] = field(default_factory=list)        # links to a folder already walked (not followed)


def _abs(path) -> Path:
    return Path(os.path.abspath(path))   # normalised ('..' resolved as text, links kept), so relative_to holds


def _walk(top: Path, found: Discovery) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk, sorted, hidden folders left out, symlinked folders followed once each (a link back to a
    folder already walked is a loop: reported, not followed), folders that cannot be listed reported."""
    visited: set[tuple[int, int]] = set()

    def onerror(err: OSError) -> None:
        found.unreadable.append(f"{err.filename}: cannot list ({err.strerror or err})")

    try:
        st = os.stat(top)
        visited.add((st.st_dev, st.st_ino))
    except OSError:
        pass
    for dirpath, dirnames, filenames in os.walk(top, onerror=onerror, followlinks=True):
        keep = []
        names = sorted(d for d in dirnames if not d.startswith("."))
        # real folders claim their place before links to them do
        for d in sorted(names, key=lambda d: os.path.islink(os.path.join(dirpath, d))):
            full = os.path.join(dirpath, d)
            try:
                st = os.stat(full)
            except OSError as err:
                found.unreadable.append(f"{full}: cannot list ({err.strerror or err})")
                continue
            if (st.st_dev, st.st_ino) in visited:
                found.loops.append(full)
                continue
            visited.add((st.st_dev, st.st_ino))
            if os.path.islink(full):
                found.linked += 1
            keep.append(d)
        dirnames[:] = sorted(keep)
        yield dirpath, dirnames, filenames


def discover(paths: Iterable[str], recursive: bool = True) -> Discovery:
    """Expand files and folders into image inputs (sorted; folders walked recursively unless told not)."""
    paths = list(paths)
    found = Discovery([])
    seen: set[Path] = set()

    def add(path: Path, rel: Path) -> None:
        key = path.absolute()
        if key in seen:
            return
        seen.add(key)
        if is_output_name(path.name) or not is_image_path(path):
            found.ignored += 1
            return
        found.items.append(InputItem(path, rel))

    # file arguments keep their place under the deepest folder that holds every argument, so --output
    # mirrors a tree in which two inputs never share a name (x.jpg from a/ and from b/)
    existing = [_abs(raw) for raw in paths if os.path.lexists(raw)]
    try:
        base = Path(os.path.commonpath([p if p.is_dir() else p.parent for p in existing])) if existing else None
    except ValueError:   # different drives
        base = None
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            if recursive:
                walker = _walk(path, found)
            else:
                try:
                    walker = [(str(path), [], sorted(os.listdir(path)))]
                except OSError as err:
                    found.unreadable.append(f"{path}: cannot list ({err.strerror or err})")
                    walker = []
            for dirpath, dirnames, filenames in walker:
                for name in sorted(filenames):
                    full = Path(dirpath) / name
                    if full.is_file():
                        add(full, _abs(full).relative_to(base) if base is not None else full.relative_to(path))
        elif path.exists():
            # not a regular file: read_image says so, for this input alone
            add(path, _abs(path).relative_to(base) if base is not None else Path(path.name))
        else:
            found.missing.append(raw)
    return found


#: the longest file name most file systems take (bytes)
NAME_MAX = 255


def _fit_stem(stem: str, longest_suffix: str) -> str:
    """``stem`` itself when ``stem + longest_suffix`` fits in NAME_MAX bytes, else its head and a hash of the
    whole stem (``head~1a2b3c4d``), so an over-long input name still gets its own output."""
    if len(os.fsencode(stem + longest_suffix)) <= NAME_MAX:
        return stem
    import hashlib

    tag = "~" + hashlib.sha1(os.fsencode(stem)).hexdigest()[:8]
    room = NAME_MAX - len(os.fsencode(longest_suffix + tag))
    head = os.fsencode(stem)[:room].decode("utf-8", "ignore")   # whole characters only
    return head + tag


def plan_outputs(items: list[InputItem], opts: BatchOptions) -> None:
    """Name each input's outputs: ``photo.colorized.png`` and ``photo.colorized-1.png`` ...

    Two inputs that would share a name (``a.jpg`` and ``a.png``) keep their extension in it
    (``a.png.colorized.png``), decided in the sorted input order, so a rerun names things the same. A name
    that would pass 255 bytes is shortened, with a hash of the full name in it.
    """
    claimed: set[Path] = set()
    records: dict[Path, dict | None] = {}

    def taken(sheet: Path, item: InputItem) -> bool:
        # by another input of this run, or on disk by an output whose record names another input file
        if sheet.absolute() in claimed:
            return True
        records[sheet] = _record(sheet)
        other = records[sheet].get("source") if records[sheet] else None
        return other is not None and other != item.path.name

    for item in items:
        item.fmt = output_format(item.path, opts.fmt)
        ext = "." + item.fmt
        longest = f"{OUTPUT_TAG}-{opts.samples}{ext}" if opts.separate else f"{OUTPUT_TAG}{ext}"
        folder = (opts.output_dir / item.rel.parent) if opts.output_dir is not None else item.path.parent
        stem = _fit_stem(item.path.stem, longest)
        if taken(folder / f"{stem}{OUTPUT_TAG}{ext}", item):
            stem = _fit_stem(item.path.name, longest)
            if taken(folder / f"{stem}{OUTPUT_TAG}{ext}", item):
                item.conflict = (f"its output name {folder / (stem + OUTPUT_TAG + ext)} is taken by another "
                                 f"photo's output (left alone)")
        item.sheet = folder / f"{stem}{OUTPUT_TAG}{ext}"
        item.sheet_record = records.get(item.sheet, _UNREAD)
        claimed.add(item.sheet.absolute())
        item.singles = ([folder / f"{stem}{OUTPUT_TAG}-{i}{ext}" for i in range(1, opts.samples + 1)]
                        if opts.separate else [])


def _all_outputs(item: InputItem) -> list[Path]:
    return [item.sheet, *item.singles]


def plan_status(item: InputItem, opts: BatchOptions) -> tuple[str, list[str] | str]:
    """What a run would do with a planned input: ('colorize' | 'skip', its outputs) or ('fail', why)."""
    if item.conflict is not None:
        return "fail", item.conflict
    outputs = [str(p) for p in _all_outputs(item)]
    if not opts.overwrite and _is_done(item):
        return "skip", outputs
    return "colorize", outputs


def _record(path: Path) -> dict | None:
    try:
        return provenance.read(path) if path.is_file() else None
    except OSError:
        return None



@dataclass
class _Decoded:
    item: InputItem
    prep: PreparedImage | None
    alpha: np.ndarray | None
    error: str | None
    started: float
    warnings: list[str] = field(default_factory=list)
    meta: ImageMeta | None = None   # what the outputs keep of the input (EXIF, ICC, DPI)




def _claim(item: InputItem, run_id: str = "") -> str | None:
    """Claim an input for this run before colorizing it, so a second run started meanwhile (an overlapping
    cron job) leaves it alone: a file ``.SHEET.colorize-claim`` made with O_EXCL, holding this process's pid,
    machine and run. A claim of this same run (an input retried after a Ray actor died) is taken over, and
    so is one whose process is gone (a killed run; another machine's after an hour: atomic.owner_alive).
    Returns None when claimed (or when no claim can be made: the write will say why), else the other run's
    pid as text."""
    path = item.sheet.parent / f".{item.sheet.name}{CLAIM_SUFFIX}"
    for _ in range(2):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pid, host, run = read_claim(path)
            try:
                mtime = path.stat().st_mtime
            except OSError:
                mtime = 0.0
            if pid and run != run_id and (pid != os.getpid() or host not in (None, HOST)) and owner_alive(
                    pid, host, mtime):
                return str(pid)
            try:   # stale (its run is gone), ours, or unreadable: take it over
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                return None
            continue
        except OSError:
            return None
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"{os.getpid()} {HOST} {run_id}\n")
        item.claim = path
        return None
    return None


def release(item: InputItem) -> None:
    if item.claim is not None:
        try:
            item.claim.unlink()
        except OSError:
            pass
        item.claim = None


def _decode(item: InputItem, overwrite: bool = True, max_pixels: int = MAX_PIXELS,
            claim: bool = True, run_id: str = "") -> _Decoded | ItemResult:
    """Read and prepare one input in a worker thread (or skip it when its outputs exist and not ``overwrite``:
    the check's file lookups run here, not in the batch loop's thread)."""
    if item.conflict is not None:
        return ItemResult(str(item.path), "failed", error=item.conflict)
    if not overwrite and _is_done(item):
        return ItemResult(str(item.path), "skipped", [str(item.sheet)])
    other = _claim(item, run_id) if claim else None
    if other is not None:
        return ItemResult(str(item.path), "skipped", [str(item.sheet)],
                          error=f"being colorized by another run (pid {other})")
    if claim and not overwrite and _is_done(item, fresh=True):   # another run finished it meanwhile
        release(item)
        return ItemResult(str(item.path), "skipped", [str(item.sheet)])
    t0 = time.perf_counter()
    try:
        img = read_image(item.path, max_pixels)
        prep = prepare(img.bgr)
    except ImageReadError as err:
        release(item)
        return _Decoded(item, None, None, str(err), t0)
    except MemoryError:
        release(item)
        return _Decoded(item, None, None, "out of memory while decoding", t0)
    return _Decoded(item, prep, img.alpha, None, t0, img.warnings, img.meta)


def _save(path: Path, l_full, alpha, samples: np.ndarray, cols: int, gap: int, fmt: str, opts: BatchOptions,
          record: dict | None = None, meta: ImageMeta | None = None) -> None:
    h, w = l_full.shape
    height, width = sheet_shape(h, w, len(samples), cols, gap)
    parts = sheet_strips(l_full, alpha, samples, cols, gap)
    if fmt == "png" and height * width > STREAM_PNG_PIXELS:
        # streamed: a sheet of a 50-megapixel scan is never whole in memory
        write_png_streaming(path, height, width, 3 if alpha is None else 4, parts, png_level(opts.quality),
                            (provenance.png_chunk(record) if record is not None else b"")
                            + metadata.png_chunks(meta, record))
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
            record = source.record(sample=i + 1, weight=round(float(weights[i]), 6), seed=opts.seed, model=model)
            if pred.sheet is not None:   # merged on the device: the single is a tile of the sheet
                _save_whole(path, sheet_tile(pred.sheet, i, h, w, cols, gap), item.fmt, opts, record, dec.meta)
            else:
                _save(path, l_full, alpha, ab[i:i + 1], 1, gap, item.fmt, opts, record, dec.meta)
            written.append(str(path))
        sheet_size = opts.sheet_size if opts.sheet_size is not None else _fitting_tile(h, w, len(ab), cols, gap)
        record = source.record(samples=len(ab), weights=[round(float(x), 6) for x in weights], seed=opts.seed,
                               model=model, layout=sheet_layout(h, w, len(ab), sheet_size))
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


def _is_done(item: InputItem, fresh: bool = False) -> bool:
    """All outputs there, and the sheet made from this very input (its record names the file, its size and
    modification time; outputs without a record — webp, or written before records — count as done).
    ``fresh``: read the record again rather than use the one planning read."""
    try:
        if not all(p.is_file() for p in _all_outputs(item)):
            return False
        cached = item.sheet_record
        record = provenance.read(item.sheet) if fresh or cached is _UNREAD else cached
        return record is None or provenance.Source.of(item.path).matches(record)
    except OSError:   # an unreachable output folder: not done; writing will say why, for this input alone
        return False


def colorize_items(items: list[InputItem], colorizer: Colorizer, opts: BatchOptions) -> Iterator[ItemResult]:
    """Colorize planned inputs as a stream, yielding one result per input in input order.

    At most a few batches are in flight at once (decoding ahead, writing behind), so memory stays
    bounded however many files there are. Decoding and writing run in threads (OpenCV releases the GIL),
    overlapping the model.
    """
    pending_items = deque(items)
    model_name = colorizer.info.get("model")
    batch_size = opts.batch_size or default_batch_size(colorizer.device.type)
    device_sheets = colorizer.merges_on_device if opts.device_sheets is None else opts.device_sheets
    lookahead = max(2 * batch_size, opts.workers * 2)
    with ThreadPoolExecutor(opts.workers, thread_name_prefix="colorize-io", initializer=_name_io_thread) as pool:
        decoding: deque[Future] = deque()
        # results in input order: finished ones, or writes under way with the bytes of the sheet they hold
        writing: deque[tuple[Future | ItemResult, int]] = deque()
        held = [0]   # bytes of GPU-merged sheets in ``writing``

        def refill() -> None:
            while pending_items and len(decoding) < lookahead:
                decoding.append(pool.submit(_decode, pending_items.popleft(), opts.overwrite,
                                            opts.max_pixels, True, opts.run_id))

        def drain(limit: int) -> Iterator[ItemResult]:
            # wait while more than ``limit`` writes (or HELD_SHEET_BYTES of sheets) are in flight; pass on
            # finished ones in order either way
            while writing and (len(writing) > limit or held[0] > HELD_SHEET_BYTES
                               or isinstance(writing[0][0], ItemResult) or writing[0][0].done()):
                head, size = writing.popleft()
                held[0] -= size
                yield head if isinstance(head, ItemResult) else head.result()

        def submit_writes(launched) -> None:
            # a batch's inputs in input order: results already known (skipped, unreadable) and decoded photos,
            # whose predictions go to the writers
            slots, pending = launched
            preds = iter(pending.result() if pending is not None else ())
            for slot in slots:
                if isinstance(slot, ItemResult):
                    writing.append((slot, 0))
                    continue
                pred = next(preds)
                size = pred.sheet.nbytes if pred.sheet is not None else 0
                held[0] += size
                writing.append((pool.submit(_write, slot, pred, opts, model_name), size))

        def merged_here(dec: _Decoded) -> bool:
            # captioned sheets are small: merged by the writers at tile size, not whole on the device
            return (device_sheets and opts.sheet_size is None and dec.prep.l_full.size <= DEVICE_SHEET_MAX_PIXELS)

        refill()
        # one batch in flight: batch k+1 is queued (on the GPU, or in a CPU stream's thread) before batch k's
        # results are collected and handed to the writers, so the model computes while this thread assembles
        # and dispatches (with a single CPU stream the model runs in this thread: its batches go to the
        # writers at once)
        pipelined = colorizer.runs_concurrently
        in_flight = None
        while decoding:
            batch: list[_Decoded] = []
            slots: list[_Decoded | ItemResult] = []   # the batch's photos and the inputs skipped among them
            pixels = sheet_bytes = 0
            # a batch also closes early on a pixel budget, so a folder of huge scans stays within memory, and
            # on the bytes of the sheets it will hold in host memory when they are merged on the GPU
            while (decoding and len(batch) < batch_size and pixels < MAX_BATCH_PIXELS
                   and sheet_bytes < DEVICE_SHEET_BATCH_BYTES):
                got = decoding.popleft().result()
                refill()
                if isinstance(got, ItemResult):
                    slots.append(got)
                elif got.error is not None:
                    slots.append(ItemResult(str(got.item.path), "failed",
                                            seconds=time.perf_counter() - got.started, error=got.error))
                else:
                    slots.append(got)
                    batch.append(got)
                    pixels += got.prep.l_full.size
                    if merged_here(got):
                        sheet_bytes += got.prep.l_full.size * opts.samples * 4   # BGRA at most
            pending = None
            if batch:
                # the model's inputs as lists: Colorizer stacks them straight into its upload buffers
                l64 = [d.prep.l64 for d in batch]
                l224 = [d.prep.l224 for d in batch]
                seeds = [image_seed(opts.seed, d.item.rel.as_posix()) for d in batch]
                full = [(d.prep.l_full, d.alpha) if merged_here(d) else None for d in batch]
                pending = colorizer.predict_async(l64, l224, opts.samples, seeds, full)
            if in_flight is not None:
                submit_writes(in_flight)
            in_flight = (slots, pending)
            if not pipelined or pending is None:
                submit_writes(in_flight)
                in_flight = None
            yield from drain(2 * batch_size)
        if in_flight is not None:
            submit_writes(in_flight)
        yield from drain(0)


def pick(items: list[InputItem], numbers: list[list[int]], colorizer: Colorizer,
         opts: BatchOptions) -> Iterator[ItemResult]:
    """Write chosen samples of planned inputs at full resolution, under the names ``--separate`` gives them
    (``photo.colorized-3.png``) and with the same pixels: the same model, seed and sample numbers give the
    same colorizations. ``numbers[i]``: the 1-based samples wanted of ``items[i]``. No sheet is written."""
    model_name = colorizer.info.get("model")
    for item, wanted in zip(items, numbers):
        if item.conflict is not None:
            yield ItemResult(str(item.path), "failed", error=item.conflict)
            continue
        dec = _decode(item, overwrite=True, max_pixels=opts.max_pixels, claim=False)
        if dec.error is not None:
            yield ItemResult(str(item.path), "failed", seconds=time.perf_counter() - dec.started, error=dec.error)
            continue
        seed = image_seed(opts.seed, item.rel.as_posix())
        pred = colorizer.predict([dec.prep.l64], [dec.prep.l224], max(opts.samples, max(wanted)), [seed])[0]
        h, w = dec.prep.l_full.shape
        written = []
        try:
            source = provenance.Source.of(item.path)
            for n in wanted:
                path = item.singles[n - 1]
                record = source.record(sample=n, weight=round(float(pred.weights[n - 1]), 6), seed=opts.seed,
                                       model=model_name)
                _save(path, dec.prep.l_full, dec.alpha, pred.ab[n - 1:n], 1, sheet_gap(h, w), item.fmt, opts,
                      record, dec.meta)
                written.append(str(path))
        except (OSError, ValueError, MemoryError, cv2.error) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).strip()
            yield ItemResult(str(item.path), "failed", written, seconds=time.perf_counter() - dec.started,
                             error=f"cannot write output: {(reason or type(err).__name__).splitlines()[-1]}")
            continue
        yield ItemResult(str(item.path), "done", written, [float(pred.weights[n - 1]) for n in wanted],
                         time.perf_counter() - dec.started, warnings=dec.warnings)


def _name_io_thread() -> None:
    """Name the OS thread (``top -H``, /proc/PID/task/*/comm) so the I/O threads can be told apart."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(15, b"colorize-io", 0, 0, 0)   # 15: PR_SET_NAME (Linux)
    except (OSError, AttributeError):   # not Linux: the threads keep their default names
        return


def run_paths(paths: Iterable[str], colorizer_factory: Callable[[], Colorizer] | None, opts: BatchOptions,
              recursive: bool = True,
              engine: Callable[[list[InputItem]], Iterator[ItemResult]] | None = None
              ) -> tuple[Discovery, Iterator[ItemResult]]:
    """Discover and plan inputs, then return the result stream (the model is loaded only if needed).

    The work goes to ``colorize_items`` with the factory's Colorizer, or to ``engine`` (the Ray engine's
    stream over the planned inputs): every engine names, skips and cleans up through this one planner."""
    found = discover(paths, recursive)
    plan_outputs(found.items, opts)
    for folder in sorted({it.sheet.parent for it in found.items}):
        remove_stale(folder)   # temporaries and claims that killed runs left behind (a live run's are kept)

    def stream() -> Iterator[ItemResult]:
        # all done already (a cron rerun): no model to load. all() stops at the first input still to do
        if not opts.overwrite and all(_is_done(it) for it in found.items):
            for it in found.items:
                yield ItemResult(str(it.path), "skipped", [str(it.sheet)])
            return
        if engine is not None:
            yield from engine(found.items)
        else:
            yield from colorize_items(found.items, colorizer_factory(), opts)

    return found, stream()


__all__ = ["BatchOptions", "Discovery", "InputItem", "ItemResult", "colorize_items", "discover", "pick",
           "plan_outputs", "run_paths", "FORMATS", "ImageReadError"]
