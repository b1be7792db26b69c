"""`colorize train vae|mdn|refine|ranking`: the training stages."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .app import _bf16_default, _device_option, _resolve_device, _RichReporter, main

#: every training stage leaves dull photos out alike (vae and mdn while decoding, refine from its kept views)
_min_colourfulness_option = click.option(
    "--min-colourfulness", type=click.FloatRange(min=0), default=0.0, show_default=True,
    help="leave out training photos duller than this (colourfulness of the true colours at 64x64, as "
         "`colorize evaluate` measures it; 0 keeps all), counted in the log; test photos all stay")


def _train_options(f):
    options = [
        click.argument("data", nargs=-1, required=True,
                       type=click.Path(exists=True, file_okay=False, path_type=Path)),
        click.option("--output", "-o", "--out", "out", required=True,
                     type=click.Path(file_okay=False, path_type=Path),
                     help="run folder (vae.pt, mdn.pt, log.jsonl, samples/)"),
        click.option("--list", "train_list", multiple=True, type=click.Path(dir_okay=False),
                     help="file of training image paths relative to DATA (default: walk DATA); with several "
                          "DATA, once per DATA in the same order, '' for one to walk"),
        click.option("--test-list", multiple=True, type=click.Path(dir_okay=False),
                     help="file of test image paths relative to DATA; with several DATA, once per DATA in the "
                          "same order, '' for none"),
        click.option("--skip-grey/--keep-grey", default=True, show_default=True,
                     help="leave out photos with no colour (mean chroma under 3 CIE units), counted in the log"),
        _min_colourfulness_option,
        click.option("--augment", is_flag=True,
                     help="random-resized crops and flips on the training device (MDN: VGG then runs live)"),
        click.option("--epochs", type=click.IntRange(1), default=None, help="epochs (default: the stage's)"),
        click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
                     help="the global batch (the seed's 32); under torchrun split evenly over the processes"),
        click.option("--lr", type=float, default=None, help="Adam learning rate (default: the stage's)"),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="seeds the weights' initialisation, the batch order and every random draw"),
        _device_option,
        click.option("--bf16/--no-bf16", default=None,
                     help="bf16 autocast (default: on for CUDA and for CPUs with AMX/AVX512-BF16)"),
        click.option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint"),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="where decoded images and VGG features are cached (default: RUN/cache)"),
        click.option("--max-images", type=click.IntRange(1), default=None, hidden=True),
        click.option("--jobs", type=int, default=-1, show_default=True, help="decode workers (joblib)"),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _data_spec(data, train_list, test_list, cache_dir, jobs, skip_grey, min_colourfulness=0.0):
    """DATA folders and their aligned --list / --test-list values -> a DataSpec (usage errors exit 2)."""
    from ..training.train import DataSource, DataSpec

    def aligned(values, name):
        if not values:
            return [None] * len(data)
        if len(values) != len(data):
            raise click.UsageError(f"{name} given {len(values)} times for {len(data)} DATA folders: give it "
                                   f"once per DATA, in the same order ('' for none)")
        out = []
        for v in values:
            if v and not Path(v).is_file():
                raise click.UsageError(f"{name} {v!r}: no such file")
            out.append(v or None)
        return out

    sources = [DataSource(str(d), tl, vl) for d, tl, vl in
               zip(data, aligned(train_list, "--list"), aligned(test_list, "--test-list"))]
    return DataSpec(cache_dir=cache_dir, n_jobs=jobs, sources=sources, skip_grey=skip_grey,
                    min_colourfulness=min_colourfulness)


@main.group()
def train():
    """The paper's two training stages: ``train vae`` first, then ``train mdn``. Two optional ones may follow on
    a bundle: ``train refine`` fine-tunes the mixture's means, ``train ranking`` re-fits its weights."""


@train.command("vae")
@_train_options
@click.option("--kl-weight", type=float, default=1e-2, show_default=True,
              help="weight of the KL term against the weighted reconstruction loss (the seed's 0.01)")
@click.option("--prior", type=click.Choice(["zhang", "data"]), default="zhang", show_default=True,
              help="class-rebalancing prior of the loss weights: Zhang's ImageNet prior (the seed's) or counted "
                   "from the training images")
