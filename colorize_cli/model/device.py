"""Choosing the compute device once, from ``--device auto|cpu|cuda|cuda:N``."""

from __future__ import annotations

import numpy as np
import torch


class DeviceError(ValueError):
    pass


def resolve_device(spec: str = "auto") -> torch.device:
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as err:
        raise DeviceError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r} asked for, but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise DeviceError(f"unsupported device {spec!r}: use auto, cpu, cuda or cuda:N")
    return dev


def _cpu_flags() -> str:
    """/proc/cpuinfo's text (its flags lines), or "" where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has AMX or AVX512-BF16 units, so bf16 autocast pays off."""
    flags = _cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_has_amx() -> bool:
    """True where the CPU has AMX tile units (Intel Xeon since Sapphire Rapids)."""
    flags = _cpu_flags()
    return "amx_bf16" in flags or "amx_int8" in flags


def cpu_has_fast_int8() -> bool:
    """True where oneDNN's u8 x s8 convolutions run on AMX or VNNI units. On plain AVX2 they are faster than
    fp32 too (benchmarks/RESULTS.md), but sum pairs of products in int16, so oneDNN halves the weights there
    (7 bits) and the int8 model measured worse than fp32 in `colorize evaluate`: not a default."""
    flags = _cpu_flags()
    return any(flag in flags for flag in ("amx_int8", "avx512_vnni", "avx_vnni"))


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on the device when asked, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def upload(arrays, device: torch.device, rows: int | None = None) -> torch.Tensor:
    """Images of one shape and dtype (a (B, ...) array, or B arrays) -> a (rows, ...) tensor on ``device``;
    rows past B are zeros (padding).

    For a GPU they are stacked straight into page-locked memory (torch's caching host allocator), one host
    copy, and go up without waiting for the device's queued work: a copy from pageable memory would first wait
    for everything queued on the stream, and so could not overlap a running batch.
    """
    if isinstance(arrays, np.ndarray):
        shape, np_dtype = arrays.shape[1:], arrays.dtype
    elif arrays:
        shape, np_dtype = np.shape(arrays[0]), np.asarray(arrays[0]).dtype
    else:
        raise ValueError("upload needs at least one image (or a (0, ...) array)")
    count = len(arrays)
    rows = count if rows is None else rows
    dtype = torch.from_numpy(np.empty(0, np_dtype)).dtype   # numpy's dtype -> torch's
    host = torch.empty((rows,) + tuple(shape), dtype=dtype, pin_memory=device.type == "cuda")
    view = host.numpy()
    if isinstance(arrays, np.ndarray):
        view[:count] = arrays
    elif count:
        np.stack(arrays, out=view[:count])
    view[count:] = 0
    return host.to(device, non_blocking=True) if device.type == "cuda" else host


def to_host(x: torch.Tensor) -> torch.Tensor:
    """A tensor's copy in host memory, queued without waiting on a GPU: synchronise before reading it.

    From a GPU the copy goes into page-locked memory from torch's caching host allocator: fresh pageable
    memory made the copies of a batch's sheets (1.5 MB per LFW photo) the slowest step of the batch loop.
    """
    if x.device.type != "cuda":
        return x.cpu()
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    return host.copy_(x, non_blocking=True)
