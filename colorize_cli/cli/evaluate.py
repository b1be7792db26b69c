"""`colorize evaluate`: metrics on held-out colour photos."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .app import _bf16_default, _device_option, _resolve_device, _RichReporter, main


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
              help="VGG, the MDN (and, without AMX, the decoder) in int8 on the CPU (evaluate measures one "
                   "setting at a time)")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="photos per model batch")
@click.option("--seed", type=int, default=0, show_default=True, help="as for colorizing: same seed, same samples")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write a tiled sheet of the first test images here (samples | grey | truth)")
@click.option("--vae", "vae_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the model's stage-1 checkpoint (vae.pt), for the CVAE oracle (default: MODEL/vae.pt when "
                   "MODEL is a training run; bundles do not carry the colour encoder)")
@click.option("--fit-steps", type=click.IntRange(0), default=0, show_default=True,
              help="also fit, per photo, the latent z whose decoding is closest to the truth (this many Adam "
                   "steps): the colours the decoder can give back at best, with no colour encoder")
@click.option("--json", "as_json", is_flag=True, help="print the metrics as JSON on stdout")
def evaluate_cmd(data, list_file, model, samples, limit, device, bf16, int8, batch_size, seed, sheet, vae_path,
                 fit_steps, as_json):
    """Metrics on held-out colour photos: error-of-best, diversity, PSNR, colourfulness, red wash, with
    baselines (grey, the CVAE from N(0, I), and the CVAE oracle where the colour encoder is at hand)."""
    import json

    from ..model.colorizer import Colorizer
    from ..training.evaluate import evaluate

    dev = _resolve_device(device)
    colorizer, rel = _model_and_images(lambda: Colorizer.load(model, dev, _bf16_default(bf16, dev),
                                                              int8=int8), data, list_file, limit)
    encoder = _colour_encoder(vae_path, model, dev)
    reporter = _RichReporter()
    bar = reporter.progress(len(rel), "evaluating") if not as_json else None
    result = evaluate(colorizer, data, rel, samples, batch_size, seed, sheet,
                      progress=(lambda n: bar.advance(n)) if bar else None, colour_encoder=encoder,
                      fit_steps=fit_steps)
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
    from ..model.checkpoint import CheckpointError
    from ..training.train import load_vae

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
    from ..training.evaluate import evaluation_list

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

    from ..training.evaluate import METHOD_NAMES

    table = Table(title=f"{result.images} images, {result.samples} samples each (ab in the seed's units, 64x64)")
    cols = [("best", "error-of-best"), ("top1", "top-1 error"), ("mean", "mean error"),
            ("diversity", "diversity"), ("psnr_best", "PSNR best (dB)"), ("colourfulness", "colourfulness"),
            ("wash", "red wash"), ("near_grey", "near-grey")]
    table.add_column("method")
    for _, title in cols:
        table.add_column(title, justify="right")
    for key, name in METHOD_NAMES.items():
        if key not in result.methods:
            continue
        m = result.methods[key]
        table.add_row(name, *(f"{m[k]:.2f}" if k in ("psnr_best", "colourfulness") else f"{m[k]:.4f}"
                              for k, _ in cols))
    table.add_row("ground truth", "", "", "", "", "", f"{result.truth_colourfulness:.2f}", f"{result.truth_wash:.4f}",
                  "")
    console = Console()  # the table is the result: stdout
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
    ratios = result.ratios()
    if ratios:
        console.print(f"error-of-best {ratios['best_vs_grey']:.3f}x grey, top-1 {ratios['top1_vs_grey']:.3f}x grey")
    vivid = result.vividness()
    if vivid:
        console.print(f"sample 1 colourfulness {result.methods['top1']['colourfulness']:.1f} against the truth's "
                      f"{result.truth_colourfulness:.1f}: {vivid['sample1_colourfulness_vs_truth']:.2f}x, "
                      f"delta-CF {vivid['sample1_delta_cf']:.1f}; sample 1 near-grey (colourfulness < 10) on "
                      f"{vivid['sample1_near_grey']:.0%} of the photos")
