import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO, synthetic_photo

from colorize_cli.cli import main
from colorize_cli.model.bundle import dequantize_state, export_bundle, quantize_state
from colorize_cli.model.colorizer import Colorizer
from colorize_cli.training.evaluate import ab_distance, colourfulness, diversity


def test_int8_quantisation_error_is_small():
    torch.manual_seed(0)
    state = {"conv.weight": torch.randn(16, 8, 3, 3), "bn.running_var": torch.rand(16),
             "bn.num_batches_tracked": torch.tensor(5)}
    back = dequantize_state(quantize_state(state, "int8"))
    assert back.keys() == state.keys()
    w, q = state["conv.weight"], back["conv.weight"]
    step = w.abs().amax((1, 2, 3)) / 127
    assert torch.all((w - q).abs() <= step[:, None, None, None] / 2 + 1e-7)
    assert torch.equal(back["bn.running_var"], state["bn.running_var"])
    assert back["bn.num_batches_tracked"].item() == 5


def test_bundle_matches_run(tmp_path, tiny_run):
    bundle = export_bundle(tiny_run, tmp_path / "bundle", "int8")
    files = {p.name: p.stat().st_size for p in bundle.iterdir()}
    assert set(files) == {"manifest.json", "cond_encoder.pt", "decoder.pt", "mdn.pt", "vgg.pt"}
    assert max(files.values()) < 20 * 2**20 and sum(files.values()) < 50 * 2**20
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["quantization"] == "int8" and manifest["trained"]["vae_epochs"] == 1
    full = Colorizer.load(tiny_run, "cpu")
    small = Colorizer.load(bundle, "cpu")
    img = synthetic_photo(np.random.default_rng(0), 120, 100)
    a, wa = full.colorize(img, samples=8)
    b, wb = small.colorize(img, samples=8)
    assert len(a) == len(b) == 8 and a[0].shape == img.shape
    assert np.mean([np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(a, b)]) < 3.0
    # the CLI can make a bundle too, and the colorizer reads it
    result = CliRunner().invoke(main, ["export", str(tiny_run), "--out", str(tmp_path / "b2"), "--quantize", "fp16"])
    assert result.exit_code == 0, result.output
    assert len(Colorizer.load(tmp_path / "b2", "cpu").colorize(img, samples=2)[0]) == 2


def test_metrics_by_hand():
    truth = np.zeros((2, 4, 4), np.float32)
    pred = np.zeros((3, 2, 4, 4), np.float32)
    pred[1, 0] = 0.3
    pred[1, 1] = 0.4                              # distance 0.5 everywhere
    np.testing.assert_allclose(ab_distance(pred, truth), [0.0, 0.5, 0.0], atol=1e-6)
    assert abs(diversity(pred) - (0.5 + 0.0 + 0.5) / 3) < 1e-6
    grey = np.full((8, 8, 3), 100, np.uint8)
    assert colourfulness(grey) == 0.0
    assert colourfulness(synthetic_photo(np.random.default_rng(1))) > 10


def test_evaluate_cli_json(tiny_run, synthetic_dataset, tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(synthetic_dataset), "--model", str(tiny_run), "--device",
                                       "cpu", "--no-bf16", "--limit", "6", "--json", "--sheet",
                                       str(tmp_path / "sheet.png")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 6 and report["samples"] == 8
    # a run folder has its colour encoder: the CVAE oracle comes with it
    assert set(report["methods"]) == {"mdn", "top1", "cvae_normal", "oracle", "grey"}
    mdn = report["methods"]["mdn"]
    assert mdn["best"] <= mdn["top1"] + 1e-9 and mdn["best"] <= mdn["mean"] + 1e-9
    assert report["methods"]["grey"]["diversity"] == 0.0
    assert (tmp_path / "sheet.png").is_file()


def test_evaluate_reports_vividness_and_the_decoders_best(tiny_run, synthetic_dataset):
    result = CliRunner().invoke(main, ["evaluate", str(synthetic_dataset), "--model", str(tiny_run), "--device",
                                       "cpu", "--no-bf16", "--limit", "4", "--json", "--fit-steps", "30"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    top, grey, fitted = (report["methods"][k] for k in ("top1", "grey", "fitted"))
    # sample 1 against the truth, from the same numbers the table shows
    assert report["sample1_colourfulness_vs_truth"] == pytest.approx(top["colourfulness"] / report["truth_colourfulness"])
    assert report["sample1_delta_cf"] == pytest.approx(report["truth_colourfulness"] - top["colourfulness"])
    assert 0.0 <= report["sample1_near_grey"] <= 1.0 and grey["near_grey"] == 1.0   # ab = 0 is grey
    assert fitted["best"] == fitted["top1"] and fitted["diversity"] == 0.0     # one fitted z per photo
    table = CliRunner().invoke(main, ["evaluate", str(synthetic_dataset), "--model", str(tiny_run), "--device", "cpu",
                                      "--limit", "2", "--fit-steps", "2"])
    assert table.exit_code == 0 and "near-grey" in table.output and "z fitted to the truth" in table.output


def test_fitted_latents_never_end_worse_than_they_start(tiny_run):
    from colorize_cli.training.evaluate import ab_distance, fit_latents

    colorizer = Colorizer.load(tiny_run, "cpu", bf16=False)
    rng = np.random.default_rng(3)
    l64 = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    truth = rng.uniform(-0.3, 0.3, (3, 2, 64, 64)).astype(np.float32)
    start = fit_latents(colorizer, l64, truth, 0)        # z = 0's decoding
    fitted = fit_latents(colorizer, l64, truth, 20)
    for s0, s1, t in zip(start, fitted, truth):
        assert ab_distance(s1, t)[0] <= ab_distance(s0, t)[0]   # each photo keeps its best iterate
    assert np.mean([ab_distance(s1, t)[0] for s1, t in zip(fitted, truth)]) < \
        np.mean([ab_distance(s0, t)[0] for s0, t in zip(start, truth)])


def test_help_does_not_import_torch():
    code = "import sys; from colorize_cli.cli import main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"
