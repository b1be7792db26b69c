"""Hostile inputs, round 2: crafted files dropped into an archive never stop, hang or bloat a run."""

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO, synthetic_photo
from test_gallery import CHROMIUM, launch_chromium

from colorize_cli.cli import main
from colorize_cli.common import jsonsafe


def _colorize(*args, timeout=300):
    # a subprocess with a deadline: a regression hangs (a FIFO) or recurses (a nested record) there, not here
    return subprocess.run([sys.executable, "-m", "colorize_cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _photo(path: Path, seed: int = 0) -> Path:
    cv2.imwrite(str(path), synthetic_photo(np.random.default_rng(seed), 40, 48))
    return path


def _png_with_text(path: Path, keyword: bytes, text: bytes) -> Path:
    ok, data = cv2.imencode(".png", np.full((8, 8, 3), 128, np.uint8))
    data = data.tobytes()
    body = keyword + b"\0" + text
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    path.write_bytes(data[:33] + chunk + data[33:])
    return path


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_json_reader_is_bounded():
    assert jsonsafe.loads('{"a": [1, {"b": "[[[["}]}') == {"a": [1, {"b": "[[[["}]}
    for bad in ("[" * 1100 + "]" * 1100, "[NaN]", '{"x": Infinity}'):
        with pytest.raises(ValueError):
            jsonsafe.loads(bad)


def test_a_deeply_nested_record_does_not_stop_a_run_or_info(tmp_path, tiny_run):
    # item 1: a 1 KB "output" whose record is 1,100 nested brackets, beside the photo it claims to come from
    _photo(tmp_path / "x.png")
    _photo(tmp_path / "y.png", 1)
    crafted = _png_with_text(tmp_path / "x.colorized.png", b"colorize", b"[" * 1100 + b"]" * 1100)
    before = crafted.read_bytes()
    r = _colorize(tmp_path, "--model", tiny_run, "--device", "cpu", "--samples", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = _lines(r.stderr.split("colorize: 1 colorized")[0])
    assert any("x.png" in e and "not a colorize output" in e and "--overwrite" in e for e in errors), errors
    assert (tmp_path / "y.colorized.png").is_file() and crafted.read_bytes() == before   # left alone
    info = _colorize("info", crafted)
    assert info.returncode == 1 and "Traceback" not in info.stderr and len(_lines(info.stdout + info.stderr)) == 1
    again = _colorize(tmp_path, "--model", tiny_run, "--device", "cpu", "--samples", "1", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert json.loads(_colorize("info", "--json", crafted).stdout)["record"]["source"] == "x.png"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_things_named_like_claims_neither_hang_nor_fill_a_run(tmp_path, tiny_run):
    # item 2: a FIFO and a link to /dev/zero under claims' names (the stale-claim sweep reads claims)
    _photo(tmp_path / "p.png")
    _photo(tmp_path / "q.png", 1)
    os.mkfifo(tmp_path / ".p.colorized.png.colorize-claim")
    (tmp_path / ".q.colorized.png.colorize-claim").symlink_to("/dev/zero")
    r = _colorize(tmp_path, "--model", tiny_run, "--device", "cpu", "--samples", "1", timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.colorized.png").is_file() and (tmp_path / "q.colorized.png").is_file()
    assert not any(n.endswith(".colorize-claim") for n in os.listdir(tmp_path))


def test_an_output_without_a_record_is_not_done(tmp_path, tiny_run):
    # item 8: an empty file and another program's png under the output names: never "done" (the README: a
    # run skips only outputs that record that very file), never overwritten without --overwrite
    _photo(tmp_path / "a.png")
    _photo(tmp_path / "b.png", 1)
    (tmp_path / "a.colorized.png").write_bytes(b"")
    cv2.imwrite(str(tmp_path / "b.colorized.png"), np.zeros((4, 4, 3), np.uint8))
    result = CliRunner().invoke(main, [str(tmp_path), "--model", str(tiny_run), "--device", "cpu", "--samples",
                                       "1", "--json"])
    assert result.exit_code == 1
    statuses = {Path(o["input"]).name: o for o in map(json.loads, result.stdout.splitlines())}
    assert {k: v["status"] for k, v in statuses.items()} == {"a.png": "failed", "b.png": "failed"}
    assert all("no record; --overwrite replaces it" in v["error"] for v in statuses.values())
    assert (tmp_path / "a.colorized.png").stat().st_size == 0
    result = CliRunner().invoke(main, [str(tmp_path), "--model", str(tiny_run), "--device", "cpu", "--samples",
                                       "1", "--overwrite"])
    assert result.exit_code == 0 and cv2.imread(str(tmp_path / "a.colorized.png")).shape == (40, 48, 3)


HOSTILE_NAMES = ["<!--<script>.jpg", "100% done?.jpg", "c#d.jpg", "new\nline.jpg", "plain.jpg"]


def test_gallery_page_with_hostile_names(tmp_path, tiny_run):
    # item 6: a name that opens an HTML comment inside the script, and names that break URLs
    for i, name in enumerate(HOSTILE_NAMES):
        _photo(tmp_path / name, i)
    r = _colorize(tmp_path, "--model", tiny_run, "--device", "cpu", "--samples", "2", "--gallery")
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "colorized.html").read_text(encoding="utf-8")
    payload = text[text.index("const DATA = "):text.index(";\n", text.index("const DATA = "))]
    assert "<" not in payload.removeprefix("const DATA = ")
    data = json.loads(payload.removeprefix("const DATA = "))
    sheets = {p["name"]: p["sheet"] for p in data["photos"]}
    ext = Path(sheets["plain.jpg"]).suffix                       # as the run's --format gave it
    assert sheets["100% done?.jpg"] == f"100%25%20done%3F.colorized{ext}"
    assert sheets["c#d.jpg"] == f"c%23d.colorized{ext}" and sheets["new\nline.jpg"] == f"new%0Aline.colorized{ext}"
    if CHROMIUM is None:
        return
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((tmp_path / "colorized.html").as_uri())
            assert page.locator("figure").count() == len(HOSTILE_NAMES)
            page.wait_for_load_state("load")
            loaded = page.evaluate("Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
        finally:
            browser.close()
    assert not errors, errors
    assert loaded == len(HOSTILE_NAMES)   # every sheet found through its encoded URL


@pytest.mark.parametrize("case", ["nested", "zero", "empty", "true", "folder", "missing", "big", "sheet", "beyond"])
def test_pick_refuses_what_is_not_a_choice_in_one_line(tmp_path, tiny_run, case):
    # item 7 (and what a user pastes wrong): one line each, exit 2, no traceback
    photo = _photo(tmp_path / "p.png")
    picks = tmp_path / "picks.json"
    args = ["pick", "--from", picks]
    if case == "nested":
        picks.write_text("[" * 5000 + "]" * 5000)
    elif case == "zero":
        args = ["pick", "--from", "/dev/zero"]
    elif case == "empty":
        picks.write_text('{"picks": []}')
    elif case == "true":
        picks.write_text(json.dumps({"picks": [{"photo": str(photo), "samples": [True]}]}))
    elif case == "folder":
        args = ["pick", tmp_path, "3"]
    elif case == "missing":
        args = ["pick", tmp_path / "gone.png", "3"]
    elif case == "big":
        with picks.open("wb") as f:
            f.truncate(17 << 20)
    elif case == "sheet":
        assert _colorize(photo, "--model", tiny_run, "--device", "cpu", "--samples", "2").returncode == 0
        args = ["pick", tmp_path / "p.colorized.png", "1"]
    elif case == "beyond":
        assert _colorize(photo, "--model", tiny_run, "--device", "cpu", "--samples", "2").returncode == 0
        args = ["pick", photo, "3"]
    r = _colorize(*args, "--model", tiny_run, "--device", "cpu", timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = _lines(r.stderr)
    assert len(lines) <= 3 and lines and "Traceback" not in r.stderr, r.stderr   # click: usage + hint + error
    assert not list(tmp_path.glob("p.colorized-*"))


def test_a_name_that_is_not_utf8_is_colorized_and_reported_as_text(tmp_path, tiny_run):
    # item 11: a Latin-1 "é" (byte 0xE9) in a file name: colorized, and its JSON line is valid UTF-8
    folder = tmp_path / "latin1"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.png"
    ok, buf = cv2.imencode(".png", synthetic_photo(np.random.default_rng(9), 40, 48))
    with open(raw, "wb") as f:
        f.write(buf.tobytes())
    proc = subprocess.run([sys.executable, "-m", "colorize_cli", folder, "--model", tiny_run, "--device", "cpu",
                           "--samples", "1", "--json"], cwd=REPO, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.decode("utf-8")                    # strict: no lone surrogate reached the output
    obj = json.loads(line)
    assert obj["status"] == "done" and obj["input"].endswith("caf\\xe9.png")
    assert os.path.isfile(os.fsencode(folder) + b"/caf\xe9.colorized.png")
    again = subprocess.run([sys.executable, "-m", "colorize_cli", folder, "--model", tiny_run, "--device", "cpu",
                            "--samples", "1", "--json"], cwd=REPO, capture_output=True, timeout=300)
    assert json.loads(again.stdout.decode("utf-8"))["status"] == "skipped"   # its record names it


def _os2_bmp(w: int, h: int) -> bytes:
    row = (w * 3 + 3) // 4 * 4
    pixels = bytes(row * h)
    core = struct.pack("<IHHHH", 12, w, h, 1, 24)
    return b"BM" + struct.pack("<IHHI", 14 + 12 + len(pixels), 0, 0, 26) + core + pixels


@pytest.mark.parametrize("kind", ["hdr", "pam", "pfm"])
def test_the_pixel_limit_holds_for_every_format_opencv_reads(tmp_path, tiny_run, kind):
    # item 4: the size of Radiance HDR, PAM and PFM comes from their text headers, under any extension
    header = {"hdr": b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 14500 +X 14500\n",
              "pam": b"P7\nWIDTH 14500\nHEIGHT 14500\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n",
              "pfm": b"PF\n14500 14500\n-1.0\n"}[kind]
    (tmp_path / "huge.jpg").write_bytes(header + bytes(4096))
    small = {"hdr": (".hdr", np.zeros((10, 12, 3), np.float32)), "pam": (".pam", np.zeros((10, 12, 3), np.uint8)),
             "pfm": (".pfm", np.zeros((10, 12, 3), np.float32))}[kind]
    ok, buf = cv2.imencode(small[0], small[1])
    (tmp_path / f"small{small[0]}").write_bytes(buf.tobytes())
    from colorize_cli.files.imageio import decode_image

    assert decode_image(buf.tobytes()).bgr.shape == (10, 12, 3)         # a real one still decodes
    r = CliRunner().invoke(main, [str(tmp_path / "huge.jpg"), "--model", str(tiny_run), "--device", "cpu",
                                  "--samples", "1", "--json"])
    assert r.exit_code == 1
    assert "too large to decode (14500x14500 pixels" in json.loads(r.stdout)["error"]


def test_an_os2_bitmap_is_read_at_its_own_size(tmp_path, tiny_run):
    # item 12: the OS/2 1.x header has 16-bit sizes (read as 32-bit it claimed 4194368x1572865)
    from colorize_cli.files.imageio import _header_size

    data = _os2_bmp(24, 16)
    assert _header_size(data) == (24, 16)


def _rgb_icc(size: int) -> bytes:
    head = struct.pack(">I", size) + b"\0" * 12 + b"RGB " + b"\0" * 108          # 128-byte header, RGB
    return head + b"\0" * (size - len(head))


def test_oversized_icc_profiles_are_dropped_with_a_warning(tmp_path, tiny_run):
    # item 3: a PNG whose iCCP is a zlib bomb (64 MB of profile in a ~64 KB chunk) and a JPEG carrying
    # a 10 MB profile in 160 APP2 segments: neither is inflated past the bound nor copied into outputs
    photo = synthetic_photo(np.random.default_rng(12), 40, 48)
    ok, png = cv2.imencode(".png", photo)
    png = png.tobytes()
    body = b"ICC Profile\0\0" + zlib.compress(_rgb_icc(64 << 20), 9)
    iccp = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    (tmp_path / "bomb.png").write_bytes(png[:33] + iccp + png[33:])
    ok, jpg = cv2.imencode(".jpg", photo)
    jpg = jpg.tobytes()
    profile = _rgb_icc(10 << 20)
    parts = [profile[i:i + 65519] for i in range(0, len(profile), 65519)]
    app2 = b"".join(b"\xff\xe2" + struct.pack(">H", len(p) + 16) + b"ICC_PROFILE\0" + bytes([i + 1, len(parts)]) + p
                    for i, p in enumerate(parts))
    (tmp_path / "big.jpg").write_bytes(jpg[:2] + app2 + jpg[2:])
    r = _colorize(tmp_path, "--model", tiny_run, "--device", "cpu", "--samples", "2", "--json", "--format", "auto",
                  timeout=180)
    assert r.returncode == 0, r.stderr
    results = {Path(o["input"]).name: o for o in map(json.loads, r.stdout.splitlines())}
    for name in ("bomb.png", "big.jpg"):
        assert results[name]["status"] == "done"
        assert any("ICC profile is over" in w for w in results[name]["warnings"]), results[name]
        assert any(name in ln and "ICC profile" in ln for ln in r.stderr.splitlines()), r.stderr
    assert (tmp_path / "big.colorized.jpg").stat().st_size < 1 << 20          # no 10 MB copy
    out = (tmp_path / "bomb.colorized.png").read_bytes()
    assert b"iCCP" not in out and len(out) < 1 << 20


def test_pick_mirrors_the_runs_tree_and_draws(tmp_path, tiny_run):
    # item 5: picks of a/x.png and b/x.png under --output land where the run put them, each its own, and
    # beyond the K means (sample 10 of 10) with the run's pixels: pick names and seeds a photo as its run did
    root = tmp_path / "archive"
    for i, sub in enumerate(("a", "b")):
        (root / "scans" / sub).mkdir(parents=True)
        _photo(root / "scans" / sub / "x.png", i)
    (root / "other").mkdir()
    _photo(root / "other" / "y.png", 5)
    out = tmp_path / "out"
    r = _colorize(root, "--model", tiny_run, "--device", "cpu", "--samples", "10", "--separate", "--output",
                  os.path.relpath(out, REPO), "--gallery")         # relative to where the run was started
    assert r.returncode == 0, r.stderr
    run_pixels = {p: cv2.imread(str(out / "scans" / p)) for p in ("a/x.colorized-10.png", "b/x.colorized-9.png")}
    for sub, n in (("a", "10"), ("b", "9")):    # one photo at a time, from inside the tree
        r = _colorize("pick", root / "scans" / sub / "x.png", n, "--samples", "10", "--output", out,
                      "--model", tiny_run, "--device", "cpu")
        assert r.returncode == 0, r.stderr
    for rel, pixels in run_pixels.items():
        assert np.array_equal(cv2.imread(str(out / "scans" / rel)), pixels), rel
    assert not list(out.glob("x.colorized*")) and not list((out / "scans").glob("x.colorized*"))
    # the page's command names the output folder absolutely, so it works wherever it is pasted
    page = (out / "colorized.html").read_text(encoding="utf-8")
    command = json.loads(page.split("const DATA = ", 1)[1].split(";\n", 1)[0])["command"]
    assert f"--output {out}" in command


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_pick_ends_like_a_run_on_signals(tmp_path, tiny_run, sig):
    # item 9: a signal during `pick` leaves no temporary, and exits 128 + the signal (SIGINT: 130, not 1)
    import signal
    import time

    photos = []
    rng = np.random.default_rng(4)
    for i in range(6):
        photos.append(tmp_path / f"p{i}.png")
        cv2.imwrite(str(photos[-1]), synthetic_photo(rng, 1200, 900))
    picks = tmp_path / "picks.json"
    picks.write_text(json.dumps({"picks": [{"photo": str(p), "samples": list(range(1, 9))} for p in photos]}))
    proc = subprocess.Popen([sys.executable, "-m", "colorize_cli", "pick", "--from", str(picks), "--model",
                             str(tiny_run), "--device", "cpu"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("*.colorized-*.png")):
        time.sleep(0.02)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + getattr(signal, sig), err
    assert f"interrupted ({sig})" in err and "Aborted" not in err
    assert not list(tmp_path.glob(".colorize-*")), "temporaries left behind"
    for p in tmp_path.glob("*.colorized-*.png"):
        assert cv2.imread(str(p)) is not None, p


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_special_files_inside_a_walked_folder_are_reported(tmp_path, tiny_run):
    # item 12: inside a folder (not only as arguments) a FIFO, a device link and a dangling link with an
    # image's name are one line each; the same things under other names are counted as ignored
    folder = tmp_path / "walked"
    folder.mkdir()
    _photo(folder / "good.png")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "gone.jpg").symlink_to(folder / "nothing-here.jpg")
    os.mkfifo(folder / "notes.fifo")
    r = _colorize(folder, "--model", tiny_run, "--device", "cpu", "--samples", "1", "--json", timeout=120)
    assert r.returncode == 1, r.stderr
    by_name = {Path(o["input"]).name: o for o in map(json.loads, r.stdout.splitlines())}
    assert by_name["good.png"]["status"] == "done"
    assert by_name["pipe.jpg"]["error"] == "not a regular file" and by_name["zero.png"]["error"] == "not a regular file"
    assert by_name["gone.jpg"]["error"] == "a link to a missing file"
    assert "notes.fifo" not in by_name
    again = _colorize(folder, "--model", tiny_run, "--device", "cpu", "--samples", "1", timeout=120)
    summary = again.stderr.strip().splitlines()[-1]
    assert "2 ignored" in summary and "3 failed" in summary, summary   # notes.fifo and the earlier output


def test_info_shows_a_forged_record_as_text(tmp_path):
    # item 12: escape codes and newlines in a record's fields are shown escaped, one line per file
    record = {"colorized_by": "colorize 0.2.0", "source": "x.jpg\n/etc/passwd: colorized_by: evil",
              "model": "\x1b[31mred\x1b[0m"}
    forged = _png_with_text(tmp_path / "f.png", b"colorize", json.dumps(record).encode())
    r = _colorize("info", forged)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1, r.stdout
    assert "\x1b" not in r.stdout and "\\x1b[31m" in r.stdout and "\\n/etc/passwd" in r.stdout
    nan = _png_with_text(tmp_path / "n.png", b"colorize", b'{"source": "x.jpg", "weight": NaN}')
    out = _colorize("info", "--json", nan)
    assert out.returncode == 1 and json.loads(out.stdout)["record"] is None    # strict JSON out


def test_no_stderr_line_that_names_no_file(tmp_path, tiny_run):
    # item 12: OpenJPEG prints blank lines around its errors; only lines naming a file reach stderr
    photo = synthetic_photo(np.random.default_rng(6), 40, 48)
    ok, jp2 = cv2.imencode(".jp2", photo)
    if not ok:
        pytest.skip("this OpenCV has no JPEG 2000 codec")
    data = jp2.tobytes()
    (tmp_path / "bad.jp2").write_bytes(data[:len(data) // 2] + bytes(100))
    (tmp_path / "good.jp2").write_bytes(data)
    r = _colorize(tmp_path, "--model", tiny_run, "--device", "cpu", "--samples", "1")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert all(ln.strip() for ln in lines), lines
    assert all("bad.jp2" in ln or "good.jp2" in ln or ln.startswith("colorize: 1 colorized") for ln in lines), lines


def test_an_interrupt_does_not_wait_for_the_batches_in_flight(tmp_path, monkeypatch):
    # item 12: Ctrl-C (a KeyboardInterrupt while the stream waits for the model) ends the stream at once,
    # not after the writes and decodes in flight (11 s of a CPU batch before)
    import threading
    import types

    import torch

    from colorize_cli.engine import batch
    from colorize_cli.engine.plan import BatchOptions, discover, plan_outputs
    from colorize_cli.model.colorizer import Prediction

    for i in range(6):
        _photo(tmp_path / f"p{i}.png", i)
    opts = BatchOptions(samples=1, batch_size=2, workers=2)
    found = discover([str(tmp_path)])
    plan_outputs(found.items, opts)
    release, writing, finished = threading.Event(), threading.Event(), threading.Event()

    def slow_write(dec, pred, opts, model=None):
        writing.set()
        release.wait(20)            # a write that takes long (a huge sheet)
        finished.set()
        return batch.ItemResult(str(dec.item.path), "done")

    monkeypatch.setattr(batch, "_write", slow_write)
    calls = []

    class Pending:
        def __init__(self, n):
            self.n = n

        def result(self):
            calls.append(self.n)
            if len(calls) > 1:
                writing.wait(10)
                raise KeyboardInterrupt   # Ctrl-C while waiting for the second batch
            return [Prediction(np.zeros((1, 2, 64, 64), np.float32), np.ones(1, np.float32))
                    for _ in range(self.n)]

    fake = types.SimpleNamespace(info={}, device=torch.device("cpu"), merges_on_device=False,
                                 runs_concurrently=True,
                                 predict_async=lambda l64, *a, **k: Pending(len(l64)))
    with pytest.raises(KeyboardInterrupt):
        list(batch.colorize_items(found.items, fake, opts))
    assert writing.is_set() and not finished.is_set()   # it returned while a write was still under way
    release.set()


def test_pillows_warnings_about_a_file_do_not_reach_stderr(tmp_path, tiny_run):
    # item 12: a WebP whose EXIF points past its end made Pillow print "Corrupt EXIF data" (4 lines naming
    # no input); the file is colorized, and stderr has only lines about inputs
    import io

    from PIL import Image

    ifd = b"II*\x00\x08\x00\x00\x00" + b"\x03\x00" + b"\x0f\x01\x02\x00\x40\x00\x00\x00\x80\x00\x00\x00"
    buf = io.BytesIO()
    Image.fromarray(synthetic_photo(np.random.default_rng(13), 40, 48)).save(buf, "WEBP", exif=b"Exif\x00\x00" + ifd)
    (tmp_path / "bad-exif.webp").write_bytes(buf.getvalue())
    r = _colorize(tmp_path, "--model", tiny_run, "--device", "cpu", "--samples", "1")
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr and "Corrupt EXIF" not in r.stderr, r.stderr
    assert all("bad-exif" in ln or ln.startswith("colorize: 1 colorized") for ln in r.stderr.splitlines())


@pytest.mark.parametrize("case", ["nested", "large"])
def test_a_model_folders_json_is_read_within_bounds(tmp_path, tiny_run, case):
    from colorize_cli.model.bundle import export_bundle
    from colorize_cli.model.int8 import Int8Calibration, Int8Error, int8_verified

    bundle = export_bundle(tiny_run, tmp_path / "bundle", "int8")
    manifest = (bundle / "manifest.json").read_text()
    # a manifest that is valid JSON but nested 100,000 levels (json.loads would raise RecursionError) or
    # 2 MB long (read no further than the bound)
    bad = "[" * 100_000 + "]" * 100_000 if case == "nested" else manifest[:-2] + ' ' * (2 << 20) + "}\n"
    (bundle / "manifest.json").write_text(bad)
    (bundle / "int8.json").write_text(bad)
    photo = _photo(tmp_path / "in.jpg")
    r = _colorize(photo, "--model", bundle, "--device", "cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "manifest.json" in lines[0], r.stderr
    assert not int8_verified(bundle)
    with pytest.raises(Int8Error, match="int8.json"):
        Int8Calibration.load(bundle / "int8.json")
