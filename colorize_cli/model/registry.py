"""Bundled models by name: ``general`` (the default: scenes, streets, groups, portraits) and ``faces``
(LFW portraits only).

``--model`` takes one of these names or a model folder (a bundle or a training run). Each bundled model is a
bundle folder under the package's ``weights/``; they share one ``vgg.pt`` (the same ImageNet VGG16), named in
their manifests' ``part_files``. The model card facts (training data, metrics) live in each manifest's
``card``, so ``colorize models`` and the docs read one source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .checkpoint import CheckpointError

BUNDLED = ("general", "faces")
DEFAULT_MODEL = "general"

#: a bundle's parts, one file each (each under 20 MiB in git)
PARTS = ("cond_encoder", "decoder", "mdn", "vgg")


def part_path(folder: Path, manifest: dict, name: str) -> Path:
    """Where a bundle's part lives: ``NAME.pt`` in the folder, or the file its manifest's ``part_files`` names
    (bundled models share ``../vgg.pt``); never outside the folder's parent."""
    rel = manifest.get("part_files", {}).get(name, f"{name}.pt") if isinstance(manifest.get("part_files"), dict) \
        else f"{name}.pt"
    path = (folder / str(rel)).resolve()
    if folder.resolve().parent not in path.parents:
        raise CheckpointError(f"{folder}: manifest names a part outside the bundle: {rel}")
    return path


class ModelNotFoundError(FileNotFoundError):
    pass


def weights_root() -> Path:
    return Path(str(resources.files("colorize_cli").joinpath("weights")))


def bundled_path(name: str) -> Path | None:
    """The folder of bundled model ``name``, if this installation has it."""
    folder = weights_root() / name
    return folder if (folder / "manifest.json").is_file() else None


def resolve_model(model: str | os.PathLike | None) -> Path:
    """A --model value -> a model folder. Names of bundled models win over same-named folders in the working
    directory (write ``./faces`` for the folder)."""
    if model is None:
        model = DEFAULT_MODEL
    text = os.fspath(model)
    if text in BUNDLED:
        path = bundled_path(text)
        if path is None:
            raise ModelNotFoundError(
                f"bundled model {text!r} is not in this installation: train one with `colorize train vae DATA "
                f"--out RUN` and `colorize train mdn DATA --out RUN`, then pass --model RUN")
        return path
    path = Path(text)
    if not path.exists():
        raise ModelNotFoundError(f"unknown model {text!r}: not a bundled model ({', '.join(BUNDLED)}) "
                                 f"nor a model folder")
    if not path.is_dir():
        raise ModelNotFoundError(f"--model must be a bundled model's name or a folder (a training run or a "
                                 f"bundle): {path}")
    return path


def model_name(folder: str | os.PathLike) -> str:
    """How outputs name a model: a bundled model's name, else its folder as given."""
    resolved = Path(folder).resolve()
    for name in BUNDLED:
        path = bundled_path(name)
        if path is not None and path.resolve() == resolved:
            return name
    return os.fspath(folder)


@dataclass
class ModelInfo:
    name: str
    path: Path
    data: str
    metrics: dict
    size_bytes: int
    default: bool

    def to_json(self) -> dict:
        return {"name": self.name, "path": str(self.path), "data": self.data, "metrics": self.metrics,
                "size_bytes": self.size_bytes, "default": self.default}


#: a model folder's JSON files (manifest.json, int8.json) are a few KB, nested a few levels (a refined model
#: keeps its source's record under "earlier", one level per refinement); anything beyond is refused unread
MAX_MODEL_JSON_BYTES = 1 << 20
MAX_MODEL_JSON_DEPTH = 64


def read_model_json(path: Path):
    """A JSON file of a model folder, bounded in size and nesting (a folder may come from anyone):
    OSError when it cannot be read, ValueError when it is too large, too deep or not JSON."""
    from ..common import jsonsafe

    return jsonsafe.read_file(path, MAX_MODEL_JSON_BYTES, MAX_MODEL_JSON_DEPTH)


def model_info(name: str) -> ModelInfo | None:
    folder = bundled_path(name)
    if folder is None:
        return None
    manifest = read_model_json(folder / "manifest.json")
    card = manifest.get("card", {}) if isinstance(manifest.get("card"), dict) else {}
    size = sum(part_path(folder, manifest, part).stat().st_size for part in PARTS)
    return ModelInfo(name, folder, str(card.get("data", "")), dict(card.get("metrics", {})), size,
                     name == DEFAULT_MODEL)


def list_models() -> list[ModelInfo]:
    return [info for info in (model_info(n) for n in BUNDLED) if info is not None]
