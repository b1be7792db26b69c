"""`colorize calibrate` and `colorize export`: making and tuning a model bundle."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .app import MIN_CALIBRATION_PHOTOS, _RichReporter, main
from .evaluate import _model_and_images


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
    from ..model.colorizer import Colorizer
    from ..model.int8 import DEFAULT_PERCENTILE, calibration_path
    from ..model.int8_decoder import QUANTIZED_INPUTS
    from ..model.registry import resolve_model
    from ..training.calibrate import calibrate_photos

    colorizer, rel = _model_and_images(
        lambda: Colorizer.load(model, "cpu", bf16=False, int8=False, cpu_streams=1), data, list_file, None)
    # evenly spread over the list (a list sorted by person or date would otherwise give one kind of photo)
    picked = [rel[i * len(rel) // min(images, len(rel))] for i in range(min(images, len(rel)))]
    reporter = _RichReporter()
    bar = reporter.progress(len(picked), "calibrating")
    calibration, skipped = calibrate_photos(colorizer.vgg, colorizer.mdn, [data / r for r in picked], batch_size,
                                            percentile or DEFAULT_PERCENTILE, progress=bar.advance,
                                            cvae=colorizer.cvae)
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
    decoder = ("; the decoder stays float (its BatchNorm scales do not fold)" if not calibration.decoder_ranges
               else "; the condition encoder stays float (its BatchNorm scales do not fold)"
               if len(calibration.decoder_ranges) == QUANTIZED_INPUTS else "")
    reporter.log(f"wrote {target} ({calibration.images} photos{decoder})")
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
    from ..model.bundle import export_bundle
    from ..model.checkpoint import CheckpointError

    try:
        folder = export_bundle(run, out, quantize)
    except CheckpointError as err:
        click.echo(f"colorize: error: {err}", err=True)
        sys.exit(2)
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    click.echo(f"wrote {folder} ({size / 2**20:.1f} MiB, {quantize})", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
