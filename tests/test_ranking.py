"""`colorize train ranking`: re-fitted weights reorder the same colorizations."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import synthetic_photo

from colorize_cli.cli import main
from colorize_cli.model.bundle import export_bundle
from colorize_cli.model.colorizer import Colorizer
from colorize_cli.training import ranking, refine


@pytest.mark.parametrize("objective", [["--objective", "error", "--ridge", "1e-5"],
                                       ["--objective", "closest", "--steps", "200"]], ids=["error", "closest"])
def test_ranking_reorders_the_same_samples(tmp_path, tiny_run, synthetic_dataset, objective):
    bundle = export_bundle(tiny_run, tmp_path / "bundle", quantize="int8")
    out = tmp_path / "ranked"
    r = CliRunner().invoke(main, ["train", "ranking", str(synthetic_dataset), "--model", str(bundle), "--out",
                                  str(out), "--device", "cpu", "--test", str(synthetic_dataset)] + objective)
    assert r.exit_code == 0, r.output
    record = json.loads((out / "manifest.json").read_text())["ranking"]
    before, after = record["train"]["before"], record["train"]["after"]
    assert after["images"] == before["images"] == 16
    assert after["top_is_closest"] >= before["top_is_closest"]
    if "error" in objective:
        # the error objective fits each component's error on these very photos (16 photos, small ridge): its
        # top is their least-error sample, so top-1 cannot get worse. The closest objective ranks by the
        # chance of being closest, not by error: where two samples' errors differ by rounding, its top may
        # be either (top-1 moved by +4.4e-6 on an AMD EPYC), so its test is top_is_closest above
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


def test_error_objective_puts_the_least_expected_error_first():
    # errors that depend linearly on h, plus noise: the fit must pick the component of least expected error
    rng = np.random.default_rng(0)
    n, f, k = 600, 12, 8
    h = np.maximum(rng.normal(size=(n, f)), 0).astype(np.float32)
    a = rng.normal(size=(f, k))
    expected = 5 + h @ a
    err = (expected + rng.normal(scale=0.5, size=(n, k))).astype(np.float32)
    data = ranking.RankingData(h, err, np.full(n, 20, np.float32))
    assert ranking.choose_ridge(h.astype(np.float64), err.astype(np.float64)) in ranking.RIDGE_GRID
    w, b = ranking.fit_error(data, ranking.RankingConfig())
    logits = torch.from_numpy(h) @ w.T + b
    assert (logits.argmax(1).numpy() == expected.argmin(1)).mean() > 0.9
    # the temperature makes the weights a calibrated guess of the closest: confident, yet not one-hot
    top = torch.softmax(logits, 1).max(1).values
    assert 0.3 < float(top.mean()) < 0.99
    # ridge 0 on more photos than features: ordinary least squares, the same order
    w0, b0 = ranking.fit_error(data, ranking.RankingConfig(ridge=0.0))
    assert ((torch.from_numpy(h) @ w0.T + b0).argmax(1) == logits.argmax(1)).float().mean() > 0.95


def test_collected_photos_are_cached_per_model_and_list(tmp_path, tiny_run, synthetic_dataset, monkeypatch):
    bundle = export_bundle(tiny_run, tmp_path / "bundle", quantize="int8")
    rels = sorted(p.relative_to(synthetic_dataset).as_posix() for p in synthetic_dataset.rglob("*.jpg"))
    cfg = ranking.RankingConfig(ridge=1e-3)
    first = ranking.train_ranking(str(bundle), [(str(synthetic_dataset), rels)], tmp_path / "a", cfg,
                                  cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("ranking-*.npz"))) == 1

    def no_photos(*args, **kwargs):
        raise AssertionError("collected again")
    monkeypatch.setattr(refine, "collect_views", no_photos)     # what reads the photos
    second = ranking.train_ranking(str(bundle), [(str(synthetic_dataset), rels)], tmp_path / "b", cfg,
                                   cache_dir=tmp_path / "cache")
    a = torch.load(first / "mdn.pt", weights_only=True)
    b = torch.load(second / "mdn.pt", weights_only=True)
    assert all(torch.equal(a[key], b[key]) for key in a)
    # another photo list is another entry, collected afresh
    with pytest.raises(AssertionError, match="collected again"):
        ranking.train_ranking(str(bundle), [(str(synthetic_dataset), rels[:8])], tmp_path / "c", cfg,
                              cache_dir=tmp_path / "cache")


def test_too_few_colour_photos_is_one_line(tmp_path, tiny_run, synthetic_dataset):
    bundle = export_bundle(tiny_run, tmp_path / "bundle", quantize="int8")
    few = tmp_path / "few.txt"
    few.write_text("\n".join(p.relative_to(synthetic_dataset).as_posix()
                             for p in sorted(synthetic_dataset.rglob("*.jpg"))[:4]) + "\n")
    r = CliRunner().invoke(main, ["train", "ranking", str(synthetic_dataset), "--list", str(few), "--model",
                                  str(bundle), "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert r.exit_code == 1
    assert "4 colour photos are too few" in r.output and not (tmp_path / "x").exists()
