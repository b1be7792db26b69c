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
    assert result.output.strip().count("\n") == 0 and "pip install 'colorize-photos[ray]'" in result.output


def test_ray_with_cuda_but_no_gpu_in_the_cluster_is_one_line(ray_cluster, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    photo = tmp_path / "p.jpg"
    cv2.imwrite(str(photo), np.full((20, 20, 3), 128, np.uint8))
    result = CliRunner().invoke(main, [str(photo), "--ray", "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "colorize: error: --device cuda: the Ray cluster has no GPUs"


def test_round_two_hostile_files_through_ray(ray_cluster, tmp_path, tiny_run):
    # issue 24 through --ray: a nested record, things named like claims, an output without a record and a
    # name that is not UTF-8 give what a local run gives (planning and writing are the same code)
    import struct
    import zlib

    from conftest import synthetic_photo

    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("x.png", "p.png", "q.png", "a.png"):
        cv2.imwrite(str(folder / name), synthetic_photo(rng, 40, 48))
    ok, buf = cv2.imencode(".png", synthetic_photo(rng, 40, 48))
    with open(os.fsencode(folder) + b"/caf\xe9.png", "wb") as f:
        f.write(buf.tobytes())
    body = b"colorize\0" + b"[" * 1100 + b"]" * 1100
    ok, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    png = png.tobytes()
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    (folder / "x.colorized.png").write_bytes(png[:33] + chunk + png[33:])
    os.mkfifo(folder / ".p.colorized.png.colorize-claim")
    (folder / ".q.colorized.png.colorize-claim").symlink_to("/dev/zero")
    (folder / "a.colorized.png").write_bytes(b"")
    result, lines = _run([str(folder), "--model", str(tiny_run), "--device", "cpu", "--json", "--samples", "1",
                          "--ray", "--ray-actors", "1"])
    assert result.exit_code == 1, result.output
    by_name = {Path(r["input"]).name: r for r in lines}
    assert {k: v["status"] for k, v in by_name.items()} == {
        "a.png": "failed", "caf\\xe9.png": "done", "p.png": "done", "q.png": "done", "x.png": "failed"}
    assert all("no record; --overwrite" in by_name[n]["error"] for n in ("a.png", "x.png"))
    assert not any(n.endswith(".colorize-claim") for n in os.listdir(folder))
    assert "Traceback" not in result.output


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_ends_a_ray_run_like_a_local_one(tmp_path, tiny_run, sig):
    # issue 24, item 10: exit 128 + the signal, no dump, the actors stopped (nothing written after the
    # driver ends), no claims or temporaries left
    import subprocess
    import time

    from conftest import REPO, synthetic_photo

    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(24):
        cv2.imwrite(str(folder / f"p{i:02d}.png"), synthetic_photo(rng, 700, 900))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # its own local Ray
    proc = subprocess.Popen([sys.executable, "-m", "colorize_cli", str(folder), "--model", str(tiny_run), "--device",
                             "cpu", "--ray", "--ray-actors", "1", "--batch-size", "2", "--samples", "8"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(folder.glob("*.colorized.png")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + getattr(signal, sig), err
    assert f"interrupted ({sig})" in err and "Traceback" not in err, err
    written = sorted(p.name for p in folder.glob("*.colorized*"))
    assert not [n for n in os.listdir(folder) if n.endswith(".colorize-claim") or n.startswith(".colorize-")]
    time.sleep(5)
    assert sorted(p.name for p in folder.glob("*.colorized*")) == written      # no actor wrote on
    assert len(written) < 24


_CLUSTER_SCRIPT = r"""
import json, os, subprocess, sys, time
from pathlib import Path
from ray.cluster_utils import Cluster

folder, model, repo = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
# a head and a worker node, each with its own CPUs, as two machines would be
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
worker = cluster.add_node(num_cpus=2)
cluster.wait_for_nodes()
try:
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    proc = subprocess.Popen([sys.executable, "-m", "colorize_cli", str(folder), "--model", model, "--device", "cpu",
                             "--ray", "--ray-actors", "2", "--batch-size", "2", "--samples", "2", "--json"],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(folder.glob("*.colorized.png")) and proc.poll() is None:
        time.sleep(0.05)
    cluster.remove_node(worker)          # the second machine is lost mid-run
    out, err = proc.communicate(timeout=600)
    print(json.dumps({"rc": proc.returncode, "stdout": out, "stderr": err[-3000:]}))
finally:
    cluster.shutdown()
"""


def test_a_worker_node_lost_mid_run_on_a_real_cluster(tmp_path, tiny_run):
    # issue 24, item 14: a two-node cluster through RAY_ADDRESS; the worker node dies mid-run; the job
    # finishes with every photo done once
    import subprocess

    from conftest import REPO, synthetic_photo

    pytest.importorskip("ray.cluster_utils", reason="the [ray] extra is not installed")
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(3)
    n = 24
    for i in range(n):
        cv2.imwrite(str(folder / f"p{i:02d}.png"), synthetic_photo(rng, 500, 600))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", _CLUSTER_SCRIPT, str(folder), str(tiny_run), str(REPO)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0, report["stderr"]
    results = [json.loads(line) for line in report["stdout"].splitlines()]   # stdout: JSON lines only
    # every photo once: done, or (those the lost node had finished before it went) found done on retry
    assert len(results) == n and {r["status"] for r in results} <= {"done", "skipped"}
    assert len({r["input"] for r in results}) == n
    sheets = sorted(folder.glob("*.colorized.png"))
    assert len(sheets) == n and all(cv2.imread(str(p)) is not None for p in sheets)
    assert not [x for x in os.listdir(folder) if x.endswith(".colorize-claim") or x.startswith(".colorize-")]
