"""VGG16 conv features through relu4_3, computed from the grey image (the MDN's input)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import dequantize_state
from .color import VGG_SIZE

ENV_WEIGHTS = "COLORIZE_VGG_WEIGHTS"
#: set to 1 to forbid torchvision's download of IMAGENET1K_V1 (tests, air-gapped machines)
ENV_NO_DOWNLOAD = "COLORIZE_NO_DOWNLOAD"
#: torchvision.models.vgg16().features[:23] ends with relu4_3: (B, 3, 224, 224) -> (B, 512, 28, 28)
VGG_LAYERS = 23
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGWeightsError(RuntimeError):
    pass


class GreyVGGFeatures(nn.Module):
    """Grey uint8 images (B, 224, 224) -> VGG16 relu4_3 features (B, 512, 28, 28)."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features
        # the grey value replicated to RGB, then ImageNet-normalised: one scale and offset per channel
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("offset", -mean / std, persistent=False)

    def forward(self, grey_u8: torch.Tensor) -> torch.Tensor:
        x = grey_u8.reshape(-1, 1, VGG_SIZE, VGG_SIZE).float()
        return self.features(x * self.scale + self.offset)


#: torchvision's VGG16 configuration ("D") through conv4_3: conv widths, "M" for a 2x2 max-pool
VGG16_RELU4_3 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)


def vgg_architecture() -> nn.Sequential:
    """torchvision's ``vgg16().features[:23]``, module for module (same state_dict keys and shapes).

    Built here rather than with ``torchvision.models.vgg.make_layers``: importing torchvision.models costs
    about 2 s of every command's start-up (measured), for 13 lines of layers. A test checks this
    against torchvision's own builder; the weights are torchvision's.
    """
    layers: list[nn.Module] = []
    channels = 3
    for width in VGG16_RELU4_3:
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = width
    features = nn.Sequential(*layers)
    assert len(features) == VGG_LAYERS
    return features


def load_vgg_state(path: str | os.PathLike) -> dict:
    """A VGG16 ``features`` state_dict (keys ``0.weight`` ... ``21.bias``, any float dtype) from a file."""
    path = Path(path)
    if not path.is_file():
        raise VGGWeightsError(f"VGG weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; name the file and the reason
        raise VGGWeightsError(f"cannot read VGG weights {path}: {err}") from err
    if isinstance(state, dict) and "vgg" in state and isinstance(state["vgg"], dict):
        state = state["vgg"]
    if isinstance(state, dict) and any(str(k).endswith("::int8") for k in state):
        # a bundle's vgg.pt: int8 weights with per-channel scales
        state = dequantize_state(state)
    # a full vgg16 state_dict names its conv layers features.N.*
    state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    expected = set(vgg_architecture().state_dict())
    if set(state) != expected:
        raise VGGWeightsError(f"{path} is not a VGG16 features state_dict (keys 0.weight ... 21.bias)")
    return {k: v.float() for k, v in state.items()}


def _torchvision_cached_state() -> dict | None:
    import torchvision

    weights = torchvision.models.VGG16_Weights.IMAGENET1K_V1
    if os.environ.get(ENV_NO_DOWNLOAD):
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not cached.is_file():
            return None
    try:
        full = weights.get_state_dict(progress=False)
    except Exception:  # no network, no cache: the caller turns this into one clear message
        return None
    return {k.removeprefix("features."): v for k, v in full.items()
            if k.startswith("features.") and int(k.split(".")[1]) < VGG_LAYERS}


def resolve_vgg_state(path: str | os.PathLike | None = None) -> dict:
    """Weights from ``path``, else $COLORIZE_VGG_WEIGHTS, else torchvision's IMAGENET1K_V1 (cache/download)."""
    if path:
        return load_vgg_state(path)
    if os.environ.get(ENV_WEIGHTS):
        return load_vgg_state(os.environ[ENV_WEIGHTS])
    state = _torchvision_cached_state()
    if state is None:
        raise VGGWeightsError(
            "no VGG16 weights: pass --vgg-weights PATH or set COLORIZE_VGG_WEIGHTS to a VGG16 features "
            "state_dict (e.g. vgg16_relu4_3_imagenet_fp16.pth), or let torchvision download IMAGENET1K_V1")
    return state


def build_vgg(state: dict) -> GreyVGGFeatures:
    with torch.device("meta"):   # no random initialisation: every tensor comes from ``state``
        features = vgg_architecture()
    features.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    # channels_last: oneDNN's fast convolution layout on CPU (measured 3.7x on VGG in bf16 here)
    model = GreyVGGFeatures(features).eval().to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
