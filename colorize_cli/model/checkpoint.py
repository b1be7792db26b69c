"""Checkpoints that carry their config and version, loaded without executing code (weights_only)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..common.atomic import atomic_write
from ..common.version import __version__

FORMAT = "colorize-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    pass


def load_error_reason(err: Exception) -> str:
    """One short line for a failed ``torch.load(weights_only=True)``: torch's own message runs to several
    lines and advises turning weights_only off, which would let the file run code; never pass that on."""
    text = str(err)
    if "Weights only load failed" in text or "Unsupported global" in text or "weights_only" in text:
        return "it holds objects other than tensors (refused: loading a model never runs code from it)"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"not a readable weights file ({first[:200]})"


def save_checkpoint(path: str | os.PathLike, kind: str, payload: dict) -> None:
    """Write {'format', 'format_version', 'package_version', 'kind', **payload} atomically."""
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
              "kind": kind, **payload}
    with atomic_write(path) as f:
        torch.save(record, f)


def read_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict:
    """Load a checkpoint dict with ``weights_only=True``; check its format and kind."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors come in many types; report them as one
        raise CheckpointError(f"cannot read checkpoint {path}: {load_error_reason(err)}") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a colorize checkpoint")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer colorize (format {record['format_version']})")
    if kind is not None and record.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {record.get('kind')!r} checkpoint, expected {kind!r}")
    return record


#: a tensor file's compact storage: int8 weights with per-output-channel scales beside them
QUANT_SUFFIX, SCALE_SUFFIX = "::int8", "::scale"


def quantize_state(state: dict, mode: str) -> dict:
    """fp32 state_dict -> storage dict. int8: conv/linear weights per output channel, symmetric;
    everything else (biases, BatchNorm) fp32. fp16: every float tensor in half precision."""
    out = {}
    for key, value in state.items():
        if not torch.is_floating_point(value):
            out[key] = value
        elif mode == "int8" and value.ndim >= 2:
            w = value.float().reshape(value.shape[0], -1)
            scale = w.abs().amax(1).clamp_min(1e-12) / 127.0                 # (out,)
            out[key + QUANT_SUFFIX] = torch.round(w / scale[:, None]).to(torch.int8).reshape(value.shape)
            out[key + SCALE_SUFFIX] = scale.float()
        elif mode == "fp16":
            out[key] = value.half()
        else:
            out[key] = value.float()
    return out


def dequantize_state(stored: dict) -> dict:
    state = {}
    for key, value in stored.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        if key.endswith(QUANT_SUFFIX):
            name = key[: -len(QUANT_SUFFIX)]
            scale = stored[name + SCALE_SUFFIX]
            state[name] = value.float() * scale.reshape((-1,) + (1,) * (value.ndim - 1))
        elif torch.is_floating_point(value):
            state[key] = value.float()
        else:
            state[key] = value
    return state
