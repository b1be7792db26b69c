"""`colorize pick`: chosen samples at full resolution."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .app import _check_output_dir, _device_option, main

#: a picks file larger than this is not one the gallery page wrote (a few hundred bytes per photo)
MAX_PICKS_BYTES = 16 << 20


def _read_picks(path: Path) -> list[tuple[str, list[int]]]:
    """picks.json: {"picks": [{"photo": PATH, "samples": [N, ...]}, ...]} (or the list alone); photo paths
    relative to the file's folder unless absolute. Read bounded (size, nesting); anything else is one line."""
    from ..common import jsonsafe

    try:
        data = jsonsafe.read_file(path, MAX_PICKS_BYTES)
    except (OSError, ValueError) as err:
        raise click.BadParameter(f"cannot read {path}: {getattr(err, 'strerror', None) or err}",
                                 param_hint="--from") from err
    rows = data.get("picks") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise click.BadParameter(f"{path}: expected a list of picks", param_hint="--from")
    if not rows:
        raise click.BadParameter(f"{path}: no samples were chosen (the page's picks were empty)",
                                 param_hint="--from")
    out = []
    for row in rows:
        samples = row.get("samples") if isinstance(row, dict) else None
        if (not isinstance(row, dict) or not isinstance(row.get("photo"), str) or not row["photo"]
                or not isinstance(samples, list) or not samples
                or not all(type(n) is int and 1 <= n <= 64 for n in samples)):   # noqa: E721 (true is not 1)
            raise click.BadParameter(f"{path}: each pick needs a photo and samples [1..64]", param_hint="--from")
        photo = Path(row["photo"])
        out.append((str(photo if photo.is_absolute() else path.parent / photo), sorted(set(samples))))
    return out


def _download_folder() -> Path:
    """Where browsers save downloads: $XDG_DOWNLOAD_DIR, else ~/Downloads."""
    return Path(os.environ.get("XDG_DOWNLOAD_DIR") or Path.home() / "Downloads")


def _locate_picks(path: Path) -> Path:
    """--from as given, or, for a bare name not found here, the same name in the download folder (the
    page's command says `--from picks.json` wherever it is pasted)."""
    if path.exists() or path.is_absolute() or path.parent != Path("."):
        if not path.exists():
            raise click.BadParameter(f"{path}: no such file", param_hint="--from")
        return path
    downloaded = _download_folder() / path.name
    if downloaded.exists():
        click.echo(f"colorize: using {downloaded}", err=True)
        return downloaded
    raise click.BadParameter(f"{path}: no such file here nor in {_download_folder()}", param_hint="--from")


def _check_photos(wanted: list[tuple[str, list[int]]]) -> None:
    """One line and exit 2 for what cannot be a photo to pick from: a folder, a sheet or sample (an output)."""
    from ..engine.plan import is_output_name

    for photo, _ in wanted:
        if Path(photo).is_dir():
            raise click.UsageError(f"{photo} is a folder: pick takes the photos whose samples you chose")
        if is_output_name(Path(photo).name):
            raise click.UsageError(f"{photo} is a colorize output: give the photo it was made from")


def _check_numbers(items, numbers_of) -> None:
    """A number beyond the samples the photo's sheet showed is no sample anybody saw: one line, exit 2."""
    from ..files import provenance

    for item, numbers in zip(items, numbers_of):
        record = provenance.read(item.sheet) if item.sheet is not None else None
        shown = record.get("samples") if record else None
        if type(shown) is int and numbers and max(numbers) > shown:   # noqa: E721
            raise click.UsageError(f"{item.path}: its sheet {item.sheet.name} shows {shown} samples; "
                                   f"{max(numbers)} is not one of them")


@main.command("pick")
@click.argument("photo", required=False, type=click.Path(path_type=Path))
@click.argument("numbers", nargs=-1, type=click.IntRange(1, 64))
@click.option("--from", "picks_file", type=click.Path(dir_okay=False, path_type=Path),
              help="a picks.json (from the gallery page): many photos and their chosen samples; a bare name "
                   "not found here is looked for in the download folder, where the page saved it")
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
    from ..engine.plan import BatchOptions, discover, plan_outputs, run_name
    from ..model.checkpoint import CheckpointError
    from ..model.colorizer import Colorizer
    from ..model.device import DeviceError
    from ..model.registry import ModelNotFoundError

    if picks_file is not None:
        if photo is not None:
            raise click.UsageError("give PHOTO N... or --from picks.json, not both")
        wanted = _read_picks(_locate_picks(picks_file))
    else:
        if photo is None or not numbers:
            raise click.UsageError("give PHOTO and at least one sample number (or --from picks.json)")
        wanted = [(str(photo), sorted(set(numbers)))]
    _check_photos(wanted)
    found = discover([w[0] for w in wanted], recursive=False)
    for item in found.items:   # named (and seeded) as the run that made its sheet named it
        item.rel = run_name(item.path, output) or item.rel
    for missing in found.missing:
        click.echo(f"colorize: error: {missing}: no such file", err=True)
    by_path = {str(Path(p).absolute()): n for p, n in wanted}
    numbers_of = [by_path.get(str(it.path.absolute()), []) for it in found.items]
    opts = BatchOptions(samples=max([samples] + [max(n) for n in numbers_of if n]), output_dir=output,
                        separate=True, fmt=fmt, quality=quality, seed=seed,
                        vividness=vividness)
    plan_outputs(found.items, opts)
    if not found.items:
        if not found.missing:
            click.echo("colorize: error: no photo to pick from", err=True)
        sys.exit(2)
    _check_numbers(found.items, numbers_of)
    try:
        colorizer = Colorizer.load(model, device)
    except (ModelNotFoundError, CheckpointError, DeviceError, FileNotFoundError, RuntimeError, ValueError) as err:
        click.echo(f"colorize: error: {err}", err=True)
        sys.exit(2)
    from ..engine.runner import _decoder_said, _printable, interruptible
    from ..files import native

    failed = bool(found.missing)
    with interruptible(), native.capture():   # decoders' stderr lines become the photo's own warning
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
