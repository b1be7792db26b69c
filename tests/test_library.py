"""The library as a Python user meets it: PIL images, float arrays, RGB order; and one photo per photo."""

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import synthetic_photo
from PIL import Image

from colorize_cli import Colorizer
from colorize_cli.cli import main


@pytest.fixture(scope="module")
def colorizer(tiny_run):
    return Colorizer.load(tiny_run, "cpu", bf16=False)


def test_pil_images_in_pil_images_out(colorizer):
    bgr = synthetic_photo(np.random.default_rng(2), 30, 40)
    rgb = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    expected, w = colorizer.colorize(bgr, samples=2)
    for image, mode in ((rgb, "RGB"), (rgb.convert("L"), "RGB"), (rgb.convert("RGBA"), "RGBA"),
                        (rgb.convert("LA"), "RGBA"), (rgb.convert("P"), "RGB")):
        outs, weights = colorizer.colorize(image, samples=2)
        assert [o.mode for o in outs] == [mode, mode] and outs[0].size == (40, 30)
        assert weights.shape == (2,)
    # an RGB PIL image is the same photo as its BGR array: the same colorizations, in RGB
    outs, _ = colorizer.colorize(rgb, samples=2)
    assert np.array_equal(np.asarray(outs[0]), cv2.cvtColor(expected[0], cv2.COLOR_BGR2RGB))
    sixteen = Image.fromarray((cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257))
    assert colorizer.colorize(sixteen, samples=1)[0][0].mode == "RGB"


def test_float_arrays_and_channel_order(colorizer):
    bgr = synthetic_photo(np.random.default_rng(5), 30, 40)
    expected, _ = colorizer.colorize(bgr, samples=2)
    as_float, _ = colorizer.colorize(bgr.astype(np.float32) / 255.0, samples=2)
    assert np.array_equal(as_float[0], expected[0])
    rgb_out, _ = colorizer.colorize(np.ascontiguousarray(bgr[..., ::-1]), samples=2, channels="rgb")
    assert np.array_equal(rgb_out[0], expected[0][..., ::-1])            # RGB in, RGB out
    for bad in (bgr.astype(np.float32), np.full((4, 4), np.nan, np.float32)):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            colorizer.colorize(bad, samples=1)
    with pytest.raises(ValueError, match="channels"):
        colorizer.colorize(bgr, channels="gbr")


def test_one_sample_is_the_photo_itself_and_a_rerun_names_other_options(tmp_path, tiny_run, monkeypatch):
    monkeypatch.delenv("COLORIZE_SHEET_SIZE")     # the defaults themselves: a 480-px captioned tile for 8
    monkeypatch.delenv("COLORIZE_FORMAT")
    photo = tmp_path / "scan.jpg"
    cv2.imwrite(str(photo), synthetic_photo(np.random.default_rng(7), 123, 77))
    r = CliRunner().invoke(main, [str(photo), "--model", str(tiny_run), "--device", "cpu", "--samples", "1"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "scan.colorized.jpg"
    assert cv2.imread(str(out)).shape == (123, 77, 3)                   # full size, no caption band
    info = json.loads(CliRunner().invoke(main, ["info", "--json", str(out)]).stdout)["record"]
    assert info["samples"] == 1 and info["source"] == "scan.jpg"
    again = CliRunner().invoke(main, [str(photo), "--model", str(tiny_run), "--device", "cpu", "--samples", "8"])
    assert again.exit_code == 0
    lines = [ln for ln in again.stderr.splitlines() if "other options" in ln]
    assert len(lines) == 1 and "samples 1, not 8" in lines[0] and "--overwrite" in lines[0]
    assert cv2.imread(str(out)).shape == (123, 77, 3)                   # nothing overwritten without it


def test_a_gallery_that_cannot_be_written_fails_the_run(tmp_path, tiny_run):
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), synthetic_photo(np.random.default_rng(8), 40, 48))
    (tmp_path / "colorized.html").mkdir()          # the page's name is taken by a folder
    r = CliRunner().invoke(main, [str(photo), "--model", str(tiny_run), "--device", "cpu", "--samples", "2",
                                  "--gallery"])
    assert r.exit_code == 1 and "cannot write the gallery page" in r.stderr


def test_top_level_help_shows_how_to_colorize_and_options_before_a_command_get_a_hint():
    help_text = CliRunner().invoke(main, ["--help"], prog_name="colorize").output
    assert help_text.startswith("Usage: colorize PATH... [OPTIONS]  |  colorize COMMAND")
    for option in ("--samples", "--output", "--gallery", "--vividness", "--model"):
        assert option in help_text.split("Colorizing options")[1], option
    assert "pick" in help_text.split("Commands:")[1]
    for args, command in ((["--device", "cpu", "pick", "photo.jpg", "3"], "pick"),
                          (["--debug", "pick", "--from", "x.json"], "pick")):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and f"options go after the command: colorize {command}" in r.output, r.output


def test_the_pages_pick_command_works_where_it_is_pasted(tmp_path, tiny_run, monkeypatch):
    photo = tmp_path / "photos" / "p.png"
    photo.parent.mkdir()
    cv2.imwrite(str(photo), synthetic_photo(np.random.default_rng(9), 40, 48))
    downloads = tmp_path / "home" / "Downloads"
    downloads.mkdir(parents=True)
    (downloads / "picks.json").write_text(json.dumps({"picks": [{"photo": str(photo), "samples": [2]}]}))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DOWNLOAD_DIR", raising=False)
    monkeypatch.chdir(tmp_path)                       # a terminal opened anywhere but Downloads
    r = CliRunner().invoke(main, ["pick", "--from", "picks.json", "--model", str(tiny_run), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (photo.parent / "p.colorized-2.png").is_file() and str(downloads / "picks.json") in r.stderr
    missing = CliRunner().invoke(main, ["pick", "--from", "nothing.json", "--model", str(tiny_run)])
    assert missing.exit_code == 2 and "nor in" in missing.output


def test_heic_from_a_phone(tmp_path, tiny_run, monkeypatch):
    # HEIC in: rotated as the file says, EXIF kept (orientation reset), the pixel limit from the header,
    # --format auto gives jpg
    pillow_heif = pytest.importorskip("pillow_heif")
    monkeypatch.delenv("COLORIZE_FORMAT")
    grey = cv2.cvtColor(synthetic_photo(np.random.default_rng(10), 40, 48), cv2.COLOR_BGR2GRAY)
    exif = Image.Exif()
    exif[0x0112] = 6                       # "rotate 90° clockwise to view": libheif stores it as irot
    exif[0x013B] = "A. Archivist"
    photo = tmp_path / "print.heic"
    pillow_heif.from_pillow(Image.fromarray(grey).convert("RGB")).save(str(photo), quality=95, exif=exif.tobytes())
    r = CliRunner().invoke(main, [str(photo), "--model", str(tiny_run), "--device", "cpu", "--samples", "1"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "print.colorized.jpg"
    assert cv2.imread(str(out)).shape == (48, 40, 3)                 # portrait: the rotation applied once
    kept = Image.open(out).getexif()
    assert kept.get(0x013B) == "A. Archivist" and kept.get(0x0112, 1) == 1
    small = CliRunner().invoke(main, [str(photo), "--model", str(tiny_run), "--device", "cpu", "--samples", "1",
                                      "--max-pixels", "1000", "--overwrite", "--json"])
    assert small.exit_code == 1 and "too large to decode (40x48 pixels" in json.loads(small.stdout)["error"]
