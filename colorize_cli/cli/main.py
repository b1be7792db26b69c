"""The ``colorize`` command line: a thin layer over the library (torch is imported only inside commands)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import __version__

DEFAULT_COMMAND = "run"
#: fewer calibration photos than this get a warning from `colorize calibrate`
MIN_CALIBRATION_PHOTOS = 64


class DefaultGroup(click.Group):
    """A group whose first argument, when it names no subcommand, goes to the default command.

    So ``colorize ./old_photos`` and ``colorize train vae ...`` both work; a folder literally named like a
    subcommand stays reachable as ``./train``.
    """

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version", "-V"):
            args = [DEFAULT_COMMAND, *args]
        elif not args and not ctx.resilient_parsing:   # (shell completion of the first word: see below)
            args = [DEFAULT_COMMAND]
        return super().parse_args(ctx, args)

    def shell_complete(self, ctx, incomplete):
        # the first word is a subcommand or a photo/folder for the default command: offer both
        from click.shell_completion import CompletionItem

        return [*super().shell_complete(ctx, incomplete), CompletionItem(incomplete, type="file")]


class SheetSize(click.ParamType):
    """--sheet-size: a number of pixels (>= 32), or ``full`` (None)."""

    name = "PX|full"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "full":
            return None
        try:
            px = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of pixels nor 'full'", param, ctx)
        if px < 32:
            self.fail(f"{px} px is too small (at least 32)", param, ctx)
        return px


def _device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        help="auto, cpu, cuda or cuda:N")(f)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                 "auto_envvar_prefix": "COLORIZE"})
@click.version_option(__version__, "-V", "--version", prog_name="colorize")
def main():
    """Diverse colorizations of black-and-white photos (Deshpande et al., CVPR 2017).

    \b
    colorize PATH... [OPTIONS]         colorize photos and folders (options: colorize run --help)
    colorize PATH... --gallery         ... and a page to choose samples on (colorized.html)
    colorize pick PHOTO N...           chosen samples at full resolution (or --from picks.json)
    colorize info FILE...              is it a colorization? of what, by which model
    colorize models                    the bundled models
    colorize train vae|mdn DATA ...    the paper's two training stages (torchrun for several GPUs)
    colorize evaluate DATA ...         metrics on held-out colour photos

    Every option can also be set in the environment:
    COLORIZE_<OPTION> for colorizing (COLORIZE_SAMPLES=4), COLORIZE_<COMMAND>_<OPTION> for the others
    (COLORIZE_TRAIN_VAE_EPOCHS=20).
    """


def _resolve_device(spec: str):
    from .device import DeviceError, resolve_device

    try:
        return resolve_device(spec)
    except DeviceError as err:
        raise click.BadParameter(str(err), param_hint="--device") from err


# ------------------------------------------------------------------------------------------ colorizing


@main.command(DEFAULT_COMMAND, hidden=True,
              context_settings={"ignore_unknown_options": False, "auto_envvar_prefix": "COLORIZE"})
@click.argument("paths", nargs=-1, metavar="PATH...", type=click.Path())
@click.option("--samples", "-n", type=click.IntRange(1, 64), default=8, show_default=True,
              help="colorizations per photo: the N most probable mixture means; beyond 8, draws from the mixture")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="a bundled model's name (general, faces: `colorize models`) or a model folder (a training run "
                   "or a bundle)  [default: general]")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="mirror the input tree under this folder (default: beside each input)")
@click.option("--separate", is_flag=True, help="also write each sample as its own image")
@click.option("--format", "fmt", type=click.Choice(["png", "jpg", "webp", "auto"]), default="auto",
              show_default=True, envvar="COLORIZE_FORMAT",
              help="output format; auto: as the input (jpg in, jpg out; webp in, webp out; png otherwise)")
@click.option("--sheet-size", type=SheetSize(), default="480", show_default=True,   # batch.DEFAULT_SHEET_SIZE
              help="each colorization on the sheet at most this many px on its long side, numbered with its "
                   "sample number and weight; full: the photo's own size, unnumbered (--separate files are "
                   "always full size)")
@click.option("--quality", type=click.IntRange(0, 100), default=None,
              help="jpg/webp quality (default 90); for png, 0..100 picks zlib level 9..0 (default level 1)")
@_device_option
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="photos per model batch (default: 16 on CPU, 128 on CUDA)")
@click.option("--seed", type=int, default=0, show_default=True, help="same seed, same outputs")
@click.option("--overwrite", is_flag=True, help="redo inputs whose outputs exist (default: skip them)")
@click.option("--recursive/--no-recursive", default=True, show_default=True,
              help="walk folders into their subfolders")
@click.option("--bf16/--no-bf16", default=None,
              help="bf16 autocast (default: on for CUDA and for CPUs with AMX/AVX512-BF16)")
@click.option("--jobs", "-j", "--workers", "workers", type=click.IntRange(1), default=None, envvar="COLORIZE_JOBS",
              help="decode/encode threads  [default: the CPU's cores]")
@click.option("--merge", "merge_on", type=click.Choice(["auto", "device", "cpu"]), default="auto", show_default=True,
              envvar="COLORIZE_MERGE",
              help="where samples are upsampled and merged with the full-resolution L: the model's device, the "
                   "CPU threads, or auto (the device when it is a GPU, for photos up to 2 megapixels)")
@click.option("--compile", "compile_networks", is_flag=True, envvar="COLORIZE_COMPILE",
              help="torch.compile the networks before the run: on an H100 the model ran 5,448 img/s against 3,637, "
                   "after ~23 s of compiling (end to end, bound by the CPU side, no faster); on a 2-core CPU 5% "
                   "more steady throughput after 20-80 s; so for long runs (needs a C++ compiler; on CUDA, Triton)")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="on CUDA, replay the networks from CUDA graphs (same outputs, far fewer launches from Python)")
@click.option("--int8/--no-int8", default=None,
              help="CPU only: VGG and the MDN as int8 convolutions (oneDNN), with the model's int8.json  "
                   "[default: on for CPUs with AMX or VNNI int8 units when the model has int8.json]")
@click.option("--cpu-streams", type=click.IntRange(1), default=None,
              help="CPU: model batches run at once, each on its share of the cores (default: 2 with 2+ cores, "
                   "1 with --compile)")
@click.option("--max-pixels", type=click.IntRange(1), default=None,
              help="refuse inputs with more pixels than this, read from the file's header before decoding  "
                   "[default: 200000000]")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="list what would be colorized or skipped, and where the outputs would go; write nothing")
@click.option("--null", "-0", "null", is_flag=True,
              help="paths on stdin (-) end with NUL, not newline (find -print0, as xargs -0)")
@click.option("--gallery", is_flag=True,
              help="also write colorized.html: every photo's numbered samples, to choose with a click (in --output, "
                   "else the deepest folder holding all inputs)")
@click.option("--ray", is_flag=True,
              help="run on a Ray cluster (RAY_ADDRESS, else a local Ray): needs the [ray] extra")
@click.option("--ray-actors", type=click.IntRange(1), default=None,
              help="with --ray: colorizing actors, each holding one model  [default: one per GPU, else one per "
                   "4 CPUs]")
@click.option("--json", "as_json", is_flag=True, envvar="COLORIZE_JSON", help="one JSON object per input on stdout")
@click.option("--quiet", "-q", is_flag=True, help="only errors on stderr")
@click.option("--debug", is_flag=True, help="show tracebacks")
def run_cmd(paths, samples, model, output, separate, fmt, sheet_size, quality, device, batch_size, seed, overwrite,
            recursive, bf16, workers, merge_on, compile_networks, cuda_graphs, int8, cpu_streams, max_pixels, dry_run,
            gallery, ray, ray_actors, null, as_json, quiet, debug):
    """Colorize photos: files and folders (walked recursively); ``-`` reads paths from stdin.

    Writes PHOTO.colorized.png (a sheet of the samples, most probable first) beside each input, or under
    --output. Existing outputs are skipped, so reruns only do new photos. Exit code: 0 all done or skipped,
    1 some inputs failed, 2 usage error.
    """
    from .registry import ModelNotFoundError, resolve_model
    from .runner import run_batch_command

    if not paths:
        raise click.UsageError("no PATH given (a photo, a folder, or - for paths on stdin)")
    _check_output_dir(output)
    from .bundle import check_model_folder
    from .checkpoint import CheckpointError
    from .device import DeviceError, resolve_device

    # checked before any photo, so a bad --model or --device is an error even when every photo is done
    try:
        model = resolve_model(model)
        check_model_folder(model)
        if not ray:   # with --ray the cluster's machines have the devices, not this one
            resolve_device(device)
    except (ModelNotFoundError, CheckpointError, DeviceError) as err:
        click.echo(f"colorize: error: {err}", err=True)
        sys.exit(2)
    expanded = []
    for p in paths:
        if p == "-":
            expanded.extend(_stdin_paths(null))
        else:
            expanded.append(p)
    from .batch import BatchOptions
    from .colorizer import LoadOptions
    from .imageio import MAX_PIXELS
    from .runner import COMPILE_BACKEND, RunOptions

    batch = BatchOptions(samples=samples, output_dir=output, separate=separate, fmt=fmt, quality=quality,
                         sheet_size=sheet_size, batch_size=batch_size, seed=seed, overwrite=overwrite,
                         max_pixels=max_pixels or MAX_PIXELS,
                         device_sheets={"auto": None, "device": True, "cpu": False}[merge_on])
    if workers:
        batch.workers = workers
    from .registry import model_name

    # a bundled model by its name (each Ray node finds its own copy), any other folder by its absolute path
    load = LoadOptions(model=model_name(os.path.abspath(model)), device=device, bf16=bf16, int8=int8,
                       compile_backend=COMPILE_BACKEND if compile_networks else None, cuda_graphs=cuda_graphs,
                       cpu_streams=cpu_streams)
    code = run_batch_command(expanded, RunOptions(batch, load, recursive=recursive, dry_run=dry_run,
                                                  as_json=as_json, quiet=quiet, debug=debug, gallery=gallery, ray=ray,
                                                  ray_actors=ray_actors))
    sys.exit(code)


def _check_output_dir(output: Path | None) -> None:
    """--output must be (or be creatable as) a folder: a path inside a file is a usage error, said once,
    not a failure for every input."""
    if output is None:
        return
    for folder in (output, *output.parents):
        if os.path.lexists(folder):
            if not folder.is_dir():
                what = "is a file" if folder == output else f"is inside {folder}, which is not a folder"
                raise click.UsageError(f"--output {output} {what}")
            return


def _stdin_paths(null: bool) -> list[str]:
    """Paths from stdin: one per line, or NUL-terminated with -0 (names may then hold newlines). Bytes that
    are not UTF-8 come through as the file system's own (os.fsdecode)."""
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    if null:
        parts = data.split(b"\0")
    else:
        parts = [ln.rstrip(b"\r") for ln in data.split(b"\n")]
    return [os.fsdecode(p) for p in parts if p.strip()]


