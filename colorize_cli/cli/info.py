"""`colorize info` and `colorize models`: what a file is, which models there are."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .app import main


@main.command("info")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per file on stdout")
def info_cmd(files, as_json):
    """Say whether FILES are colorizations by colorize, and of what: tool version, model, source photo,
    sample, weight, seed (the record every png and jpg output carries)."""
    import json

    from ..common.names import readable
    from ..engine.runner import _printable
    from ..files import provenance

    missing = False
    for f in files:
        record = provenance.read(f) if f.is_file() else None
        missing |= record is None
        if as_json:
            # strict JSON (records never hold NaN: provenance.read refuses them), names as valid text
            click.echo(json.dumps({"file": readable(str(f)), "record": record}, allow_nan=False))
        elif record is None:
            click.echo(f"{_printable(str(f))}: no colorize record (an original, another tool's, or a webp output)")
        else:
            # every field as one line's text: a forged record's escape codes or newlines are shown, not obeyed
            fields = ", ".join(f"{_printable(str(k))}: {_printable(str(v))}" for k, v in record.items()
                               if k not in ("weights", "mtime_ns", "layout"))
            click.echo(f"{_printable(str(f))}: {fields}")
    sys.exit(1 if missing else 0)


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per model on stdout")
def models_cmd(as_json):
    """The bundled models: name, training data, metrics on held-out photos, size. Use one with --model NAME."""
    import json

    from ..model.registry import list_models

    infos = list_models()
    if as_json:
        for info in infos:
            click.echo(json.dumps(info.to_json()))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bundled models (--model NAME)")
    for col in ("name", "trained on", "held-out metrics (error vs grey's: best of 8 / most probable; sample 1's "
                "colourfulness vs the true photos')", "size"):
        table.add_column(col)

    def line(test: str, m: dict) -> str:
        text = f"{test}: {m['best_vs_grey']:.2f}x / {m['top1_vs_grey']:.2f}x"
        colour = m.get("sample1_colourfulness_vs_truth")
        return text + (f"; colour {colour:.2f}x" if isinstance(colour, (int, float)) else "")

    for info in infos:
        metrics = "\n".join(line(test, m) for test, m in info.metrics.items()
                            if isinstance(m, dict) and "best_vs_grey" in m)
        table.add_row(info.name + (" (default)" if info.default else ""), info.data, metrics or "-",
                      f"{info.size_bytes / 2**20:.0f} MiB")
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    console.print(table)
    if not infos:
        click.echo("colorize: no bundled models in this installation", err=True)
        sys.exit(1)
