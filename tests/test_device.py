"""Device handling; the CUDA path itself only where a GPU is present (skipped on CI)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import synthetic_photo

from colorize_cli.cli import main
from colorize_cli.model.colorizer import Colorizer
from colorize_cli.model.device import DeviceError, resolve_device

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_device_specs():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "mps0"):
        with pytest.raises(DeviceError):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA"):
            resolve_device("cuda")


def test_unavailable_device_is_a_usage_error(tmp_path, tiny_run):
    cv2.imwrite(str(tmp_path / "a.jpg"), synthetic_photo(np.random.default_rng(0)))
    result = CliRunner().invoke(main, [str(tmp_path), "--model", str(tiny_run), "--device", "cuda:7"])
    assert result.exit_code == 2
    assert "cuda:7" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.glob("*.colorized*"))


@cuda
def test_cuda_matches_cpu(tiny_run):
    rng = np.random.default_rng(0)
    l64 = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    l224 = rng.integers(0, 256, (3, 224, 224), dtype=np.uint8)
    on_cpu = Colorizer.load(tiny_run, "cpu").predict(l64, l224, 10, [1, 2, 3])
    on_gpu = Colorizer.load(tiny_run, "cuda").predict(l64, l224, 10, [1, 2, 3])
    for a, b in zip(on_cpu, on_gpu):
        # TF32 convolutions on the GPU: close, not bit-equal
        assert np.abs(a.ab - b.ab).max() < 2e-2
        np.testing.assert_allclose(a.weights, b.weights, atol=1e-3)


def test_upload_stacks_pads_and_keeps_dtype():
    from colorize_cli.model.device import upload

    rng = np.random.default_rng(0)
    cpu = torch.device("cpu")
    images = [rng.integers(0, 256, (5, 7), dtype=np.uint8) for _ in range(3)]
    padded = upload(images, cpu, 5)
    assert padded.dtype == torch.uint8 and tuple(padded.shape) == (5, 5, 7)
    np.testing.assert_array_equal(padded[:3].numpy(), np.stack(images))
    assert not padded[3:].any()
    np.testing.assert_array_equal(upload(np.stack(images), cpu).numpy(), np.stack(images))
    floats = [rng.random((2, 3), dtype=np.float32) for _ in range(2)]
    assert upload(floats, cpu).dtype == torch.float32


def test_inputs_looked_up_on_the_device_equal_the_host_mappings(tiny_run):
    # the batch goes up as uint8 and is mapped by 256-entry tables there: bit for bit the host's mappings
    from colorize_cli.model.color import grey_from_l, normalize_u8

    rng = np.random.default_rng(1)
    l64 = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    l224 = rng.integers(0, 256, (3, 224, 224), dtype=np.uint8)
    colorizer = Colorizer.load(tiny_run, "cpu")
    with torch.no_grad():
        means, weights = colorizer.mixture(list(l224))
        want_means, want_weights = colorizer._mixture_eager(torch.from_numpy(grey_from_l(l224)))
        assert torch.equal(means, want_means) and torch.equal(weights, want_weights)
        # padding rows are blank images (compared at the same batch size: other sizes may get other kernels)
        padded, _ = colorizer.mixture(l224, rows=4)
        with_blank = np.concatenate([l224, np.zeros((1, 224, 224), np.uint8)])
        assert torch.equal(padded, colorizer._mixture_eager(torch.from_numpy(grey_from_l(with_blank)))[0])
        z = means[:, :4]
        ab = colorizer.decode(z, list(l64))
        want_ab = colorizer._decode_eager(z, torch.from_numpy(normalize_u8(l64))[:, None])
        assert torch.equal(ab, want_ab.reshape(ab.shape))


def test_cuda_graphs_need_cuda(tiny_run):
    from colorize_cli.model.graphs import graph_batch

    assert [graph_batch(n) for n in (1, 2, 3, 64, 65, 128, 129)] == [1, 2, 4, 64, 128, 128, 256]
    assert not Colorizer.load(tiny_run, "cpu").cuda_graphs
    with pytest.raises(ValueError, match="CUDA"):
        Colorizer.load(tiny_run, "cpu", cuda_graphs=True)


@cuda
@pytest.mark.parametrize("bf16", [False, True])
def test_cuda_graphs_equal_eager(tiny_run, bf16):
    # batches of 6, then 3 (padded to 4 in a second graph), then 6 again: the replays equal eager runs of the
    # same shape exactly; the padded batch may get other convolution algorithms (close, not bit-equal)
    rng = np.random.default_rng(0)
    l64 = rng.integers(0, 256, (6, 64, 64), dtype=np.uint8)
    l224 = rng.integers(0, 256, (6, 224, 224), dtype=np.uint8)
    eager = Colorizer.load(tiny_run, "cuda", bf16, cuda_graphs=False)
    graphed = Colorizer.load(tiny_run, "cuda", bf16)
    assert graphed.cuda_graphs
    for count in (6, 3, 6):
        want = eager.predict(l64[:count], l224[:count], 8)
        got = graphed.predict(l64[:count], l224[:count], 8)
        assert len(got) == count
        for a, b in zip(want, got):
            if count == 6:
                np.testing.assert_array_equal(a.ab, b.ab)
                np.testing.assert_array_equal(a.weights, b.weights)
            else:
                assert np.abs(a.ab - b.ab).max() < 2e-2
                np.testing.assert_allclose(a.weights, b.weights, atol=1e-3)
    assert len(graphed._mixture_net.graphs) == 2 and len(graphed._decode_net.graphs) == 2


@cuda
def test_cli_on_cuda(tmp_path, tiny_run):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"p{i}.jpg"), synthetic_photo(np.random.default_rng(i)))
    result = CliRunner().invoke(main, [str(tmp_path), "--model", str(tiny_run), "--device", "cuda",
                                       "--samples", "4", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.output.splitlines() if x.startswith("{")]
    assert [x["status"] for x in lines] == ["done"] * 3
    assert all(cv2.imread(str(tmp_path / f"p{i}.colorized.png")) is not None for i in range(3))


@cuda
def test_cuda_sheets_merged_on_the_gpu_equal_the_cpu_merge(tmp_path, tiny_run):
    # --merge auto on CUDA merges on the GPU (pinned copies, one batch in flight); --merge cpu in the threads
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"p{i}.jpg"), synthetic_photo(np.random.default_rng(i), 70 + 10 * i, 90))
    outs = {}
    for merge in ("auto", "cpu"):
        out = tmp_path / merge
        result = CliRunner().invoke(main, [str(tmp_path), "--model", str(tiny_run), "--device", "cuda", "--no-bf16",
                                           "--batch-size", "2", "--separate", "-o", str(out), "--merge", merge])
        assert result.exit_code == 0, result.output
        outs[merge] = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert outs["auto"] == outs["cpu"] and len(outs["cpu"]) == 5 * 9
    for rel in outs["cpu"]:
        gpu = cv2.imread(str(tmp_path / "auto" / rel)).astype(np.int16)
        cpu = cv2.imread(str(tmp_path / "cpu" / rel))
        # the same model run twice on the GPU (cuDNN may pick other algorithms): ab within float noise
        diff = np.abs(gpu - cpu)
        assert diff.max() <= 3 and diff.mean() < 0.05, rel


def test_compiled_networks_pad_batches_and_equal_eager(tiny_run):
    # torch.compile's "eager" backend: dynamo's graph capture without code generation (inductor's C++ build
    # takes over a minute on CI's CPU); the padding and the compiled call path are the same
    rng = np.random.default_rng(0)
    l64 = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    l224 = rng.integers(0, 256, (3, 224, 224), dtype=np.uint8)
    plain = Colorizer.load(tiny_run, "cpu").predict(l64, l224, 10, [1, 2, 3])
    compiled = Colorizer.load(tiny_run, "cpu", compile_backend="eager")
    full = compiled.predict(l64, l224, 10, [1, 2, 3])
    short = compiled.predict(l64[:2], l224[:2], 10, [1, 2])   # padded to 3 with blank images
    assert len(short) == 2 and short[0].ab.shape == (10, 2, 64, 64)
    for a, b in zip(plain, full):
        np.testing.assert_array_equal(a.ab, b.ab)
        np.testing.assert_array_equal(a.weights, b.weights)
    for a, b in zip(plain, short):
        np.testing.assert_allclose(a.ab, b.ab, atol=1e-5)


def test_cli_compile_flag(tmp_path, tiny_run, monkeypatch):
    from colorize_cli.engine import runner

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"p{i}.jpg"), synthetic_photo(np.random.default_rng(i)))
    args = [str(tmp_path), "--model", str(tiny_run), "--device", "cpu", "--samples", "4", "--batch-size", "2"]
    plain = CliRunner().invoke(main, args + ["-o", str(tmp_path / "plain")])
    monkeypatch.setattr(runner, "COMPILE_BACKEND", "eager")
    compiled = CliRunner().invoke(main, args + ["-o", str(tmp_path / "compiled"), "--compile"])
    assert plain.exit_code == 0 and compiled.exit_code == 0, compiled.output
    assert "compiled in" in compiled.output
    for i in range(3):
        assert (tmp_path / "plain" / f"p{i}.colorized.png").read_bytes() == \
            (tmp_path / "compiled" / f"p{i}.colorized.png").read_bytes()
    # a compiler that cannot run: one line, a usage error, nothing written
    monkeypatch.setattr(runner, "COMPILE_BACKEND", "no-such-backend")
    failed = CliRunner().invoke(main, args + ["-o", str(tmp_path / "failed"), "--compile"])
    assert failed.exit_code == 2 and "no-such-backend" in failed.output and "Traceback" not in failed.output
    assert not (tmp_path / "failed").exists() or not list((tmp_path / "failed").iterdir())


def test_device_sheet_memory_budgets_keep_order_and_outputs(tmp_path, tiny_run, monkeypatch):
    # budgets of one byte: every batch closes after its first GPU-merged photo and every write is awaited
    from colorize_cli.engine import batch
    from colorize_cli.engine.batch import colorize_items
    from colorize_cli.engine.plan import BatchOptions, discover, plan_outputs

    for i in range(5):
        cv2.imwrite(str(tmp_path / f"p{i}.jpg"), synthetic_photo(np.random.default_rng(i), 60 + 7 * i, 80))
    (tmp_path / "p2b.jpg").write_bytes(b"not a picture")
    colorizer = Colorizer.load(tiny_run, "cpu")
    runs = {}
    for name, budget in (("free", None), ("tight", 1)):
        if budget is not None:
            monkeypatch.setattr(batch, "DEVICE_SHEET_BATCH_BYTES", budget)
            monkeypatch.setattr(batch, "HELD_SHEET_BYTES", budget)
        opts = BatchOptions(samples=3, output_dir=tmp_path / name, device_sheets=True, batch_size=4)
        found = discover([str(tmp_path)], recursive=False)
        plan_outputs(found.items, opts)
        runs[name] = list(colorize_items(found.items, colorizer, opts))
    for name, results in runs.items():
        assert [Path(r.input).name for r in results] == ["p0.jpg", "p1.jpg", "p2.jpg", "p2b.jpg", "p3.jpg", "p4.jpg"]
        assert [r.status for r in results] == ["done"] * 3 + ["failed"] + ["done"] * 2
    for i in range(5):
        free = cv2.imread(str(tmp_path / "free" / f"p{i}.colorized.png")).astype(np.int16)
        tight = cv2.imread(str(tmp_path / "tight" / f"p{i}.colorized.png"))
        # other batch sizes: oneDNN may block the convolutions differently (float rounding)
        assert free.shape == tight.shape and np.abs(free - tight).max() <= 2
