"""Inputs and process memory for the benchmarks, without torch.

Kept torch-free on purpose: bench_memory's own process must stay small, because a child's ru_maxrss on
Linux starts from the parent's RSS at fork.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: the project's shared data; COLORIZE_SHARED points elsewhere (a copy carried to a GPU machine)
SHARED = Path(os.environ.get("COLORIZE_SHARED", REPO.parent / "shared"))


def lfw_images(n: int, folder: Path) -> list[Path]:
    """Copies of the first n LFW test photos (../shared beside the repo), else n synthetic 250x250 jpgs.

    Beyond the 1,000 test photos the list starts again, the copies named ``copy2_...`` and so on.
    """
    folder.mkdir(parents=True, exist_ok=True)
    listing = SHARED / "data" / "lfw-splits" / "test.txt"
    out = []
    if listing.is_file():
        rels = listing.read_text().splitlines()
        for i in range(n):
            rel = Path(rels[i % len(rels)])
            out.append(folder / (rel.name if i < len(rels) else f"copy{i // len(rels) + 1}_{rel.name}"))
            shutil.copy(SHARED / "data" / rel, out[-1])
        return out
    rng = np.random.default_rng(0)
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, (250, 250, 3), dtype=np.uint8), (0, 0), 8)
        out.append(folder / f"synthetic_{i:03d}.jpg")
        cv2.imwrite(str(out[-1]), img)
    return out


def scan(megapixels: float) -> np.ndarray:
    """A real old photo (or a synthetic one) upscaled to about ``megapixels``, BGR uint8."""
    src = next(iter(sorted((SHARED / "data" / "old_photos" / "ddcolor").glob("*.jpg"))), None)
    base = cv2.imread(str(src)) if src else cv2.GaussianBlur(
        np.random.default_rng(1).integers(0, 256, (900, 1200, 3), dtype=np.uint8), (0, 0), 6)
    h, w = base.shape[:2]
    scale = (megapixels * 1e6 / (h * w)) ** 0.5
    return cv2.resize(base, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)


def proc_mib(pid: int, key: str) -> float:
    """VmRSS / VmHWM (peak) of a live process in MiB from /proc/PID/status; 0 once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0
