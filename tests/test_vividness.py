"""--vividness: the user's colour-intensity knob, through the CLI, the record, pick and the gallery page."""

import json

import cv2
import numpy as np
import torch
from click.testing import CliRunner
from conftest import synthetic_photo

from colorize_cli.cli import main
from colorize_cli.files import provenance
from colorize_cli.model.colorizer import _GREY_AB, scale_chroma


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def _chroma(path) -> float:
    lab = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2LAB).astype(np.float32)
    return float(np.hypot(lab[..., 1] - 128, lab[..., 2] - 128).mean())


def test_scale_chroma_about_grey():
    ab = torch.tensor([[[[0.5]], [[-0.25]]]])                   # (1, 2, 1, 1)
    assert torch.equal(scale_chroma(ab, 1.0), ab)
    assert torch.allclose(scale_chroma(ab, 0.0), torch.full_like(ab, _GREY_AB))
    doubled = scale_chroma(ab, 2.0)
    assert torch.allclose(doubled - _GREY_AB, (ab - _GREY_AB) * 2)
    assert scale_chroma(torch.tensor([0.9]), 2.0).item() == 1.0  # kept inside the normalised range


def test_vividness_through_run_pick_and_gallery(tmp_path, tiny_run):
    photo = tmp_path / "in" / "p.png"
    photo.parent.mkdir()
    cv2.imwrite(str(photo), cv2.cvtColor(cv2.cvtColor(synthetic_photo(np.random.default_rng(4), 64, 80),
                                                      cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR))
    common = ["--model", tiny_run, "--device", "cpu", "--samples", "2", "--separate", "--sheet-size", "full"]
    chroma = {}
    for v in ("0", "1", "2"):
        out = tmp_path / f"v{v}"
        _run(photo, *common, "--vividness", v, "--output", out, *(["--gallery"] if v == "2" else []))
        chroma[v] = _chroma(out / "p.colorized-1.png")
        record = provenance.read(out / "p.colorized.png")
        assert record.get("vividness", 1.0) == float(v)
    assert chroma["0"] < 1.5 < chroma["1"] < chroma["2"]        # grey (JPEG-free rounding only), then more
    # pick with the run's vividness writes the same pixels as the run's --separate
    picked = tmp_path / "picked"
    _run("pick", photo, "1", "--model", tiny_run, "--device", "cpu", "--samples", "2", "--vividness", "2",
         "--output", picked)
    assert np.array_equal(cv2.imread(str(picked / "p.colorized-1.png")),
                          cv2.imread(str(tmp_path / "v2" / "p.colorized-1.png")))
    page = (tmp_path / "v2" / "colorized.html").read_text(encoding="utf-8")
    data = json.loads(page.split("const DATA = ", 1)[1].split(";\n", 1)[0])
    assert data["photos"][0]["vividness"] == 2.0 and "--vividness 2.0" in data["command"]
    bad = CliRunner().invoke(main, [str(photo), "--model", str(tiny_run), "--vividness", "3"])
    assert bad.exit_code == 2


def test_old_photos_colour_script_measures_each_distinct_photo_once(tmp_path, tiny_run):
    # docs/old_photos_colour.py gives the "median colourfulness of sample 1 on old photos"
    import subprocess
    import sys

    from conftest import REPO

    folder = tmp_path / "old"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"p{i}.jpg"), synthetic_photo(np.random.default_rng(i), 40, 56))
    (folder / "copy.jpg").write_bytes((folder / "p0.jpg").read_bytes())      # counted once
    (folder / "broken.png").write_bytes(b"not a png")                          # reported, skipped
    proc = subprocess.run([sys.executable, str(REPO / "docs" / "old_photos_colour.py"), str(folder),
                           "--model", str(tiny_run), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "broken.png" in proc.stderr
    result = json.loads(proc.stdout)[str(tiny_run)]
    assert [p["photo"] for p in result["photos"]] == ["copy.jpg", "p1.jpg"]    # name order, p0 is copy's twin
    s1 = [p["sample1"] for p in result["photos"]]
    assert result["summary"]["photos"] == 2 and result["summary"]["sample1_median"] == np.median(s1)
    assert all(p["sample1"] >= 0 and p["mean"] >= 0 for p in result["photos"])
