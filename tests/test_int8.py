"""int8 VGG + MDN and the decoder (--int8): the pooling, the decoder's folding, the calibration file,
closeness to fp32, the CLI."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import LFW_SPLITS, SHARED, require

from colorize_cli.cli import main
from colorize_cli.model.colorizer import Colorizer
from colorize_cli.model.int8 import (
    CALIBRATION_FILE,
    Int8Calibration,
    Int8Error,
    Int8Mixture,
    _pool_u8,
    conv_chain,
    fold_batchnorm,
    int8_supported,
)
from colorize_cli.model.int8_decoder import Int8Decoder, _folded_encoder, _folded_float, decoder_ranges, foldable
from colorize_cli.model.networks import CVAEConfig, InferenceCVAE
from colorize_cli.training.calibrate import calibrate_photos

pytestmark = pytest.mark.skipif(not int8_supported(), reason="no oneDNN int8 convolutions in this torch")


def test_pool_matches_max_pool():
    x = torch.randint(0, 256, (3, 5, 8, 6), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    pooled = _pool_u8(x)
    assert pooled.shape == (3, 5, 4, 3)
    assert torch.equal(pooled, F.max_pool2d(x.float(), 2).to(torch.uint8))


def test_fold_batchnorm_is_exact_in_eval():
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(4, 6, 5, padding=2), torch.nn.BatchNorm2d(6).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 4, 9, 9)
    w, b = fold_batchnorm(conv, bn)
    torch.testing.assert_close(F.conv2d(x, w, b, padding=2), bn(conv(x)), atol=1e-5, rtol=1e-5)


def _random_decoder(seed: int, negative_scale: bool = False) -> InferenceCVAE:
    """An InferenceCVAE with BatchNorm statistics far from the identity, float64, eval."""
    torch.manual_seed(seed)
    cvae = InferenceCVAE(CVAEConfig()).double().eval()
    for m in cvae.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.2, 3)
            m.weight.data.uniform_(0.3, 2)
            m.bias.data.uniform_(-1, 1)
    if negative_scale:
        cvae.decoder.bn3.weight.data[5] = -0.5
    return cvae


def test_decoder_folding_is_exact_in_fp64():
    # BN(ReLU(h)) = ReLU(g h) + beta and beta carried through the upsampling into a fixed map of the next
    # convolution (zero padding: it differs at the borders): the same function, to float64 rounding
    cvae = _random_decoder(0)
    z = torch.randn(2, 3, 64, dtype=torch.float64)
    grey = torch.rand(2, 1, 64, 64, dtype=torch.float64) * 2 - 1
    features = cvae.cond_encoder(grey)
    exact = cvae.decoder.forward_samples(z, *features)
    folded = _folded_float(cvae, z, grey)
    assert folded.shape == exact.shape == (6, 2, 64, 64)
    assert (folded - exact).abs().max() < 1e-12
    # the condition encoder folded the same way: its features are r + beta
    for mine, theirs in zip(_folded_encoder(cvae, grey), features, strict=True):
        assert (mine - theirs).abs().max() < 1e-12 * theirs.abs().max()
    assert foldable(cvae.decoder) and foldable(cvae.decoder, cvae)
    # a negative BatchNorm scale does not fold: no int8 decoder, and calibration leaves the decoder float
    bad = _random_decoder(0, negative_scale=True)
    assert not foldable(bad.decoder)
    with pytest.raises(Int8Error, match="do not fold"):
        Int8Decoder(bad.float(), (1.0, 1.0, 1.0))
    # the same for the condition encoder: its ranges are left out, so it stays float
    bad_encoder = _random_decoder(0)
    bad_encoder.cond_encoder.bn2.weight.data[3] = -0.5
    assert foldable(bad_encoder.decoder) and not foldable(bad_encoder.decoder, bad_encoder)
    assert len(decoder_ranges(bad_encoder, z, grey)) == 3 and len(decoder_ranges(cvae, z, grey)) == 6
    with pytest.raises(Int8Error, match="do not fold"):
        Int8Decoder(bad_encoder.float(), (1.0,) * 6)
    assert Int8Decoder(bad_encoder.float(), (1.0,) * 3).encoder is None


def test_calibration_file_round_trip_and_errors(tmp_path):
    cal = Int8Calibration((1.5, 2.0, 300.0), 99.9, 12, (4.0, 5.0, 6.0))
    path = cal.save(tmp_path / CALIBRATION_FILE)
    assert Int8Calibration.load(path) == cal
    # a file from before the decoder had ranges: the decoder stays float
    old = {k: v for k, v in cal.to_json().items() if k != "decoder_ranges"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert Int8Calibration.load(tmp_path / "old.json").decoder_ranges == ()
    (tmp_path / "dec.json").write_text(json.dumps({**cal.to_json(), "decoder_ranges": [1.0, "x"]}))
    with pytest.raises(Int8Error, match="decoder_ranges"):
        Int8Calibration.load(tmp_path / "dec.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(Int8Error, match="bad.json"):
        Int8Calibration.load(tmp_path / "bad.json")
    (tmp_path / "neg.json").write_text(json.dumps({**cal.to_json(), "ranges": [1.0, -2.0]}))
    with pytest.raises(Int8Error, match="positive"):
        Int8Calibration.load(tmp_path / "neg.json")
    (tmp_path / "other.json").write_text(json.dumps({"ranges": [1.0]}))
    with pytest.raises(Int8Error, match="not an int8 calibration"):
        Int8Calibration.load(tmp_path / "other.json")


def _mixtures(colorizer: Colorizer, calibration: Int8Calibration, l224: np.ndarray):
    grey = colorizer._vgg_grey[torch.from_numpy(l224).long()]
    exact = colorizer._mixture_eager(grey)
    return exact, Int8Mixture(colorizer.vgg, colorizer.mdn, calibration)(grey)


def test_int8_close_to_fp32_on_a_trained_run(tiny_run, synthetic_dataset):
    colorizer = Colorizer.load(tiny_run, "cpu", bf16=False, int8=False)
    paths = sorted(synthetic_dataset.rglob("*.jpg"))
    calibration, skipped = calibrate_photos(colorizer.vgg, colorizer.mdn, paths, batch_size=8)
    assert not skipped and calibration.images == len(paths)
    assert len(calibration.ranges) == sum(1 for s in conv_chain(colorizer.vgg, colorizer.mdn) if s != "pool") == 17
    assert calibration.decoder_ranges == ()     # no CVAE given: the decoder stays float
    with_decoder, _ = calibrate_photos(colorizer.vgg, colorizer.mdn, paths, batch_size=8, cvae=colorizer.cvae)
    # the decoder's 3 ranges, then the condition encoder's 3
    assert with_decoder.ranges == calibration.ranges and len(with_decoder.decoder_ranges) == 6
    import cv2

    from colorize_cli.model.colorizer import prepare

    l224 = np.stack([prepare(cv2.imread(str(p))).l224 for p in paths[:6]])
    (means, weights), (means8, weights8) = _mixtures(colorizer, calibration, l224)
    assert means8.shape == means.shape and weights8.shape == weights.shape
    # within a few percent of the means' spread: quantization noise, not a wrong scale or layout
    assert (means8 - means).abs().mean() < 0.05 * means.std()
    assert (weights8 - weights).abs().max() < 0.05
    with pytest.raises(Int8Error, match="another model"):
        Int8Mixture(colorizer.vgg, colorizer.mdn, Int8Calibration((1.0,) * 5))
    with pytest.raises(Int8Error, match="another model"):
        Int8Decoder(colorizer.cvae, (1.0,) * 4)
    # the decoder in int8 against float, on the same latents: quantization noise, not a wrong scale or layout
    z = means[:, :4]
    l64 = np.stack([prepare(cv2.imread(str(p))).l64 for p in paths[:6]])
    grey = colorizer._cvae_grey[torch.from_numpy(l64).long()][:, None]
    exact = colorizer._decode_eager(z, grey)
    for ranges in (with_decoder.decoder_ranges, with_decoder.decoder_ranges[:3]):   # an older file: 3
        quick = Int8Decoder(colorizer.cvae, ranges)
        assert (quick.encoder is None) == (len(ranges) == 3)
        out = quick(z, grey, bf16=False)
        assert out.shape == exact.shape == (24, 2, 64, 64)
        assert (out - exact).abs().mean() < 0.05 * exact.std()


@pytest.mark.parametrize("name", ["general", "faces"])
def test_bundled_model_int8_close_to_fp32_on_real_photos(shared, name):
    from colorize_cli.model.registry import bundled_path

    require(LFW_SPLITS / "test.txt")
    bundle = bundled_path(name)
    if bundle is None or not (bundle / CALIBRATION_FILE).is_file():
        pytest.skip(f"no bundled model {name} with an int8 calibration")
    import cv2

    from colorize_cli.model.colorizer import prepare

    rels = (LFW_SPLITS / "test.txt").read_text().split()[:8]
    imgs = [cv2.imread(str(SHARED / "data" / r)) for r in rels]
    preps = [prepare(img) for img in imgs]
    l64, l224 = np.stack([p.l64 for p in preps]), np.stack([p.l224 for p in preps])
    exact = Colorizer.load(name, "cpu", bf16=False, int8=False)
    fast = Colorizer.load(name, "cpu", bf16=False, int8=True)
    a = np.stack([p.ab for p in exact.predict(l64, l224, 8)])
    b = np.stack([p.ab for p in fast.predict(l64, l224, 8)])
    diff = np.abs(a - b)
    # faces on an AMX CPU: over 64 LFW test photos x 8 samples, mean 0.0026 against bf16's 0.0009 (ab in
    # [-1, 1]). Without VNNI/AMX, oneDNN's u8 x s8 path sums pairs of products in saturating int16 first:
    # faces 0.013 and general 0.023 on an AVX2-only CPU, where `colorize evaluate` measured the loss
    # (benchmarks/RESULTS.md): why int8 is a default only where those units are
    from colorize_cli.model.device import cpu_has_fast_int8

    bound = 0.01 if name == "faces" and cpu_has_fast_int8() else 0.05
    assert diff.mean() < bound, diff.mean()
    # the CVAE's share: int8 VGG + MDN with the CVAE float against int8 throughout, the same mixture. On a
    # VNNI CPU without AMX, over these 8 photos x 8 samples, the int8 CVAE's mean distance from the fp32 one
    # was 0.0005 (general) and 0.0006 (faces); with the condition encoder float 0.0002 and 0.0004 (and the
    # bf16 decoder's 0.0004): 0.005 leaves room for oneDNN's other kernels
    calibration = Int8Calibration.load(bundle / CALIBRATION_FILE)
    if not calibration.decoder_ranges:
        pytest.skip(f"{name}'s int8.json has no decoder ranges")
    from colorize_cli.model.device import cpu_has_amx

    # by default where it pays (CPUs without AMX); asked for, anywhere
    assert (fast.int8_decoder is not None) == (not cpu_has_amx()) and exact.int8_decoder is None
    assert Colorizer.load(name, "cpu", bf16=False, int8=True, int8_decoder=True).int8_decoder is not None
    means, weights = fast.mixture(l224)
    z, _ = fast.choose_latents(means, weights, 8, [])
    grey = fast._cvae_grey[torch.from_numpy(l64).long()][:, None]
    float_decoder = fast._decode_eager(z, grey)
    int8_decoder = Int8Decoder(fast.cvae, calibration.decoder_ranges)(z, grey, bf16=False)
    assert (int8_decoder - float_decoder).abs().mean() < (0.005 if cpu_has_fast_int8() else 0.05)


def test_cli_calibrate_then_int8(tmp_path, tiny_run, synthetic_dataset):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    photos = tmp_path / "photos"
    shutil.copytree(synthetic_dataset / "person_0", photos)
    runner = CliRunner()
    # without a calibration --int8 is a usage error naming the remedy
    result = runner.invoke(main, [str(photos), "--model", str(run), "--device", "cpu", "--int8", "--quiet"])
    assert result.exit_code == 2
    assert "colorize calibrate" in result.output
    # the photos decoded while the model loaded keep no claim (engine/batch.py)
    assert not [p.name for p in photos.iterdir() if p.name.startswith(".")]
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    result = runner.invoke(main, ["calibrate", str(photos), "--model", str(run), "--images", "8", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.output
    assert "warning: ranges from 4 photos" in result.output
    cal = Int8Calibration.load(run / CALIBRATION_FILE)
    assert cal.images == 4 and len(cal.ranges) == 17 and len(cal.decoder_ranges) == 6
    result = runner.invoke(main, [str(photos), "--model", str(run), "--device", "cpu", "--int8", "--no-bf16",
                                  "--json", "--samples", "3"])
    assert result.exit_code == 1   # broken.jpg
    lines = [json.loads(x) for x in result.output.splitlines() if x.startswith("{")]
    assert sorted(x["status"] for x in lines) == ["done"] * 4 + ["failed"]
    assert all((photos / f"img_{i:02d}.colorized.png").is_file() for i in (0, 4, 8, 12))
    # a bundle made from the run takes its calibration along
    from colorize_cli.model.bundle import export_bundle

    bundle = export_bundle(run, tmp_path / "bundle")
    assert Int8Calibration.load(bundle / CALIBRATION_FILE) == cal
    assert Colorizer.load(bundle, "cpu", int8=True).int8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_int8_on_cuda_is_a_usage_error(tiny_run, synthetic_dataset, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    Int8Calibration((1.0,) * 17).save(run / CALIBRATION_FILE)
    photos = tmp_path / "photos"
    shutil.copytree(synthetic_dataset / "person_0", photos)
    result = CliRunner().invoke(main, [str(photos), "--model", str(run), "--device", "cuda", "--int8"])
    assert result.exit_code == 2
    assert "for CPUs" in result.output
