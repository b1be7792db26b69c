"""``--gallery``: a static page of every photo's numbered samples, to choose from with a click or a key.

The page (``colorized.html``) works offline from disk: one file, its script and style inline, the sheets
referenced by relative paths; no server, no network. A click on a tile (or keys 1-9 on the current photo)
chooses a sample; the choices leave the page as ``picks.json`` (a download, also shown as text) with the
exact ``colorize pick --from picks.json ...`` command that writes them at full resolution. Every run that
asks for it writes the page again, from the records in the sheets (so a rerun that skipped everything still
lists every photo with its weights).
"""

from __future__ import annotations

import html
import json
import os
import shlex
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from ..common.atomic import atomic_write
from . import provenance

PAGE_NAME = "colorized.html"


def page_folder(items, output_dir: Path | None) -> Path:
    """Where the page goes: --output when given, else the deepest folder that holds every input."""
    if output_dir is not None:
        return Path(output_dir)
    parents = [os.path.abspath(it.path.parent) for it in items]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def _rel(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(os.path.abspath(path), folder)).as_posix()


def entries(items, folder: Path, samples: int) -> list[dict]:
    """One entry per input whose sheet exists: its paths (the photo's absolute, for ``pick --from``; the
    sheet's relative to the page), weights and tile layout from the sheet's record (a webp sheet has none:
    then ``samples`` numbered choices, no weights)."""
    out = []
    for it in items:
        if it.sheet is None or not it.sheet.is_file():
            continue
        record = provenance.read(it.sheet) or {}
        out.append({"photo": os.path.abspath(it.path), "name": it.rel.as_posix(),
                    "sheet": quote(os.fsencode(_rel(it.sheet, folder))),   # a URL: %, ?, # and newlines encoded
                    "weights": record.get("weights") or [], "samples": record.get("samples") or samples,
                    "layout": record.get("layout"), "vividness": _vividness(record)})
    return out


def _vividness(record: dict) -> float:
    value = record.get("vividness", 1.0)
    return float(value) if isinstance(value, (int, float)) and 0 <= value <= 2 else 1.0


def pick_command(options: dict) -> str:
    """The command that writes the chosen samples as this run would have (model, seed, samples, format...)."""
    args = ["colorize", "pick", "--from", "picks.json"]
    for flag, value in options.items():
        if value is not None:
            args += [flag, str(value)]
    return shlex.join(args)


def write_page(items, folder: Path, options: dict, samples: int, title: str = "colorize") -> Path | None:
    """Write ``folder/colorized.html`` for these planned inputs (``samples`` per photo); None when none has
    a sheet."""
    folder = Path(os.path.abspath(folder))
    data = entries(items, folder, samples)
    if not data:
        return None
    template = resources.files("colorize_cli").joinpath("templates/gallery.html").read_text(encoding="utf-8")
    payload = json.dumps({"photos": data, "command": pick_command(options)}, ensure_ascii=True)
    # never closes the script element early, nor opens a comment that changes how it is parsed (<!-- and
    # <script in a name): JSON strings may escape "<" as \u003c and mean the same
    payload = payload.replace("<", "\\u003c")
    page = (template.replace("{{TITLE}}", html.escape(title))
                    .replace("{{COUNT}}", str(len(data)))
                    .replace("/*{{DATA}}*/null", payload))
    path = folder / PAGE_NAME
    with atomic_write(path) as f:
        f.write(page.encode("utf-8"))
    return path