# ------------------------------------------------------------------------------------------ training


class _RichReporter:
    """Training progress: a rich bar on a terminal, plain lines otherwise (logs, cron)."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.interactive = self.console.is_terminal

    def log(self, message: str) -> None:
        if self.interactive:
            self.console.print(message, highlight=False, markup=False)
        else:
            click.echo(message, err=True)

    warn = log

    def progress(self, total: int, description: str):
        if not self.interactive:
            return _PlainProgress(total, description)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                        console=self.console, transient=True)
        prog.start()
        task = prog.add_task(description, total=total, loss=float("nan"))

        class Handle:
            def advance(self, n=1, **info):
                prog.update(task, advance=n, **info)

            def close(self):
                prog.stop()

        return Handle()


class _PlainProgress:
    def __init__(self, total: int, description: str):
        self.total, self.description, self.count = total, description, 0
        self.step = max(total // 10, 1)

    def advance(self, n=1, **info):
        self.count += n
        # a line each time the count passes a tenth (advances come in batches, so it rarely lands on one)
        if self.count // self.step > (self.count - n) // self.step and self.count < self.total:
            extra = " ".join(f"{k} {v:.4f}" for k, v in info.items())
            click.echo(f"{self.description}: {self.count}/{self.total} {extra}", err=True)

    def close(self):
        pass


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


def _data_spec(data, train_list, test_list, cache_dir, jobs, skip_grey):
    """DATA folders and their aligned --list / --test-list values -> a DataSpec (usage errors exit 2)."""
    from .train import DataSource, DataSpec

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
    return DataSpec(cache_dir=cache_dir, n_jobs=jobs, sources=sources, skip_grey=skip_grey)


def _bf16_default(bf16, device) -> bool:
    from .device import cpu_has_fast_bf16

    if bf16 is not None:
        return bf16
    return device.type == "cuda" or cpu_has_fast_bf16()


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
def train_vae_cmd(data, out, train_list, test_list, skip_grey, augment, epochs, batch_size, lr, seed, device, bf16,
                  resume, cache_dir, max_images, jobs, kl_weight, prior):
    """Stage 1: train the conditional VAE on the colour images in DATA (one folder or several, mixed)."""
    from .train import VAE_DEFAULTS, TrainConfig, train_vae

    spec = _data_spec(data, train_list, test_list, cache_dir, jobs, skip_grey)
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
def train_mdn_cmd(data, out, train_list, test_list, skip_grey, augment, epochs, batch_size, lr, seed, device, bf16,
                  resume, cache_dir, max_images, jobs, vae_path, vgg_weights, mdn_loss):
    """Stage 2: train the MDN from VGG features of the grey images to the frozen CVAE's latent space."""
    from .train import MDN_DEFAULTS, TrainConfig, train_mdn

    spec = _data_spec(data, train_list, test_list, cache_dir, jobs, skip_grey)
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
    from .checkpoint import CheckpointError
    from .data import list_images

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
@click.option("--ridge", type=click.FloatRange(min=0), default=None,
              help="L2 penalty per photo of the error regression  [default: by 5-fold cross-validation]")
