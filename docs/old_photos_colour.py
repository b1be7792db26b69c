"""How colourful are a model's colorizations of real old photos (no true colours to compare with)?

Each photo (every image under the given folders; byte-identical copies counted once) is colorized as
`colorize` does (8 samples, most probable first, full resolution) and the colourfulness of each sample is
measured (Hasler & Suesstrunk, as `colorize evaluate` computes it). Printed per photo and, per model, the
median of sample 1's colourfulness, the median of the 8 samples' mean, and the share of photos whose sample 1
is near-grey (colourfulness < 10). fp32 by default, so the figures do not depend on the CPU's bf16/int8 units.

    python docs/old_photos_colour.py OLD_PHOTOS... [--model general --model faces] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from colorize_cli.files.imageio import ImageReadError, read_image
from colorize_cli.model.colorizer import Colorizer
from colorize_cli.training.data import list_images
from colorize_cli.training.evaluate import NEAR_GREY, colourfulness


def _sha256(path: Path) -> str:
    """The file's digest, read in 1 MiB chunks (memory bounded whatever the file's size; Python 3.9 has no
    hashlib.file_digest)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def photos(folders: list[Path]) -> list[Path]:
    """Every image under ``folders`` in name order, each distinct file once (examples/ repeats some)."""
    seen, out = set(), []
    for folder in folders:
        for rel in list_images(folder):          # as training walks a folder (colorize's outputs left out)
            p = folder / rel
            digest = _sha256(p)
            if digest not in seen:
                seen.add(digest)
                out.append(p)
    return out


def measure(colorizer: Colorizer, paths: list[Path], samples: int = 8) -> list[dict]:
    rows = []
    for p in paths:
        try:
            bgr = read_image(p).bgr             # as `colorize` reads a photo (orientation, alpha, bounds)
        except ImageReadError as err:
            print(f"{p}: skipped: {err}", file=sys.stderr)
            continue
        outs, weights = colorizer.colorize(bgr, samples=samples)
        cf = [colourfulness(o[..., :3]) for o in outs]
        rows.append({"photo": p.name, "sample1": cf[0], "mean": float(np.mean(cf)),
                     "weight1": float(weights[0])})
    return rows


def summary(rows: list[dict]) -> dict:
    s1 = np.array([r["sample1"] for r in rows])
    return {"photos": len(rows), "sample1_median": float(np.median(s1)),
            "all_median": float(np.median([r["mean"] for r in rows])),
            "sample1_near_grey": float(np.mean(s1 < NEAR_GREY))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--model", action="append", help="a bundled model's name or a model folder (repeatable)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="one JSON object: per model, the photos and the summary")
    args = ap.parse_args()
    paths = photos(args.folders)
    result = {}
    for model in args.model or ["general"]:
        colorizer = Colorizer.load(model, args.device, bf16=False, int8=False)
        rows = measure(colorizer, paths)
        result[model] = {"summary": summary(rows), "photos": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    models = list(result)
    print("photo | " + " | ".join(f"{m}: sample 1 / all 8" for m in models))
    for i, p in enumerate(result[models[0]]["photos"]):
        cells = [f"{result[m]['photos'][i]['sample1']:.1f} / {result[m]['photos'][i]['mean']:.1f}" for m in models]
        print(f"{p['photo']} | " + " | ".join(cells))
    for m in models:
        s = result[m]["summary"]
        print(f"{m}: {s['photos']} photos, sample 1's colourfulness median {s['sample1_median']:.1f}, the 8 "
              f"samples' {s['all_median']:.1f}, sample 1 near-grey on {s['sample1_near_grey']:.0%}")


if __name__ == "__main__":
    main()
