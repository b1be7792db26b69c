"""`colorize train ranking`: re-fitted weights reorder the same colorizations."""

import json

import numpy as np
import torch
from click.testing import CliRunner

from colorize_cli.bundle import export_bundle
from colorize_cli.cli import main
from colorize_cli.colorizer import Colorizer
from conftest import synthetic_photo


def test_ranking_reorders_the_same_samples(tmp_path, tiny_run, synthetic_dataset):
    bundle = export_bundle(tiny_run, tmp_path / "bundle", quantize="int8")
    out = tmp_path / "ranked"
    r = CliRunner().invoke(main, ["train", "ranking", str(synthetic_dataset), "--model", str(bundle), "--out",
                                  str(out), "--device", "cpu", "--test", str(synthetic_dataset), "--steps", "200"])
    assert r.exit_code == 0, r.output
    record = json.loads((out / "manifest.json").read_text())["ranking"]
    before, after = record["train"]["before"], record["train"]["after"]
    assert after["images"] == before["images"] == 16
    assert after["top_is_closest"] >= before["top_is_closest"]
    assert after["top1_vs_grey"] <= before["top1_vs_grey"] + 1e-6
    assert after["best_vs_grey"] == before["best_vs_grey"]       # the same K colorizations
    assert "test" in record

    old, new = Colorizer.load(str(bundle), "cpu", bf16=False), Colorizer.load(str(out), "cpu", bf16=False)
    k, d = old.mdn.cfg.components, old.mdn.cfg.latent
    # the means' rows come back bit for bit; only the K weight logits moved
    assert torch.equal(old.mdn.fc.weight[:k * d], new.mdn.fc.weight[:k * d])
    assert not torch.equal(old.mdn.fc.weight[k * d:], new.mdn.fc.weight[k * d:])
    photo = synthetic_photo(np.random.default_rng(11), 48, 64)
    a, wa = old.colorize(photo, samples=k)
    b, wb = new.colorize(photo, samples=k)
    key = lambda imgs: sorted(x.tobytes() for x in imgs)           # noqa: E731
    assert key(a) == key(b)                                         # a permutation of the same 8 pictures
    assert sorted(wb, reverse=True) == list(wb) and abs(sum(wb) - 1) < 1e-4


def test_ranking_needs_a_bundle(tmp_path, tiny_run, synthetic_dataset):
    r = CliRunner().invoke(main, ["train", "ranking", str(synthetic_dataset), "--model", str(tiny_run), "--out",
                                  str(tmp_path / "x"), "--device", "cpu"])
    assert r.exit_code == 1 and "bundle" in r.output
