"""What the I/O threads spend per photo, one thread, by stage: decoding an input, and writing its sheet (the
sheet's pixels: upsampling, Lab -> BGR, tiles and captions; encoding; the provenance record and metadata; the
atomic write). The model's predictions are real (the bundled model, computed first and not timed).

    python benchmarks/bench_writer.py [--images 64] [--format jpg|png|webp] [--model general]

With the program's allocator settings (common/process.py), as in a run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench_images import REPO, lfw_images

sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--format", default="jpg", choices=("jpg", "png", "webp"))
    ap.add_argument("--model", default="general")
    args = ap.parse_args()

    import cv2

    from colorize_cli.common.process import _keep_large_blocks
    from colorize_cli.engine import writer
    from colorize_cli.engine.batch import _decode
    from colorize_cli.engine.plan import DEFAULT_SHEET_SIZE, BatchOptions, discover, plan_outputs
    from colorize_cli.model.colorizer import Colorizer

    _keep_large_blocks()
    cv2.setNumThreads(1)   # an I/O thread's share: OpenCV's own threads would hide the cost
    tmp = Path(tempfile.mkdtemp(prefix="bench-writer-"))
    try:
        lfw_images(args.images, tmp / "in")
        found = discover([str(tmp / "in")], True)
        opts = BatchOptions(samples=8, output_dir=tmp / "out", fmt=args.format, sheet_size=DEFAULT_SHEET_SIZE)
        plan_outputs(found.items, opts)
        spent: dict[str, float] = defaultdict(float)
        start = time.perf_counter()
        decoded = [_decode(item, claim=False) for item in found.items]
        spent["decode"] = time.perf_counter() - start
        model = Colorizer.load(args.model, "cpu")
        preds = []
        for i in range(0, len(decoded), 16):
            part = decoded[i:i + 16]
            preds += model.predict([d.prep.l64 for d in part], [d.prep.l224 for d in part], 8)
        model.close()

        def timed(name, fn):
            def wrapper(*a, **k):
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    spent[name] += time.perf_counter() - t0
            return wrapper

        writer.captioned_sheet = timed("sheet pixels", writer.captioned_sheet)
        writer.encode_image = timed(f"{args.format} encoding", writer.encode_image)
        writer.provenance.embed = timed("record + metadata", writer.provenance.embed)
        writer.write_atomic = timed("atomic write", writer.write_atomic)
        t0 = time.perf_counter()
        for dec, pred in zip(decoded, preds):
            writer._write_outputs(dec, pred, opts, args.model)
        spent["write, all"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(found.items)
    print(f"{n} LFW photos, 8-sample {args.format} sheets, one thread; ms per photo")
    for name, seconds in spent.items():
        print(f"  {name:20s} {seconds / n * 1000:6.2f}")


if __name__ == "__main__":
    main()
