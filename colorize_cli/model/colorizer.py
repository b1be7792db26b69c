"""Colorizing arrays: MDN mixture -> latent codes -> CVAE decoder -> ab, merged with the full-res L.

Knows nothing of files, folders, progress bars or exit codes (``colorize_cli.api`` adds paths, ``engine``
and ``cli`` the rest).
"""

from __future__ import annotations

import os
import time
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch

from .bundle import load_run
from .color import CVAE_SIZE, VGG_SIZE, grey_from_l, normalize_u8
from .device import autocast, cpu_has_amx, cpu_has_fast_bf16, resolve_device, to_host, upload
from .graphs import GraphedCall, graph_batch
from .int8 import (
    Int8Calibration,
    Int8Error,
    Int8Mixture,
    calibration_path,
    default_int8,
    int8_supported,
)
from .int8_decoder import Int8Decoder
from .networks import MDN, InferenceCVAE  # noqa: F401  (InferenceCVAE: re-exported)
from .preprocess import model_views
from .registry import ModelNotFoundError, model_name, resolve_model  # noqa: F401  (callers catch it from here)
from .render import merge, sheets_on_device
from .vgg import GreyVGGFeatures

#: B images of one size: a (B, H, W) array or a sequence of B (H, W) arrays
ImageBatch = Union[np.ndarray, Sequence[np.ndarray]]
#: the MDN loss's fixed isotropic sigma (distance scale 50 = 1 / (2 * 0.1^2)); used to draw beyond the means
MIXTURE_SIGMA = 0.1


@dataclass
class Prediction:
    """Samples for one image, most probable first."""

    ab: np.ndarray        # (N, 2, 64, 64) float32, normalised ab
    weights: np.ndarray   # (N,) mixture weight of the component each sample came from
    sheet: np.ndarray | None = None   # (sheet_H, sheet_W, 3 or 4) uint8, when merged on the device


@dataclass
class PreparedImage:
    """An image split into what the model needs and what the output needs."""

    l_full: np.ndarray   # (H, W) uint8 OpenCV L at full resolution
    l64: np.ndarray      # (64, 64) uint8
    l224: np.ndarray     # (224, 224) uint8


ACCEPTED = "a grey (H, W) or (H, W, 1), BGR (H, W, 3) or BGRA (H, W, 4) uint8 or uint16 array"


