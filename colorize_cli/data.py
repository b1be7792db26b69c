"""Training data: listing images, decoding them once into a cache of model-size arrays, batches."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from .color import CVAE_SIZE, VGG_SIZE
from .imageio import ImageReadError, is_image_path, read_image

CACHE_VERSION = 1


def model_views(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BGR uint8 (H, W, 3) -> full-res Lab (H, W, 3), Lab at 64x64 (64, 64, 3), L at 224x224 (224, 224).

    The one resizing path used in training and at inference (area interpolation from the full image), so
    the networks see the same kind of input in both.
    """
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)
    lab64 = cv2.resize(lab, (CVAE_SIZE, CVAE_SIZE), interpolation=cv2.INTER_AREA)
    l224 = cv2.resize(np.ascontiguousarray(lab[..., 0]), (VGG_SIZE, VGG_SIZE), interpolation=cv2.INTER_AREA)
    return lab, lab64, l224


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


def _decode_one(path: Path) -> tuple[np.ndarray, np.ndarray] | str:
    try:
        img = read_image(path)
    except ImageReadError as err:
        return str(err)
    _, lab64, l224 = model_views(img.bgr)
    return lab64, l224


def _decode_chunk(paths: Sequence[Path]) -> list:
    return [_decode_one(p) for p in paths]


@dataclass
class ImageCache:
    """Decoded training images at model size: Lab (N, 64, 64, 3) and L at 224 (N, 224, 224), uint8."""

    paths: list[str]
    lab64: np.ndarray
    l224: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


def _cache_key(root: Path, rel_paths: Sequence[str]) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{CVAE_SIZE}|{VGG_SIZE}|{root.resolve()}".encode())
    for rel in rel_paths:
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:16]


def build_cache(root: str | os.PathLike, rel_paths: Sequence[str], cache_dir: str | os.PathLike,
                n_jobs: int = -1, warn: Callable[[str], None] = print) -> ImageCache:
    """Decode every image once (in parallel with joblib) into ``cache_dir``; reuse it on later calls.

    Unreadable files are reported through ``warn`` and left out.
    """
    from joblib import Parallel, delayed

    root = Path(root)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _cache_key(root, rel_paths)
    meta_path = cache_dir / f"images-{key}.json"
    lab_path = cache_dir / f"images-{key}-lab64.npy"
    l224_path = cache_dir / f"images-{key}-l224.npy"
    if meta_path.is_file() and lab_path.is_file() and l224_path.is_file():
        kept = json.loads(meta_path.read_text(encoding="utf-8"))["paths"]
        return ImageCache(kept, np.load(lab_path, mmap_mode="r"), np.load(l224_path, mmap_mode="r"))

    full = [root / rel for rel in rel_paths]
    chunk = 256
    chunks = [full[i:i + chunk] for i in range(0, len(full), chunk)]
    results = Parallel(n_jobs=n_jobs)(delayed(_decode_chunk)(c) for c in chunks)
    kept, lab_list, l_list = [], [], []
    for rel, res in zip(rel_paths, (r for part in results for r in part)):
        if isinstance(res, str):
            warn(f"skipping {root / rel}: {res}")
            continue
        kept.append(rel)
        lab_list.append(res[0])
        l_list.append(res[1])
    if not kept:
        raise ValueError(f"no readable images under {root}")
    lab64 = np.stack(lab_list)
    l224 = np.stack(l_list)
    for path, arr in ((lab_path, lab64), (l224_path, l224)):
        tmp = path.with_name(path.name + ".part.npy")
        np.save(tmp, arr)
        os.replace(tmp, path)
    tmp = meta_path.with_suffix(".part")
    tmp.write_text(json.dumps({"root": str(root), "paths": kept}), encoding="utf-8")
    os.replace(tmp, meta_path)
    return ImageCache(kept, lab64, l224)


def batch_indices(n: int, batch_size: int, rng: np.random.Generator | None, drop_last: bool) -> list[np.ndarray]:
    """Shuffled (rng given) or ordered index batches; each batch sorted, for memory-mapped reads."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    stop = (n // batch_size) * batch_size if drop_last else n
    return [np.sort(order[i:i + batch_size]) for i in range(0, stop, batch_size)]