@click.option("--steps", type=click.IntRange(1), default=600, show_default=True,
              help="optimiser steps of the closest fit")
@click.option("--pull", type=float, default=1e-3, show_default=True,
              help="closest fit: L2 weight pulling the new weight logits towards the trained ones")
def train_ranking_cmd(data, train_list, model, out, test_data, test_list, images, cache_dir, device, objective,
                      ridge, steps, pull):
    """Optional stage (after refine, if any): re-fit a model's mixture weights so that they rank its samples
    by their colour error on real photos (the 8 colorizations stay; their order and weights change)."""
    from .ranking import RankingConfig, train_ranking

    dev = _resolve_device(device)
    cfg = RankingConfig(objective=objective, ridge=ridge, steps=steps, pull=pull)
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
@click.option("--resume", is_flag=True,
              help="go on from the training state in --out, with its settings (--epochs: the new total)")
def train_refine_cmd(data, train_list, model, out, test_data, test_list, images, cache_dir, device, epochs, lr,
                     batch_size, seed, bf16, resume):
    """Optional stage: fine-tune a model's 8 means so that the best of its samples comes closer to real
    colours (best-of-K colour loss through the frozen decoder). Re-fit the weights after it with
    `colorize train ranking`."""
    from .refine import RefineConfig, train_refine

    dev = _resolve_device(device)
    cfg = RefineConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, bf16=_bf16_default(bf16, dev))
    _run_bundle_stage(data, train_list, images, test_data, test_list,
                      lambda sources, test, rep: train_refine(model, sources, out, cfg, dev, test, rep, resume,
                                                              cache_dir))


