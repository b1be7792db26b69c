"""int8 inference of the CVAE decoder's per-sample convolutions on x86 CPUs (with ``--int8``, where the
model's int8.json carries ``decoder_ranges``).

The decoder runs 8 times per photo (once per sample) and was the part of the model int8 did not cover: in bf16
on a 2-core AVX-512 VNNI CPU without AMX it took ~60 ms of a photo's ~160 ms. Its layers are

    x_i = BN_i(ReLU(h_i)),   h_i = W_i * [up(x_{i-1}), skip_i] + b_i        (up: bilinear x2)

and BatchNorm after the ReLU leaves activations that can be negative. Folded exactly (eval mode): with BN's
scale g_i > 0 and shift beta_i per channel, BN_i(ReLU(h)) = ReLU(g_i h) + beta_i; bilinear upsampling keeps a
per-channel constant, so beta_i passes through it and its part of the next convolution is a fixed map
M_{i+1} = W_{i+1} * beta_i (zero padding makes it differ near the borders; it is computed once). What is left
between layers is r_i = ReLU(g_i h_i) >= 0: quantized per tensor with zero point 0, its range measured by
``colorize calibrate`` like VGG's. The skip part of each convolution (the same for all samples of a photo)
and M go in as oneDNN's fused sum before its ReLU; the condition encoder, the skip convolutions and the last
convolution (2 output channels: oneDNN computes 16 either way, and quantizing its 64x64 input costs what int8
saves; it runs on the 32x32 grid instead, networks.upsampled_conv) stay in float.

Measured on a 2-core AMD EPYC (AVX-512 VNNI, BF16, no AMX), one thread, 16 photos x 8 samples: the decoder
~45 against ~60 ms per photo in bf16, its ab within bf16's own distance of fp32 (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import threading
import warnings

import torch
import torch.nn.functional as F

from .int8 import DEFAULT_PERCENTILE, Int8Error, upper_percentile
from .networks import Decoder, InferenceCVAE, upsample2, upsampled_conv

#: the decoder layers whose outputs feed an int8 convolution (conv1..conv3's; conv4's feeds the float conv5)
QUANTIZED_INPUTS = 3


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float32, or float64 for a model in float64 (the folding's exactness test)."""
    return t.double() if t.dtype == torch.float64 else t.float()


