"""The local stream: a bounded decode -> model -> write pipeline over the planner's inputs."""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

from ..common.atomic import remove_stale
from ..files.imageio import MAX_PIXELS, ImageReadError, read_image
from ..model.colorizer import Colorizer, image_seed, prepare
from .plan import (
    BatchOptions,
    Discovery,
    InputItem,
    ItemResult,
    _claim,
    _is_done,
    discover,
    plan_outputs,
    release,
)
from .writer import _Decoded, _write, write_picks

#: full-resolution pixels of the inputs in one model batch at most (their L planes wait for the writers)
MAX_BATCH_PIXELS = 100_000_000
#: on a GPU, sheets of inputs up to this size are merged there whole (an 8-sample sheet of 2 MP is 48 MB
#: on the host); larger ones go through the CPU's strips, which never hold a whole sheet
DEVICE_SHEET_MAX_PIXELS = 2_000_000
#: host memory (page-locked) for the GPU-merged sheets of one batch, at most: a batch closes early past it
DEVICE_SHEET_BATCH_BYTES = 512 << 20
#: GPU-merged sheets waiting for the writers, at most (bytes); the batch loop waits for writes beyond it
HELD_SHEET_BYTES = 1 << 30


def default_batch_size(device_type: str) -> int:
    """Images per model batch when --batch-size is not given."""
    return 128 if device_type == "cuda" else 16


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


def colorize_items(items: list[InputItem], colorizer: Colorizer | None, opts: BatchOptions,
                   load: Callable[[], Colorizer] | None = None) -> Iterator[ItemResult]:
    """Colorize planned inputs as a stream, yielding one result per input in input order.

    At most a few batches are in flight at once (decoding ahead, writing behind), so memory stays
    bounded however many files there are. Decoding and writing run in threads (OpenCV releases the GIL),
    overlapping the model. ``colorizer``: the model, or None and ``load`` a function that loads it: the
    first photos are then decoded while it loads.
    """
    pending_items = deque(items)
    pool = ThreadPoolExecutor(opts.workers, thread_name_prefix="colorize-io", initializer=_name_io_thread)
    interrupted = False
    owned = colorizer is None   # loaded here: closed here (its stream threads end with the run)
    decoding: deque[Future] = deque()
    lookahead = max(2 * (opts.batch_size or default_batch_size("cpu")), opts.workers * 2)

    def refill() -> None:
        while pending_items and len(decoding) < lookahead:
            decoding.append(pool.submit(_decode, pending_items.popleft(), opts.overwrite,
                                        opts.max_pixels, True, opts.run_id))

    try:
        if colorizer is None:
            refill()   # the loading takes the main thread (~0.3 s): the I/O threads decode meanwhile
            try:
                colorizer = load()
            except BaseException:
                _release_decoded(decoding)   # no model (a usage error, Ctrl-C): leave no claim behind
                raise
        model_name = colorizer.info.get("model")
        batch_size = opts.batch_size or default_batch_size(colorizer.device.type)
        device_sheets = colorizer.merges_on_device if opts.device_sheets is None else opts.device_sheets
        lookahead = max(2 * batch_size, opts.workers * 2)
        # results in input order: finished ones, or writes under way with the bytes of the sheet they hold
        writing: deque[tuple[Future | ItemResult, int]] = deque()
        held = [0]   # bytes of GPU-merged sheets in ``writing``

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
                pending = colorizer.predict_async(l64, l224, opts.samples, seeds, full, opts.vividness)
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
    except KeyboardInterrupt:   # Ctrl-C, SIGTERM, SIGHUP: stop now, not after the batches in flight
        interrupted = True
        raise
    finally:
        # what was queued is dropped; a write under way is a temporary, which the interrupted run removes
        pool.shutdown(wait=not interrupted, cancel_futures=interrupted)
        if owned and colorizer is not None and not interrupted:
            colorizer.close()


def _release_decoded(decoding: deque[Future]) -> None:
    """The claims of inputs decoded (or being decoded) for a batch that will not run: released."""
    for future in decoding:
        future.cancel()
    for future in decoding:
        if future.cancelled():
            continue
        try:
            got = future.result()
        except BaseException:   # a decode that failed unexpectedly has nothing to release
            continue
        if isinstance(got, _Decoded):
            release(got.item)


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
        pred = colorizer.predict([dec.prep.l64], [dec.prep.l224], max(opts.samples, max(wanted)), [seed],
                                 vividness=opts.vividness)[0]
        yield write_picks(dec, pred, wanted, opts, model_name)


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
            yield from colorize_items(found.items, None, opts, colorizer_factory)

    return found, stream()

