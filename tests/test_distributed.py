"""Training under torchrun: two CPU processes (gloo) train as one process on the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import LFW_SPLITS, VGG_FILE, require

from colorize_cli.model.checkpoint import read_checkpoint
from colorize_cli.training.train import load_vae

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lfw32(shared, tmp_path_factory):
    """32 LFW training photos (one global batch of 32: one step per epoch) and 16 test photos."""
    require(LFW_SPLITS / "train.txt", LFW_SPLITS / "test.txt", VGG_FILE)
    lists = tmp_path_factory.mktemp("lists")
    (lists / "train.txt").write_text("\n".join(LFW_SPLITS.joinpath("train.txt").read_text().splitlines()[:32]) + "\n")
    (lists / "test.txt").write_text("\n".join(LFW_SPLITS.joinpath("test.txt").read_text().splitlines()[:16]) + "\n")
    return shared / "data", lists, tmp_path_factory.mktemp("cache")


def _train(args, nproc: int | None, cwd, threads: int = 1):
    # one thread per process in both runs: a different thread count alone moves float sums by ~1e-4
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "COLORIZE_VGG_WEIGHTS": str(VGG_FILE)}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
                if nproc else [sys.executable])
    proc = subprocess.run([*launcher, "-m", "colorize_cli", "train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _records(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_two_processes_train_as_one(lfw32, tmp_path):
    data, lists, cache = lfw32

    def args(stage, out, epochs=1):
        return [stage, str(data), "--list", str(lists / "train.txt"), "--test-list", str(lists / "test.txt"),
                "--epochs", str(epochs), "--device", "cpu", "--jobs", "1", "--cache-dir", str(cache),
                "--out", str(tmp_path / out)]

    _train(args("vae", "one"), None, tmp_path)
    proc = _train(args("vae", "two"), 2, tmp_path)
    assert "2 processes (gloo), global batch 32 (16 per process)" in proc.stdout + proc.stderr

    one, two = _records(tmp_path / "one")[0], _records(tmp_path / "two")[0]
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["global_batch"] == two["global_batch"] == 32 and one["lr"] == two["lr"] == 5e-5
    # the first (only) step's loss on the same global batch: equal to float tolerance. Without the shared
    # dropout masks the KL term moved by ~5%, without the global batch statistics by ~9%
    for key in ("train_loss", "train_kl", "train_recon_l2"):
        assert two[key] == pytest.approx(one[key], rel=1e-3), key
    # and the step itself: the weights after it give the same test loss, as closely as the same single
    # process gives it with 2 threads instead of 1. Adam's first step moves each weight by about lr * sign(g):
    # where g is at rounding level its sign is noise, so any change of summation order (threads, shards)
    # moves the result by an amount that depends on the CPU's kernels (8.6e-6 relative on an Intel Xeon,
    # 3.9e-4 on an AMD EPYC): the bound is that spread, measured here in the same run
    _train(args("vae", "one_threads"), None, tmp_path, threads=2)
    spread = abs(_records(tmp_path / "one_threads")[0]["test_recon_l2"] - one["test_recon_l2"])
    assert abs(two["test_recon_l2"] - one["test_recon_l2"]) <= 4 * spread + 1e-5 * abs(one["test_recon_l2"])

    # rank 0 alone wrote, once; the checkpoint loads without running code (weights_only)
    assert len(_records(tmp_path / "two")) == 1
    state = torch.load(tmp_path / "two" / "vae.pt", weights_only=True)
    assert state["epoch"] == 1 and not any(k.startswith("module.") for k in state["model"])
    load_vae(tmp_path / "two" / "vae.pt", torch.device("cpu"))
    assert (tmp_path / "two" / "samples" / "vae_epoch001.png").is_file()

    # torchrun's restarts rely on --resume: a second epoch continues the first
    _train([*args("vae", "two", epochs=2), "--resume"], 2, tmp_path)
    assert [r["epoch"] for r in _records(tmp_path / "two")] == [1, 2]
    assert read_checkpoint(tmp_path / "two" / "vae.pt", "vae")["epoch"] == 2

    # stage 2 under torchrun: rank 0 computes the VGG features, both train the MDN
    _train(args("mdn", "two"), 2, tmp_path)
    mdn = read_checkpoint(tmp_path / "two" / "mdn.pt", "mdn")
    assert mdn["metrics"]["world_size"] == 2 and mdn["metrics"]["test_loss"] > 0


def test_global_batch_must_split_evenly(lfw32, tmp_path):
    data, lists, cache = lfw32
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "colorize_cli", "train", "vae", str(data), "--list", str(lists / "train.txt"),
                           "--out", str(tmp_path / "run"), "--batch-size", "33", "--epochs", "1",
                           "--device", "cpu", "--cache-dir", str(cache)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("not a multiple of the 2 processes") == 1   # rank 0 speaks for both
