"""Training data: listing images, decoding them once into a cache of model-size arrays, batches."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..files.imageio import ImageReadError, is_image_path, read_image
from ..model.color import CVAE_SIZE, VGG_SIZE, l_ab_to_bgr, normalize_u8
from ..model.preprocess import model_views

CACHE_VERSION = 2

#: a photo whose mean chroma (CIE a*b* distance from grey, 8-bit Lab units) at 64x64 is below this has no
#: colour to learn from: greyscale files, three equal channels, JPEG noise around grey
GREY_CHROMA = 3.0


def mean_chroma(lab64: np.ndarray) -> float:
    """Mean distance from grey of an 8-bit OpenCV Lab image's (a, b), in CIE units."""
    ab = lab64[..., 1:].astype(np.float32) - 128.0
    return float(np.sqrt((ab * ab).sum(-1)).mean())


def is_grey(lab64: np.ndarray) -> bool:
    return mean_chroma(lab64) < GREY_CHROMA


def colourfulness(bgr: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003): sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2)."""
    b, g, r = (bgr[..., i].astype(np.float64) for i in range(3))
    rg = r - g
    yb = 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def lab64_colourfulness(lab64: np.ndarray) -> float:
    """The colourfulness of an 8-bit OpenCV Lab image (H, W, 3), converted to BGR as the samples are."""
    return colourfulness(l_ab_to_bgr(lab64[..., 0], normalize_u8(lab64[..., 1:])))


def list_images(root: str | os.PathLike, list_file: str | os.PathLike | None = None) -> list[str]:
    """Image paths relative to ``root``: from ``list_file`` (one per line) or by walking ``root``."""
    root = Path(root)
    if list_file is not None:
        lines = Path(list_file).read_text(encoding="utf-8").splitlines()
        return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if is_image_path(p) and ".colorized" not in name:
                found.append(p.relative_to(root).as_posix())
    return found


GREY = "grey (no colour to learn from)"
DULL = "dull (less colourful than asked)"


def _decode_one(path: Path, skip_grey: bool, min_colourfulness: float) -> tuple[np.ndarray, np.ndarray] | str:
    try:
        img = read_image(path)
    except ImageReadError as err:
        return str(err)
    _, lab64, l224 = model_views(img.bgr)
    if skip_grey and is_grey(lab64):
        return GREY
    if min_colourfulness > 0 and lab64_colourfulness(lab64) < min_colourfulness:
        return DULL
    return lab64, l224


def _decode_chunk(paths: Sequence[Path], skip_grey: bool, min_colourfulness: float) -> list:
    return [_decode_one(p, skip_grey, min_colourfulness) for p in paths]


@dataclass
class ImageCache:
    """Decoded training images at model size: Lab (N, 64, 64, 3) and L at 224 (N, 224, 224), uint8."""

    paths: list[str]
    lab64: np.ndarray
    l224: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


def _cache_key(root: Path, rel_paths: Sequence[str], skip_grey: bool, min_colourfulness: float = 0.0) -> str:
    # without the filter the key is as it was, so caches kept before it stay valid
    dull = f"|cf>={min_colourfulness!r}" if min_colourfulness > 0 else ""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{CVAE_SIZE}|{VGG_SIZE}|{skip_grey}{dull}|{root.resolve()}".encode())
    for rel in rel_paths:
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:16]


def build_cache(root: str | os.PathLike, rel_paths: Sequence[str], cache_dir: str | os.PathLike,
                n_jobs: int = -1, warn: Callable[[str], None] = print, skip_grey: bool = True,
                progress: Callable[[int], None] | None = None, min_colourfulness: float = 0.0) -> ImageCache:
    """Decode every image once (in parallel with joblib) into ``cache_dir``; reuse it on later calls.

    Unreadable files are reported through ``warn`` one by one, grey photos (``skip_grey``) and photos duller
    than ``min_colourfulness`` (at 64x64; 0 keeps them) counted in one line each; all are left out.
    ``progress(n)`` is called as chunks of n images finish.
    """
    from joblib import Parallel, delayed

    root = Path(root)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _cache_key(root, rel_paths, skip_grey, min_colourfulness)
    meta_path = cache_dir / f"images-{key}.json"
    lab_path = cache_dir / f"images-{key}-lab64.npy"
    l224_path = cache_dir / f"images-{key}-l224.npy"
    if meta_path.is_file() and lab_path.is_file() and l224_path.is_file():
        kept = json.loads(meta_path.read_text(encoding="utf-8"))["paths"]
        return ImageCache(kept, np.load(lab_path, mmap_mode="r"), np.load(l224_path, mmap_mode="r"))

    full = [root / rel for rel in rel_paths]
    chunk = 256
    chunks = [full[i:i + chunk] for i in range(0, len(full), chunk)]
    n = len(full)
    lab64 = np.empty((n, CVAE_SIZE, CVAE_SIZE, 3), np.uint8)
    l224 = np.empty((n, VGG_SIZE, VGG_SIZE), np.uint8)
    kept: list[str] = []
    grey = dull = 0
    # results stream back in order (return_as="generator"): memory stays at the arrays, not a list of them
    parts = Parallel(n_jobs=n_jobs, return_as="generator")(
        delayed(_decode_chunk)(c, skip_grey, min_colourfulness) for c in chunks)
    rels = iter(rel_paths)
    for part in parts:
        for res in part:
            rel = next(rels)
            if isinstance(res, str) and res == GREY:
                grey += 1
            elif isinstance(res, str) and res == DULL:
                dull += 1
            elif isinstance(res, str):
                warn(f"skipping {root / rel}: {res}")
            else:
                lab64[len(kept)], l224[len(kept)] = res
                kept.append(rel)
        if progress is not None:
            progress(len(part))
    if grey:
        warn(f"left out {grey} grey photos of {n} under {root} (mean chroma < {GREY_CHROMA})")
    if dull:
        warn(f"left out {dull} dull photos of {n} under {root} "
             f"(colourfulness at 64x64 < {min_colourfulness:g})")
    if not kept:
        raise ValueError(f"no readable colour images under {root}")
    lab64, l224 = lab64[:len(kept)], l224[:len(kept)]
    for path, arr in ((lab_path, lab64), (l224_path, l224)):
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part.npy")  # per process: two runs may share a cache
        np.save(tmp, arr)
        os.replace(tmp, path)
    tmp = meta_path.with_suffix(f".{os.getpid()}.part")
    meta = {"root": str(root), "paths": kept, "grey": grey, "dull": dull}
    tmp.write_text(json.dumps(meta), encoding="utf-8")
    os.replace(tmp, meta_path)
    return ImageCache(kept, lab64, l224)


class ConcatCache:
    """Several ImageCaches seen as one (no copy): ``lab64[idx]``, ``l224[idx]`` for sorted index arrays."""

    def __init__(self, parts: Sequence[ImageCache]):
        self.parts = list(parts)
        self.paths = [p for c in self.parts for p in c.paths]
        self.offsets = np.cumsum([0] + [len(c) for c in self.parts])
        self.lab64 = _ConcatView(self, "lab64")
        self.l224 = _ConcatView(self, "l224")

    def __len__(self) -> int:
        return int(self.offsets[-1])


class _ConcatView:
    def __init__(self, cache: ConcatCache, name: str):
        self.cache, self.name = cache, name

    @property
    def shape(self) -> tuple:
        first = getattr(self.cache.parts[0], self.name)
        return (len(self.cache),) + tuple(first.shape[1:])

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate([np.asarray(getattr(c, self.name)) for c in self.cache.parts])
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            idx = np.arange(len(self.cache))[idx]
        elif isinstance(idx, tuple):  # e.g. lab64[..., 1:]
            return np.asarray(self)[idx]
        idx = np.asarray(idx)
        which = np.searchsorted(self.cache.offsets, idx, side="right") - 1
        out = np.empty((len(idx),) + self.shape[1:], np.uint8)
        for k, part in enumerate(self.cache.parts):
            sel = which == k
            if sel.any():
                out[sel] = getattr(part, self.name)[idx[sel] - self.cache.offsets[k]]
        return out


def batch_indices(n: int, batch_size: int, rng: np.random.Generator | None, drop_last: bool) -> list[np.ndarray]:
    """Shuffled (rng given) or ordered index batches; each batch sorted, for memory-mapped reads."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    stop = (n // batch_size) * batch_size if drop_last else n
    return [np.sort(order[i:i + batch_size]) for i in range(0, stop, batch_size)]
