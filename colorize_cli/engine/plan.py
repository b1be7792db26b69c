"""The planner: finding inputs, naming their outputs, deciding what is done, claiming an input for a run.

One photo's way to its files passes here whether it runs locally, on Ray or through `colorize pick`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..common.atomic import CLAIM_SUFFIX, HOST, owner_alive, read_claim
from ..common.names import readable
from ..files import provenance
from ..files.imageio import MAX_PIXELS, is_image_path

OUTPUT_TAG = ".colorized"
FORMATS = ("png", "jpg", "webp")
#: --format auto: the output format follows the input's (what keeps an archive's sizes in proportion)
AUTO_FORMAT = {".jpg": "jpg", ".jpeg": "jpg", ".jpe": "jpg", ".webp": "webp",   # anything else: png
               ".heic": "jpg", ".heif": "jpg", ".hif": "jpg"}                   # a phone's photo: jpg
#: --sheet-size default: each tile's long side. With --format auto's jpg at quality 90 (progressive,
#: optimised Huffman tables) the 8-sample sheets of the 13 DDColor test photos took 2.91x their inputs'
#: bytes (512 px: 3.25x; 640 px: 4.7x; full-resolution png: 59x). ``None``: full resolution, no captions
DEFAULT_SHEET_SIZE = 480


def output_format(path: Path, fmt: str) -> str:
    return AUTO_FORMAT.get(path.suffix.lower(), "png") if fmt == "auto" else fmt


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
    vividness: float = 1.0           # the samples' chroma times this (0 grey, 1 the model's, up to 2)
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
        # names as valid text: a byte that is not UTF-8 as \xNN, never a lone surrogate (names.readable)
        return {"input": readable(self.input), "status": self.status, "outputs": [readable(o) for o in self.outputs],
                "weights": self.weights, "seconds": round(self.seconds, 4),
                "error": readable(self.error) if self.error is not None else None,
                "warnings": [readable(w) for w in self.warnings]}


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
                    # everything but folders: a FIFO, a device link or a dangling link with an image's name
                    # is one line from read_image like any unreadable input, anything else is counted
                    if not full.is_dir():
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
        if (item.conflict is None and not opts.overwrite and item.fmt in RECORDED_FORMATS
                and item.sheet_record is None and _is_file(item.sheet)):
            # an output of ours always carries a record: this one is another program's file, or empty
            item.conflict = (f"its output name {item.sheet} is taken by a file that is not a colorize output "
                             f"(no record; --overwrite replaces it)")
        claimed.add(item.sheet.absolute())
        item.singles = ([folder / f"{stem}{OUTPUT_TAG}-{i}{ext}" for i in range(1, opts.samples + 1)]
                        if opts.separate else [])


#: formats whose outputs carry the record (webp's simple container has no place for it)
RECORDED_FORMATS = ("png", "jpg")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def run_name(path: Path, output_dir: Path | None) -> Path | None:
    """The name under its run's root that an earlier run gave this photo (what mirrors it under --output and
    seeds its draws beyond the K means), from that run's sheet: beside the photo, or under ``output_dir`` at
    the photo's path's tail; None when no sheet made from this very file is found."""
    import glob

    parts = _abs(path).parts
    if output_dir is None:
        folders = [path.parent]
    else:
        folders = [Path(output_dir, *parts[len(parts) - k:-1]) for k in range(1, len(parts))]
    source = provenance.Source.of(path)
    for folder in folders:
        for stem in (path.stem, path.name):
            for sheet in sorted(folder.glob(glob.escape(stem) + OUTPUT_TAG + ".*")):
                record = provenance.read(sheet)
                if not record or not source.matches(record):
                    continue
                name = record.get("name")
                if isinstance(name, str) and name and not Path(name).is_absolute() and ".." not in Path(name).parts:
                    return Path(name)
                return sheet.parent.relative_to(output_dir) / path.name if output_dir is not None else None
    return None


def made_otherwise(item: InputItem, opts: BatchOptions, model: str | None) -> str | None:
    """How an input's existing sheet was made differently from what this run asks (samples, model, seed,
    vividness, per its record), e.g. "samples 8, not 1"; None when the same or unknown."""
    record = item.sheet_record if item.sheet_record is not _UNREAD else provenance.read(item.sheet)
    if not isinstance(record, dict):
        return None
    asked = {"samples": opts.samples, "model": model, "seed": opts.seed, "vividness": opts.vividness}
    had = {"samples": record.get("samples"), "model": record.get("model"), "seed": record.get("seed", 0),
           "vividness": record.get("vividness", 1.0)}
    diffs = [f"{k} {had[k]}, not {asked[k]}" for k in asked
             if had[k] is not None and asked[k] is not None and had[k] != asked[k]]
    return "; ".join(diffs) or None


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


def _is_done(item: InputItem, fresh: bool = False) -> bool:
    """All outputs there, and the sheet made from this very input (its record names the file, its size and
    modification time; a webp sheet, which cannot carry a record, counts as done).
    ``fresh``: read the record again rather than use the one planning read."""
    try:
        if not all(p.is_file() for p in _all_outputs(item)):
            return False
        cached = item.sheet_record
        record = provenance.read(item.sheet) if fresh or cached is _UNREAD else cached
        if record is None:   # done only where no record can be written (webp)
            return item.sheet.suffix.lower() not in tuple("." + f for f in RECORDED_FORMATS)
        return provenance.Source.of(item.path).matches(record)
    except OSError:   # an unreachable output folder: not done; writing will say why, for this input alone
        return False
