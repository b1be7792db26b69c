"""Shared fixtures. Tests that need ../shared (real LFW, old photos, VGG weights) skip cleanly without it."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COLORIZE_SHARED", REPO.parent / "shared"))
VGG_FILE = SHARED / "weights" / "vgg16_relu4_3_imagenet_fp16.pth"
LFW_SPLITS = SHARED / "data" / "lfw-splits"
OLD_PHOTOS = SHARED / "data" / "old_photos"


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    # nothing may fetch weights in tests
    monkeypatch.setenv("COLORIZE_NO_DOWNLOAD", "1")


@pytest.fixture(autouse=True)
def _full_png_sheets(monkeypatch):
    """Most tests check names and pixels of full-resolution png sheets, which the batch command writes with
    --format png --sheet-size full: set here through the documented COLORIZE_* variables (subprocesses
    inherit them). tests/test_defaults.py checks the defaults themselves, with these unset."""
    monkeypatch.setenv("COLORIZE_FORMAT", "png")
    monkeypatch.setenv("COLORIZE_SHEET_SIZE", "full")
    monkeypatch.setenv("COLORIZE_PICK_FORMAT", "png")


@pytest.fixture(autouse=True)
def _reproducible_outputs(monkeypatch):
    """Outputs say when they were made (EXIF/XMP ModifyDate, the XMP InstanceID): with SOURCE_DATE_EPOCH set,
    as reproducible builds do, two runs with the same options write the same bytes, which tests compare."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1765036800")


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip("../shared is not here")
    return SHARED


def require(*paths: Path) -> None:
    """Skip unless these files of ../shared are there (a partial copy, as a benchmark carries, lacks some)."""
    missing = [str(p.relative_to(SHARED)) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"not in {SHARED}: {', '.join(missing)}")


def synthetic_photo(rng: np.random.Generator, h: int = 80, w: int = 96) -> np.ndarray:
    """A smooth colourful BGR image: gradients plus a few coloured discs."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w, y / h, 1 - x / w], -1) * rng.uniform(80, 200, 3)
    img = base.astype(np.uint8)
    for _ in range(3):
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(5, 20)),
                   tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
    return img


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    for i in range(16):
        sub = root / f"person_{i % 4}"
        sub.mkdir(exist_ok=True)
        cv2.imwrite(str(sub / f"img_{i:02d}.jpg"), synthetic_photo(rng))
    return root


@pytest.fixture(scope="session")
def random_vgg_file(tmp_path_factory) -> Path:
    """VGG weights of the right layout but random values: enough to exercise the code without ../shared."""
    import torch

    from colorize_cli.model.vgg import vgg_architecture

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg_random.pth"
    torch.save({k: v.half() for k, v in vgg_architecture().state_dict().items()}, path)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, synthetic_dataset, random_vgg_file) -> Path:
    """A model trained by the project's own training code: one epoch of each stage on 16 images."""
    import torch

    from colorize_cli.training.mdn import train_mdn
    from colorize_cli.training.train import DataSpec, Reporter, TrainConfig, train_vae

    class Quiet(Reporter):
        def log(self, message):
            pass

        warn = log

    out = tmp_path_factory.mktemp("run")
    spec = DataSpec(str(synthetic_dataset), n_jobs=1)
    dev = torch.device("cpu")
    train_vae(spec, out, TrainConfig(epochs=1, batch_size=8, bf16=False), dev, Quiet())
    train_mdn(spec, out, TrainConfig(epochs=1, batch_size=8, lr=1e-3, bf16=False), dev,
              vgg_weights=str(random_vgg_file), reporter=Quiet())
    return out