def train_vae_cmd(data, out, train_list, test_list, skip_grey, min_colourfulness, augment, epochs, batch_size,
                  lr, seed, device, bf16, resume, cache_dir, max_images, jobs, kl_weight, prior):
    """Stage 1: train the conditional VAE on the colour images in DATA (one folder or several, mixed)."""
    from ..training.train import VAE_DEFAULTS, TrainConfig, train_vae

    spec = _data_spec(data, train_list, test_list, cache_dir, jobs, skip_grey, min_colourfulness)
    dist, dev = _training_processes(_resolve_device(device))
    cfg = TrainConfig(epochs=epochs or VAE_DEFAULTS.epochs, batch_size=batch_size, lr=lr or VAE_DEFAULTS.lr,
                      kl_weight=kl_weight, prior=prior, bf16=_bf16_default(bf16, dev), seed=seed,
                      max_images=max_images, augment=augment)
    _run_training(lambda rep: train_vae(spec, out, cfg, dev, rep, resume, dist=dist), dist)


@train.command("mdn")
@_train_options
@click.option("--vae", "vae_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="the stage-1 checkpoint (default: RUN/vae.pt)")
@click.option("--vgg-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="VGG16 features state_dict, or a bundle's vgg.pt (default: $COLORIZE_VGG_WEIGHTS, else "
                   "torchvision's)")
@click.option("--mdn-loss", type=click.Choice(["nearest", "soft"]), default="nearest", show_default=True,
              help="nearest: the seed's nearest-component loss; soft: the full mixture likelihood it approximates")
def train_mdn_cmd(data, out, train_list, test_list, skip_grey, min_colourfulness, augment, epochs, batch_size,
                  lr, seed, device, bf16, resume, cache_dir, max_images, jobs, vae_path, vgg_weights,
                  mdn_loss):
    """Stage 2: train the MDN from VGG features of the grey images to the frozen CVAE's latent space."""
    from ..training.mdn import train_mdn
    from ..training.train import MDN_DEFAULTS, TrainConfig

    spec = _data_spec(data, train_list, test_list, cache_dir, jobs, skip_grey, min_colourfulness)
    dist, dev = _training_processes(_resolve_device(device))
    cfg = TrainConfig(epochs=epochs or MDN_DEFAULTS.epochs, batch_size=batch_size, lr=lr or MDN_DEFAULTS.lr,
                      bf16=_bf16_default(bf16, dev), seed=seed, max_images=max_images, augment=augment,
                      mdn_loss=mdn_loss)
    _run_training(lambda rep: train_mdn(spec, out, cfg, dev, vae_path, vgg_weights, rep, resume, dist=dist), dist)


def _bundle_stage_options(does: str, out_help: str, test_help: str):
    """The options the optional stages on a bundle (refine, ranking) share: photos, model, output, test
    photos, the kept views and the device."""
    def wrap(f):
        options = [
            click.argument("data", nargs=-1, required=True,
                           type=click.Path(exists=True, file_okay=False, path_type=Path)),
            click.option("--list", "train_list", multiple=True, type=click.Path(dir_okay=False),
                         help="file of photo paths relative to DATA (default: walk DATA); once per DATA, '' to "
                              "walk one"),
            click.option("--model", default=None,
                         help=f"the bundle {does}: a bundled model's name or a bundle folder  [default: general]"),
            click.option("--output", "-o", "--out", "out", required=True,
                         type=click.Path(file_okay=False, path_type=Path), help=out_help),
            click.option("--test", "test_data", type=click.Path(exists=True, file_okay=False), default=None,
                         help=test_help),
            click.option("--test-list", type=click.Path(exists=True, dir_okay=False), default=None,
                         help="file of photo paths relative to --test"),
            click.option("--images", type=click.IntRange(1), default=None,
                         help="at most this many photos of each DATA"),
            click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                         help="keep what each photo list gave here (VGG and trunk outputs; ranking: also the "
                              "decodes) and reuse it: a model with the same VGG and trunk, re-fitted, skips VGG"),
            _device_option,
        ]
        for opt in reversed(options):
            f = opt(f)
        return f
    return wrap


def _run_bundle_stage(data, train_list, images, test_data, test_list, fit) -> None:
    """Photo lists of the DATA folders and --test, then ``fit(sources, test, reporter)`` -> the written bundle;
    a bad model, state or photo set is one line and exit 1."""
    from ..model.checkpoint import CheckpointError
    from ..training.data import list_images

    lists = list(train_list) or [""] * len(data)
    if len(lists) != len(data):
        raise click.UsageError(f"--list given {len(lists)} times for {len(data)} DATA folders")
    sources = []
    for root, lst in zip(data, lists):
        rels = list_images(root, lst or None)
        sources.append((str(root), rels[:images] if images else rels))
    test = (str(test_data), list_images(test_data, test_list)) if test_data is not None else None
    reporter = _RichReporter()
    try:
        path = fit(sources, test, reporter)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        click.echo(f"colorize: error: {err}", err=True)
        sys.exit(1)
    reporter.log(f"wrote {path}")


