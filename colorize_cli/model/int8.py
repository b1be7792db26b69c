"""int8 inference of VGG + MDN on x86 CPUs (opt-in, ``--int8``): oneDNN's u8 x s8 convolutions (AMX / VNNI).

Static post-training quantization. Weights: int8 per output channel, symmetric (the MDN's BatchNorm folded
into its convolutions first, exact in eval mode). Activations: uint8 per tensor; every quantized layer's
output is a ReLU's, so its zero point is 0 and only its range is needed, measured once on calibration photos
(``colorize calibrate``) and kept as ``int8.json`` beside the model. From the grey input to the MDN's last
convolution the activations stay uint8 (max-pooling commutes with the monotone quantization, so it is exact
on them); the MDN's fc is not quantized. The CVAE's condition encoder and the decoder's convolutions are int8
too where the calibration carries their ranges (``decoder_ranges``, int8_decoder.py).

On this project's 2-core AMX CPU the quantized VGG + MDN took 0.66-0.70 s per batch of 16 against 1.4-1.7 s in
bf16 (2.0-2.5x; the whole model ~1.9x, see README, Speed).
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.atomic import atomic_write
from .color import VGG_SIZE
from .networks import MDN, split_mixture
from .registry import read_model_json, resolve_model
from .vgg import GreyVGGFeatures

CALIBRATION_FILE = "int8.json"
CALIBRATION_FORMAT = "colorize-int8-calibration"
#: a layer's activation range: this percentile of its ReLU outputs per calibration batch, averaged over the
#: batches. 100 (the batch's largest value) measured closest to fp32 on the bundled model: over 64 LFW test
#: photos (128 calibration photos, decoder in fp32), |int8 - fp32| of the ab outputs averaged 0.0014 (99th
#: percentile 0.024) against 0.0017 (0.034) clipping at 99.9999 and 0.0021 (0.042) at 99.999: VGG's rare
#: large activations carry information
DEFAULT_PERCENTILE = 100.0


class Int8Error(ValueError):
    pass


@dataclass(frozen=True)
class Int8Calibration:
    """Activation ranges of the quantized layers, in chain order (VGG's 10 convolutions, then the MDN's 7),
    and of the CVAE's int8 convolutions' inputs: the decoder's 3, then the condition encoder's 3 (older
    files: the decoder's 3 alone, the encoder stays float; or none, the decoder stays float too)."""

    ranges: tuple[float, ...]
    percentile: float = DEFAULT_PERCENTILE
    images: int = 0
    decoder_ranges: tuple[float, ...] = ()

    def to_json(self) -> dict:
        return {"format": CALIBRATION_FORMAT, "format_version": 1, **asdict(self),
                "ranges": list(self.ranges), "decoder_ranges": list(self.decoder_ranges)}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_write(path) as f:
            f.write((json.dumps(self.to_json(), indent=2) + "\n").encode("utf-8"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Int8Calibration":
        path = Path(path)
        try:
            data = read_model_json(path)
        except (OSError, ValueError) as err:
            raise Int8Error(f"cannot read int8 calibration {path}: {err}") from err
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise Int8Error(f"{path} is not an int8 calibration file")
        ranges, decoder = data.get("ranges"), data.get("decoder_ranges", [])   # older files: no decoder
        for key, values, empty_ok in (("ranges", ranges, False), ("decoder_ranges", decoder, True)):
            if (not isinstance(values, list) or not (values or empty_ok) or len(values) > 64
                    or not all(isinstance(r, (int, float)) and math.isfinite(r) and r > 0 for r in values)):
                raise Int8Error(f"{path}: '{key}' must be a list of positive numbers")
        return cls(tuple(float(r) for r in ranges), float(data.get("percentile", DEFAULT_PERCENTILE)),
                   int(data.get("images", 0)), tuple(float(r) for r in decoder))


def calibration_path(model_folder: str | os.PathLike) -> Path:
    return Path(model_folder) / CALIBRATION_FILE


@dataclass(frozen=True)
class ConvStep:
    """One quantized layer: convolution (+ folded BatchNorm) + ReLU; weight (out, in, k, k) float32."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: int
    padding: int


POOL = "pool"   # a 2x2 max-pool, stride 2, between convolutions


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """bn(conv(x)) as one convolution (eval mode): weight and bias, float32."""
    scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)            # (out,)
    weight = conv.weight.float() * scale[:, None, None, None]
    bias = (conv.bias.float() - bn.running_mean.float()) * scale + bn.bias.float()
    return weight, bias


def conv_chain(vgg: GreyVGGFeatures, mdn: MDN) -> list:
    """VGG to relu4_3, then the MDN's seven conv + BatchNorm + ReLU blocks: ConvStep or POOL, in order."""
    chain: list = []
    for m in vgg.features:
        if isinstance(m, nn.Conv2d):
            chain.append(ConvStep(m.weight.float(), m.bias.float(), m.stride[0], m.padding[0]))
        elif isinstance(m, nn.MaxPool2d):
            chain.append(POOL)
    layers = list(mdn.model)
    for i, m in enumerate(layers):
        if isinstance(m, nn.Conv2d):
            if not isinstance(layers[i + 1], nn.BatchNorm2d) or not isinstance(layers[i + 2], nn.ReLU):
                raise Int8Error("the MDN's layers are not conv, BatchNorm, ReLU blocks")
            weight, bias = fold_batchnorm(m, layers[i + 1])
            chain.append(ConvStep(weight, bias, m.stride[0], m.padding[0]))
    return chain


def _float_chain(chain: list, x: torch.Tensor, each_output: Callable[[torch.Tensor], None]) -> torch.Tensor:
    """The chain in float; ``each_output`` sees every ReLU output as it is made (none is kept: the first
    layers' are 200 MB each for 16 photos in fp32)."""
    for step in chain:
        if step is POOL:
            x = F.max_pool2d(x, 2)
        else:
            x = F.relu(F.conv2d(x, step.weight, step.bias, step.stride, step.padding))
            each_output(x)
    return x


def upper_percentile(x: torch.Tensor, percentile: float) -> float:
    """The ``percentile``-th percentile of all of x's values (torch.quantile stops at 16M values)."""
    flat = x.reshape(-1)
    k = max(1, int(math.ceil(flat.numel() * (1 - percentile / 100))))
    return float(flat.topk(k).values[-1])


@torch.no_grad()
def calibrate(vgg: GreyVGGFeatures, mdn: MDN, grey_batches: Iterable[torch.Tensor],
              percentile: float = DEFAULT_PERCENTILE,
              decoder: Callable[[torch.Tensor, torch.Tensor, float], list[float]] | None = None
              ) -> Int8Calibration:
    """Activation ranges from batches of grey images ((B, 224, 224) uint8, VGG's grey), run in fp32.

    ``decoder(means, weights, percentile)``: the decoder's ranges for the batch's mixture ((B, K, D), (B, K)
    float32), or None to leave the decoder float."""
    chain = conv_chain(vgg, mdn)
    sums: list[float] = []
    decoder_sums: list[float] = []
    batches = images = 0
    for grey in grey_batches:
        x = (grey.reshape(-1, 1, VGG_SIZE, VGG_SIZE).float() * vgg.scale + vgg.offset)
        values: list[float] = []
        features = _float_chain(chain, x.contiguous(memory_format=torch.channels_last),
                                lambda out: values.append(upper_percentile(out, percentile)))
        sums = [a + b for a, b in zip(sums, values)] if sums else values
        if decoder is not None:
            found = decoder(*mixture_from_features(mdn, features), percentile)
            decoder_sums = [a + b for a, b in zip(decoder_sums, found)] if decoder_sums else found
        batches += 1
        images += grey.shape[0]
    if not batches:
        raise Int8Error("no calibration images")
    # a layer that stayed all zero still needs a scale
    return Int8Calibration(tuple(max(s / batches, 1e-6) for s in sums), percentile, images,
                           tuple(max(s / batches, 1e-6) for s in decoder_sums))


def mixture_from_features(mdn: MDN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The MDN's last convolution's ReLU output (B, 64, 4, 4) -> means (B, K, D), weights (B, K) float32: the
    rest of MDN.forward (dropout: identity in eval; ReLU: a no-op after the last block's; fc)."""
    params = mdn.fc(mdn.dropout(F.relu(x.flatten(1))))      # flatten: NCHW order (copies channels_last)
    means, weights = split_mixture(params, mdn.cfg.components, mdn.cfg.latent)
    return means.float(), weights.float()


def _pool_u8(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pool of a channels_last uint8 (B, C, H, W): two elementwise maxima over strided views
    (torch's max_pool2d of uint8 refuses these sizes; 6 ms against 110 ms via bf16 for (16, 64, 224, 224))."""
    b, c, h, w = x.shape
    v = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2 * c)        # NHWC memory, pairs of rows
    rows = torch.maximum(v[:, :, 0], v[:, :, 1])                          # (B, H/2, W/2, 2C): column pairs
    return torch.maximum(rows[..., :c], rows[..., c:]).permute(0, 3, 1, 2)


class Int8Conv:
    """A float convolution (weight (out, in, k, k), bias or None) as oneDNN's u8 x s8 convolution of uint8
    inputs of a fixed scale and zero point: int8 weights per output channel, symmetric; prepacked once per
    input shape (oneDNN's blocked layout depends on it, and an unprepacked weight is reordered on every call:
    0.36 s for the MDN's first layer). Shared by VGG + MDN here and the CVAE (int8_decoder.py)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, in_scale: float, stride: int,
                 padding: int, in_zero: int = 0):
        w = weight.float()
        self.weight_scale = (w.reshape(w.shape[0], -1).abs().amax(1).clamp_min(1e-12) / 127).float()
        self.weight = torch.round(w / self.weight_scale[:, None, None, None]).clamp(-127, 127).to(torch.int8)
        self.weight_zero = torch.zeros(w.shape[0], dtype=torch.long)
        self.bias = None if bias is None else bias.float().contiguous()
        self.in_scale, self.in_zero, self.stride, self.padding = in_scale, in_zero, stride, padding
        self._packed: dict[tuple, torch.Tensor] = {}
        self._lock = threading.Lock()   # CPU streams share it

    def _weight_for(self, q: torch.Tensor) -> torch.Tensor:
        shape = tuple(q.shape)
        with self._lock:
            if shape not in self._packed:
                if len(self._packed) >= 4:   # few shapes occur: the batch size and a last, shorter batch
                    self._packed.pop(next(iter(self._packed)))
                self._packed[shape] = torch.ops.onednn.qconv_prepack(
                    self.weight, self.weight_scale, self.in_scale, self.in_zero, [self.stride] * 2,
                    [self.padding] * 2, [1, 1], 1, list(shape))
            return self._packed[shape]

    def _pointwise(self, q: torch.Tensor, out_scale: float, out_dtype, attr: str) -> torch.Tensor:
        return torch.ops.onednn.qconv2d_pointwise(
            q, self.in_scale, self.in_zero, self._weight_for(q), self.weight_scale, self.weight_zero, self.bias,
            [self.stride] * 2, [self.padding] * 2, [1, 1], 1, out_scale, 0, out_dtype, attr, [], "")

    def relu(self, q: torch.Tensor, out_scale: float | None) -> torch.Tensor:
        """q (M, in, H, W) uint8 channels_last -> ReLU(conv(q) + bias): uint8 of scale ``out_scale`` (zero point
        0), or float32 when it is None."""
        if out_scale is None:
            return self._pointwise(q, 1.0, torch.float32, "relu")
        return self._pointwise(q, out_scale, None, "relu")

    def plus(self, q: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        """q (M, in, H, W) uint8 channels_last -> ReLU(conv(q) + bias + acc), in acc's dtype (acc is
        overwritten)."""
        return torch.ops.onednn.qconv2d_pointwise.binary(
            q, self.in_scale, self.in_zero, self._weight_for(q), self.weight_scale, self.weight_zero, acc,
            self.bias, [self.stride] * 2, [self.padding] * 2, [1, 1], 1, 1.0, 0, acc.dtype, 1.0, 0, "sum", 1.0,
            "relu", [], "")

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        """q (M, in, H, W) uint8 channels_last -> conv(q) + bias, float32."""
        return self._pointwise(q, 1.0, torch.float32, "none")


class Int8Mixture:
    """Grey images (B, 224, 224) uint8 -> the MDN's means (B, K, D) and weights (B, K), float32, on the CPU."""

    def __init__(self, vgg: GreyVGGFeatures, mdn: MDN, calibration: Int8Calibration):
        chain = conv_chain(vgg, mdn)
        convs = [s for s in chain if s is not POOL]
        if len(calibration.ranges) != len(convs):
            raise Int8Error(f"the int8 calibration has {len(calibration.ranges)} ranges for {len(convs)} layers: "
                            "it was made for another model")
        self.mdn = mdn
        # the input: VGG's normalised grey, 3 identical-but-for-normalisation channels, as one uint8 per channel
        # with a zero point (it is signed); a (256, 3) table from the grey level
        levels = torch.arange(256, dtype=torch.float32)[:, None]
        normalised = levels * vgg.scale.reshape(1, 3).float() + vgg.offset.reshape(1, 3).float()   # (256, 3)
        low, high = min(float(normalised.min()), 0.0), max(float(normalised.max()), 0.0)
        input_scale = (high - low) / 255
        input_zero = int(round(-low / input_scale))
        self.input_table = torch.clamp(torch.round(normalised / input_scale) + input_zero, 0, 255).to(torch.uint8)
        # (convolution, its output's scale, whether a 2x2 max-pool of its input comes first); each layer's input
        # scale is the previous layer's output scale. Only the int8 weights are kept (not the float ones, nor
        # the folded MDN copies)
        self.layers: list[tuple[Int8Conv, float, bool]] = []
        in_scale, in_zero, pool = input_scale, input_zero, False
        ranges = iter(calibration.ranges)
        for step in chain:
            if step is POOL:
                pool = True
                continue
            out_scale = next(ranges) / 255
            self.layers.append((Int8Conv(step.weight, step.bias, in_scale, step.stride, step.padding, in_zero),
                                out_scale, pool))
            in_scale, in_zero, pool = out_scale, 0, False

    def features(self, grey: torch.Tensor) -> torch.Tensor:
        """Grey (B, 224, 224) uint8 -> the MDN's last convolution's ReLU output (B, 64, 4, 4) float32."""
        batch = grey.shape[0]
        # (B, 224, 224, 3) uint8 is NHWC memory: as (B, 3, 224, 224) it is channels_last, oneDNN's layout
        x = self.input_table[grey.reshape(batch, VGG_SIZE, VGG_SIZE).long()].permute(0, 3, 1, 2)
        last = len(self.layers) - 1
        for i, (conv, out_scale, pool_before) in enumerate(self.layers):
            if pool_before:
                x = _pool_u8(x)
            # uint8 out (scale out_scale, zero point 0), or float32 for the last
            x = conv.relu(x, None if i == last else out_scale)
        return x

    @torch.no_grad()
    def __call__(self, grey: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mixture_from_features(self.mdn, self.features(grey))


def int8_supported() -> bool:
    """Whether this torch has oneDNN's quantized convolution ops."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qconv2d_pointwise")


def default_int8(device, model) -> bool:
    """--int8 when not given: on a CPU whose oneDNN int8 is fast (AMX or VNNI), for a model that ships its
    activation ranges (int8.json). The CLI leaves it off under --compile, which compiles the float networks."""
    from .device import (
        cpu_has_fast_int8,  # looked up here: tests stand in a CPU without fast int8
    )

    if device.type != "cpu" or not cpu_has_fast_int8() or not int8_supported():
        return False
    try:
        folder = resolve_model(model)
    except FileNotFoundError:
        return False
    return calibration_path(folder).is_file() and int8_verified(folder)


def int8_verified(folder) -> bool:
    """Whether a model's int8 results were measured against its float ones (``card.int8_default`` in its
    manifest: `colorize evaluate --int8` against without, on its test sets, showed no measurable loss).
    Only such models get --int8 by default; any model with an int8.json can still ask for it."""
    from pathlib import Path

    try:
        manifest = read_model_json(Path(folder) / "manifest.json")
        return bool(manifest.get("card", {}).get("int8_default", False))
    except (OSError, ValueError, AttributeError):
        return False