def as_bgr(image) -> tuple[np.ndarray, np.ndarray | None]:
    """An array a user has -> (BGR uint8 (H, W, 3), alpha (H, W) or None); ValueError for anything else."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected {ACCEPTED}; got {type(image).__name__}")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"expected {ACCEPTED}; got a {image.dtype} array")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2 and image.size:
        return np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2)), None
    if image.ndim == 3 and image.shape[2] == 3 and image.size:
        return np.ascontiguousarray(image), None
    if image.ndim == 3 and image.shape[2] == 4 and image.size:
        return np.ascontiguousarray(image[..., :3]), np.ascontiguousarray(image[..., 3])
    raise ValueError(f"expected {ACCEPTED}; got an array of shape {image.shape}")


def prepare(bgr: np.ndarray) -> PreparedImage:
    lab, lab64, l224 = model_views(bgr)
    return PreparedImage(np.ascontiguousarray(lab[..., 0]), np.ascontiguousarray(lab64[..., 0]), l224)


#: --vividness: at most this many times the model's chroma
MAX_VIVIDNESS = 2.0
#: where the seed's normalised ab (x * 2 / 255 - 1) is grey: OpenCV's 8-bit a = b = 128
_GREY_AB = float(normalize_u8(np.uint8(128)))


def scale_chroma(ab: torch.Tensor, factor: float) -> torch.Tensor:
    """ab (..., 2, H, W) normalised -> the same hues with their distance from grey times ``factor`` (0: grey,
    1: unchanged), kept inside the normalised range. A user's knob on the result, not a fix for faint
    colours: a uniform gain moves wrong hues as much as right ones."""
    return (_GREY_AB + (ab - _GREY_AB) * factor).clamp(-1.0, 1.0)


class Colorizer:
    """MDN + CVAE decoder + VGG features, on one device, colorizing batches of grey images."""

    def __init__(self, cvae: InferenceCVAE, mdn: MDN, vgg: GreyVGGFeatures, device: torch.device,
                 bf16: bool = False, info: dict | None = None, compile_backend: str | None = None,
                 cuda_graphs: bool | None = None, int8: Int8Calibration | None = None,
                 cpu_streams: int | None = None, int8_decoder: bool | None = None):
        self.device = device
        self.bf16 = bf16
        self.int8 = int8 is not None
        # channels_last: oneDNN's fast convolution layout (the decoder measured 25 -> 11.5 ms per image for 8
        # samples in bf16 on this project's 2-core AMX CPU); the same numbers up to float rounding
        self.cvae = cvae.to(device, memory_format=torch.channels_last).eval()
        self.mdn = mdn.to(device, memory_format=torch.channels_last).eval()
        self.vgg = vgg.to(device).eval()
        self.info = info or {}
        for p in self.parameters():
            p.requires_grad_(False)
        if device.type == "cuda":
            # fixed input sizes (224, 64) at a few batch sizes: let cuDNN time its algorithms once per shape
            torch.backends.cudnn.benchmark = True
        # torch.compile (``compile_backend``, e.g. "inductor"): the networks fused into fewer kernels; on an H100
        # 6,421 against 3,566 img/s eager (benchmarks/bench_cuda_variants.py). dynamic=False compiles one graph
        # per input shape, so batches are padded to the largest batch seen (a short last batch costs no compile)
        self.compile_backend = compile_backend
        self._mixture_net, self._decode_net = self._mixture_eager, self._decode_eager
        self.int8_decoder: Int8Decoder | None = None
        if int8 is not None:
            # VGG + MDN as oneDNN int8 convolutions (int8.py); the CVAE decoder's per-sample convolutions too
            # where the calibration has their ranges (int8_decoder.py), else it stays as it is (bf16 or fp32)
            if device.type != "cpu":
                raise Int8Error("int8 inference is for CPUs (oneDNN); on a GPU use bf16 (the default there)")
            if not int8_supported():
                raise Int8Error("this torch build has no oneDNN int8 convolutions (torch.ops.onednn.qconv2d_pointwise)")
            self._mixture_net = Int8Mixture(self.vgg, self.mdn, int8)
            # the CVAE in int8 (``int8_decoder``, default: where it pays): on a 2-core AVX-512 VNNI CPU
            # without AMX, condition encoder + decoder 32 against 55 ms per photo in bf16; with AMX the bf16
            # decoder took 11.5 ms, less than the int8 one's float upsampling and quantizing alone, so it
            # stays bf16 there
            if int8_decoder is None:
                int8_decoder = not cpu_has_amx()
            if int8.decoder_ranges and int8_decoder and not compile_backend:
                self.int8_decoder = Int8Decoder(self.cvae, int8.decoder_ranges)
                self._decode_net = self._decode_int8
        if compile_backend:
            if int8 is None:
                self._mixture_net = torch.compile(self._mixture_eager, backend=compile_backend, dynamic=False)
            self._decode_net = torch.compile(self._decode_eager, backend=compile_backend, dynamic=False)
        # CUDA graphs (default on a GPU, see graphs.py): the networks' launches replayed in one call per batch;
        # batches padded to a few sizes, each captured once
        self.cuda_graphs = device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs:
            if device.type != "cuda":
                raise ValueError("CUDA graphs need a CUDA device")
            self._mixture_net = GraphedCall(self._mixture_net, device, key=lambda: self.bf16)
            self._decode_net = GraphedCall(self._decode_net, device, key=lambda: self.bf16)
        self._padded_batch = 0
        # CPU streams: batches run in this many threads at once, each on its share of the cores (a pipelined
        # caller keeps two batches queued). One batch on both cores waits at every layer for the slower thread,
        # and the decode and write threads preempt one or the other; two single-threaded batches do not wait on
        # each other. End to end on this project's 2-core CPU (jpg sheets, paired runs): with --int8 12-18
        # against 10.5-12.3 img/s; in bf16 from even to +30% (README, Speed)
        cores = torch.get_num_threads()
        if cpu_streams is None:
            cpu_streams = 2 if device.type == "cpu" and cores >= 2 and not compile_backend else 1
        self.cpu_streams = cpu_streams if device.type == "cpu" else 1
        self._cpu_pool = None
        if self.cpu_streams > 1:
            from concurrent.futures import ThreadPoolExecutor

            per_stream = max(1, cores // self.cpu_streams)
            self._cpu_pool = ThreadPoolExecutor(self.cpu_streams, thread_name_prefix="colorize-model",
                                                initializer=torch.set_num_threads, initargs=(per_stream,))
        # the per-pixel input mappings as 256-entry tables on the device, looked up there: OpenCV L -> the grey
        # image VGG sees (B, 224, 224) uint8, and -> the CVAE's normalised grey (B, 64, 64) float32. The batch
        # goes up as uint8 (the batch loop's thread no longer maps and copies it on the host)
        levels = np.arange(256, dtype=np.uint8)
        self._vgg_grey = torch.from_numpy(grey_from_l(levels)).to(device)
        self._cvae_grey = torch.from_numpy(normalize_u8(levels)).to(device)

    @property
    def merges_on_device(self) -> bool:
        """Whether full-resolution sheets are best merged on this device (a GPU) rather than by the CPU."""
        return self.device.type == "cuda"

    def parameters(self):
        for m in (self.cvae, self.mdn, self.vgg):
            yield from m.parameters()

    @property
    def components(self) -> int:
        return self.mdn.cfg.components

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, device: torch.device | str = "auto",
             bf16: bool | None = None, compile_backend: str | None = None, cuda_graphs: bool | None = None,
             int8: bool | None = None, cpu_streams: int | None = None,
             int8_decoder: bool | None = None) -> "Colorizer":
        """From a bundled model's name (``general``, the default, or ``faces``), a training run folder
        (vae.pt + mdn.pt) or a bundle folder.

        ``int8``: VGG + MDN in int8 on the CPU, with the activation ranges in the model folder's int8.json
        (``colorize calibrate``); ``int8_decoder``: with it, the decoder's per-sample convolutions too where
        int8.json has their ranges (default: on CPUs without AMX, where that is faster)."""
        # the CLI's defaults: CUDA if present, bf16 where it is fast, int8 (None) where the CPU's int8 is
        device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        if bf16 is None:
            bf16 = device.type == "cuda" or cpu_has_fast_bf16()
        path = resolve_model(model)
        if int8 is None:
            int8 = default_int8(device, path)
        calibration = None
        if int8:
            if not calibration_path(path).is_file():
                raise Int8Error(f"no int8 calibration for the model in {path} (no {calibration_path(path).name}): "
                                f"make one with `colorize calibrate PHOTOS --model {path}`")
            calibration = Int8Calibration.load(calibration_path(path))
        cvae, mdn, vgg, info = load_run(path)
        info = {**info, "model": model_name(path)}   # named in every output's record
        return cls(cvae, mdn, vgg, device, bf16, info, compile_backend, cuda_graphs, calibration, cpu_streams,
                   int8_decoder)

    @torch.no_grad()
    def mixture(self, l224: ImageBatch, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """L at 224 ((B, 224, 224) uint8, or B such arrays) -> means (rows, K, D), weights (rows, K), on the
        device, float32; rows past B (padding, default none) are blank images."""
        l_device = upload(l224, self.device, rows)
        return self._mixture_net(self._vgg_grey[l_device.long()])

    def _mixture_eager(self, grey: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # grey (B, 224, 224) uint8 on the device
        with autocast(self.device, self.bf16):
            means, weights = self.mdn.mixture(self.vgg(grey))
        return means.float(), weights.float()

    @staticmethod
    def choose_latents(means: torch.Tensor, weights: torch.Tensor, samples: int,
                       generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (B, N, D) and their component weights (B, N), most probable component first.

        The first min(N, K) are the K component means sorted by weight (as the paper shows them); any
        further ones are drawn from the mixture: a component by its weight, then its mean plus
        Gaussian noise of the MDN loss's fixed sigma 0.1.
        """
        order = torch.argsort(weights, dim=1, descending=True)
        means = torch.gather(means, 1, order[..., None].expand_as(means))
        weights = torch.gather(weights, 1, order)
        k = means.shape[1]
        if samples <= k:
            return means[:, :samples], weights[:, :samples]
        extra_z, extra_w = [], []
        for i, gen in enumerate(generators):
            w = weights[i].cpu()
            comp = torch.multinomial(w, samples - k, replacement=True, generator=gen)
            noise = torch.randn(samples - k, means.shape[2], generator=gen) * MIXTURE_SIGMA
            extra_z.append(means[i].cpu()[comp] + noise)
            extra_w.append(w[comp])
        z = torch.cat([means, torch.stack(extra_z).to(means.device)], 1)
        return z, torch.cat([weights, torch.stack(extra_w).to(weights.device)], 1)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, l64: ImageBatch) -> torch.Tensor:
        """Latents (B', N, D) + L at 64 ((B, 64, 64) uint8, or B such arrays; B <= B', the rest blank padding)
        -> ab (B', N, 2, 64, 64) float32 on the device."""
        b, n, _ = z.shape
        grey = self._cvae_grey[upload(l64, self.device, b).long()][:, None]       # (B', 1, 64, 64)
        ab = self._decode_net(z.to(self.device), grey)
        return (ab[0] if isinstance(ab, tuple) else ab).reshape(b, n, 2, CVAE_SIZE, CVAE_SIZE)

    def _decode_eager(self, z: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
        # z (B, N, D), grey (B, 1, 64, 64) float on the device -> ab (B * N, 2, 64, 64) float32
        with autocast(self.device, self.bf16):
            # the condition encoder (and the decoder's convolutions of its features) once per image,
            # the rest of the decoder once per sample
            feats = self.cvae.cond_encoder(grey)
            # the last layer on the input grid (networks.upsampled_conv) on a CPU, where it halves that layer
            ab = self.cvae.decoder.forward_samples(z, *feats, polyphase=self.device.type == "cpu")
        return ab.float()

    def _decode_int8(self, z: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
        return self.int8_decoder(z, grey, self.bf16)

    def predict(self, l64: ImageBatch, l224: ImageBatch, samples: int = 8, seeds: list[int] | None = None,
                full: list[tuple[np.ndarray, np.ndarray | None] | None] | None = None,
                vividness: float = 1.0) -> list[Prediction]:
        """A batch of L images at model size ((B, 64, 64) and (B, 224, 224) uint8, or lists of B arrays)
        -> N samples each, most probable first.

        ``full``: per image, (L (H, W) uint8 at full resolution, alpha (H, W) or None) to get its whole
        sheet merged here on the model's device (``Prediction.sheet``), or None to leave merging to the caller.
        """
        return self._predict_here(l64, l224, samples, seeds, full, vividness).result()   # here, on all threads

    def predict_async(self, l64: ImageBatch, l224: ImageBatch, samples: int = 8, seeds: list[int] | None = None,
                      full: list[tuple[np.ndarray, np.ndarray | None] | None] | None = None,
                      vividness: float = 1.0) -> "PendingPredictions | QueuedPredictions":
        """``predict``, queued: on a GPU it returns once the batch's work is queued, with CPU streams once it
        is handed to a stream's thread, so the caller can prepare the next batch (or write the last one)
        meanwhile; ``.result()`` waits for it."""
        if self._cpu_pool is not None:
            return QueuedPredictions(self._cpu_pool.submit(self._predict_here, l64, l224, samples, seeds, full,
                                                           vividness))
        return self._predict_here(l64, l224, samples, seeds, full, vividness)

    def close(self) -> None:
        """End the CPU streams' threads (after the batches given to them): a colorizer that is done with.
        Predicting after this runs each batch in the caller's thread."""
        pool, self._cpu_pool = self._cpu_pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    @property
    def runs_concurrently(self) -> bool:
        """Whether predict_async returns before the batch is done (a GPU, or CPU streams)."""
        return self.device.type == "cuda" or self._cpu_pool is not None

    def _predict_here(self, l64: ImageBatch, l224: ImageBatch, samples: int, seeds: list[int] | None,
                      full: list | None, vividness: float = 1.0) -> "PendingPredictions":
        count = len(l64)
        seeds = list(seeds) if seeds is not None else [0] * count
        if self.compile_backend or self.cuda_graphs:
            # few input shapes: padded with blank images, their results dropped. Compiled: one shape (a compile
            # takes ~20 s), the largest batch so far; graphs (a capture takes ~1 s): the next power of two
            # unless that is larger
            self._padded_batch = max(self._padded_batch, count)
            rows = self._padded_batch if self.compile_backend else min(graph_batch(count), self._padded_batch)
            seeds += [0] * (rows - count)
        means, weights = self.mixture(l224, len(seeds))
        # the seeds matter only for draws beyond the K means (a generator per image is not free in this loop)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds] if samples > self.components else []
        z, w = self.choose_latents(means, weights, samples, generators)
        ab_device, w = self.decode(z, l64)[:count], w[:count]
        if vividness != 1.0:
            ab_device = scale_chroma(ab_device, vividness)
        wanted = [i for i, f in enumerate(full or []) if f is not None]
        sheets = (sheets_on_device([full[i][0] for i in wanted], [full[i][1] for i in wanted], ab_device[wanted])
                  if wanted else [])
        return PendingPredictions(self.device, to_host(ab_device), to_host(w), dict(zip(wanted, sheets)))

    def warm_up(self, batch: int, samples: int = 8) -> float:
        """One blank batch through the networks (compiling them, if asked, and letting cuDNN choose its
        algorithms), so a run's first real batch does not wait for that. Returns the seconds it took."""
        t0 = time.perf_counter()
        self.predict(np.zeros((batch, CVAE_SIZE, CVAE_SIZE), np.uint8), np.zeros((batch, VGG_SIZE, VGG_SIZE), np.uint8),
                     samples)
        return time.perf_counter() - t0

    def colorize(self, image: np.ndarray, samples: int = 8, seed: int = 0,
                 vividness: float = 1.0) -> tuple[list[np.ndarray], np.ndarray]:
        """One photo -> ``samples`` full-resolution colorizations, most probable first, and their weights.

        ``image``: a grey (H, W) or (H, W, 1) array, a BGR (H, W, 3) or BGRA (H, W, 4) array (uint8, or
        uint16 scaled to 8 bits; BGRA keeps its alpha: the results are then BGRA too). Returns (list of
        ``samples`` uint8 arrays (H, W, 3 or 4), weights (samples,) float32).
        ``vividness``: 1 the model's colours, 0 grey, up to 2 (``scale_chroma``).
        Anything else raises ValueError saying what is accepted.
        """
        bgr, alpha = as_bgr(image)
        prep = prepare(bgr)
        pred = self.predict(prep.l64[None], prep.l224[None], samples, [seed], vividness=vividness)[0]
        outs = [merge(prep.l_full, ab) for ab in pred.ab]
        if alpha is not None:
            outs = [np.dstack([o, alpha]) for o in outs]
        return outs, pred.weights


@dataclass
class LoadOptions:
    """How to load a Colorizer: the command line's model flags as one value, which a Ray actor receives to
    load the same model on its own device. ``None`` means the default the CLI documents."""

    model: str | None = None               # a bundled model's name or a model folder; None: the default
    device: str = "auto"                   # auto: CUDA when present, else CPU
    bf16: bool | None = None               # None: on CUDA and on CPUs with fast bf16
    int8: bool | None = None               # None: where the CPU's int8 units are fast and the model measured it
    compile_backend: str | None = None     # torch.compile backend, or None (eager)
    cuda_graphs: bool = True
    cpu_streams: int | None = None

    def load(self, device: str | None = None) -> "Colorizer":
        """The Colorizer (on ``device`` when given, else ``self.device``)."""
        dev = resolve_device(device or self.device)
        # int8 is eager-only: under torch.compile the default is off
        int8 = self.int8 if self.int8 is not None or self.compile_backend is None else False
        return Colorizer.load(self.model, dev, self.bf16, self.compile_backend,
                              self.cuda_graphs and dev.type == "cuda", int8, self.cpu_streams)


class QueuedPredictions:
    """A batch's predictions being computed in a CPU stream's thread."""

    def __init__(self, future: "Future[PendingPredictions]"):
        self._future = future

    def result(self) -> list[Prediction]:
        return self._future.result().result()


class PendingPredictions:
    """A batch's predictions whose device work and copies to the host may still be under way."""

    def __init__(self, device: torch.device, ab: torch.Tensor, weights: torch.Tensor, sheets: dict[int, torch.Tensor]):
        self._ab, self._weights, self._sheets = ab, weights, sheets   # host tensors, maybe still being filled
        self._done = None
        if device.type == "cuda":
            self._done = torch.cuda.Event()
            self._done.record(torch.cuda.current_stream(device))

    def result(self) -> list[Prediction]:
        if self._done is not None:
            self._done.synchronize()
        preds = [Prediction(a, w) for a, w in zip(self._ab.numpy(), self._weights.numpy())]
        for i, sheet in self._sheets.items():
            preds[i].sheet = sheet.numpy()
        return preds


def image_seed(seed: int, name: str) -> int:
    """A per-image seed that depends on the run's seed and the image's name, not on batch order."""
    return (seed * 1_000_003 + zlib.crc32(name.encode("utf-8", "surrogateescape"))) % (2**63)