def _training_processes(device):
    """Under torchrun (WORLD_SIZE > 1): join the process group, each process on its LOCAL_RANK's GPU."""
    from .distributed import from_env

    try:
        return from_env(device)
    except (RuntimeError, ValueError, KeyError) as err:
        click.echo(f"colorize: error: cannot join the training processes: {err}", err=True)
        sys.exit(1)


def _run_training(job, dist) -> None:
    from .checkpoint import CheckpointError
    from .distributed import shutdown
    from .vgg import VGGWeightsError

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


# ------------------------------------------------------------------------------------------ pick, info


def _read_picks(path: Path) -> list[tuple[str, list[int]]]:
    """picks.json: {"picks": [{"photo": PATH, "samples": [N, ...]}, ...]} (or the list alone); photo paths
    relative to the file's folder unless absolute."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise click.BadParameter(f"cannot read {path}: {err}", param_hint="--from") from err
    rows = data.get("picks") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise click.BadParameter(f"{path}: expected a list of picks", param_hint="--from")
    out = []
    for row in rows:
        if (not isinstance(row, dict) or not isinstance(row.get("photo"), str)
                or not isinstance(row.get("samples"), list)
                or not all(isinstance(n, int) and 1 <= n <= 64 for n in row["samples"]) or not row["samples"]):
            raise click.BadParameter(f"{path}: each pick needs a photo and samples [1..64]", param_hint="--from")
        photo = Path(row["photo"])
        out.append((str(photo if photo.is_absolute() else path.parent / photo), sorted(set(row["samples"]))))
    return out


@main.command("pick")
@click.argument("photo", required=False, type=click.Path(path_type=Path))
@click.argument("numbers", nargs=-1, type=click.IntRange(1, 64))
@click.option("--from", "picks_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a picks.json (from the gallery page): many photos and their chosen samples")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="a bundled model's name or a model folder  [default: general]")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="mirror the inputs' tree under this folder (default: beside each photo)")
@click.option("--format", "fmt", type=click.Choice(["png", "jpg", "webp", "auto"]), default="auto",
              show_default=True, envvar="COLORIZE_PICK_FORMAT", help="output format, as the run's; auto: as the input")
@click.option("--quality", type=click.IntRange(0, 100), default=None, help="jpg/webp quality; png: zlib effort")
@click.option("--seed", type=int, default=0, show_default=True, help="as the run whose samples were chosen")
@click.option("--samples", "-n", type=click.IntRange(1, 64), default=8, show_default=True,
              help="as the run whose samples were chosen (only draws beyond 8 depend on it)")
@_device_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object per photo on stdout")
def pick_cmd(photo, numbers, picks_file, model, output, fmt, quality, seed, samples, device, as_json):
    """Write chosen samples of a photo at full resolution: `colorize pick PHOTO 3 5`.

    The files get the names `--separate` gives (PHOTO.colorized-3.png) and the same pixels, for the same
    model and --seed. `--from picks.json` does a whole set of choices.
    """
    import json

    _check_output_dir(output)
    from .batch import BatchOptions, discover, pick, plan_outputs
    from .checkpoint import CheckpointError
    from .colorizer import Colorizer
    from .device import DeviceError
    from .registry import ModelNotFoundError

    if picks_file is not None:
        if photo is not None:
            raise click.UsageError("give PHOTO N... or --from picks.json, not both")
        wanted = _read_picks(picks_file)
    else:
        if photo is None or not numbers:
            raise click.UsageError("give PHOTO and at least one sample number (or --from picks.json)")
        wanted = [(str(photo), sorted(set(numbers)))]
    found = discover([w[0] for w in wanted], recursive=False)
    for missing in found.missing:
        click.echo(f"colorize: error: {missing}: no such file", err=True)
    by_path = {str(Path(p).absolute()): n for p, n in wanted}
    numbers_of = [by_path.get(str(it.path.absolute()), []) for it in found.items]
    opts = BatchOptions(samples=max([samples] + [max(n) for n in numbers_of if n]), output_dir=output,
                        separate=True, fmt=fmt, quality=quality, seed=seed)
    plan_outputs(found.items, opts)
    if not found.items:
        sys.exit(2)
    try:
        colorizer = Colorizer.load(model, device)
    except (ModelNotFoundError, CheckpointError, DeviceError, FileNotFoundError, RuntimeError, ValueError) as err:
        click.echo(f"colorize: error: {err}", err=True)
        sys.exit(2)
    from . import native
    from .runner import _decoder_said, _printable

    failed = bool(found.missing)
    with native.capture():   # decoders' stderr lines become the photo's own warning
        for result in pick(found.items, numbers_of, colorizer, opts):
            said = _decoder_said(result.warnings)
            if as_json:
                click.echo(json.dumps(result.to_json()))
            elif result.status == "failed":
                click.echo(f"colorize: error: {_printable(result.input)}: {result.error}", err=True)
            else:
                if said:
                    click.echo(f"colorize: warning: {_printable(result.input)}: {said}", err=True)
                for out in result.outputs:
                    click.echo(f"wrote {_printable(out)}", err=True)
            failed |= result.status == "failed"
    sys.exit(1 if failed else 0)


@main.command("info")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per file on stdout")
def info_cmd(files, as_json):
    """Say whether FILES are colorizations by colorize, and of what: tool version, model, source photo,
    sample, weight, seed (the record every png and jpg output carries)."""
    import json

    from . import provenance

    missing = False
    for f in files:
        record = provenance.read(f) if f.is_file() else None
        missing |= record is None
        if as_json:
            click.echo(json.dumps({"file": str(f), "record": record}))
        elif record is None:
            click.echo(f"{f}: no colorize record (an original, another tool's, or a webp output)")
        else:
            fields = ", ".join(f"{k}: {v}" for k, v in record.items() if k not in ("weights", "mtime_ns", "layout"))
            click.echo(f"{f}: {fields}")
    sys.exit(1 if missing else 0)


# ------------------------------------------------------------------------------------------ models


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per model on stdout")
def models_cmd(as_json):
    """The bundled models: name, training data, metrics on held-out photos, size. Use one with --model NAME."""
    import json

    from .registry import list_models

    infos = list_models()
    if as_json:
        for info in infos:
            click.echo(json.dumps(info.to_json()))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bundled models (--model NAME)")
    for col in ("name", "trained on", "held-out metrics (error vs grey's: best of 8 / most probable)", "size"):
        table.add_column(col)
    for info in infos:
        metrics = "\n".join(f"{test}: {m['best_vs_grey']:.2f}x / {m['top1_vs_grey']:.2f}x"
                            for test, m in info.metrics.items() if isinstance(m, dict) and "best_vs_grey" in m)
        table.add_row(info.name + (" (default)" if info.default else ""), info.data, metrics or "-",
                      f"{info.size_bytes / 2**20:.0f} MiB")
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    console.print(table)
    if not infos:
        click.echo("colorize: no bundled models in this installation", err=True)
        sys.exit(1)


# ------------------------------------------------------------------------------------------ evaluation


@main.command("evaluate")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--list", "list_file", type=click.Path(exists=True, dir_okay=False),
              help="file of image paths relative to DATA (default: walk DATA)")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="a bundled model's name or a model folder  [default: general]")
@click.option("--samples", "-n", type=click.IntRange(1, 64), default=8, show_default=True,
              help="samples per photo: error-of-best is over these, top-1 is the first")
@click.option("--limit", type=click.IntRange(1), default=None, help="only the first N images")
@_device_option
@click.option("--bf16/--no-bf16", default=None, help="bf16 autocast (default: as for colorizing)")
@click.option("--int8/--no-int8", default=False, show_default=True,
              help="VGG and the MDN in int8 on the CPU (evaluate measures one setting at a time)")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="photos per model batch")
@click.option("--seed", type=int, default=0, show_default=True, help="as for colorizing: same seed, same samples")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write a tiled sheet of the first test images here (samples | grey | truth)")
@click.option("--vae", "vae_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the model's stage-1 checkpoint (vae.pt), for the CVAE oracle (default: MODEL/vae.pt when "
                   "MODEL is a training run; bundles do not carry the colour encoder)")
@click.option("--json", "as_json", is_flag=True, help="print the metrics as JSON on stdout")
def evaluate_cmd(data, list_file, model, samples, limit, device, bf16, int8, batch_size, seed, sheet, vae_path,
                 as_json):
    """Metrics on held-out colour photos: error-of-best, diversity, PSNR, colourfulness, red wash, with
    baselines (grey, the CVAE from N(0, I), and the CVAE oracle where the colour encoder is at hand)."""
    import json

    from .colorizer import Colorizer
    from .evaluate import evaluate

    dev = _resolve_device(device)
    colorizer, rel = _model_and_images(lambda: Colorizer.load(model, dev, _bf16_default(bf16, dev),
                                                              int8=int8), data, list_file, limit)
    encoder = _colour_encoder(vae_path, model, dev)
    reporter = _RichReporter()
    bar = reporter.progress(len(rel), "evaluating") if not as_json else None
    result = evaluate(colorizer, data, rel, samples, batch_size, seed, sheet,
                      progress=(lambda n: bar.advance(n)) if bar else None, colour_encoder=encoder)
    if bar:
        bar.close()
    for line in result.skipped:
        click.echo(f"colorize: skipped {line}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        _print_evaluation(result)
    sys.exit(0 if result.images else 1)


def _colour_encoder(vae_path, model, dev):
    """The CVAE's colour encoder for evaluate's oracle: from --vae, or MODEL/vae.pt of a run; else None."""
    from .checkpoint import CheckpointError
    from .train import load_vae

    if vae_path is None and model is not None and Path(model, "vae.pt").is_file():
        vae_path = Path(model, "vae.pt")
    if vae_path is None:
        return None
    try:
        return load_vae(vae_path, dev).encoder.eval()
    except CheckpointError as err:
        click.echo(f"colorize: error: {err}", err=True)
        sys.exit(2)


def _model_and_images(load, data: Path, list_file, limit):
    """The model (``load()``) and DATA's image list, or exit 2 with one line saying why not."""
    from .evaluate import evaluation_list

    try:
        colorizer = load()
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        click.echo(f"colorize: error: {err}", err=True)
        sys.exit(2)
    rel = evaluation_list(data, list_file, limit)
    if not rel:
        click.echo(f"colorize: error: no images under {data}", err=True)
        sys.exit(2)
    return colorizer, rel


