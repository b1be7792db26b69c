"""Checkpoints that carry their config and version, loaded without executing code (weights_only)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from . import __version__

FORMAT = "colorize-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path: str | os.PathLike, kind: str, payload: dict) -> None:
    """Write {'format', 'format_version', 'package_version', 'kind', **payload} atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
              "kind": kind, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict:
    """Load a checkpoint dict with ``weights_only=True``; check its format and kind."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors come in many types; report them as one
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a colorize checkpoint")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer colorize (format {record['format_version']})")
    if kind is not None and record.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {record.get('kind')!r} checkpoint, expected {kind!r}")
    return record


def _umask() -> int:
    # mkstemp creates 0600 files; give outputs the permissions a plain open() would
    mask = os.umask(0)
    os.umask(mask)
    return mask
