"""`colorize PATH...`: colorize photos and folders (the default command)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from .app import DEFAULT_COMMAND, SheetSize, _check_output_dir, _device_option, main


@main.command(DEFAULT_COMMAND, hidden=True,
              context_settings={"ignore_unknown_options": False, "auto_envvar_prefix": "COLORIZE"})
@click.argument("paths", nargs=-1, metavar="PATH...", type=click.Path())
@click.option("--samples", "-n", type=click.IntRange(1, 64), default=8, show_default=True,
              help="colorizations per photo: the N most probable mixture means (beyond 8, draws from the "
                   "mixture); 1: the colorized photo itself, full size")
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
@click.option("--vividness", type=click.FloatRange(0, 2), default=1.0, show_default=True,
              help="colour intensity: 1 the model's colours, 0 grey, up to 2")
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
              help="CPU only: VGG, the MDN (and, without AMX, the decoder) as int8 convolutions (oneDNN), "
                   "with the model's int8.json  "
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
def run_cmd(paths, samples, model, output, separate, fmt, sheet_size, quality, device, batch_size, seed, vividness,
            overwrite,
            recursive, bf16, workers, merge_on, compile_networks, cuda_graphs, int8, cpu_streams, max_pixels, dry_run,
            gallery, ray, ray_actors, null, as_json, quiet, debug):
    """Colorize photos: files and folders (walked recursively); ``-`` reads paths from stdin.

    Writes PHOTO.colorized.png (a sheet of the samples, most probable first; with --samples 1 the colorized
    photo itself, full size) beside each input, or under --output. Existing outputs are skipped, so reruns
    only do new photos. Exit code: 0 all done or skipped, 1 some inputs failed, 2 usage error.
    """
    from ..common.process import paused_collector

    with paused_collector():   # torch's import (common/process.py)
        from ..engine.runner import run_batch_command
        from ..model.registry import ModelNotFoundError, resolve_model

    if not paths:
        raise click.UsageError("no PATH given (a photo, a folder, or - for paths on stdin)")
    _check_output_dir(output)
    from ..model.bundle import check_model_folder
    from ..model.checkpoint import CheckpointError
    from ..model.device import DeviceError, resolve_device

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
    from ..engine.plan import BatchOptions
    from ..engine.runner import COMPILE_BACKEND, RunOptions
    from ..files.imageio import MAX_PIXELS
    from ..model.colorizer import LoadOptions

    if samples == 1 and click.get_current_context().get_parameter_source("sheet_size") == ParameterSource.DEFAULT:
        sheet_size = None   # one colorization per photo: the photo itself, full size, no caption
    batch = BatchOptions(samples=samples, output_dir=output, separate=separate, fmt=fmt, quality=quality,
                         sheet_size=sheet_size, batch_size=batch_size, seed=seed, vividness=vividness,
                         overwrite=overwrite,
                         max_pixels=max_pixels or MAX_PIXELS,
                         device_sheets={"auto": None, "device": True, "cpu": False}[merge_on])
    if workers:
        batch.workers = workers
    from ..model.registry import model_name

    # a bundled model by its name (each Ray node finds its own copy), any other folder by its absolute path
    load = LoadOptions(model=model_name(os.path.abspath(model)), device=device, bf16=bf16, int8=int8,
                       compile_backend=COMPILE_BACKEND if compile_networks else None, cuda_graphs=cuda_graphs,
                       cpu_streams=cpu_streams)
    code = run_batch_command(expanded, RunOptions(batch, load, recursive=recursive, dry_run=dry_run,
                                                  as_json=as_json, quiet=quiet, debug=debug, gallery=gallery, ray=ray,
                                                  ray_actors=ray_actors))
    sys.exit(code)


def _stdin_paths(null: bool) -> list[str]:
    """Paths from stdin: one per line, or NUL-terminated with -0 (names may then hold newlines). Bytes that
    are not UTF-8 come through as the file system's own (os.fsdecode)."""
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    if null:
        parts = data.split(b"\0")
    else:
        parts = [ln.rstrip(b"\r") for ln in data.split(b"\n")]
    return [os.fsdecode(p) for p in parts if p.strip()]