def _print_evaluation(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from .evaluate import METHOD_NAMES

    table = Table(title=f"{result.images} images, {result.samples} samples each (ab in the seed's units, 64x64)")
    cols = [("best", "error-of-best"), ("top1", "top-1 error"), ("mean", "mean error"),
            ("diversity", "diversity"), ("psnr_best", "PSNR best (dB)"), ("colourfulness", "colourfulness"),
            ("wash", "red wash")]
    table.add_column("method")
    for _, title in cols:
        table.add_column(title, justify="right")
    for key, name in METHOD_NAMES.items():
        if key not in result.methods:
            continue
        m = result.methods[key]
        table.add_row(name, *(f"{m[k]:.2f}" if k in ("psnr_best", "colourfulness") else f"{m[k]:.4f}"
                              for k, _ in cols))
    table.add_row("ground truth", "", "", "", "", "", f"{result.truth_colourfulness:.2f}", f"{result.truth_wash:.4f}")
    console = Console()  # the table is the result: stdout
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
    ratios = result.ratios()
    if ratios:
        console.print(f"error-of-best {ratios['best_vs_grey']:.3f}x grey, top-1 {ratios['top1_vs_grey']:.3f}x grey; "
                      f"sample 1 colourfulness {result.methods['top1']['colourfulness']:.1f} "
                      f"(truth {result.truth_colourfulness:.1f})")


@main.command("calibrate")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--list", "list_file", type=click.Path(exists=True, dir_okay=False),
              help="file of image paths relative to DATA (default: walk DATA)")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="the model folder (a training run or a bundle) to calibrate; default: the bundled model")
