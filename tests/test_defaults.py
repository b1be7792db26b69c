"""The batch command's own defaults on real old photos: sheets sized to look at, jpg in jpg out, a gallery,
outputs an archive can keep (issue 15's bar, with the bundled model)."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import pytest
from conftest import OLD_PHOTOS, REPO, require
from PIL import Image

pytestmark = pytest.mark.slow


def _colorize(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLORIZE_") or k == "COLORIZE_NO_DOWNLOAD"}
    return subprocess.run([sys.executable, "-m", "colorize_cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def test_old_photos_with_the_defaults(shared, tmp_path):
    require(OLD_PHOTOS / "ddcolor")
    folder = tmp_path / "ddcolor"
    shutil.copytree(OLD_PHOTOS / "ddcolor", folder)
    inputs = sorted(folder.iterdir())
    r = _colorize(folder, "--device", "cpu", "--gallery", "--json")
    assert r.returncode == 0, r.stderr
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(results) == 13 and all(x["status"] == "done" for x in results)

    # every output together within 3x the inputs' bytes (a full-resolution png sheet was 59x)
    outputs = [p for p in folder.iterdir() if p not in inputs]
    assert sum(p.stat().st_size for p in outputs) <= 3 * sum(p.stat().st_size for p in inputs)
    assert {p.suffix for p in outputs} == {".jpg", ".html"}      # jpg (and jpeg) in, jpg out
    page = (folder / "colorized.html").read_text(encoding="utf-8")
    for p in inputs:
        assert json.dumps(p.name)[1:-1] in page

    # sheets: numbered tiles at most 480 px on their long side, 4 per row
    audrey = folder / "Audrey Hepburn.colorized.jpg"
    with Image.open(audrey) as im:
        assert im.width <= 4 * 480 + 3 * 10 and im.height <= 2 * (480 + 26) + 10
        # what the input had is kept: ICC profile, DPI, EXIF; and an XMP description says what it is
        src = Image.open(folder / "Audrey Hepburn.jpg")
        assert im.info.get("icc_profile") == src.info.get("icc_profile") and im.info.get("icc_profile")
        assert im.info.get("dpi") == src.info.get("dpi")
        # every EXIF tag but the input's structure (size, compression, photometric, samples per pixel)
        structure = {0x0100, 0x0101, 0x0102, 0x0103, 0x0106, 0x0115, 0x011C}
        assert im.getexif().get(0x0112, 1) == 1 and set(src.getexif()) - structure <= set(im.getexif())
        assert b"Colorization by colorize" in im.info["xmp"] and b'colorize:model="general"' in im.info["xmp"]

    # pick: sample 3 at full resolution, with its provenance
    photo = folder / "February 1936. Nipomo, Calif. Destitute pea pickers living in tent in migrant camp. " \
                     "Mother of seven children. Age 32.jpg"
    r = _colorize("pick", photo, "3", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    picked = photo.with_name(photo.stem + ".colorized-3.jpg")
    assert cv2.imread(str(picked)).shape[:2] == cv2.imread(str(photo)).shape[:2]
    info = json.loads(_colorize("info", "--json", picked).stdout)["record"]
    assert info["sample"] == 3 and info["source"] == photo.name and info["model"] == "general"
    with Image.open(picked) as im:
        assert im.info.get("dpi") == (1800, 1800) and im.info.get("icc_profile")