@train.command("ranking")
@_bundle_stage_options("to re-rank", "where the re-ranked bundle goes",
                       "a folder of held-out colour photos to measure before and after on")
@click.option("--objective", type=click.Choice(["error", "closest"]), default="error", show_default=True,
              help="error: the sample of least predicted colour error first; closest: each weight the chance "
                   "that its sample is the closest")
@click.option("--chroma-weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="error objective: rank by predicted error minus this times the sample's chroma, so a vivid "
                   "sample comes first where it costs little error")
@click.option("--ridge", type=click.FloatRange(min=0), default=None,
              help="L2 penalty per photo of the error regression  [default: by 5-fold cross-validation]")
@click.option("--steps", type=click.IntRange(1), default=600, show_default=True,
              help="optimiser steps of the closest fit")
@click.option("--pull", type=float, default=1e-3, show_default=True,
              help="closest fit: L2 weight pulling the new weight logits towards the trained ones")
def train_ranking_cmd(data, train_list, model, out, test_data, test_list, images, cache_dir, device, objective,
                      chroma_weight, ridge, steps, pull):
    """Optional stage (after refine, if any): re-fit a model's mixture weights so that they rank its samples
    by their colour error on real photos (the 8 colorizations stay; their order and weights change)."""
    from ..training.ranking import RankingConfig, train_ranking

    dev = _resolve_device(device)
    cfg = RankingConfig(objective=objective, ridge=ridge, steps=steps, pull=pull, chroma_weight=chroma_weight)
    _run_bundle_stage(data, train_list, images, test_data, test_list,
                      lambda sources, test, rep: train_ranking(model, sources, out, cfg, dev, test, rep, cache_dir))


@train.command("refine")
@_bundle_stage_options("whose means to fine-tune", "where the fine-tuned bundle (written after every epoch) "
                       "and its training state go", "a folder of held-out colour photos: error-of-best there "
                       "after every epoch")
@click.option("--epochs", type=click.IntRange(1), default=8, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-3, show_default=True,
              help="Adam's learning rate on the mean rows")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--bf16/--no-bf16", default=None,
              help="bf16 autocast of the decoder (default: on for CUDA and for CPUs with AMX/AVX512-BF16)")
@click.option("--target-gain", type=click.FloatRange(min=1.0, max=2.0), default=1.0, show_default=True,
              help="colour-enhanced targets: train towards the true ab times this (clipped to the ab range); "
                   "held-out errors stay against the truth")
@click.option("--decoder-lr", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="also fine-tune the CVAE decoder at this learning rate (0: the decoder stays frozen)")
@_min_colourfulness_option
@click.option("--resume", is_flag=True,
              help="go on from the training state in --out, with its settings (--epochs: the new total)")
def train_refine_cmd(data, train_list, model, out, test_data, test_list, images, cache_dir, device, epochs, lr,
                     batch_size, seed, bf16, target_gain, decoder_lr, min_colourfulness, resume):
    """Optional stage: fine-tune a model's 8 means so that the best of its samples comes closer to real
    colours (best-of-K colour loss through the frozen decoder). Re-fit the weights after it with
    `colorize train ranking`."""
    from ..training.refine import RefineConfig, train_refine

    dev = _resolve_device(device)
    cfg = RefineConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, bf16=_bf16_default(bf16, dev),
                       target_gain=target_gain, decoder_lr=decoder_lr, min_colourfulness=min_colourfulness)
    _run_bundle_stage(data, train_list, images, test_data, test_list,
                      lambda sources, test, rep: train_refine(model, sources, out, cfg, dev, test, rep, resume,
                                                              cache_dir))


def _training_processes(device):
    """Under torchrun (WORLD_SIZE > 1): join the process group, each process on its LOCAL_RANK's GPU."""
    from ..training.distributed import from_env

    try:
        return from_env(device)
    except (RuntimeError, ValueError, KeyError) as err:
        click.echo(f"colorize: error: cannot join the training processes: {err}", err=True)
        sys.exit(1)


def _run_training(job, dist) -> None:
    from ..model.checkpoint import CheckpointError
    from ..model.vgg import VGGWeightsError
    from ..training.distributed import shutdown

    reporter = _RichReporter()
    try:
        path = job(reporter)
    except (VGGWeightsError, CheckpointError, FileExistsError, ValueError) as err:
        if dist.main:
            click.echo(f"colorize: error: {err}", err=True)
        sys.exit(2 if isinstance(err, FileExistsError) else 1)
    except KeyboardInterrupt:
        if dist.main:
            click.echo("colorize: interrupted; continue with --resume", err=True)
        sys.exit(130)
    finally:
        shutdown(dist)
    if dist.main:
        reporter.log(f"wrote {path}")
