"""Rebuild the training and test data of the bundled `general` model from public copies of ImageNet subsets.

    git clone --depth 1 https://github.com/thunderInfy/imagenette
    git clone --depth 1 https://github.com/rangeetpan/IMagenet
    python docs/build_general_data.py imagenette IMagenet/tiny-imagenet-200 data/general

writes data/general/{imagenette,tiny}/ (the training photos, as the model was trained on them) and
data/general/val/ (Imagenette's val/ as published) with the lists the docs name. Grey photos are not removed
here: training leaves them out itself (`--skip-grey`, the default) and counts them in its log.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
from joblib import Parallel, delayed

HERE = Path(__file__).resolve().parent
#: the training copy of Imagenette: 192x192 WebP quality 70 (43 MB for its 8,870 colour photos)
SIZE, WEBP_QUALITY = 192, 70


def _imagenette(src: Path, dst: Path) -> None:
    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if img is None:
        print(f"unreadable: {src}", file=sys.stderr)
        return
    img = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, WEBP_QUALITY])[1].tobytes())


def main(imagenette: Path, tiny: Path, out: Path) -> None:
    train = sorted((imagenette / "train").glob("*/*"))
    Parallel(n_jobs=-1, batch_size=64)(
        delayed(_imagenette)(p, out / "imagenette" / p.parent.name / (p.stem + ".webp")) for p in train)
    for rel in (HERE / "general-tiny-train.txt").read_text().split():
        dst = out / "tiny" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tiny / "train" / rel, dst)
    shutil.copytree(imagenette / "val", out / "val", dirs_exist_ok=True)
    for name in ("general-val-selection.txt", "general-val-test1000.txt"):
        shutil.copyfile(HERE / name, out / name)
    print(f"{len(train)} Imagenette training photos, "
          f"{len((HERE / 'general-tiny-train.txt').read_text().split())} Tiny ImageNet photos -> {out}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
