"""`colorize --ray`: the same job on a (local) Ray cluster, started once for the whole test session."""

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import LFW_SPLITS, require

from colorize_cli.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the session (each start costs seconds): 2 CPUs, as a small machine has."""
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    from colorize_cli.engine.ray import _stderr_silenced

    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if not ray.is_initialized():
        with _stderr_silenced():
            ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture()
def lfw_photos(shared, tmp_path):
    """8 real LFW photos, plus a file that is not a photo."""
    require(LFW_SPLITS / "test.txt")
    folder = tmp_path / "photos"
    folder.mkdir()
    for rel in LFW_SPLITS.joinpath("test.txt").read_text().splitlines()[:8]:
        shutil.copy(shared / "data" / rel, folder)
    return folder


def _run(args):
    result = CliRunner().invoke(main, args)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result, lines


def test_ray_writes_what_a_local_run_writes(ray_cluster, lfw_photos, tmp_path):
    (lfw_photos / "broken.jpg").write_text("not a photo")
    local, local_lines = _run([str(lfw_photos), "-o", str(tmp_path / "local"), "--device", "cpu", "--json",
                               "--samples", "4"])
    on_ray, ray_lines = _run([str(lfw_photos), "-o", str(tmp_path / "ray"), "--device", "cpu", "--json",
                              "--samples", "4", "--ray", "--ray-actors", "2"])
    # the same exit code (1: one input failed), the same results in the same order, the same one-line error
    assert local.exit_code == on_ray.exit_code == 1, on_ray.output
    assert [(r["input"], r["status"]) for r in ray_lines] == [(r["input"], r["status"]) for r in local_lines]
    assert [r["status"] for r in ray_lines].count("done") == 8
    bad = [r for r in ray_lines if r["status"] == "failed"]
    assert len(bad) == 1 and bad[0]["input"].endswith("broken.jpg") and bad[0]["error"]
    assert [Path(o).relative_to(tmp_path / "ray") for r in ray_lines for o in r["outputs"]] == \
        [Path(o).relative_to(tmp_path / "local") for r in local_lines for o in r["outputs"]]
    for r in ray_lines:
        assert r["weights"] == pytest.approx(next(x for x in local_lines if x["input"] == r["input"])["weights"],
                                             abs=1e-4)
    sheets = sorted((tmp_path / "local").glob("*.png"))
    assert len(sheets) == 8
    for sheet in sheets:
        a = cv2.imread(str(sheet))
        b = cv2.imread(str(tmp_path / "ray" / sheet.name))
        assert b is not None and a.shape == b.shape
        assert np.abs(a.astype(int) - b).max() <= 1, sheet.name   # the same pictures, to one level
    # provenance as a local run writes it; a rerun on Ray skips everything, with no actor started
    info = CliRunner().invoke(main, ["info", str(tmp_path / "ray" / sheets[0].name)])
    assert "source: " + sheets[0].name.replace(".colorized.png", ".jpg") in info.output
    again, again_lines = _run([str(lfw_photos), "-o", str(tmp_path / "ray"), "--device", "cpu", "--json",
                               "--samples", "4", "--ray"])
    assert [r["status"] for r in again_lines].count("skipped") == 8
    assert not list((tmp_path / "ray").rglob(".colorize-*")) and not list((tmp_path / "ray").rglob(".*claim"))


def _actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ColorizeActor" in cmd:
                pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the actors' processes in /proc")
def test_a_killed_actor_is_replaced_and_the_job_completes(ray_cluster, lfw_photos, tmp_path):
    from colorize_cli.engine.plan import BatchOptions
    from colorize_cli.engine.ray import run_paths_on_ray
    from colorize_cli.model.colorizer import LoadOptions

    for i in range(8):   # 16 photos, in batches of 2
        shutil.copy(next(lfw_photos.glob("*.jpg")), lfw_photos / f"copy_{i}.jpg")
    opts = BatchOptions(samples=2, output_dir=tmp_path / "out", batch_size=2)
    found, results = run_paths_on_ray([str(lfw_photos)], LoadOptions(device="cpu"), opts, actors=2)
    statuses, killed = [], None
    for result in results:
        statuses.append(result.status)
        if killed is None:   # the first result is in: the actors are at work; kill one (as the OOM killer)
            pids = _actor_pids()
            assert pids, "no colorizing actor found"
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
    assert len(statuses) == 16 and set(statuses) <= {"done", "skipped"}, statuses
    outputs = sorted((tmp_path / "out").rglob("*.colorized.png"))
    assert len(outputs) == 16
    assert all(cv2.imread(str(p)) is not None for p in outputs)
    assert not list((tmp_path / "out").rglob(".colorize-*"))


def test_ray_without_the_extra_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)   # as if not installed
    photo = tmp_path / "p.jpg"
    cv2.imwrite(str(photo), np.full((20, 20, 3), 128, np.uint8))
    result = CliRunner().invoke(main, [str(photo), "--ray"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "pip install 'colorize-cli[ray]'" in result.output


def test_ray_with_cuda_but_no_gpu_in_the_cluster_is_one_line(ray_cluster, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    photo = tmp_path / "p.jpg"
    cv2.imwrite(str(photo), np.full((20, 20, 3), 128, np.uint8))
    result = CliRunner().invoke(main, [str(photo), "--ray", "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "colorize: error: --device cuda: the Ray cluster has no GPUs"
