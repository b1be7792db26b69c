"""Hostile inputs (issue 14): each gets one line naming it, the batch goes on, exit codes mean something.
The corpus is built at test time; nothing here is a committed binary."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO, synthetic_photo

from colorize_cli.cli import main


def invoke(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def _photo(path: Path, seed: int = 0) -> Path:
    cv2.imwrite(str(path), synthetic_photo(np.random.default_rng(seed), 40, 48))
    return path


def _photo_folder(folder: Path, n: int, h: int, w: int, seed: int) -> Path:
    """n synthetic PNG photos of h x w: large enough that a run is still busy when a test acts on it."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(str(folder / f"p{i:02d}.png"), synthetic_photo(rng, h, w))
    return folder


def _command(folder: Path, model: Path, *args: str) -> list[str]:
    """`colorize FOLDER --model MODEL --device cpu ARGS` for a subprocess (signals, concurrent runs)."""
    return [sys.executable, "-m", "colorize_cli", str(folder), "--model", str(model), "--device", "cpu", *args]


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_over_long_name_gets_a_shortened_output_and_the_batch_goes_on(tmp_path, tiny_run):
    long_stem = "é" * 120 + "x" * 10           # 250 bytes: the input fits, its output name would not
    _photo(tmp_path / f"{long_stem}.jpg")
    _photo(tmp_path / "zz-after.jpg", 1)
    result = invoke(tmp_path, "--model", tiny_run, "--samples", "2", "--separate", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    objs = [json.loads(ln) for ln in result.stdout.splitlines()]
    assert [o["status"] for o in objs] == ["done", "done"]
    outs = [Path(p) for o in objs if "é" in o["input"] for p in o["outputs"]]
    assert len(outs) == 3
    assert all(len(os.fsencode(p.name)) <= 255 and "~" in p.name for p in outs)
    assert all(cv2.imread(str(p)) is not None for p in outs)
    again = invoke(tmp_path, "--model", tiny_run, "--samples", "2", "--separate", "--device", "cpu", "--json")
    assert [json.loads(ln)["status"] for ln in again.stdout.splitlines()] == ["skipped", "skipped"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_and_device_links_are_not_read(tmp_path, tiny_run):
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    good = _photo(tmp_path / "good.jpg")
    args = [tmp_path / "pipe.jpg", tmp_path / "zero.jpg", good, "--model", tiny_run, "--samples", "1",
            "--device", "cpu", "--json"]
    # a subprocess with a deadline: a regression would hang on the FIFO or fill memory from /dev/zero
    proc = subprocess.run([sys.executable, "-m", "colorize_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 1, proc.stderr
    by_name = {Path(o["input"]).name: o for o in map(json.loads, proc.stdout.splitlines())}
    assert by_name["pipe.jpg"]["error"] == "not a regular file"
    assert by_name["zero.jpg"]["error"] == "not a regular file"
    assert by_name["good.jpg"]["status"] == "done"
    errors = _lines(proc.stderr)
    assert len(errors) == 2 and all("not a regular file" in e for e in errors)


def test_missing_paths_are_one_line_each_and_the_rest_is_done(tmp_path, tiny_run):
    good = _photo(tmp_path / "good.jpg")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    listing = f"{tmp_path / 'stale.jpg'}\n{tmp_path / 'dangling.jpg'}\n{good}\n"
    result = invoke("-", "--model", tiny_run, "--samples", "1", "--device", "cpu", input=listing)
    assert result.exit_code == 1, result.output
    errors = [ln for ln in _lines(result.output) if "no such file" in ln]
    assert len(errors) == 2 and any("stale.jpg" in e for e in errors) and any("dangling.jpg" in e for e in errors)
    assert (tmp_path / "good.colorized.png").is_file()
    # nothing given exists: a usage error
    assert invoke(tmp_path / "nothing-here", "--model", tiny_run).exit_code == 2


def test_null_separated_paths_with_a_newline_in_a_name(tmp_path, tiny_run):
    odd = _photo(tmp_path / "two\nlines.jpg")
    plain = _photo(tmp_path / "plain.jpg", 1)
    result = invoke("-0", "-", "--model", tiny_run, "--samples", "1", "--device", "cpu",
                    input=f"{odd}\0{plain}\0")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "two\nlines.colorized.png").is_file() and (tmp_path / "plain.colorized.png").is_file()
    # the log line escapes the newline: one line per input
    log = [ln for ln in _lines(result.output) if ln.startswith("colorized ")]
    assert len(log) == 2 and any("two\\nlines.jpg" in ln for ln in log)


def test_bad_model_folders_are_one_line_and_exit_2(tmp_path, tiny_run):
    photo_dir = tmp_path / "photos"
    photo_dir.mkdir()
    _photo(photo_dir / "a.jpg")
    # every photo already done: a bad --model or --device is still an error
    assert invoke(photo_dir, "--model", tiny_run, "--samples", "1", "--device", "cpu").exit_code == 0
    for bad in (tmp_path / "no-such-model", "nonsense-name"):
        r = invoke(photo_dir, "--model", bad, "--samples", "1", "--device", "cpu")
        assert r.exit_code == 2 and len(_lines(r.output)) == 1, r.output

    from colorize_cli.model.bundle import export_bundle

    bundle = export_bundle(tiny_run, tmp_path / "bundle")
    wrong_shape = tmp_path / "wrong-shape"
    shutil.copytree(bundle, wrong_shape)
    (wrong_shape / "manifest.json").write_text(json.dumps(["colorize-bundle"]))
    shape2 = tmp_path / "wrong-config"
    shutil.copytree(bundle, shape2)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["cvae_config"] = {"latent": "many"}
    (shape2 / "manifest.json").write_text(json.dumps(manifest))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil"
    shutil.copytree(bundle, evil)
    torch.save({"x": Evil()}, evil / "mdn.pt")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundle, corrupt)
    (corrupt / "decoder.pt").write_bytes(b"\x00" * 100)
    for folder in (wrong_shape, shape2, evil, corrupt):
        r = invoke(photo_dir, "--model", folder, "--samples", "1", "--device", "cpu", "--overwrite")
        lines = _lines(r.output)
        assert r.exit_code == 2 and len(lines) == 1, (folder.name, r.output)
        assert "weights_only" not in r.output and "Traceback" not in r.output
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_end_like_ctrl_c(tmp_path, tiny_run, sig):
    import signal
    import time

    folder = _photo_folder(tmp_path / "big", 16, 900, 700, seed=3)
    cmd = _command(folder, tiny_run, "--samples", "8", "--batch-size", "2", "--separate")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(folder.glob("*.colorized.png")):
        time.sleep(0.02)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + getattr(signal, sig), err
    assert f"interrupted ({sig})" in err
    assert not list(folder.glob(".colorize-*")), "temporaries left behind"
    for p in folder.glob("*.colorized*.png"):   # whatever has its final name is complete
        assert cv2.imread(str(p)) is not None, p


def test_no_temporary_outlives_the_interrupt_sweep(tmp_path, monkeypatch):
    # the sweep on SIGTERM/SIGHUP/Ctrl-C (exit_interrupted) while writer threads still run: their temporaries
    # go, their renames fail, and no new temporary starts before the process exits
    from colorize_cli.common import atomic

    monkeypatch.setattr(atomic, "_ending", False)   # put back after: the sweep ends this process's writing
    with pytest.raises(FileNotFoundError):
        with atomic.atomic_write(tmp_path / "a.png") as f:
            f.write(b"half")
            assert atomic.remove_live_temporaries() == 1
            f.write(b" more")                        # the writer carries on, into an unlinked file
    with pytest.raises(InterruptedError):
        with atomic.atomic_write(tmp_path / "b.png") as f:   # the next file of a --separate write
            f.write(b"never")
    assert list(tmp_path.iterdir()) == []


def test_a_later_run_removes_temporaries_no_live_run_owns(tmp_path, tiny_run):
    import os as _os

    _photo(tmp_path / "a.jpg")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".colorize-{dead.stdout.strip()}-abcd1234.part"      # its run is gone
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".colorize-{_os.getpid()}-live0001.part"              # a live run's (this one's)
    live.write_bytes(b"y")
    other = tmp_path / ".colorize-notes.txt"                                   # not a temporary
    other.write_text("keep")
    result = invoke(tmp_path, "--model", tiny_run, "--samples", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert not stale.exists() and live.exists() and other.exists()


def test_pixel_limit_is_read_from_every_formats_header(tmp_path, tiny_run):
    import struct
    import zlib

    def png_header_only(w, h):   # a PNG that claims w x h: refused from its IHDR before any decoding
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        chunk = b"IHDR" + ihdr
        return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
                + struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 64)

    (tmp_path / "huge.png").write_bytes(png_header_only(20000, 20000))      # 400 MP
    cv2.imwrite(str(tmp_path / "wide.bmp"), synthetic_photo(np.random.default_rng(0), 60, 200))  # 12,000 px
    cv2.imwrite(str(tmp_path / "wide.tif"), synthetic_photo(np.random.default_rng(1), 60, 200))
    ok = _photo(tmp_path / "ok.jpg")
    result = invoke(tmp_path, "--model", tiny_run, "--samples", "1", "--device", "cpu", "--json",
                    "--max-pixels", "10000")
    assert result.exit_code == 1, result.output
    by_name = {Path(o["input"]).name: o for o in map(json.loads, result.stdout.splitlines())}
    assert "20000x20000" in by_name["huge.png"]["error"]
    assert "200x60" in by_name["wide.bmp"]["error"] and "200x60" in by_name["wide.tif"]["error"]
    assert by_name["ok.jpg"]["status"] == "done" and ok.exists()
    assert "DecompressionBomb" not in result.output


def test_an_output_belongs_to_the_input_it_names(tmp_path, tiny_run):
    from colorize_cli.files import provenance

    _photo(tmp_path / "a.png", 1)
    first = invoke(tmp_path, "--model", tiny_run, "--samples", "1", "--device", "cpu")
    assert first.exit_code == 0 and (tmp_path / "a.colorized.png").is_file()
    assert provenance.read(tmp_path / "a.colorized.png")["source"] == "a.png"
    # a different photo a.jpg arrives later: it gets its own output, a.png's is left alone
    _photo(tmp_path / "a.jpg", 2)
    again = invoke(tmp_path, "--model", tiny_run, "--samples", "1", "--device", "cpu", "--json")
    assert again.exit_code == 0, again.output
    by_name = {Path(o["input"]).name: o for o in map(json.loads, again.stdout.splitlines())}
    assert by_name["a.png"]["status"] == "skipped" and by_name["a.jpg"]["status"] == "done"
    assert Path(by_name["a.jpg"]["outputs"][-1]).name == "a.jpg.colorized.png"
    assert provenance.read(tmp_path / "a.jpg.colorized.png")["source"] == "a.jpg"
    assert provenance.read(tmp_path / "a.colorized.png")["source"] == "a.png"
    # a photo replaced under its own name is colorized again
    before = (tmp_path / "a.jpg.colorized.png").read_bytes()
    _photo(tmp_path / "a.jpg", 3)
    os.utime(tmp_path / "a.jpg", ns=(1, 1))
    third = invoke(tmp_path, "--model", tiny_run, "--samples", "1", "--device", "cpu", "--json")
    statuses = {Path(o["input"]).name: o["status"] for o in map(json.loads, third.stdout.splitlines())}
    assert statuses == {"a.png": "skipped", "a.jpg": "done"}
    assert (tmp_path / "a.jpg.colorized.png").read_bytes() != before


def test_output_folder_mirrors_a_tree_without_collisions(tmp_path, tiny_run):
    for i, d in enumerate(("a", "b", "c")):
        (tmp_path / d / "photos").mkdir(parents=True)
        _photo(tmp_path / d / "x.jpg", i)
        _photo(tmp_path / d / "photos" / "y.jpg", i + 10)
    out = tmp_path / "out"
    files = [tmp_path / d / "x.jpg" for d in ("a", "b", "c")]
    folders = [tmp_path / d / "photos" for d in ("a", "b")]
    result = invoke(*files, *folders, "--model", tiny_run, "--samples", "1", "--device", "cpu", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    outputs = [o["outputs"][-1] for o in map(json.loads, result.stdout.splitlines())]
    assert len(outputs) == len(set(outputs)) == 5
    assert (out / "a" / "x.colorized.png").is_file() and (out / "c" / "x.colorized.png").is_file()
    assert (out / "a" / "photos" / "y.colorized.png").is_file() and (out / "b" / "photos" / "y.colorized.png").is_file()


def test_records_in_png_and_jpeg_outputs(tmp_path, tiny_run):
    from colorize_cli.files import provenance

    _photo(tmp_path / "p.jpg")
    for fmt in ("png", "jpg"):
        r = invoke(tmp_path / "p.jpg", "--model", tiny_run, "--samples", "2", "--separate", "--format", fmt,
                   "--device", "cpu")
        assert r.exit_code == 0, r.output
        sheet = provenance.read(tmp_path / f"p.colorized.{fmt}")
        single = provenance.read(tmp_path / f"p.colorized-2.{fmt}")
        assert sheet["source"] == "p.jpg" and sheet["samples"] == 2 and sheet["colorized_by"].startswith("colorize ")
        assert sheet["model"] == str(tiny_run) and sheet["seed"] == 0
        assert single["sample"] == 2 and 0 < single["weight"] <= 1
        assert cv2.imread(str(tmp_path / f"p.colorized.{fmt}")) is not None


def test_bad_model_or_device_is_an_error_even_when_all_is_done(tmp_path, tiny_run):
    from colorize_cli.model.bundle import export_bundle

    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "a.jpg")
    assert invoke(photos, "--model", tiny_run, "--samples", "1", "--device", "cpu").exit_code == 0
    bundle = export_bundle(tiny_run, tmp_path / "bundle")
    (bundle / "manifest.json").write_text('{"format": "colorize-bundle", "cvae_config": [], "mdn_config": {}}')
    for args in (["--model", bundle, "--device", "cpu"], ["--model", tiny_run, "--device", "tpu"],
                 ["--model", tiny_run, "--device", "cuda:9"]):
        r = invoke(photos, "--samples", "1", *args)
        assert r.exit_code == 2 and len(_lines(r.output)) == 1, (args, r.output)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX links and modes")
def test_unlistable_and_symlinked_folders_are_reported(tmp_path, tiny_run):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    _photo(root / "real" / "a.jpg")
    (root / "link").symlink_to(root / "real")          # a symlinked folder: followed once (same folder)
    (root / "real" / "back").symlink_to(root)          # a loop
    (root / "other").mkdir()
    _photo(root / "other" / "b.jpg", 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _photo(elsewhere / "c.jpg", 2)
    (root / "outside").symlink_to(elsewhere)            # a symlinked folder outside: followed
    result = invoke(root, "--model", tiny_run, "--samples", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (elsewhere / "c.colorized.png").is_file() and (root / "real" / "a.colorized.png").is_file()
    skipped = [ln for ln in _lines(result.output) if "a link to a folder already walked" in ln]
    assert len(skipped) == 2 and any(ln.split()[2].endswith("root/link:") for ln in skipped)
    assert "followed 1 symlinked folder" in result.output


def test_a_folder_that_cannot_be_listed_is_one_line_and_exit_1(tmp_path, tiny_run, monkeypatch):
    root = tmp_path / "root"
    (root / "locked").mkdir(parents=True)
    _photo(root / "locked" / "d.jpg", 3)
    _photo(root / "e.jpg", 4)
    real_scandir = os.scandir

    def scandir(path="."):   # as for a folder without read permission (root could list it anyway)
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = invoke(root, "--model", tiny_run, "--samples", "1", "--device", "cpu")
    assert result.exit_code == 1, result.output
    lines = [ln for ln in _lines(result.output) if "cannot list" in ln]
    assert len(lines) == 1 and "locked: cannot list (Permission denied)" in lines[0]
    assert (root / "e.colorized.png").is_file()


def test_two_overlapping_runs_do_each_photo_once(tmp_path, tiny_run):
    import time

    folder = _photo_folder(tmp_path / "archive", 10, 500, 400, seed=11)
    cmd = _command(folder, tiny_run, "--samples", "4", "--batch-size", "1", "--json", "--cpu-streams", "1")
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(folder.glob(".*.colorize-claim")):
        time.sleep(0.01)
    second = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out1, _ = first.communicate(timeout=300)
    out2, _ = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0
    done = [json.loads(ln)["input"] for out in (out1, out2) for ln in out.splitlines()
            if json.loads(ln)["status"] == "done"]
    assert sorted(done) == sorted(str(p) for p in folder.glob("p*.png") if ".colorized" not in p.name)
    assert not list(folder.glob(".*.colorize-claim")) and not list(folder.glob(".colorize-*"))


def test_a_killed_runs_claim_does_not_block(tmp_path, tiny_run):
    _photo(tmp_path / "a.jpg")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".a.colorized.png.colorize-claim").write_text(dead.stdout)
    result = invoke(tmp_path, "--model", tiny_run, "--samples", "1", "--device", "cpu")
    assert result.exit_code == 0 and (tmp_path / "a.colorized.png").is_file(), result.output
    assert not (tmp_path / ".a.colorized.png.colorize-claim").exists()


# ------------------------------------------------------------------ the corpus through one run (item 10, Also)


def _corrupt_middle_jpeg(path: Path) -> Path:
    """A JPEG with an end-of-image marker in the middle of its scan: libjpeg decodes it, saying "Corrupt JPEG
    data: premature end of data segment" on stderr, naming no file."""
    ok, buf = cv2.imencode(".jpg", synthetic_photo(np.random.default_rng(5), 64, 80))
    data = bytearray(buf.tobytes())
    data[len(data) // 2:len(data) // 2 + 6] = b"\xff\xd9\x12\x34\x56\x78"
    path.write_bytes(bytes(data))
    return path


def _png_with(path: Path, kind: bytes, body: bytes, crc: int | None = None) -> Path:
    """A PNG of a synthetic photo with one more chunk before IDAT (``crc``: a wrong checksum)."""
    import struct
    import zlib

    ok, buf = cv2.imencode(".png", synthetic_photo(np.random.default_rng(6), 30, 40))
    data = buf.tobytes()
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) if crc is None else crc)
    path.write_bytes(data[:33] + chunk + data[33:])   # after the 8-byte signature and the 25-byte IHDR
    return path


def _exif_tiff(orientation: int) -> bytes:
    import struct

    return (b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
            + struct.pack(">HHI", 0x0112, 3, 1) + struct.pack(">HH", orientation, 0) + struct.pack(">I", 0))


def test_a_hostile_corpus_in_one_run(tmp_path, tiny_run):
    from PIL import Image

    folder = tmp_path / "corpus"
    folder.mkdir()
    rgb = cv2.cvtColor(synthetic_photo(np.random.default_rng(9), 40, 60), cv2.COLOR_BGR2RGB)
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(rgb).convert("LA").save(folder / "grey_alpha.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    for o in (6, 8):   # rotated 90 degrees either way: outputs come out 60 high, 40 wide
        exif = Image.Exif()
        exif[0x0112] = o
        Image.fromarray(rgb).save(folder / f"exif{o}.jpg", exif=exif)
    _png_with(folder / "exif6.png", b"eXIf", _exif_tiff(6))
    cv2.imwrite(str(folder / "line_1xN.png"), synthetic_photo(np.random.default_rng(1), 1, 300))
    _photo(folder / "fotó 写真.jpg")
    _photo(folder / "-n 3.jpg")          # a leading dash: never taken as an option
    _corrupt_middle_jpeg(folder / "corrupt_middle.jpg")
    _png_with(folder / "bad_crc.png", b"tEXt", b"Comment\x00hello", crc=1234)

    proc = subprocess.run(_command(folder, tiny_run, "--samples", "2", "--json"), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = {Path(r["input"]).name: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(results) == {p.name for p in folder.iterdir() if ".colorized" not in p.name}
    assert all(r["status"] == "done" for r in results.values()), results
    for name, r in results.items():
        sheet = cv2.imread(r["outputs"][-1], cv2.IMREAD_UNCHANGED)
        assert sheet is not None, name
    # orientation from EXIF (JPEG) and from a PNG eXIf chunk is applied: 40x60 photos stand 60 high
    for name in ("exif6.jpg", "exif8.jpg"):
        sheet = cv2.imread(results[name]["outputs"][-1])
        assert sheet.shape[0] > sheet.shape[1] / 2, name   # two 40-wide, 60-high tiles side by side
    png6 = cv2.imread(results["exif6.png"]["outputs"][-1])
    assert png6.shape[0] == 40 and png6.shape[1] < 2 * 40   # 30x40 turned to 40x30
    assert cv2.imread(results["grey_alpha.png"]["outputs"][-1], cv2.IMREAD_UNCHANGED).shape[2] == 4
    # what the decoders printed is each file's own warning, not a line naming no file
    assert "Corrupt JPEG data" in " ".join(results["corrupt_middle.jpg"]["warnings"])
    assert "CRC error" in " ".join(results["bad_crc.png"]["warnings"])
    assert not results["palette.png"]["warnings"] and not results["fotó 写真.jpg"]["warnings"]
    stderr = _lines(proc.stderr)
    assert [ln for ln in stderr if "Corrupt JPEG data" in ln] == [
        f"colorize: warning: {folder / 'corrupt_middle.jpg'}: Corrupt JPEG data: premature end of data segment "
        f"(colorized anyway)"]
    assert all("colorize" in ln for ln in stderr), stderr

    # a plain (non-JSON) run folds the warning into the input's own line
    proc = subprocess.run(_command(folder, tiny_run, "--samples", "2", "--overwrite"), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in _lines(proc.stderr) if "corrupt_middle" in ln or "Corrupt" in ln]
    assert len(lines) == 1 and lines[0].startswith("colorized ") and "(warning: Corrupt JPEG data" in lines[0]


def test_output_inside_a_file_is_a_usage_error(tmp_path, tiny_run):
    photo = _photo(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("a file")
    for out in (tmp_path / "notes.txt" / "out", tmp_path / "notes.txt"):
        r = invoke(photo, "--model", tiny_run, "--device", "cpu", "-o", out)
        assert r.exit_code == 2, r.output
        assert "not a folder" in r.output or "is a file" in r.output or "file" in r.output
    assert not list(tmp_path.glob("*.colorized*"))


def _tmpfs(where: Path, size: str, *opts: str):
    """A small tmpfs mounted at ``where`` (root, or a sandbox that permits mounts), else skip."""
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *opts]), "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tmpfs")
@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_a_full_or_read_only_output_disk(tmp_path, tiny_run, kind):
    folder = _photo_folder(tmp_path / "in", 6, 300, 400, seed=4)
    out = tmp_path / "out"
    _tmpfs(out, "400k" if kind == "full" else "1m", *(["ro"] if kind == "read-only" else []))
    try:
        proc = subprocess.run(_command(folder, tiny_run, "--samples", "8", "-o", str(out), "--json"), cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        results = [json.loads(ln) for ln in proc.stdout.splitlines()]
        failed = [r for r in results if r["status"] == "failed"]
        assert proc.returncode == 1 and len(results) == 6 and failed, proc.stderr
        reason = "No space left on device" if kind == "full" else "Read-only file system"
        for r in failed:
            assert reason in r["error"], r["error"]
            assert len([ln for ln in _lines(proc.stderr) if Path(r["input"]).name in ln]) == 1
        if kind == "full":   # what fits is written whole; nothing half-written stays
            written = list(out.glob("*.colorized.png"))
            assert len(written) + len(failed) == 6
            assert all(cv2.imread(str(p)) is not None for p in written)
            assert not list(out.glob(".colorize-*")) and not list(out.glob(".*claim"))
    finally:
        subprocess.run(["umount", str(out)], capture_output=True)


@pytest.mark.parametrize("moment", ["claimed", "writing", "written"])
def test_kills_at_several_moments_leave_nothing_wrong(tmp_path, tiny_run, moment):
    """SIGKILL as a photo is claimed, while its temporary is being written, and after its output is in
    place: whatever has a final name decodes, and a rerun finishes the rest and leaves nothing behind."""
    import signal
    import time

    folder = _photo_folder(tmp_path / "big", 4, 1800, 1400, seed=8)
    cmd = _command(folder, tiny_run, "--samples", "8", "--batch-size", "1", "-q")
    seen = {"claimed": ".*.colorize-claim", "writing": ".colorize-*.part", "written": "*.colorized.png"}[moment]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(folder.glob(seen)) and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for p in folder.glob("[!.]*.colorized*"):   # final names (not the hidden claims and temporaries)
        assert cv2.imread(str(p)) is not None, p
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    outs = sorted(folder.glob("*.colorized.png"))
    assert len(outs) == 4 and all(cv2.imread(str(p)) is not None for p in outs)
    assert not list(folder.glob(".colorize-*")) and not list(folder.glob(".*.colorize-claim"))


def test_a_dead_runs_claim_on_a_finished_photo_is_cleared(tmp_path, tiny_run):
    """Killed after an output landed and before its claim was released: the rerun skips that photo, so the
    claim must be cleared by the sweep of stale files, not by a takeover. A live run's claim stays."""
    from colorize_cli.common.atomic import HOST

    folder = _photo_folder(tmp_path / "in", 3, 60, 80, seed=5)
    assert invoke(str(folder), "--model", str(tiny_run), "--device", "cpu", "-q").exit_code == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                     # a pid that is gone
    sheets = sorted(folder.glob("*.colorized.png"))
    stale = folder / f".{sheets[0].name}.colorize-claim"
    stale.write_text(f"{dead.pid} {HOST} run-a\n")
    live = folder / f".{sheets[1].name}.colorize-claim"
    live.write_text(f"{os.getppid()} {HOST} run-b\n")      # this test's parent: alive
    empty = folder / f".{sheets[2].name}.colorize-claim"
    empty.write_text("")                                   # being written by a live run right now
    r = invoke(str(folder), "--model", str(tiny_run), "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    assert not stale.exists() and live.exists() and empty.exists()


def test_sheets_of_large_photos_open_in_common_readers(tmp_path, tiny_run):
    """A 12 MP scan's full-resolution sheet of 8 would be 97 MP, past Pillow's bomb warning: its tiles shrink
    to fit (captioned); --separate samples stay full size."""
    import warnings

    from PIL import Image

    from colorize_cli.engine.writer import SHEET_MAX_PIXELS

    photo = tmp_path / "scan.png"
    cv2.imwrite(str(photo), cv2.resize(synthetic_photo(np.random.default_rng(2), 300, 400), (4000, 3000)))
    r = invoke(photo, "--model", tiny_run, "--device", "cpu", "--samples", "8", "--separate", "--json")
    assert r.exit_code == 0, r.output
    sheet = tmp_path / "scan.colorized.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # DecompressionBombWarning would fail here
        with Image.open(sheet) as im:
            assert im.width * im.height <= SHEET_MAX_PIXELS
            im.load()
    assert cv2.imread(str(sheet)) is not None
    assert cv2.imread(str(tmp_path / "scan.colorized-3.png")).shape[:2] == (3000, 4000)
