"""`colorize pick`: chosen samples at full resolution."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .app import _check_output_dir, _device_option, main


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
@click.option("--vividness", type=click.FloatRange(0, 2), default=1.0, show_default=True,
              help="as the run whose samples were chosen (1 the model's colours, 0 grey, up to 2)")
@click.option("--samples", "-n", type=click.IntRange(1, 64), default=8, show_default=True,
              help="as the run whose samples were chosen (only draws beyond 8 depend on it)")
@_device_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object per photo on stdout")
def pick_cmd(photo, numbers, picks_file, model, output, fmt, quality, seed, vividness, samples, device, as_json):
    """Write chosen samples of a photo at full resolution: `colorize pick PHOTO 3 5`.

    The files get the names `--separate` gives (PHOTO.colorized-3.png) and the same pixels, for the same
    model and --seed. `--from picks.json` does a whole set of choices.
    """
    import json

    _check_output_dir(output)
    from ..engine.batch import pick
    from ..engine.plan import BatchOptions, discover, plan_outputs
    from ..model.checkpoint import CheckpointError
    from ..model.colorizer import Colorizer
    from ..model.device import DeviceError
    from ..model.registry import ModelNotFoundError

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
                        separate=True, fmt=fmt, quality=quality, seed=seed,
                        vividness=vividness)
    plan_outputs(found.items, opts)
    if not found.items:
        sys.exit(2)
    try:
        colorizer = Colorizer.load(model, device)
    except (ModelNotFoundError, CheckpointError, DeviceError, FileNotFoundError, RuntimeError, ValueError) as err:
        click.echo(f"colorize: error: {err}", err=True)
        sys.exit(2)
    from ..engine.runner import _decoder_said, _printable
    from ..files import native

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