def _bn_scale_shift(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BN in eval mode as y = g x + beta per channel, (C,) each."""
    g = _wide(bn.weight) / torch.sqrt(_wide(bn.running_var) + bn.eps)
    return g, _wide(bn.bias) - _wide(bn.running_mean) * g


def _layers(decoder: Decoder) -> list[tuple[torch.nn.Conv2d, torch.nn.BatchNorm2d]]:
    return [(decoder.conv1, decoder.bn1), (decoder.conv2, decoder.bn2), (decoder.conv3, decoder.bn3),
            (decoder.conv4, decoder.bn4)]


def foldable(decoder: Decoder) -> bool:
    """Whether every BatchNorm scale is positive (only then does ReLU then BN fold into ReLU of a scaled
    input)."""
    return all(bool((_bn_scale_shift(bn)[0] > 0).all()) for _, bn in _layers(decoder))


def _split(conv: torch.nn.Conv2d, per_sample_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoder convolution's weight as (per-sample part, skip part)."""
    w = _wide(conv.weight)
    return w[:, :per_sample_channels], w[:, per_sample_channels:]


@torch.no_grad()
def decoder_ranges(cvae: InferenceCVAE, z: torch.Tensor, grey: torch.Tensor,
                   percentile: float = DEFAULT_PERCENTILE) -> list[float]:
    """The range (this percentile, 100: the largest) of r_i = ReLU(g_i h_i), the quantized layers' inputs
    (i = 1..3), for one batch, in fp32: z (B, N, latent), grey (B, 1, 64, 64) the CVAE's normalised L. Runs
    the decoder in its folded form (the same function as Decoder.forward_samples: tests/test_int8.py)."""
    ranges: list[float] = []
    _folded_float(cvae, z.float(), grey.float(), lambda r: ranges.append(upper_percentile(r, percentile)))
    return ranges[:QUANTIZED_INPUTS]


def _folded_float(cvae: InferenceCVAE, z: torch.Tensor, grey: torch.Tensor, each_r=None) -> torch.Tensor:
    """The decoder in its folded form, in the dtype of z: ab (B * N, 2, 64, 64). ``each_r`` sees every r_i."""
    dec = cvae.decoder
    feats = cvae.cond_encoder(grey)
    skips = feats[::-1]                                           # f4, f8, f16, f32
    b, n, d = z.shape
    x = z.reshape(b * n, d, 1, 1).expand(-1, -1, 4, 4)
    beta_prev = None
    for (conv, bn), skip in zip(_layers(dec), skips):
        c = x.shape[1]
        w_x, w_s = _split(conv, c)
        w_x, w_s = w_x.to(z.dtype), w_s.to(z.dtype)
        shared = F.conv2d(skip, w_s, conv.bias.to(z.dtype), 1, conv.padding)
        if beta_prev is not None:
            shared = shared + F.conv2d(beta_prev.to(z.dtype).reshape(1, -1, 1, 1).expand(1, c, *x.shape[2:]),
                                       w_x, None, 1, conv.padding)
        h = (F.conv2d(x, w_x, None, 1, conv.padding).unflatten(0, (b, n)) + shared[:, None]).flatten(0, 1)
        g, beta_prev = _bn_scale_shift(bn)
        r = F.relu(h * g.to(z.dtype)[:, None, None])
        if each_r is not None:
            each_r(r)
        x = upsample2(r)
    w5 = dec.conv5.weight.to(z.dtype)
    const = F.conv2d(beta_prev.to(z.dtype).reshape(1, -1, 1, 1).expand(1, x.shape[1], *x.shape[2:]), w5,
                     dec.conv5.bias.to(z.dtype), 1, dec.conv5.padding)
    return torch.tanh(F.conv2d(x, w5, None, 1, dec.conv5.padding) + const)


class _QuantConv:
    """One decoder convolution's per-sample part as a oneDNN u8 x s8 convolution with a fused sum and ReLU,
    float32 out in the next layer's quantization units."""

    def __init__(self, conv: torch.nn.Conv2d, per_sample_channels: int, size: int, g: torch.Tensor,
                 beta_prev: torch.Tensor, in_scale: float, out_scale: float):
        w_x, w_s = _split(conv, per_sample_channels)
        post = g / out_scale                                                          # (out,)
        w = w_x * post[:, None, None, None]
        self.weight_scale = (w.reshape(w.shape[0], -1).abs().amax(1).clamp_min(1e-12) / 127).float()
        self.weight = torch.round(w / self.weight_scale[:, None, None, None]).clamp(-127, 127).to(torch.int8)
        self.weight_zero = torch.zeros(w.shape[0], dtype=torch.long)
        self.skip_weight = (w_s * post[:, None, None, None]).contiguous(memory_format=torch.channels_last)
        # bias + the previous BN's shift through this convolution (a map: zero padding), in output units
        beta_map = beta_prev.reshape(1, -1, 1, 1).expand(1, per_sample_channels, size, size)
        self.constant = ((F.conv2d(beta_map, w_x, conv.bias.float(), 1, conv.padding)[0])
                         * post[:, None, None])                                     # (out, size, size)
        self.in_scale, self.size, self.padding = in_scale, size, conv.padding[0]
        self._packed: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    def packed(self, rows: int) -> torch.Tensor:
        # oneDNN's blocked weight layout depends on the input shape: prepacked once per batch size
        with self._lock:
            if rows not in self._packed:
                if len(self._packed) >= 4:
                    self._packed.pop(next(iter(self._packed)))
                self._packed[rows] = torch.ops.onednn.qconv_prepack(
                    self.weight, self.weight_scale, self.in_scale, 0, [1, 1], [self.padding] * 2, [1, 1], 1,
                    [rows, self.weight.shape[1], self.size, self.size])
            return self._packed[rows]

    def shared(self, skip: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
        """The skip part for B photos (B, C, H, W) -> repeated for their N samples, (B * N, out, H, W) in
        ``dtype``, channels_last: the fused sum's accumulator, and so the output's dtype."""
        one = F.conv2d(skip, self.skip_weight.to(skip.dtype), None, 1, self.padding).float() + self.constant
        b, c, h, w = one.shape
        acc = torch.empty((b * n, c, h, w), dtype=dtype, memory_format=torch.channels_last)
        acc.permute(0, 2, 3, 1).view(b, n, h, w, c).copy_(one.permute(0, 2, 3, 1)[:, None])
        return acc

    def __call__(self, q: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        """q (B * N, in, H, W) uint8 channels_last -> ReLU(conv(q) + acc) in acc's dtype."""
        return torch.ops.onednn.qconv2d_pointwise.binary(
            q, self.in_scale, 0, self.packed(q.shape[0]), self.weight_scale, self.weight_zero, acc, None,
            [1, 1], [self.padding] * 2, [1, 1], 1, 1.0, 0, acc.dtype, 1.0, 0, "sum", 1.0, "relu", [], "")


def _to_u8(x: torch.Tensor) -> torch.Tensor:
    """float32 in quantization units -> uint8, rounded and clamped: one vectorised pass (the composite
    round/clamp/cast took 7x longer). torch marks quantize_per_tensor deprecated; this torch has it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_tensor(x, 1.0, 0, torch.quint8).int_repr()


class Int8Decoder:
    """z (B, N, latent) + the CVAE's normalised L (B, 1, 64, 64) -> ab (B * N, 2, 64, 64) float32, on the CPU;
    the same function as ``Decoder.forward_samples`` after the condition encoder, up to quantization."""

    def __init__(self, cvae: InferenceCVAE, ranges: tuple[float, ...]):
        dec = cvae.decoder
        if len(ranges) != QUANTIZED_INPUTS:
            raise Int8Error(f"the int8 calibration has {len(ranges)} decoder ranges, not {QUANTIZED_INPUTS}: "
                            "it was made for another model")
        if not foldable(dec):
            raise Int8Error("this decoder has BatchNorm scales <= 0: its layers do not fold for int8")
        self.cvae = cvae
        scales = [r / 255 for r in ranges] + [1.0]          # conv4's output feeds float conv5: units of 1
        folded = [_bn_scale_shift(bn) for _, bn in _layers(dec)]
        self.g1 = folded[0][0] / scales[0]
        w1x, w1s = _split(dec.conv1, dec.latent)
        self.w1x = w1x.contiguous(memory_format=torch.channels_last)
        self.w1s, self.b1, self.padding1 = w1s, dec.conv1.bias.float(), dec.conv1.padding[0]
        self.convs = []
        channels, size = dec.conv1.out_channels, 8          # conv2 runs at 8 x 8, each next one at twice that
        for i, (conv, _) in enumerate(_layers(dec)[1:], start=1):
            self.convs.append(_QuantConv(conv, channels, size, folded[i][0], folded[i - 1][1], scales[i - 1],
                                         scales[i]))
            channels, size = conv.out_channels, size * 2
        w5 = dec.conv5.weight.float()
        beta4 = folded[3][1].reshape(1, -1, 1, 1).expand(1, w5.shape[1], 64, 64)
        self.w5 = w5.contiguous(memory_format=torch.channels_last)
        self.constant5 = F.conv2d(beta4, w5, dec.conv5.bias.float(), 1, dec.conv5.padding)   # (1, 2, 64, 64)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, grey: torch.Tensor, bf16: bool) -> torch.Tensor:
        b, n, d = z.shape
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            f32, f16, f8, f4 = self.cvae.cond_encoder(grey)
            f4s = F.conv2d(f4, self.w1s, self.b1, 1, self.padding1)
        # conv1: 64 latent channels at 4x4, small: float32
        x = z.float().reshape(b * n, d, 1, 1).expand(-1, -1, 4, 4)
        x = x.contiguous(memory_format=torch.channels_last)
        h = F.conv2d(x, self.w1x, None, 1, self.padding1).unflatten(0, (b, n)) + f4s.float()[:, None]
        h = h.flatten(0, 1)
        v = F.relu(h * self.g1[:, None, None])                  # r_1 in quantization units
        last = torch.bfloat16 if bf16 else torch.float32       # conv4's output is conv5's (float) input
        for conv, skip in zip(self.convs, (f8, f16, f32)):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                acc = conv.shared(skip, n, last if conv is self.convs[-1] else torch.float32)
            v = conv(_to_u8(upsample2(v)), acc)
        out = upsampled_conv(v, self.w5.to(last), None)          # conv5(up(v)), on v's 32 x 32 grid
        return torch.tanh(out.float() + self.constant5)
