"""The command line as Unix users expect it: -V, -j, -o everywhere, COLORIZE_* variables, --dry-run."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
from click.testing import CliRunner
from conftest import REPO, synthetic_photo

from colorize_cli import __version__
from colorize_cli.cli import main


def test_version_and_help():
    r = CliRunner().invoke(main, ["-V"])
    assert r.exit_code == 0 and __version__ in r.output
    top = CliRunner().invoke(main, ["--help"])
    commands = top.output.split("Commands:")[1].split("Colorizing options")[0]
    assert top.exit_code == 0 and "  run " not in commands and "models" in commands
    run_help = CliRunner().invoke(main, ["run", "--help"])
    for opt in ("-j, --jobs", "--dry-run", "--max-pixels", "-0, --null", "--int8 / --no-int8"):
        assert opt in run_help.output, opt
    for cmd in (["train", "vae", "--help"], ["export", "--help"], ["calibrate", "--help"]):
        assert "-o, --output" in CliRunner().invoke(main, cmd).output, cmd


def test_dry_run_writes_nothing_and_env_sets_options(tmp_path, tiny_run):
    cv2.imwrite(str(tmp_path / "a.jpg"), synthetic_photo(np.random.default_rng(0), 30, 30))
    cv2.imwrite(str(tmp_path / "b.jpg"), synthetic_photo(np.random.default_rng(1), 30, 30))
    r = CliRunner().invoke(main, [str(tmp_path / "b.jpg"), "--model", str(tiny_run), "--samples", "1",
                                  "--device", "cpu", "-j", "2"])
    assert r.exit_code == 0, r.output
    before = sorted(p.name for p in tmp_path.iterdir())
    env = {"COLORIZE_SEPARATE": "1", "COLORIZE_SAMPLES": "2"}
    r = CliRunner().invoke(main, [str(tmp_path), "--model", str(tiny_run), "--dry-run", "--json"], env=env)
    assert r.exit_code == 0, r.output
    plan = {os.path.basename(o["input"]): o for o in map(json.loads, r.stdout.splitlines())}
    assert plan["a.jpg"]["would"] == "colorize" and len(plan["a.jpg"]["outputs"]) == 3   # sheet + 2 singles
    assert plan["b.jpg"]["would"] == "colorize"   # done with 1 sample and no singles: not done for these options
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_shell_completion_offers_subcommands():
    env = {**os.environ, "_COLORIZE_COMPLETE": "bash_complete", "COMP_WORDS": "colorize mod", "COMP_CWORD": "1"}
    proc = subprocess.run([sys.executable, "-c", "from colorize_cli.cli import main; main(prog_name='colorize')"],
                          env=env, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "models" in proc.stdout, proc.stdout + proc.stderr


def test_numbered_sheets_sized_to_look_at_and_format_auto(tmp_path, tiny_run):
    from colorize_cli.files import provenance
    from colorize_cli.model.render import CAPTION_PX

    big = synthetic_photo(np.random.default_rng(2), 900, 1200)
    cv2.imwrite(str(tmp_path / "scan.jpg"), big)
    cv2.imwrite(str(tmp_path / "scan2.png"), big)
    r = CliRunner().invoke(main, [str(tmp_path), "--model", str(tiny_run), "--samples", "8", "--device", "cpu",
                                  "--format", "auto", "--sheet-size", "320", "--separate"])
    assert r.exit_code == 0, r.output
    sheet = cv2.imread(str(tmp_path / "scan.colorized.jpg"))
    assert sheet is not None and (tmp_path / "scan2.colorized.png").is_file()
    # 4 x 2 tiles of 320 x 240 with a caption band under each, a few px between them
    assert 2 * (240 + CAPTION_PX) <= sheet.shape[0] <= 2 * (240 + CAPTION_PX) + 20
    assert 4 * 320 <= sheet.shape[1] <= 4 * 320 + 20
    band = sheet[240:240 + CAPTION_PX, :320]
    assert (band < 100).any() and (band > 200).mean() > 0.6          # dark text on a white band
    single = cv2.imread(str(tmp_path / "scan.colorized-1.jpg"))
    assert single.shape[:2] == (900, 1200)                               # singles stay full resolution
    assert provenance.read(tmp_path / "scan.colorized.jpg")["samples"] == 8
    bad = CliRunner().invoke(main, [str(tmp_path), "--sheet-size", "tiny"])
    assert bad.exit_code == 2


def test_pick_matches_separate_and_info_reads_the_record(tmp_path, tiny_run):
    run_dir, pick_dir = tmp_path / "run", tmp_path / "pick"
    run_dir.mkdir(), pick_dir.mkdir()
    for d in (run_dir, pick_dir):
        cv2.imwrite(str(d / "photo.jpg"), synthetic_photo(np.random.default_rng(4), 60, 80))
        os.utime(d / "photo.jpg", ns=(10**18, 10**18))
    r = CliRunner().invoke(main, [str(run_dir), "--model", str(tiny_run), "--separate", "--seed", "5",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    p = CliRunner().invoke(main, ["pick", str(pick_dir / "photo.jpg"), "3", "7", "--model", str(tiny_run),
                                  "--seed", "5", "--device", "cpu"])
    assert p.exit_code == 0, p.output
    assert sorted(x.name for x in pick_dir.iterdir()) == ["photo.colorized-3.png", "photo.colorized-7.png",
                                                          "photo.jpg"]
    for n in (3, 7):
        assert ((run_dir / f"photo.colorized-{n}.png").read_bytes()
                == (pick_dir / f"photo.colorized-{n}.png").read_bytes())
    picks = tmp_path / "picks.json"
    picks.write_text(json.dumps({"picks": [{"photo": "pick/photo.jpg", "samples": [1]}]}))
    f = CliRunner().invoke(main, ["pick", "--from", str(picks), "--model", str(tiny_run), "--seed", "5",
                                  "--device", "cpu"])
    assert f.exit_code == 0 and (pick_dir / "photo.colorized-1.png").is_file()
    info = CliRunner().invoke(main, ["info", str(pick_dir / "photo.colorized-3.png"), "--json"])
    record = json.loads(info.stdout)["record"]
    assert info.exit_code == 0 and record["sample"] == 3 and record["source"] == "photo.jpg"
    assert record["colorized_by"].startswith("colorize ") and record["seed"] == 5
    original = CliRunner().invoke(main, ["info", str(pick_dir / "photo.jpg")])
    assert original.exit_code == 1 and "no colorize record" in original.output