@click.option("--output", "-o", "--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="where to write the calibration (default: MODEL/int8.json, where --int8 looks for it)")
@click.option("--images", type=click.IntRange(1), default=256, show_default=True,
              help="photos to measure, drawn evenly from the list")
@click.option("--percentile", type=click.FloatRange(90, 100), default=None,
              help="each layer's range: this percentile of its activations per batch, averaged (default 100: "
                   "the largest)")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True, help="photos per batch")
def calibrate_cmd(data, list_file, model, out, images, percentile, batch_size):
    """Measure the activation ranges that --int8 needs, on photos like the ones to colorize (CPU, fp32)."""
    from .colorizer import Colorizer
    from .int8 import DEFAULT_PERCENTILE, calibrate_photos, calibration_path
    from .registry import resolve_model

    colorizer, rel = _model_and_images(lambda: Colorizer.load(model, "cpu", bf16=False, cpu_streams=1),
                                       data, list_file, None)
    # evenly spread over the list (a list sorted by person or date would otherwise give one kind of photo)
    picked = [rel[i * len(rel) // min(images, len(rel))] for i in range(min(images, len(rel)))]
    reporter = _RichReporter()
    bar = reporter.progress(len(picked), "calibrating")
    calibration, skipped = calibrate_photos(colorizer.vgg, colorizer.mdn, [data / r for r in picked], batch_size,
                                            percentile or DEFAULT_PERCENTILE, progress=bar.advance)
    bar.close()
    for line in skipped:
        click.echo(f"colorize: skipped {line}", err=True)
    if calibration is None:
        click.echo("colorize: error: no readable photos to calibrate on", err=True)
        sys.exit(1)
    target = out or calibration_path(resolve_model(model))
    try:
        calibration.save(target)
    except OSError as err:
        click.echo(f"colorize: error: cannot write {target}: {err}", err=True)
        sys.exit(1)
    reporter.log(f"wrote {target} ({calibration.images} photos)")
    if calibration.images < MIN_CALIBRATION_PHOTOS:
        click.echo(f"colorize: warning: ranges from {calibration.images} photos; photos unlike them may be "
                   f"clipped under --int8 (the bundled model's come from 256)", err=True)


@main.command("export")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--output", "-o", "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="bundle folder to write (manifest.json + one .pt file per part)")
@click.option("--quantize", type=click.Choice(["int8", "fp16", "fp32"]), default="int8", show_default=True,
              help="weight storage: int8 per output channel (smallest), fp16, or fp32")
def export_cmd(run, out, quantize):
    """Make an inference bundle from a training run (drops the training-only colour encoder)."""
    from .bundle import export_bundle
    from .checkpoint import CheckpointError

    try:
        folder = export_bundle(run, out, quantize)
    except CheckpointError as err:
        click.echo(f"colorize: error: {err}", err=True)
        sys.exit(2)
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    click.echo(f"wrote {folder} ({size / 2**20:.1f} MiB, {quantize})", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
