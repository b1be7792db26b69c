"""The seed's networks: the conditional VAE over the ab field and the MDN over VGG features."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class CVAEConfig:
    latent: int = 64
    image_size: int = 64  # the ab field is (2, 64, 64); the encoder ends at 4x4
    encoder_dropout: float = 0.7

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MDNConfig:
    latent: int = 64
    components: int = 8
    feature_channels: int = 512  # VGG16 relu4_3
    dropout: float = 0.7

    def to_dict(self) -> dict:
        return asdict(self)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """The decoder's upsampling: bilinear x2, align_corners=False (the seed's)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


#: bilinear x2 (align_corners=False) as taps on the input grid: output 2m + c takes these (offset, weight)
_UP2_TAPS = {0: ((-1, 0.25), (0, 0.75)), 1: ((0, 0.75), (1, 0.25))}


def _phase_weight(weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A k x k convolution's weight (O, C, k, k) -> the weight (4 O, C, K, K) that gives, on the input grid,
    the 4 output phases (channels o, then row phase, then column phase) of that convolution applied to the
    bilinear x2 upsampling; and K's half-width."""
    k = weight.shape[-1]
    r = k // 2
    taps = [[(q // 2 + s, v) for s, v in _UP2_TAPS[q % 2]] for q in range(-r, r + 2)]   # U index 2i + q
    half = max(abs(d) for row in taps for d, _ in row)
    phase = torch.zeros(2, k, 2 * half + 1, dtype=torch.float64)                      # [phase, tap, offset]
    for a in range(2):
        for t in range(k):
            for d, v in taps[a + t]:
                phase[a, t, d + half] += v
    phase = phase.to(weight.dtype)
    out = torch.einsum("ocyx,ayd,bxe->oabcde", weight, phase, phase)                   # (O, 2, 2, C, K, K)
    return out.reshape(-1, weight.shape[1], 2 * half + 1, 2 * half + 1), half


def _border_kernels(weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """For ``upsampled_conv``'s border: a k x k weight (O, C, k, k) -> the weights, summed over the taps that
    fall outside the image, for the r = k // 2 output rows (columns) nearest each edge: top (r O, C, 1, k),
    bottom, left (r O, C, k, 1), right; output channel i O + o is row (column) i from that edge, filter o."""
    r = weight.shape[-1] // 2

    def beyond(dim: int, near: bool) -> torch.Tensor:
        # output row i from the edge: the taps t < -i (top) or t > i (bottom) of the centred kernel fall outside
        parts = [weight.narrow(dim, 0, r - i) if near else weight.narrow(dim, r + i + 1, r - i) for i in range(r)]
        return torch.cat([p.sum(dim, keepdim=True) for p in parts], 0)

    return beyond(2, True), beyond(2, False), beyond(3, True), beyond(3, False)


def upsampled_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv2d(bilinear x2 upsampling of x, weight, bias, padding k // 2), stride 1, odd k: x (M, C, H, W) ->
    (M, O, 2H, 2W), computed on x's grid. Each of the output's 4 phases (even/odd rows and columns) is a fixed
    mix of x's neighbours, so the 4 are one convolution of x with 4 O output channels, interleaved by
    pixel_shuffle: no upsampled image, and for the decoder's last layer (O = 2, where oneDNN computes 16
    channels either way) 4x fewer products; 41 against 162 ms per 128 samples in bf16 on one thread of a
    2-core AMD EPYC (the border done the direct way on strips instead, as first written: ~87).

    The border: x padded by replication makes that convolution see the upsampled image U padded by
    replication, where the layer pads it with zeros. The difference is the convolution of U's replicated
    edge alone, which touches only the k // 2 output rows and columns nearest each edge: there the kernel's
    taps that fall outside, summed, meet U's edge row (column) along it, a 1-D convolution of that row
    (U's top row is x's, upsampled along it). Taps outside both ways (the corners) count with the rows.
    The same function up to float rounding (tests/test_models.py, in fp64)."""
    k = weight.shape[-1]
    r = k // 2
    o = weight.shape[0]
    phase_weight, half = _phase_weight(weight.double())   # products in fp64, then the caller's dtype
    phase_weight = phase_weight.to(weight.dtype)
    padded = F.pad(x, (half, half, half, half), mode="replicate")     # the upsampling's own edge clamp
    y = F.pixel_shuffle(F.conv2d(padded, phase_weight, None if bias is None else bias.repeat_interleave(4)), 2)
    top, bottom, left, right = (w.to(weight.dtype) for w in _border_kernels(weight.double()))
    m, _, h2, w2 = y.shape
    # output channel i O + o of a correction is row (column) i from its edge: as (M, O, r, 2W) ((M, O, 2H, r))
    for row, kernel, near in ((x[:, :, :1], top, True), (x[:, :, -1:], bottom, False)):
        edge = F.interpolate(row, size=(1, w2), mode="bilinear", align_corners=False)   # U's edge row
        fix = F.conv2d(F.pad(edge, (r, r, 0, 0), mode="replicate"), kernel).reshape(m, r, o, w2).transpose(1, 2)
        if near:
            y[:, :, :r] -= fix
        else:
            y[:, :, h2 - r:] -= fix.flip(2)
    for col, kernel, near in ((x[..., :1], left, True), (x[..., -1:], right, False)):
        edge = F.interpolate(col, size=(h2, 1), mode="bilinear", align_corners=False)   # U's edge column
        # zero padding along it: the taps outside both ways were counted with the rows
        fix = F.conv2d(edge, kernel, padding=(r, 0)).reshape(m, r, o, h2).permute(0, 2, 3, 1)
        if near:
            y[..., :r] -= fix
        else:
            y[..., w2 - r:] -= fix.flip(3)
    return y


def _conv_bn(cin: int, cout: int, k: int, stride: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), nn.BatchNorm2d(cout)


class ConditionEncoder(nn.Module):
    """Grey level L (B, 1, 64, 64) -> skip features at 32, 16, 8 and 4 px (128, 256, 512, 1024 ch)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(1, 128, 5, 2)
        self.conv2, self.bn2 = _conv_bn(128, 256, 5, 2)
        self.conv3, self.bn3 = _conv_bn(256, 512, 5, 2)
        self.conv4, self.bn4 = _conv_bn(512, 1024, 3, 2)

    def forward(self, grey: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the seed applies ReLU before BatchNorm throughout
        f32 = self.bn1(F.relu(self.conv1(grey)))
        f16 = self.bn2(F.relu(self.conv2(f32)))
        f8 = self.bn3(F.relu(self.conv3(f16)))
        f4 = self.bn4(F.relu(self.conv4(f8)))
        return f32, f16, f8, f4


class ColorEncoder(nn.Module):
    """ab field (B, 2, 64, 64) -> posterior mean and log-variance (B, latent) each. Training only."""

    def __init__(self, cfg: CVAEConfig):
        super().__init__()
        self.latent = cfg.latent
        self.conv1, self.bn1 = _conv_bn(2, 128, 5, 2)
        self.conv2, self.bn2 = _conv_bn(128, 256, 5, 2)
        self.conv3, self.bn3 = _conv_bn(256, 512, 5, 2)
        self.conv4, self.bn4 = _conv_bn(512, 1024, 3, 2)
        self.dropout = nn.Dropout(cfg.encoder_dropout)
        self.fc = nn.Linear(4 * 4 * 1024, 2 * cfg.latent)

    def forward(self, ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.bn1(F.relu(self.conv1(ab)))
        x = self.bn2(F.relu(self.conv2(x)))
        x = self.bn3(F.relu(self.conv3(x)))
        x = self.bn4(F.relu(self.conv4(x)))
        x = self.fc(self.dropout(x.flatten(1)))
        return x[:, : self.latent], x[:, self.latent:]


class Decoder(nn.Module):
    """Latent z (B, latent) + condition features -> ab field (B, 2, 64, 64) in [-1, 1]."""

    def __init__(self, cfg: CVAEConfig):
        super().__init__()
        self.latent = cfg.latent
        self.conv1, self.bn1 = _conv_bn(1024 + cfg.latent, 512, 3, 1)
        self.conv2, self.bn2 = _conv_bn(512 * 2, 256, 5, 1)
        self.conv3, self.bn3 = _conv_bn(256 * 2, 128, 5, 1)
        self.conv4, self.bn4 = _conv_bn(128 * 2, 64, 5, 1)
        self.conv5 = nn.Conv2d(64, 2, 5, stride=1, padding=2)

    def forward(self, z: torch.Tensor, f32, f16, f8, f4) -> torch.Tensor:
        """z (B, latent) + the condition features of the same B images -> ab (B, 2, 64, 64)."""
        return self._layers(z, (f32, f16, f8, f4), lambda conv, x, skip: conv(torch.cat([x, skip], 1)))

    def forward_samples(self, z: torch.Tensor, f32, f16, f8, f4, polyphase: bool = False) -> torch.Tensor:
        """N latents per image: z (B, N, latent) + one image's features each -> ab (B * N, 2, 64, 64).
        ``polyphase``: the last layer as ``upsampled_conv`` (faster on a CPU; inference).

        The same function as ``forward`` on features repeated N times, computed with less work: a
        convolution of a concatenation is the sum of the convolutions of its parts, and the skip-feature
        part is the same for all N samples of an image, so it runs once per image (about 10 of the 22
        GFLOP of 8 samples).
        """
        b, n, d = z.shape

        def conv_split(conv: nn.Conv2d, per_sample: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            c = per_sample.shape[1]                 # per_sample (B*N, c, h, w), skip (B, C - c, h, w)
            y = F.conv2d(per_sample, conv.weight[:, :c], None, conv.stride, conv.padding)
            shared = F.conv2d(skip, conv.weight[:, c:], conv.bias, conv.stride, conv.padding)
            return (y.unflatten(0, (b, n)) + shared[:, None]).flatten(0, 1)

        return self._layers(z.reshape(b * n, d), (f32, f16, f8, f4), conv_split, polyphase)

    def _layers(self, z: torch.Tensor, skips: tuple, conv_with_skip, polyphase: bool = False) -> torch.Tensor:
        """The layer chain; ``conv_with_skip(conv, x, skip)`` applies ``conv`` to x concatenated with skip."""
        f32, f16, f8, f4 = skips
        # (B, latent, 1, 1) -> (B, latent, 4, 4): the seed's bilinear x4 of a 1x1 map is that value everywhere,
        # so a broadcast (equal up to the interpolation's float rounding; CUDA's upsampling kernel for this shape
        # took 12% of the model's GPU time at batch 256)
        x = z.reshape(-1, self.latent, 1, 1).expand(-1, -1, 4, 4).contiguous(memory_format=torch.channels_last)
        x = self.bn1(F.relu(conv_with_skip(self.conv1, x, f4)))                  # (B, 512, 4, 4)
        x = self.bn2(F.relu(conv_with_skip(self.conv2, upsample2(x), f8)))     # (B, 256, 8, 8)
        x = self.bn3(F.relu(conv_with_skip(self.conv3, upsample2(x), f16)))    # (B, 128, 16, 16)
        x = self.bn4(F.relu(conv_with_skip(self.conv4, upsample2(x), f32)))    # (B, 64, 32, 32)
        if polyphase:
            return torch.tanh(upsampled_conv(x, self.conv5.weight, self.conv5.bias))
        return torch.tanh(self.conv5(upsample2(x)))                             # (B, 2, 64, 64)


class CVAE(nn.Module):
    """The conditional VAE of the seed: colour encoder, condition encoder on L, decoder with skips."""

    def __init__(self, cfg: CVAEConfig = CVAEConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder = ColorEncoder(cfg)
        self.cond_encoder = ConditionEncoder()
        self.decoder = Decoder(cfg)

    def forward(self, ab: torch.Tensor, grey: torch.Tensor, z: torch.Tensor | None = None,
                eps: torch.Tensor | None = None):
        """Training pass: sample z = mu + eps * sigma from the posterior (eps ~ N(0, I) unless given, (B,
        latent)), or use ``z``; returns mu, logvar, ab_out."""
        mu, logvar = self.encoder(ab)
        if z is None:
            eps = torch.randn_like(mu) if eps is None else eps.to(mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)
        return mu, logvar, self.decoder(z, *self.cond_encoder(grey))

    def decode(self, z: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
        """Inference: z (B, latent) and L (B, 1, 64, 64) -> ab (B, 2, 64, 64)."""
        return self.decoder(z, *self.cond_encoder(grey))


class InferenceCVAE(nn.Module):
    """The inference half of the CVAE: condition encoder + decoder (the colour encoder is training-only).
    Its state dict is the CVAE's without ``encoder.*``: bundles keep only this half."""

    def __init__(self, cfg: CVAEConfig = CVAEConfig()):
        super().__init__()
        self.cfg = cfg
        self.cond_encoder = ConditionEncoder()
        self.decoder = Decoder(cfg)

    def forward(self, z: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, *self.cond_encoder(grey))


class MDN(nn.Module):
    """VGG relu4_3 features (B, 512, 28, 28) -> mixture params (B, components * (latent + 1))."""

    def __init__(self, cfg: MDNConfig = MDNConfig()):
        super().__init__()
        self.cfg = cfg
        chans = [cfg.feature_channels, 384, 320, 288, 256, 128, 96, 64]
        strides = [1, 1, 1, 2, 1, 2, 2]
        layers: list[nn.Module] = []
        for cin, cout, stride in zip(chans[:-1], chans[1:], strides):
            layers += [nn.Conv2d(cin, cout, 5, stride=stride, padding=2), nn.BatchNorm2d(cout), nn.ReLU()]
        layers.append(nn.Dropout(cfg.dropout))
        self.model = nn.Sequential(*layers)  # (B, 64, 4, 4)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(4 * 4 * 64, cfg.components * (cfg.latent + 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.model(feats).flatten(1)
        # the seed drops out twice (inside the stack and again before fc); kept for fidelity
        return self.fc(self.dropout(F.relu(x)))

    def mixture(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Means (B, components, latent) and weights (B, components)."""
        return split_mixture(self(feats), self.cfg.components, self.cfg.latent)


def split_mixture(params: torch.Tensor, components: int, latent: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MDN output (B, K*(D+1)) -> means (B, K, D), weights pi (B, K): the first K*D are means, as the seed."""
    means = params[:, : components * latent].reshape(-1, components, latent)
    weights = F.softmax(params[:, components * latent:].float(), dim=1)
    return means, weights


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
