"""int8 inference of the CVAE on x86 CPUs (with ``--int8``, where the model's int8.json carries
``decoder_ranges``): the decoder's per-sample convolutions, and the condition encoder with the decoder's skip
convolutions.

The decoder runs 8 times per photo (once per sample) and was the part of the model int8 did not cover: in bf16
on a 2-core AVX-512 VNNI CPU without AMX it took ~60 ms of a photo's ~160 ms. Its layers are

    x_i = BN_i(ReLU(h_i)),   h_i = W_i * [up(x_{i-1}), skip_i] + b_i        (up: bilinear x2)

and BatchNorm after the ReLU leaves activations that can be negative. Folded exactly (eval mode): with BN's
scale g_i > 0 and shift beta_i per channel, BN_i(ReLU(h)) = ReLU(g_i h) + beta_i; bilinear upsampling keeps a
per-channel constant, so beta_i passes through it and its part of the next convolution is a fixed map
M_{i+1} = W_{i+1} * beta_i (zero padding makes it differ near the borders; it is computed once). What is left
between layers is r_i = ReLU(g_i h_i) >= 0: quantized per tensor with zero point 0, its range measured by
``colorize calibrate`` like VGG's. The skip part of each convolution (the same for all samples of a photo)
and M go in as oneDNN's fused sum before its ReLU. The condition encoder has the same ReLU-then-BN layers
and folds the same way: its r_i feed its next convolution and the decoder's skip convolutions as uint8,
their betas a fixed map of each. Its first convolution (one input channel), the decoder's first (at 4x4) and
last (2 output channels: oneDNN computes 16 either way, and quantizing its 64x64 input costs what int8 saves;
it runs on the 32x32 grid instead, networks.upsampled_conv) stay in float.

Measured on a 2-core AMD EPYC (AVX-512 VNNI, BF16, no AMX), one thread, 16 LFW photos x 8 samples: the
condition encoder and decoder 32 ms per photo (the decoder alone in int8: 37; all in bf16: ~55), the ab
0.00050 from fp32's on average (the decoder alone in int8: 0.00044) (benchmarks/RESULTS.md)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .int8 import DEFAULT_PERCENTILE, Int8Conv, Int8Error, upper_percentile
from .networks import Decoder, InferenceCVAE, upsample2, upsampled_conv

#: the decoder layers whose outputs feed an int8 convolution (conv1..conv3's; conv4's feeds the float conv5)
QUANTIZED_INPUTS = 3
#: the condition encoder's too (conv1..conv3's: they feed its next convolution and a decoder skip convolution;
#: conv4's feeds the small float conv1 of the decoder). Calibration files list them after the decoder's
ENCODER_QUANTIZED_INPUTS = 3


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


def _encoder_layers(cvae: InferenceCVAE) -> list[tuple[torch.nn.Conv2d, torch.nn.BatchNorm2d]]:
    enc = cvae.cond_encoder
    return [(enc.conv1, enc.bn1), (enc.conv2, enc.bn2), (enc.conv3, enc.bn3), (enc.conv4, enc.bn4)]


def foldable(decoder: Decoder, cvae: InferenceCVAE | None = None) -> bool:
    """Whether every BatchNorm scale is positive (only then does ReLU then BN fold into ReLU of a scaled
    input): the decoder's, and the condition encoder's too when ``cvae`` is given."""
    layers = _layers(decoder) + (_encoder_layers(cvae) if cvae is not None else [])
    return all(bool((_bn_scale_shift(bn)[0] > 0).all()) for _, bn in layers)


def _beta_map(beta: torch.Tensor, size: int) -> torch.Tensor:
    """A per-channel constant (C,) as a (1, C, size, size) map."""
    return beta.reshape(1, -1, 1, 1).expand(1, beta.shape[0], size, size)


def _folded_encoder(cvae: InferenceCVAE, grey: torch.Tensor, each_r=None) -> tuple[torch.Tensor, ...]:
    """The condition encoder in its folded form, in grey's dtype: its features f32, f16, f8, f4, each r_i +
    beta_i with r_i = ReLU(g_i h_i) (``each_r`` sees r_1..r_4)."""
    feats, x, beta_prev = [], grey, None
    for conv, bn in _encoder_layers(cvae):
        w = conv.weight.to(grey.dtype)
        h = F.conv2d(x, w, conv.bias.to(grey.dtype), conv.stride, conv.padding)
        if beta_prev is not None:
            h = h + F.conv2d(_beta_map(beta_prev.to(grey.dtype), x.shape[-1]), w, None, conv.stride, conv.padding)
        g, beta = _bn_scale_shift(bn)
        x = F.relu(h * g.to(grey.dtype)[:, None, None])
        if each_r is not None:
            each_r(x)
        feats.append(x + beta.to(grey.dtype)[:, None, None])
        beta_prev = beta
    return tuple(feats)


def _split(conv: torch.nn.Conv2d, per_sample_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoder convolution's weight as (per-sample part, skip part)."""
    w = _wide(conv.weight)
    return w[:, :per_sample_channels], w[:, per_sample_channels:]


