import json

import pytest
import torch
from click.testing import CliRunner
from conftest import LFW_SPLITS, VGG_FILE, require

from colorize_cli.cli import main
from colorize_cli.model.checkpoint import CheckpointError, read_checkpoint
from colorize_cli.model.vgg import VGGWeightsError, resolve_vgg_state
from colorize_cli.training.mdn import train_mdn
from colorize_cli.training.train import (
    DataSpec,
    Reporter,
    TrainConfig,
    load_vae,
    train_vae,
)


class Quiet(Reporter):
    def __init__(self):
        self.lines = []

    def log(self, message):
        self.lines.append(message)

    warn = log


def _records(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def lfw16(shared, tmp_path_factory):
    require(LFW_SPLITS / "train.txt", LFW_SPLITS / "test.txt", VGG_FILE)
    lists = tmp_path_factory.mktemp("lists")
    train = LFW_SPLITS.joinpath("train.txt").read_text().splitlines()[:16]
    test = LFW_SPLITS.joinpath("test.txt").read_text().splitlines()[:8]
    (lists / "train.txt").write_text("\n".join(train) + "\n")
    (lists / "test.txt").write_text("\n".join(test) + "\n")
    return DataSpec(str(shared / "data"), str(lists / "train.txt"), str(lists / "test.txt"), n_jobs=1)


def test_both_stages_on_real_lfw_then_resume(lfw16, tmp_path):
    dev = torch.device("cpu")
    run = tmp_path / "run"
    # 16 images, batch 8: two optimiser steps per epoch
    train_vae(lfw16, run, TrainConfig(epochs=1, batch_size=8), dev, Quiet())
    first = read_checkpoint(run / "vae.pt", "vae")
    assert first["epoch"] == 1 and first["model_config"]["latent"] == 64
    assert first["train_config"]["lr"] == 5e-5 and first["train_config"]["kl_weight"] == 1e-2
    with pytest.raises(FileExistsError):
        train_vae(lfw16, run, TrainConfig(epochs=2, batch_size=8), dev, Quiet())
    train_vae(lfw16, run, TrainConfig(epochs=2, batch_size=8), dev, Quiet(), resume=True)
    second = read_checkpoint(run / "vae.pt", "vae")
    assert second["epoch"] == 2
    assert not torch.equal(first["model"]["decoder.conv5.weight"], second["model"]["decoder.conv5.weight"])
    recs = _records(run)
    assert [r["epoch"] for r in recs] == [1, 2]
    assert all(r["test_recon_l2"] > 0 and r["train_loss"] > 0 for r in recs)
    assert (run / "samples" / "vae_epoch002.png").is_file()
    load_vae(run / "vae.pt", dev)

    train_mdn(lfw16, run, TrainConfig(epochs=1, batch_size=8, lr=1e-3), dev, vgg_weights=str(VGG_FILE),
              reporter=Quiet())
    mdn = read_checkpoint(run / "mdn.pt", "mdn")
    assert mdn["epoch"] == 1 and set(mdn["vgg"]) == set(torch.load(VGG_FILE, weights_only=True))
    train_mdn(lfw16, run, TrainConfig(epochs=2, batch_size=8, lr=1e-3), dev, reporter=Quiet(), resume=True)
    assert read_checkpoint(run / "mdn.pt", "mdn")["epoch"] == 2
    stages = [r["stage"] for r in _records(run)]
    assert stages == ["vae", "vae", "mdn", "mdn"]
    assert (run / "samples" / "mdn_epoch002.png").is_file()


def test_train_cli_skips_bad_files(tmp_path, synthetic_dataset):
    data = tmp_path / "data"
    data.mkdir()
    for p in sorted(synthetic_dataset.rglob("*.jpg"))[:8]:
        (data / p.name).write_bytes(p.read_bytes())
    (data / "broken.jpg").write_bytes(b"not a jpeg at all")
    (data / "notes.txt").write_text("ignored")
    result = CliRunner().invoke(main, ["train", "vae", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
                                       "--batch-size", "4", "--device", "cpu", "--no-bf16", "--jobs", "1"])
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.output and "skipping" in result.output
    assert read_checkpoint(tmp_path / "run" / "vae.pt")["epoch"] == 1


def test_missing_vgg_weights_error(tmp_path, monkeypatch, tiny_run, synthetic_dataset):
    monkeypatch.delenv("COLORIZE_VGG_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(VGGWeightsError, match="--vgg-weights"):
        resolve_vgg_state(None)
    out = tmp_path / "run2"
    out.mkdir()
    (out / "vae.pt").write_bytes((tiny_run / "vae.pt").read_bytes())
    result = CliRunner().invoke(main, ["train", "mdn", str(synthetic_dataset), "--out", str(out), "--epochs", "1",
                                       "--device", "cpu"])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if "error" in ln]
    assert len(lines) == 1 and "COLORIZE_VGG_WEIGHTS" in lines[0]


def test_checkpoint_loading_never_runs_code(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"format": "colorize-checkpoint", "kind": "vae", "x": Evil()}, path)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_plain_progress_prints_a_line_per_tenth_whatever_the_batch(capsys):
    # in a log (no terminal) the count advances by whole batches: 16 never lands on a multiple of 500
    from colorize_cli.cli.app import _PlainProgress

    bar = _PlainProgress(5000, "photos")
    for _ in range(0, 5000, 16):
        bar.advance(16)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 9 and lines[0].startswith("photos: 512/5000")


def test_too_few_photos_for_one_batch_is_an_error_not_an_empty_epoch(tmp_path, synthetic_dataset, tiny_run,
                                                                      random_vgg_file):
    # epochs drop their last partial batch: 16 photos in batches of 32 used to train nothing and log zeros
    for stage in ("vae", "mdn"):
        extra = ["--vae", str(tiny_run / "vae.pt"), "--vgg-weights", str(random_vgg_file)] if stage == "mdn" \
            else []
        result = CliRunner().invoke(main, ["train", stage, str(synthetic_dataset), "--out",
                                           str(tmp_path / "run"), "--epochs", "1", "--batch-size", "32",
                                           "--device", "cpu", "--no-bf16", "--jobs", "1"] + extra)
        assert result.exit_code == 1, result.output
        assert "16 training photos make no batch of 32" in result.output
    assert not any((tmp_path / "run" / f).exists() for f in ("vae.pt", "mdn.pt"))   # no epoch claimed
