"""Rebuild the training and test data of the bundled `general` model from public copies of ImageNet subsets,
and (with --scenes / --people) the next model's: scenes (buildings, streets, forest, mountains, sea, glaciers)
and people in everyday activities.

    git clone --depth 1 https://github.com/thunderInfy/imagenette
    git clone --depth 1 https://github.com/rangeetpan/IMagenet
    python docs/build_general_data.py imagenette IMagenet/tiny-imagenet-200 data/general

    git clone --depth 1 https://github.com/yadavaditya13/Image_Classification_Using_Deep_Learning scenes
    git clone --depth 1 https://github.com/umareddy123/Human_activity_recognition people
    python docs/build_general_data.py imagenette IMagenet/tiny-imagenet-200 data/general \
        --scenes scenes/dataset --people people

The held-out photos of the new sources are fixed in docs/general-test-scenes.txt (300 of Intel's seg_test)
and docs/general-test-people.txt (300 of the activity set's test/); they are copied to data/general/test-*/
and never to the training folders.

writes data/general/{imagenette,tiny}/ (the training photos, as the model was trained on them) and
data/general/val/ (Imagenette's val/ as published) with the lists the docs name. Grey photos are not removed
here: training leaves them out itself (`--skip-grey`, the default) and counts them in its log, and dull ones
with `--min-colourfulness` (docs/training.md measures it).
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


#: the held-out lists of the new sources: photos under these roots, never trained on
TEST_LISTS = {"scenes": ("general-test-scenes.txt", "seg_test"), "people": ("general-test-people.txt", "test")}


def _extra(name: str, src_root: Path, train_dirs: list[str], out: Path) -> int:
    """A new source: its training photos (all but the held-out list) as 192-px WebP under out/NAME/, and its
    held-out photos as published under out/test-NAME/ with their list. Returns the training count."""
    list_name, test_dir = TEST_LISTS[name]
    held = {src_root / test_dir / rel for rel in (HERE / list_name).read_text().split()}
    train = sorted(p for d in train_dirs for p in (src_root / d).rglob("*.jpg") if p not in held)
    Parallel(n_jobs=-1, batch_size=64)(
        delayed(_imagenette)(p, out / name / p.relative_to(src_root).with_suffix(".webp")) for p in train)
    for src in sorted(held):
        dst = out / f"test-{name}" / src.relative_to(src_root / test_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    shutil.copyfile(HERE / list_name, out / f"test-{name}" / list_name)
    return len(train)


def main(imagenette: Path, tiny: Path, out: Path, scenes: Path | None = None, people: Path | None = None) -> None:
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


    if scenes is not None:
        print(f"{_extra('scenes', scenes, ['seg_train', 'seg_pred', 'seg_test'], out)} scene photos -> {out}")
    if people is not None:
        print(f"{_extra('people', people, ['train', 'test'], out)} activity photos -> {out}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("imagenette", type=Path)
    ap.add_argument("tiny", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--scenes", type=Path, help="the scene set's dataset/ folder (seg_train, seg_pred, seg_test)")
    ap.add_argument("--people", type=Path, help="the activity set's folder (train, test)")
    a = ap.parse_args()
    main(a.imagenette, a.tiny, a.out, a.scenes, a.people)