@torch.no_grad()
def decoder_ranges(cvae: InferenceCVAE, z: torch.Tensor, grey: torch.Tensor,
                   percentile: float = DEFAULT_PERCENTILE) -> list[float]:
    """The range (this percentile, 100: the largest) of r_i = ReLU(g_i h_i), the quantized layers' inputs,
    for one batch, in fp32: the decoder's (i = 1..3), then the condition encoder's (i = 1..3). z (B, N,
    latent), grey (B, 1, 64, 64) the CVAE's normalised L. Runs the CVAE in its folded form (the same function
    as Decoder.forward_samples after the condition encoder: tests/test_int8.py)."""
    ranges: list[float] = []
    encoder: list[float] = []
    _folded_float(cvae, z.float(), grey.float(), lambda r: ranges.append(upper_percentile(r, percentile)),
                  lambda r: encoder.append(upper_percentile(r, percentile)))
    # an encoder whose BatchNorm scales do not fold stays float: no ranges for it
    return ranges[:QUANTIZED_INPUTS] + (encoder[:ENCODER_QUANTIZED_INPUTS] if foldable(cvae.decoder, cvae) else [])


def _folded_float(cvae: InferenceCVAE, z: torch.Tensor, grey: torch.Tensor, each_r=None,
                  each_encoder_r=None) -> torch.Tensor:
    """The condition encoder and the decoder in their folded form, in the dtype of z: ab (B * N, 2, 64, 64).
    ``each_r`` sees the decoder's every r_i, ``each_encoder_r`` the encoder's."""
    dec = cvae.decoder
    feats = _folded_encoder(cvae, grey.to(z.dtype), each_encoder_r)
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
    float32 out in the next layer's quantization units; its skip part in float, or in int8 from the
    condition encoder's quantized features (``skip_scale``)."""

    def __init__(self, conv: torch.nn.Conv2d, per_sample_channels: int, size: int, g: torch.Tensor,
                 beta_prev: torch.Tensor, in_scale: float, out_scale: float,
                 skip_beta: torch.Tensor | None = None, skip_scale: float | None = None):
        w_x, w_s = _split(conv, per_sample_channels)
        post = g / out_scale                                                          # (out,)
        self.padding = conv.padding[0]
        self.conv = Int8Conv(w_x * post[:, None, None, None], None, in_scale, 1, self.padding)
        skip_weight = w_s * post[:, None, None, None]
        self.skip_weight = skip_weight.float().contiguous(memory_format=torch.channels_last)
        # bias + the previous BN's shift through this convolution (a map: zero padding), in output units
        self.constant = ((F.conv2d(_beta_map(beta_prev, size), w_x, conv.bias.float(), 1, conv.padding)[0])
                         * post[:, None, None]).float()                               # (out, size, size)
        self.skip_int8 = None
        if skip_scale is not None:
            # the skip features are r + beta (the condition encoder folded like the decoder): r in int8, beta's
            # part a fixed map like the one above
            self.skip_int8 = Int8Conv(skip_weight, None, skip_scale, 1, self.padding)
            self.skip_constant = self.constant + F.conv2d(_beta_map(skip_beta, size), skip_weight, None, 1,
                                                          conv.padding)[0].float()

    def shared(self, skip: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
        """The skip part for B photos (B, C, H, W): the features (float), or their quantized r (uint8, with
        ``skip_int8``) -> repeated for their N samples, (B * N, out, H, W) in ``dtype``, channels_last: the
        fused sum's accumulator, and so the output's dtype."""
        if skip.dtype == torch.uint8:
            one = self.skip_int8(skip) + self.skip_constant
        else:
            one = F.conv2d(skip, self.skip_weight.to(skip.dtype), None, 1, self.padding).float() + self.constant
        b, c, h, w = one.shape
        acc = torch.empty((b * n, c, h, w), dtype=dtype, memory_format=torch.channels_last)
        acc.permute(0, 2, 3, 1).view(b, n, h, w, c).copy_(one.permute(0, 2, 3, 1)[:, None])
        return acc

    def __call__(self, q: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        """q (B * N, in, H, W) uint8 channels_last -> ReLU(conv(q) + acc) in acc's dtype."""
        return self.conv.plus(q, acc)


class _Int8Encoder:
    """The condition encoder folded and in int8: the CVAE's normalised L (B, 1, 64, 64) -> r_1..r_3 quantized
    (uint8 (B, C, H, W) channels_last, at 32, 16, 8 px) and the features f4 (B, 1024, 4, 4) float32. Its first
    convolution (one input channel) stays float; the others are u8 x s8 with their input's fixed map (the
    previous BN's shift through them) as the fused sum."""

    def __init__(self, cvae: InferenceCVAE, scales: list[float]):
        layers = _encoder_layers(cvae)
        folded = [_bn_scale_shift(bn) for _, bn in layers]
        self.betas = [beta.float() for _, beta in folded]
        out_scales = scales + [1.0]                       # r_4 in its own units: f4 = r_4 + beta_4, float
        conv1 = layers[0][0]
        post1 = (folded[0][0] / out_scales[0]).float()
        self.w1 = (conv1.weight.float() * post1[:, None, None, None]).contiguous(memory_format=torch.channels_last)
        self.b1, self.stride1, self.padding1 = conv1.bias.float() * post1, conv1.stride[0], conv1.padding[0]
        self.convs, self.constants = [], []
        size = 64 // conv1.stride[0]
        for i, (conv, _) in enumerate(layers[1:], start=1):
            post = folded[i][0] / out_scales[i]
            w = conv.weight * post[:, None, None, None]
            self.convs.append(Int8Conv(w, None, scales[i - 1], conv.stride[0], conv.padding[0]))
            # bias + the previous BN's shift through this convolution: a map (zero padding), output units
            self.constants.append((F.conv2d(_beta_map(folded[i - 1][1].double(), size), conv.weight.double(),
                                            None, conv.stride, conv.padding)[0] * post[:, None, None]
                                   + (conv.bias * post)[:, None, None]).float())
            size //= conv.stride[0]

    def __call__(self, grey: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # conv1: 1 input channel, 3 M multiply-adds per photo: float; quantizing clamps at 0, its ReLU
        q = _to_u8(F.conv2d(grey.float(), self.w1, self.b1, self.stride1, self.padding1))
        quantized = [q]
        for i, (conv, constant) in enumerate(zip(self.convs, self.constants)):
            b = q.shape[0]
            acc = constant.expand(b, *constant.shape).contiguous(memory_format=torch.channels_last)
            r = conv.plus(q, acc)
            if i < len(self.convs) - 1:
                q = _to_u8(r)
                quantized.append(q)
        f4 = r + self.betas[3][:, None, None]
        return (*quantized, f4)


def _to_u8(x: torch.Tensor) -> torch.Tensor:
    """float32 in quantization units -> uint8, rounded and clamped: one vectorised pass (the composite
    round/clamp/cast took 7x longer). torch marks quantize_per_tensor deprecated; this torch has it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_tensor(x, 1.0, 0, torch.quint8).int_repr()


class Int8Decoder:
    """z (B, N, latent) + the CVAE's normalised L (B, 1, 64, 64) -> ab (B * N, 2, 64, 64) float32, on the CPU;
    the same function as ``Decoder.forward_samples`` after the condition encoder, up to quantization."""

    @torch.no_grad()
    def __init__(self, cvae: InferenceCVAE, ranges: tuple[float, ...]):
        dec = cvae.decoder
        if len(ranges) not in (QUANTIZED_INPUTS, QUANTIZED_INPUTS + ENCODER_QUANTIZED_INPUTS):
            raise Int8Error(f"the int8 calibration has {len(ranges)} decoder ranges, not {QUANTIZED_INPUTS} "
                            f"(or {QUANTIZED_INPUTS + ENCODER_QUANTIZED_INPUTS} with the condition encoder's): "
                            "it was made for another model")
        # files from before the condition encoder had ranges: it stays float
        encoder_scales = [r / 255 for r in ranges[QUANTIZED_INPUTS:]]
        if not foldable(dec, cvae if encoder_scales else None):
            raise Int8Error("this decoder has BatchNorm scales <= 0: its layers do not fold for int8")
        self.cvae = cvae
        self.encoder = _Int8Encoder(cvae, encoder_scales) if encoder_scales else None
        scales = [r / 255 for r in ranges[:QUANTIZED_INPUTS]] + [1.0]   # conv4's output feeds float conv5
        folded = [_bn_scale_shift(bn) for _, bn in _layers(dec)]
        self.g1 = folded[0][0] / scales[0]
        w1x, w1s = _split(dec.conv1, dec.latent)
        self.w1x = w1x.contiguous(memory_format=torch.channels_last)
        self.w1s, self.b1, self.padding1 = w1s, dec.conv1.bias.float(), dec.conv1.padding[0]
        self.convs = []
        channels, size = dec.conv1.out_channels, 8          # conv2 runs at 8 x 8, each next one at twice that
        # the skip features of conv2, conv3, conv4: the encoder's r_3, r_2, r_1 (+ their BN shifts)
        encoder_bn = [_bn_scale_shift(bn) for _, bn in _encoder_layers(cvae)]
        for i, (conv, _) in enumerate(_layers(dec)[1:], start=1):
            skip = QUANTIZED_INPUTS - i                     # the encoder layer whose features it takes
            self.convs.append(_QuantConv(conv, channels, size, folded[i][0], folded[i - 1][1], scales[i - 1],
                                         scales[i], encoder_bn[skip][1],
                                         encoder_scales[skip] if encoder_scales else None))
            channels, size = conv.out_channels, size * 2
        w5 = dec.conv5.weight.float()
        self.w5 = w5.contiguous(memory_format=torch.channels_last)
        self.constant5 = F.conv2d(_beta_map(folded[3][1], 64), w5, dec.conv5.bias.float(), 1,
                                  dec.conv5.padding)                                    # (1, 2, 64, 64)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, grey: torch.Tensor, bf16: bool) -> torch.Tensor:
        b, n, d = z.shape
        if self.encoder is not None:
            *skips, f4 = self.encoder(grey)                 # r_1, r_2, r_3 uint8; f4 float32
            f32, f16, f8 = skips
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):   # 75 M multiply-adds per photo
                f4s = F.conv2d(f4, self.w1s, self.b1, 1, self.padding1)
        else:
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
