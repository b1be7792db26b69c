"""Inference bundles: everything colorizing needs (condition encoder, decoder, MDN, VGG to relu4_3) and
nothing it does not, stored compactly (int8 per-channel weights or fp16), loaded without executing code.

A bundle is a folder with ``manifest.json`` and one ``.pt`` tensor file per part (each small enough to
keep in git), or a training run folder (``vae.pt`` + ``mdn.pt``) which is read as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..common.atomic import atomic_write
from ..common.version import __version__
from .checkpoint import (
    CheckpointError,
    dequantize_state,
    load_error_reason,
    quantize_state,
    read_checkpoint,
)
from .int8 import CALIBRATION_FILE, Int8Calibration
from .networks import MDN, CVAEConfig, InferenceCVAE, MDNConfig
from .registry import DEFAULT_MODEL, PARTS, bundled_path, part_path, read_model_json
from .vgg import build_vgg

BUNDLE_FORMAT = "colorize-bundle"


def default_bundle_path() -> Path | None:
    """The default bundled model's folder, if this installation has it."""
    return bundled_path(DEFAULT_MODEL)


def _save_tensors(path: Path, tensors: dict) -> None:
    with atomic_write(path) as f:
        torch.save(tensors, f)


def export_bundle(run: str | os.PathLike, out: str | os.PathLike, quantize: str = "int8") -> Path:
    """A training run folder (vae.pt, mdn.pt) -> an inference bundle folder."""
    run, out = Path(run), Path(out)
    vae = read_checkpoint(run / "vae.pt", "vae")
    mdn = read_checkpoint(run / "mdn.pt", "mdn")
    cvae_state = {k: v for k, v in vae["model"].items() if not k.startswith("encoder.")}
    out.mkdir(parents=True, exist_ok=True)
    parts = {"cond_encoder": {k: v for k, v in cvae_state.items() if k.startswith("cond_encoder.")},
             "decoder": {k: v for k, v in cvae_state.items() if k.startswith("decoder.")},
             "mdn": mdn["model"], "vgg": {k: v.float() for k, v in mdn["vgg"].items()}}
    for name, state in parts.items():
        _save_tensors(out / f"{name}.pt", quantize_state(state, quantize))
    manifest = {"format": BUNDLE_FORMAT, "format_version": 1, "package_version": __version__,
                "quantization": quantize, "cvae_config": vae["model_config"], "mdn_config": mdn["model_config"],
                "trained": {"vae_epochs": vae["epoch"], "mdn_epochs": mdn["epoch"],
                            "vae_train_config": vae["train_config"], "mdn_train_config": mdn["train_config"],
                            "vae_metrics": vae.get("metrics"), "mdn_metrics": mdn.get("metrics")}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if (run / CALIBRATION_FILE).is_file():
        # the run's activation ranges hold for its bundle too (the weights' storage does not move them)
        Int8Calibration.load(run / CALIBRATION_FILE).save(out / CALIBRATION_FILE)
    return out


def _build(cvae_cfg: dict, mdn_cfg: dict, cvae_state: dict, mdn_state: dict, vgg_state: dict):
    # built on the meta device and given the loaded tensors (assign=True): no random initialisation, no
    # second copy of the weights in memory while loading
    with torch.device("meta"):
        cvae = InferenceCVAE(CVAEConfig(**cvae_cfg))
        mdn = MDN(MDNConfig(**mdn_cfg))
    cvae.load_state_dict(cvae_state, assign=True)
    mdn.load_state_dict(mdn_state, assign=True)
    return cvae, mdn, build_vgg(vgg_state)


def read_manifest(folder: Path) -> dict:
    """A bundle's manifest.json, checked for shape (format, the two configs as objects, every part there)."""
    try:
        manifest = read_model_json(folder / "manifest.json")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {folder / 'manifest.json'}: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{folder} is not a colorize bundle")
    for key in ("cvae_config", "mdn_config"):
        if not isinstance(manifest.get(key), dict):
            raise CheckpointError(f"{folder / 'manifest.json'}: no {key} object")
    for name in PARTS:
        if not part_path(folder, manifest, name).is_file():
            raise CheckpointError(f"{folder}: missing {name}.pt")
    return manifest


def load_bundle(folder: str | os.PathLike):
    """A bundle folder -> (InferenceCVAE, MDN, GreyVGGFeatures, info)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    states = {}
    for name in PARTS:
        path = part_path(folder, manifest, name)
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a bad file; name the file and the reason
            raise CheckpointError(f"cannot read {path}: {load_error_reason(err)}") from err
        if not isinstance(stored, dict):
            raise CheckpointError(f"{path} holds no tensor dictionary")
        states[name] = dequantize_state(stored)
    try:
        cvae, mdn, vgg = _build(manifest["cvae_config"], manifest["mdn_config"],
                                {**states["cond_encoder"], **states["decoder"]}, states["mdn"], states["vgg"])
    except (TypeError, KeyError, RuntimeError, ValueError) as err:   # configs or tensors of the wrong shape
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"{folder}: weights do not fit the manifest's models ({first})") from err
    return cvae, mdn, vgg, {"source": str(folder), **manifest}


def check_model_folder(folder: str | os.PathLike) -> None:
    """Cheap checks of a model folder, without loading weights (a run whose photos are all done loads none):
    a bundle's manifest has the right shape and its parts exist; a run has vae.pt and mdn.pt."""
    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        read_manifest(folder)
    elif not (folder / "vae.pt").is_file() or not (folder / "mdn.pt").is_file():
        raise CheckpointError(f"{folder} holds neither a bundle (manifest.json) nor a run (vae.pt and mdn.pt)")


def load_run(folder: str | os.PathLike):
    """A model folder: a bundle (manifest.json) or a training run (vae.pt + mdn.pt)."""
    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        return load_bundle(folder)
    if not (folder / "vae.pt").is_file() or not (folder / "mdn.pt").is_file():
        raise CheckpointError(f"{folder} holds neither a bundle (manifest.json) nor a run (vae.pt and mdn.pt)")
    vae = read_checkpoint(folder / "vae.pt", "vae")
    mdn = read_checkpoint(folder / "mdn.pt", "mdn")
    cvae_state = {k: v for k, v in vae["model"].items() if not k.startswith("encoder.")}
    cvae, mdn_model, vgg = _build(vae["model_config"], mdn["model_config"], cvae_state, mdn["model"],
                                  {k: v.float() for k, v in mdn["vgg"].items()})
    info = {"source": str(folder), "trained": {"vae_epochs": vae["epoch"], "mdn_epochs": mdn["epoch"]}}
    return cvae, mdn_model, vgg, info
