import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import OLD_PHOTOS, REPO, require, synthetic_photo

from colorize_cli.cli import main


def invoke(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


@pytest.fixture()
def photos(tmp_path, shared):
    """Real old photos (spaces in names, an RGBA PNG, a big JPEG) plus generated edge cases."""
    require(OLD_PHOTOS / "ddcolor" / "Audrey Hepburn.jpg", OLD_PHOTOS / "bringing-old-photos-back")
    root = tmp_path / "photos"
    (root / "nested" / "deeper").mkdir(parents=True)
    big = sorted((OLD_PHOTOS / "ddcolor").glob("*.jpg"), key=lambda p: -p.stat().st_size)[0]
    shutil.copy(big, root / big.name)
    shutil.copy(OLD_PHOTOS / "ddcolor" / "Audrey Hepburn.jpg", root / "nested" / "Audrey Hepburn.jpg")
    rgba = next(p for p in sorted((OLD_PHOTOS / "bringing-old-photos-back").glob("*.png"))
                if cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape[-1] == 4)
    shutil.copy(rgba, root / "nested" / "deeper" / "rgba.PNG")
    return root


def add_edge_cases(root: Path) -> dict:
    rng = np.random.default_rng(0)
    photo = synthetic_photo(rng, 120, 90)
    (root / "empty.jpg").write_bytes(b"")
    ok, jpg = cv2.imencode(".jpg", synthetic_photo(rng, 200, 200))
    (root / "truncated.jpg").write_bytes(jpg.tobytes()[:2000])
    (root / "text.jpg").write_text("I am not a picture")
    (root / "readme.txt").write_text("ignored")
    cv2.imwrite(str(root / "deep16.png"), photo.astype(np.uint16) * 257)
    cv2.imwrite(str(root / "tiny.png"), photo[:1, :1])
    cv2.imwrite(str(root / "grey.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    return {"bad": {"empty.jpg", "truncated.jpg", "text.jpg"}}


def test_folder_with_edge_cases(photos, tiny_run):
    info = add_edge_cases(photos)
    # a file under an output's name that is not a colorize output (no record): left alone without
    # --overwrite (one error line, issue 24), and not taken as an input
    existing = photos / "grey.colorized.png"
    existing.write_bytes(b"placeholder")
    result = invoke(photos, "--model", tiny_run, "--samples", "8", "--json", "--device", "cpu")
    assert result.exit_code == 1, result.output
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    by_name = {Path(o["input"]).name: o for o in objects}
    assert set(by_name) == {p.name for p in photos.rglob("*") if p.is_file() and ".colorized" not in p.name
                            and p.suffix.lower() != ".txt"}
    for o in objects:
        assert set(o) == {"input", "status", "outputs", "weights", "seconds", "error", "warnings"}
        assert o["status"] in {"done", "skipped", "failed"}
    for name in info["bad"]:
        assert by_name[name]["status"] == "failed" and by_name[name]["error"]
        lines = [ln for ln in result.stderr.splitlines() if name in ln]
        assert len(lines) == 1 and "Traceback" not in result.stderr
    assert by_name["grey.png"]["status"] == "failed" and "--overwrite" in by_name["grey.png"]["error"]
    assert existing.read_bytes() == b"placeholder"
    done = [o for o in objects if o["status"] == "done"]
    assert len(done) == 5   # big jpeg, Audrey, rgba, 16-bit, 1x1
    for o in done:
        src = cv2.imread(o["input"], cv2.IMREAD_UNCHANGED)
        sheet = cv2.imread(o["outputs"][-1], cv2.IMREAD_UNCHANGED)
        assert sheet is not None and o["outputs"][-1].endswith(".colorized.png")
        h, w = src.shape[:2]
        gap = max(2, min(h, w) // 100)
        assert sheet.shape[:2] == (2 * h + gap, 4 * w + 3 * gap)   # 8 samples, 4 columns, full resolution
        assert len(o["weights"]) == 8 and o["weights"] == sorted(o["weights"], reverse=True)
    rgba_out = cv2.imread(str(photos / "nested" / "deeper" / "rgba.colorized.png"), cv2.IMREAD_UNCHANGED)
    assert rgba_out.shape[2] == 4   # alpha kept
    assert not list(photos.rglob(".colorize-*"))   # no temporary files left


def test_seed_determinism_separate_and_output_dir(photos, tiny_run, tmp_path):
    args = [photos / "nested", "--model", tiny_run, "--samples", "10", "--separate", "--device", "cpu",
            "--format", "jpg", "--quality", "90"]
    r1 = invoke(*args, "--output", tmp_path / "out1", "--seed", "3")
    r2 = invoke(*args, "--output", tmp_path / "out2", "--seed", "3")
    r3 = invoke(*args, "--output", tmp_path / "out3", "--seed", "4")
    assert r1.exit_code == r2.exit_code == r3.exit_code == 0, r1.output
    outs = sorted(p.relative_to(tmp_path / "out1") for p in (tmp_path / "out1").rglob("*.jpg"))
    assert Path("Audrey Hepburn.colorized.jpg") in outs
    assert Path("deeper/rgba.colorized-10.jpg") in outs and len(outs) == 2 * 11
    for rel in outs:
        assert (tmp_path / "out1" / rel).read_bytes() == (tmp_path / "out2" / rel).read_bytes()
    # samples 1..8 are the mixture means (seed-independent); 9 and 10 are draws
    # (pixels: each file's provenance record names its seed)
    same = np.array_equal(cv2.imread(str(tmp_path / "out1" / "Audrey Hepburn.colorized-1.jpg")),
                          cv2.imread(str(tmp_path / "out3" / "Audrey Hepburn.colorized-1.jpg")))
    differ = (tmp_path / "out1" / "Audrey Hepburn.colorized-10.jpg").read_bytes() != \
        (tmp_path / "out3" / "Audrey Hepburn.colorized-10.jpg").read_bytes()
    assert same and differ
    assert not list(photos.rglob("*.colorized*"))   # inputs' folder untouched with --output


def test_rerun_skips_existing_and_overwrite_redoes(photos, tiny_run):
    target = photos / "nested"
    assert invoke(target, "--model", tiny_run, "--samples", "2", "--device", "cpu").exit_code == 0
    out = target / "Audrey Hepburn.colorized.png"
    stamp = out.stat().st_mtime_ns
    again = invoke(target, "--model", tiny_run, "--samples", "2", "--device", "cpu")
    assert again.exit_code == 0 and "2 skipped" in again.stderr
    assert out.stat().st_mtime_ns == stamp
    over = invoke(target, "--model", tiny_run, "--samples", "2", "--device", "cpu", "--overwrite")
    assert over.exit_code == 0 and "2 colorized" in over.stderr


def test_stdin_paths_and_usage_errors(photos, tiny_run):
    listing = f"{photos / 'nested' / 'Audrey Hepburn.jpg'}\n"
    result = invoke("-", "--model", tiny_run, "--samples", "1", "--device", "cpu", "--json", input=listing)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "done"
    assert invoke(photos / "no-such-dir", "--model", tiny_run).exit_code == 2
    assert invoke(photos, "--samples", "0").exit_code == 2
    assert invoke(photos, "--bogus-option").exit_code == 2
    bad_model = invoke(photos, "--model", photos / "nested")
    assert bad_model.exit_code == 2 and len(bad_model.stderr.strip().splitlines()) == 1


def test_without_any_model_says_how_to_train(photos, monkeypatch):
    import colorize_cli.model.registry as registry

    monkeypatch.setattr(registry, "bundled_path", lambda name: None)
    result = invoke(photos / "nested", "--device", "cpu")
    assert result.exit_code == 2
    assert "colorize train vae" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_folder_named_like_a_subcommand(tmp_path, tiny_run, monkeypatch):
    folder = tmp_path / "train"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), synthetic_photo(np.random.default_rng(5)))
    monkeypatch.chdir(tmp_path)
    result = invoke("./train", "--model", tiny_run, "--samples", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (folder / "a.colorized.png").is_file()


def test_killed_run_then_rerun_completes(tmp_path, tiny_run):
    rng = np.random.default_rng(7)
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(24):
        cv2.imwrite(str(folder / f"p{i:02d}.jpg"), synthetic_photo(rng, 400, 300))
    cmd = [sys.executable, "-m", "colorize_cli", str(folder), "--model", str(tiny_run), "--samples", "8",
           "--device", "cpu", "--batch-size", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(folder.glob("*.colorized.png"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = list(folder.glob("*.colorized.png"))
    assert 0 < len(partial) < 24
    for p in partial:   # whatever has its final name is complete
        assert cv2.imread(str(p)) is not None
    rerun = subprocess.run(cmd[:-1], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(partial)} skipped" in rerun.stderr
    outs = sorted(folder.glob("*.colorized.png"))
    assert len(outs) == 24 and all(cv2.imread(str(p)) is not None for p in outs)


def test_sheets_merged_on_the_device_equal_the_cpu_path(photos, tiny_run, tmp_path):
    # the GPU's path (whole sheets merged by torch on the model's device), run here on the CPU
    from colorize_cli.engine.batch import colorize_items
    from colorize_cli.engine.plan import BatchOptions, discover, plan_outputs
    from colorize_cli.model.colorizer import Colorizer

    colorizer = Colorizer.load(tiny_run, "cpu")
    outputs = {}
    for device_sheets in (False, True):
        opts = BatchOptions(samples=6, output_dir=tmp_path / str(device_sheets), separate=True,
                            device_sheets=device_sheets)
        found = discover([str(photos)])
        plan_outputs(found.items, opts)
        results = list(colorize_items(found.items, colorizer, opts))
        assert [r.status for r in results] == ["done"] * 3
        outputs[device_sheets] = sorted(p.relative_to(opts.output_dir) for p in opts.output_dir.rglob("*.png"))
    assert outputs[False] == outputs[True] and len(outputs[True]) == 3 * 7
    for rel in outputs[True]:
        cpu = cv2.imread(str(tmp_path / "False" / rel), cv2.IMREAD_UNCHANGED)
        dev = cv2.imread(str(tmp_path / "True" / rel), cv2.IMREAD_UNCHANGED)
        assert cpu.shape == dev.shape, rel
        diff = np.abs(cpu.astype(np.int16) - dev)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, rel


def test_skips_decided_in_the_decode_threads_keep_order_and_need_no_model(tmp_path, tiny_run):
    from colorize_cli.engine.batch import run_paths
    from colorize_cli.engine.plan import BatchOptions
    from colorize_cli.model.colorizer import Colorizer

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"p{i}.jpg"), synthetic_photo(np.random.default_rng(i)))
    assert invoke(tmp_path, "--model", tiny_run, "--samples", "2", "--device", "cpu").exit_code == 0

    def no_model():
        raise AssertionError("the model was loaded for a folder with nothing to do")

    opts = BatchOptions(samples=2, batch_size=2)
    _, results = run_paths([str(tmp_path)], no_model, opts)
    assert [r.status for r in results] == ["skipped"] * 3
    (tmp_path / "p1.colorized.png").unlink()
    _, results = run_paths([str(tmp_path)], lambda: Colorizer.load(tiny_run, "cpu"), opts)
    assert [(Path(r.input).name, r.status) for r in results] == [("p0.jpg", "skipped"), ("p1.jpg", "done"),
                                                                  ("p2.jpg", "skipped")]


def test_cpu_streams_keep_order_and_outputs(tmp_path, tiny_run):
    # two batches at once in two single-threaded streams: results in input order, the same pictures as one
    # stream on all the threads (float sums may differ in order: a level at most)
    from colorize_cli.engine.batch import colorize_items
    from colorize_cli.engine.plan import BatchOptions, discover, plan_outputs
    from colorize_cli.model.colorizer import Colorizer

    rng = np.random.default_rng(5)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(7):
        cv2.imwrite(str(photos / f"p{i}.png"), synthetic_photo(rng, 60 + 4 * i, 70))
    (photos / "p3.png").write_bytes(b"broken")
    images = {}
    for streams in (1, 2):
        colorizer = Colorizer.load(tiny_run, "cpu", bf16=False, cpu_streams=streams)
        assert colorizer.runs_concurrently == (streams == 2)
        opts = BatchOptions(samples=3, output_dir=tmp_path / f"s{streams}", batch_size=2)
        found = discover([str(photos)])
        plan_outputs(found.items, opts)
        if streams == 1:
            results = list(colorize_items(found.items, colorizer, opts))
        else:   # loaded for the run (as the CLI does): its stream threads end with it, so the process can exit
            results = list(colorize_items(found.items, None, opts, load=lambda: colorizer))
            assert not colorizer.runs_concurrently
            assert not [t for t in threading.enumerate() if t.name.startswith("colorize-model")]
        assert [Path(r.input).name for r in results] == [f"p{i}.png" for i in range(7)]
        assert [r.status for r in results] == ["done"] * 3 + ["failed"] + ["done"] * 3
        images[streams] = {p.name: cv2.imread(str(p)) for p in opts.output_dir.glob("*.png")}
    assert images[1].keys() == images[2].keys() and len(images[1]) == 6
    for name, img in images[1].items():
        assert np.abs(img.astype(np.int16) - images[2][name]).max() <= 1, name
