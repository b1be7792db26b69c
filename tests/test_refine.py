"""`colorize train refine`: best-of-K fine-tuning of the means, its resume, and what ranking reuses of it."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from colorize_cli.cli import main
from colorize_cli.model.bundle import export_bundle
from colorize_cli.model.colorizer import Colorizer
from colorize_cli.training import ranking, refine
from colorize_cli.training.data import list_images


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_run):
    return export_bundle(tiny_run, tmp_path_factory.mktemp("refine") / "bundle", quantize="int8")


@pytest.fixture(scope="module")
def views_cache(tmp_path_factory):
    """One VGG pass over the photos for the whole module (the views depend on VGG and the trunk only)."""
    return tmp_path_factory.mktemp("views")


def _refine(args, bundle, data, out, cache=None):
    extra = ["--cache-dir", str(cache)] if cache is not None else []
    return CliRunner().invoke(main, ["train", "refine", str(data), "--model", str(bundle), "--out", str(out),
                                     "--device", "cpu", "--no-bf16", "--batch-size", "8"] + extra + args)


def test_refine_moves_only_the_means_and_lowers_best_of_k(tmp_path, bundle, synthetic_dataset, views_cache):
    out = tmp_path / "refined"
    r = _refine(["--epochs", "3", "--lr", "1e-2", "--test", str(synthetic_dataset)], bundle, synthetic_dataset, out,
                views_cache)
    assert r.exit_code == 0, r.output
    record = json.loads((out / "manifest.json").read_text())["refine"]
    assert record["epochs"] == 3 and [e["epoch"] for e in record["history"]] == [0, 1, 2, 3]
    held = [e["held_best_vs_grey"] for e in record["history"]]
    assert held[-1] < held[0]                          # the best of K came closer to the photos' colours

    old, new = Colorizer.load(str(bundle), "cpu", bf16=False), Colorizer.load(str(out), "cpu", bf16=False)
    k, d = old.mdn.cfg.components, old.mdn.cfg.latent
    assert not torch.equal(old.mdn.fc.weight[:k * d], new.mdn.fc.weight[:k * d])
    assert torch.equal(old.mdn.fc.weight[k * d:], new.mdn.fc.weight[k * d:])      # the weight logits as they were
    for name in ("model", "cvae"):
        a, b = getattr(old, "mdn" if name == "model" else "cvae"), getattr(new, "mdn" if name == "model" else "cvae")
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            if not ka.startswith("fc."):
                assert torch.equal(va, vb), ka
    assert refine.trunk_digest(bundle) == refine.trunk_digest(out)     # h is unchanged, so kept views stay valid


def test_refine_resumes_as_if_never_stopped(tmp_path, bundle, synthetic_dataset, views_cache):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert _refine(["--epochs", "2"], bundle, synthetic_dataset, whole, views_cache).exit_code == 0
    assert _refine(["--epochs", "1"], bundle, synthetic_dataset, parts, views_cache).exit_code == 0
    again = _refine(["--epochs", "1"], bundle, synthetic_dataset, parts, views_cache)
    assert again.exit_code == 1 and "--resume" in again.output          # never overwrites a run silently
    r = _refine(["--epochs", "2", "--resume"], bundle, synthetic_dataset, parts, views_cache)
    assert r.exit_code == 0, r.output
    a = refine.read_checkpoint(whole / refine.STATE_FILE, "refine")["trainer"]
    b = refine.read_checkpoint(parts / refine.STATE_FILE, "refine")["trainer"]
    assert torch.allclose(a["weight"], b["weight"], atol=1e-6) and torch.allclose(a["bias"], b["bias"], atol=1e-6)
    missing = _refine(["--resume"], bundle, synthetic_dataset, tmp_path / "none")
    assert missing.exit_code == 1 and "nothing to resume" in missing.output


def test_ranking_reuses_refines_kept_views(tmp_path, bundle, synthetic_dataset, monkeypatch, views_cache):
    cache = views_cache
    out = tmp_path / "refined"
    assert _refine(["--epochs", "1", "--cache-dir", str(cache)], bundle, synthetic_dataset, out).exit_code == 0
    assert len(list(cache.glob("views-*.npz"))) == 1
    rels = sorted(p.relative_to(synthetic_dataset).as_posix() for p in synthetic_dataset.rglob("*.jpg"))
    fresh = ranking.collect(Colorizer.load(str(out), "cpu", int8=False), synthetic_dataset, rels,
                            ranking.RankingConfig())

    def no_vgg(*a, **k):
        raise AssertionError("ranking read the photos again although refine kept their views")

    monkeypatch.setattr(refine, "collect_views", no_vgg)       # what reads the photos and runs VGG
    ranked = ranking.train_ranking(str(out), [(str(synthetic_dataset), rels)], tmp_path / "ranked",
                                   ranking.RankingConfig(ridge=1e-3), cache_dir=cache)
    manifest = json.loads((ranked / "manifest.json").read_text())
    assert "refine" in manifest and "ranking" in manifest             # both stages recorded
    kept = ranking.from_views(Colorizer.load(str(out), "cpu", int8=False),
                              refine.load_views(next(cache.glob("views-*.npz"))))
    np.testing.assert_allclose(kept.h, fresh.h, atol=1e-6)
    np.testing.assert_allclose(kept.err, fresh.err, atol=1e-3)
    np.testing.assert_allclose(kept.grey, fresh.grey, atol=1e-6)


def test_refine_drops_a_stale_ranking_record(tmp_path, bundle, synthetic_dataset, views_cache):
    rels = sorted(p.relative_to(synthetic_dataset).as_posix() for p in synthetic_dataset.rglob("*.jpg"))
    ranked = ranking.train_ranking(str(bundle), [(str(synthetic_dataset), rels)], tmp_path / "ranked",
                                   ranking.RankingConfig(ridge=1e-3), cache_dir=views_cache)
    out = tmp_path / "refined"
    assert _refine(["--epochs", "1"], ranked, synthetic_dataset, out, views_cache).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert "ranking" not in manifest and "ranking" in manifest["refine"]["note"]


def test_refine_with_the_decoder_and_enhanced_targets_resumes_and_writes_the_decoder(tmp_path, bundle,
                                                                                    synthetic_dataset, views_cache):
    opts = ["--target-gain", "1.2", "--decoder-lr", "1e-3"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    r = _refine(opts + ["--epochs", "2"], bundle, synthetic_dataset, whole, views_cache)
    assert r.exit_code == 0, r.output
    assert _refine(opts + ["--epochs", "1"], bundle, synthetic_dataset, parts, views_cache).exit_code == 0
    assert _refine(["--epochs", "2", "--resume"], bundle, synthetic_dataset, parts, views_cache).exit_code == 0
    config = json.loads((parts / "manifest.json").read_text())["refine"]["config"]
    assert config["target_gain"] == 1.2 and config["decoder_lr"] == 1e-3      # resumed with the run's settings
    a = refine.read_checkpoint(whole / refine.STATE_FILE, "refine")["trainer"]
    b = refine.read_checkpoint(parts / refine.STATE_FILE, "refine")["trainer"]
    for key in a["decoder"]:
        assert torch.allclose(a["decoder"][key], b["decoder"][key], atol=1e-6), key

    old, new = Colorizer.load(str(bundle), "cpu", bf16=False), Colorizer.load(str(whole), "cpu", bf16=False)
    moved = [k for k, v in old.cvae.decoder.state_dict().items()
             if not torch.equal(v, new.cvae.decoder.state_dict()[k])]
    assert "conv5.weight" in moved and "bn1.weight" in moved
    assert not any(k.endswith(("running_mean", "running_var")) for k in moved)     # statistics kept
    for k, v in old.cvae.cond_encoder.state_dict().items():
        assert torch.equal(v, new.cvae.cond_encoder.state_dict()[k]), k
    assert refine.trunk_digest(bundle) == refine.trunk_digest(whole)    # views kept for it stay valid
    # the written decoder is what the training state holds, stored as the bundle stores weights (int8 per row)
    for k, v in a["decoder"].items():
        got = new.cvae.state_dict()[k].float()
        if v.ndim >= 2:
            step = v.reshape(len(v), -1).abs().amax(1) / 127
            assert ((got - v).reshape(len(v), -1).abs() <= step[:, None] / 2 + 1e-6).all(), k
        else:
            assert torch.equal(got, v), k


def test_enhanced_targets_push_the_truth_away_from_grey_within_range(bundle):
    trainer = refine.MeanTrainer(Colorizer.load(str(bundle), "cpu", bf16=False, int8=False), refine.RefineConfig())
    ab = np.array([128, 138, 108, 250, 3], np.uint8)
    views = refine.Views(np.zeros((1, trainer.c.mdn.fc.in_features), np.float32), np.full((1, 64, 64), 50, np.uint8),
                         np.broadcast_to(np.resize(ab, (64, 64)), (1, 2, 64, 64)).copy())
    _, _, truth = trainer._batch(views)
    _, _, pushed = trainer._batch(views, 1.5)
    assert torch.equal(pushed, (truth * 1.5).clamp(-1, 1))
    assert pushed.abs().max() <= 1 and (pushed.abs() >= truth.abs()).all()
    assert torch.equal(pushed[truth == 0], truth[truth == 0])          # grey stays grey


def test_refining_a_refined_model_keeps_its_record(tmp_path, bundle, synthetic_dataset, views_cache):
    first, second = tmp_path / "first", tmp_path / "second"
    assert _refine(["--epochs", "1"], bundle, synthetic_dataset, first, views_cache).exit_code == 0
    r = _refine(["--epochs", "1", "--lr", "1e-2"], first, synthetic_dataset, second, views_cache)
    assert r.exit_code == 0, r.output
    a = json.loads((first / "manifest.json").read_text())["refine"]
    b = json.loads((second / "manifest.json").read_text())["refine"]
    assert "earlier" not in a                            # the exported bundle was never refined
    assert b["earlier"] == a and b["config"]["lr"] == 1e-2    # the new means started from the first run's


def _views(ab_a, ab_b, n_features=4):
    """Photos of one flat colour each: (a, b) 8-bit levels per photo, L 60."""
    n = len(ab_a)
    ab = np.stack([np.stack([np.full((64, 64), a, np.uint8), np.full((64, 64), b, np.uint8)]) for a, b in
                   zip(ab_a, ab_b)])
    return refine.Views(np.arange(n * n_features, dtype=np.float32).reshape(n, n_features),
                        np.full((n, 64, 64), 150, np.uint8), ab)


def test_dull_photos_are_left_out_by_their_own_colourfulness():
    # a flat colour's colourfulness is 0.3 * its mean opponent colour: grey ~0, a faint tint a few units, a
    # saturated red far above BigColor's 15
    views = _views([128, 134, 190], [128, 131, 170])
    cf = refine.true_colourfulness(views)
    assert cf[0] < 1 and 1 < cf[1] < 15 < cf[2]
    said = []
    kept = refine.without_dull(views, 15, said.append)
    assert len(kept) == 1
    assert np.array_equal(kept.h, views.h[2:]) and np.array_equal(kept.ab64, views.ab64[2:])
    assert said == ["left out 2 dull photos of 3 (colourfulness at 64x64 < 15)"]
    assert refine.without_dull(views, 0, said.append) is views and len(said) == 1     # 0: all kept, no line
    with pytest.raises(ValueError, match="no training photo"):
        refine.without_dull(views, 1000, said.append)


def test_refine_min_colourfulness_trains_on_the_vivid_photos_and_records_it(tmp_path, bundle,
                                                                           synthetic_dataset, views_cache):
    colorizer = Colorizer.load(str(bundle), "cpu", bf16=False, int8=False)
    views = refine.collect_views(colorizer, synthetic_dataset, list_images(synthetic_dataset))
    cf = np.sort(refine.true_colourfulness(views))
    threshold = float((cf[len(cf) // 2 - 1] + cf[len(cf) // 2]) / 2)          # half of the photos are duller
    out = tmp_path / "vivid"
    r = _refine(["--epochs", "1", "--min-colourfulness", f"{threshold}"], bundle, synthetic_dataset, out,
                views_cache)
    assert r.exit_code == 0, r.output
    assert f"left out {len(cf) // 2} dull photos of {len(cf)}" in r.output
    record = json.loads((out / "manifest.json").read_text())["refine"]
    assert record["config"]["min_colourfulness"] == threshold
    none = _refine(["--epochs", "1", "--min-colourfulness", "1000"], bundle, synthetic_dataset,
                   tmp_path / "n", views_cache)
    assert none.exit_code == 1 and "no training photo is as colourful" in none.output
