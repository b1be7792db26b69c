"""Colorizing speed against the seed-style reference, in one run, printing one table.

    python benchmarks/bench_inference.py [--device cpu|cuda] [--images 64] [--e2e-images 512] [--repeat 3]
                                         [--passes 1] [--batch-size N] [--workers N] [--model PATH] [--scans]
                                         [--compile] [--int8]

Rows (all with 8 samples per image):
  (a) seed-style reference: the tutorial's inference loop, fp32 -- VGG + MDN per batch of 32, then per image
      a batch of 32 full CVAE passes (colour encoder, condition encoder, decoder) with the 8 means tiled 4x;
  (b) colorize model-only: Colorizer.predict on batches (condition encoder once per image, decoder per
      sample), fp32 and bf16, with the bf16-vs-fp32 difference of the ab outputs; on CUDA (CUDA graphs, the
      default) also the model on the device alone (inputs uploaded, latents and ab left on the GPU), the
      networks launched op by op (--no-cuda-graphs), and peak GPU memory (these rows with --no-int8); with
      --int8 the int8 VGG + MDN with the CVAE float, with the decoder in int8 but its condition encoder
      float, and with both in int8 (the default only on CPUs without AMX), in bf16 where the CPU has bf16
      units;
  (c) colorize end to end, file to file: the `colorize` command in a subprocess on a folder of LFW photos
      (and with --scans a folder of 2-12 megapixel scans): the rate over the whole wall time including
      start-up and model load, the steady rate (from the arrival times of its --json lines: the results
      after the first quarter, over the time they took), and peak RSS of that process (on CUDA also its
      peak GPU memory from nvidia-smi, and where its CPU time went: main thread, I/O threads, others). Each
      end-to-end row runs --repeat times, the runs of the rows interleaved; the median is shown, the range
      in the notes. On the CPU also jpg sheets with --cpu-streams 1 (one batch at a time on all the cores,
      against the default's two single-threaded streams) and, with --int8, png and jpg sheets with --int8 and
      jpg sheets with --int8 and the CVAE float, and with its condition encoder float (copies of the model
      whose int8.json has none, or only the decoder's, of the CVAE's ranges). The settings column says what
      the defaults are.
Images: the first N of ../shared/data/lfw-splits/test.txt when ../shared is beside the repo (or where
COLORIZE_SHARED points), repeated past its 1,000, else synthetic.
The machine this was written on is shared and noisy (the same run varies up to 2x): compare rows of one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import cv2
import numpy as np
import torch
from bench_images import REPO, lfw_images, proc_mib, scan


def _scan_images(folder: Path) -> list[Path]:
    """Four scans of 2, 4, 8 and 12 megapixels."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for mp in (2, 4, 8, 12):
        out.append(folder / f"scan_{mp:02d}mp.jpg")
        cv2.imwrite(str(out[-1]), scan(mp), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return out


def _prepared(paths):
    from colorize_cli.model.colorizer import prepare

    preps = [prepare(cv2.imread(str(p))) for p in paths]
    return np.stack([p.l64 for p in preps]), np.stack([p.l224 for p in preps])


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def seed_style(colorizer, l64, l224, device, batch=32) -> float:
    """The tutorial's loop, fp32: a full CVAE (with its colour encoder) on 32 tiled copies per image."""
    from colorize_cli.model.color import normalize_u8
    from colorize_cli.model.networks import CVAE

    cvae = CVAE(colorizer.cvae.cfg).to(device).eval()
    cvae.cond_encoder.load_state_dict(colorizer.cvae.cond_encoder.state_dict())
    cvae.decoder.load_state_dict(colorizer.cvae.decoder.state_dict())
    bf16, colorizer.bf16 = colorizer.bf16, False
    _sync(device)
    t0 = time.perf_counter()
    for start in range(0, len(l64), batch):
        means, weights = colorizer.mixture(l224[start:start + batch])
        for j in range(len(means)):
            grey = torch.from_numpy(normalize_u8(l64[start + j])).to(device)[None, None].repeat(batch, 1, 1, 1)
            color = torch.zeros(batch, 2, 64, 64, device=device)   # the tutorial feeds the batch's colour
            z = means[j].repeat(batch // means.shape[1], 1)
            cvae(color, grey, z)
    _sync(device)
    colorizer.bf16 = bf16
    return len(l64) / (time.perf_counter() - t0)


def _reset_gpu_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _gpu_peak_note(device) -> str:
    # reserved as well as allocated: a CUDA graph's temporaries sit in its pool, reserved but not "allocated"
    if device.type != "cuda":
        return ""
    return (f"; GPU peak {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB allocated, "
            f"{torch.cuda.max_memory_reserved(device) / 2**20:.0f} MiB reserved")


def _ab_difference(a: np.ndarray, b: np.ndarray) -> str:
    diff = np.abs(a - b)
    return f"mean {diff.mean():.4f}, max {diff.max():.4f}"


def _with_decoder_ranges(model: str | None, folder: Path, keep: int) -> Path:
    """A copy of the model whose int8.json keeps the first ``keep`` of its CVAE ranges: 0, --int8 with the
    CVAE float; 3, with the condition encoder float (the decoder's 3 come first)."""
    from colorize_cli.model.int8 import CALIBRATION_FILE, Int8Calibration
    from colorize_cli.model.registry import resolve_model

    source = resolve_model(model)
    target = folder / source.name
    shutil.copytree(source, target)
    if (source.parent / "vgg.pt").is_file():   # a bundled model's manifest names the shared ../vgg.pt
        shutil.copy(source.parent / "vgg.pt", folder / "vgg.pt")
    cal = Int8Calibration.load(target / CALIBRATION_FILE)
    Int8Calibration(cal.ranges, cal.percentile, cal.images, cal.decoder_ranges[:keep]).save(target / CALIBRATION_FILE)
    return target


def model_only(colorizer, l64, l224, device, bf16: bool, batch: int, passes: int = 1) -> tuple[float, np.ndarray]:
    """Colorizer.predict over the images ``passes`` times (outputs copied to the host, as the CLI does)."""
    colorizer.bf16 = bf16
    colorizer.predict(l64[:batch], l224[:batch], 8)   # warm-up (and cuDNN's algorithm choice)
    _sync(device)
    _reset_gpu_peak(device)
    t0 = time.perf_counter()
    for _ in range(passes):
        outs = []
        for start in range(0, len(l64), batch):
            outs += [p.ab for p in colorizer.predict(l64[start:start + batch], l224[start:start + batch], 8)]
    _sync(device)
    return passes * len(l64) / (time.perf_counter() - t0), np.stack(outs)


@torch.no_grad()
def model_on_device(colorizer, l64, l224, device, batch: int, passes: int) -> float:
    """The networks alone: VGG + MDN + choice of latents + CVAE decoder, results left on the device."""
    colorizer.bf16 = True

    def run(lo: int, hi: int):
        means, weights = colorizer.mixture(l224[lo:hi])
        z, _ = colorizer.choose_latents(means, weights, 8, [])
        return colorizer.decode(z, l64[lo:hi])

    run(0, batch)
    _sync(device)
    _reset_gpu_peak(device)
    t0 = time.perf_counter()
    for _ in range(passes):
        for start in range(0, len(l64), batch):
            run(start, start + batch)
    _sync(device)
    return passes * len(l64) / (time.perf_counter() - t0)


@dataclass
class EndToEnd:
    wall: float           # seconds, start to exit
    steady: float         # img/s over the results after the first quarter
    peak_mib: float       # peak RSS
    gpu_mib: float = 0.0  # peak GPU memory of the process (nvidia-smi), CUDA only
    cpu: dict | None = None   # CPU seconds by thread kind: main, io, other


def _gpu_mib(pid: int) -> float:
    """GPU memory a process holds, from nvidia-smi (0 if none or no nvidia-smi)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0.0
    for line in out.splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return float(parts[1])
    return 0.0


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of a process, by thread id, named main / io / other."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        kind = "main" if task.name == str(pid) else "io" if name.startswith("colorize-io") else "other"
        out[task.name] = (kind, (int(fields[11]) + int(fields[12])) / ticks)   # utime + stime
    return out


def end_to_end(folder: Path, out: Path, model: str | None, device: str, extra: list[str]) -> EndToEnd:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "colorize_cli", str(folder), "--output", str(out), "--samples", "8",
           "--device", device, "--json", *extra]
    if model:
        cmd += ["--model", model]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE)
    # peak RSS from /proc/PID/status VmHWM (the high-water mark of the process after exec). Not the child's
    # ru_maxrss: on Linux that starts from this benchmark's own RSS at fork time, models and all.
    peak, gpu, threads = [0.0], [0.0], {}
    cuda = device.startswith("cuda")

    def watch() -> None:
        last_gpu = 0.0
        while proc.poll() is None:
            peak[0] = max(peak[0], proc_mib(proc.pid, "VmHWM"))
            threads.update(_thread_cpu(proc.pid))
            if cuda and time.perf_counter() - last_gpu > 0.5:
                gpu[0], last_gpu = max(gpu[0], _gpu_mib(proc.pid)), time.perf_counter()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    arrivals = [time.perf_counter() - t0 for _ in iter(proc.stdout.readline, b"")]   # one line per input
    proc.wait()
    watcher.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"colorize exited {proc.returncode}")
    q = max(1, len(arrivals) // 4)
    steady = (len(arrivals) - q) / max(arrivals[-1] - arrivals[q - 1], 1e-9) if len(arrivals) > q else float("nan")
    cpu = {"main": 0.0, "io": 0.0, "other": 0.0}
    for kind, seconds in threads.values():
        cpu[kind] += seconds
    return EndToEnd(wall, steady, peak[0], gpu[0], cpu)


def main() -> None:
    from colorize_cli.model.colorizer import Colorizer
    from colorize_cli.model.device import cpu_has_fast_bf16, resolve_device
    from colorize_cli.model.int8 import default_int8

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=64, help="LFW photos for (a) and (b)")
    ap.add_argument("--e2e-images", type=int, default=512, help="LFW photos for (c)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each end-to-end row")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 16 on CPU, 128 on CUDA")
    ap.add_argument("--passes", type=int, default=None, help="passes over the images in (b) (default 1, CUDA 20)")
    ap.add_argument("--workers", type=int, default=None, help="colorize --workers in (c) (default: its own)")
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--scans", action="store_true", help="also time a folder of 2-12 megapixel scans")
    ap.add_argument("--skip-seed", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time the networks under torch.compile (--compile)")
    ap.add_argument("--int8", action="store_true",
                    help="CPU: also time --int8 (VGG + MDN in int8; needs the model's int8.json)")
    ap.add_argument("--cuda-rows", default="--no-cuda-graphs,--merge cpu,--workers 8",
                    help="on CUDA, end-to-end rows with these options against the defaults (comma-separated)")
    args = ap.parse_args()
    from colorize_cli.engine.batch import default_batch_size

    device = resolve_device(args.device)
    args.batch_size = args.batch_size or default_batch_size(device.type)
    passes = args.passes or (20 if device.type == "cuda" else 1)
    # fp32 and bf16 rows (not int8, the default on CPUs with VNNI or AMX); on CUDA with its CUDA graphs
    colorizer = Colorizer.load(args.model, device, int8=False)
    # the reference and the "no CUDA graphs" row: the networks launched from Python, op by op
    eager = Colorizer.load(args.model, device, cuda_graphs=False) if device.type == "cuda" else colorizer
    tmp = Path(tempfile.mkdtemp(prefix="colorize-bench-"))
    try:
        paths = lfw_images(args.images, tmp / "lfw")
        l64, l224 = _prepared(paths)
        rows = []
        header = f"{'row':48} {'settings':26} {'img/s':>8} {'vs (a)':>7}  notes"

        def show(row: tuple) -> None:
            # each row as soon as it is measured (a run stopped at a time limit keeps them); the table at the end
            if not rows:
                print(header, flush=True)
            rows.append(row)
            name, settings, rate, notes = row
            print(f"{name:48} {settings:26} {rate:8.2f} {rate / seed_rate:6.1f}x  {notes}", flush=True)

        seed_rate = float("nan")
        setting = (f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                   else f"cpu, {torch.get_num_threads()} threads")
        if not args.skip_seed:
            seed_rate = seed_style(eager, l64, l224, device)
            show(("(a) seed-style reference, model-only", f"{setting}, fp32, batch 32", seed_rate, ""))
        fp32_rate, fp32_ab = model_only(colorizer, l64, l224, device, False, args.batch_size, passes)
        show(("(b) colorize model-only", f"{setting}, fp32, batch {args.batch_size}", fp32_rate,
              f"{passes} pass(es){_gpu_peak_note(device)}"))
        bf16_rate, bf16_ab = model_only(colorizer, l64, l224, device, True, args.batch_size, passes)
        show(("(b) colorize model-only", f"{setting}, bf16, batch {args.batch_size}", bf16_rate,
              f"|bf16-fp32| ab: {_ab_difference(bf16_ab, fp32_ab)}{_gpu_peak_note(device)}"))
        if device.type == "cuda":
            rate = model_on_device(colorizer, l64, l224, device, args.batch_size, passes)
            show(("(b) model-only, on the device alone", f"{setting}, bf16, batch {args.batch_size}", rate,
                  f"no host copies of the outputs{_gpu_peak_note(device)}"))
            rate, eager_ab = model_only(eager, l64, l224, device, True, args.batch_size, passes)
            show(("(b) colorize model-only, --no-cuda-graphs", f"{setting}, bf16, batch {args.batch_size}", rate,
                  f"|graphs-eager| ab: {_ab_difference(bf16_ab, eager_ab)}"))
        if args.compile:
            try:
                compiled = Colorizer.load(args.model, device, True, "inductor")
                took = compiled.warm_up(args.batch_size)
                rate, comp_ab = model_only(compiled, l64, l224, device, True, args.batch_size, passes)
                show(("(b) colorize model-only, --compile", f"{setting}, bf16, batch {args.batch_size}", rate,
                      f"compiled in {took:.0f} s; |compiled-eager| ab: {_ab_difference(comp_ab, bf16_ab)}"))
                if device.type == "cuda":
                    rate = model_on_device(compiled, l64, l224, device, args.batch_size, passes)
                    show(("(b) the same, on the device alone", f"{setting}, bf16, batch {args.batch_size}", rate, ""))
                del compiled
            except RuntimeError as err:   # a compiler that fails here is a finding, not the end of the table
                print(f"  --compile failed: {str(err).strip().splitlines()[0][:300]}", flush=True)
        use_bf16 = device.type == "cuda" or cpu_has_fast_bf16()
        mode = "bf16" if use_bf16 else "fp32"
        float_decoder = None
        if args.int8:
            float_decoder = _with_decoder_ranges(args.model, tmp / "float-decoder", 0)
            float_encoder = _with_decoder_ranges(args.model, tmp / "float-encoder", 3)
            for label, model, int8_decoder in (("CVAE float", args.model, False),
                                               ("condition encoder float", str(float_encoder), True),
                                               ("CVAE int8", args.model, True)):
                quantized = Colorizer.load(model, device, int8=True, int8_decoder=int8_decoder)
                rate, int8_ab = model_only(quantized, l64, l224, device, use_bf16, args.batch_size, passes)
                show((f"(b) colorize model-only, --int8, {label}", f"{setting}, int8 + {mode}, batch "
                      f"{args.batch_size}", rate, f"|int8-fp32| ab: {_ab_difference(int8_ab, fp32_ab)}"))
                del quantized
        if device.type == "cpu" and default_int8(device, args.model):
            mode = f"int8 + {mode}"   # what the defaults are on this CPU
        e2e_count = len(lfw_images(args.e2e_images, tmp / "lfw-e2e"))
        batch = ["--batch-size", str(args.batch_size)] + (["--workers", str(args.workers)] if args.workers else [])
        # name -> (folder, photos in it, extra colorize options)
        jobs = {f"{e2e_count} LFW jpgs -> png sheets": (tmp / "lfw-e2e", e2e_count, batch),
                f"{e2e_count} LFW jpgs -> jpg sheets": (tmp / "lfw-e2e", e2e_count, batch + ["--format", "jpg"])}
        if device.type == "cuda":   # each of the CUDA path's choices against the default
            for label, opts in (("--no-cuda-graphs", ["--no-cuda-graphs"]), ("--merge cpu", ["--merge", "cpu"]),
                                ("--workers 8", ["--workers", "8"])):
                if label in args.cuda_rows.split(","):
                    jobs[f"{e2e_count} LFW jpgs -> jpg sheets, {label}"] = (
                        tmp / "lfw-e2e", e2e_count, batch + ["--format", "jpg", *opts])
        if args.compile:
            jobs[f"{e2e_count} LFW jpgs -> jpg sheets, --compile"] = (
                tmp / "lfw-e2e", e2e_count, batch + ["--format", "jpg", "--compile"])
        if device.type == "cpu":   # the default's two CPU streams against one stream on both cores
            jobs[f"{e2e_count} LFW jpgs -> jpg sheets, --cpu-streams 1"] = (
                tmp / "lfw-e2e", e2e_count, batch + ["--format", "jpg", "--cpu-streams", "1"])
        if args.int8:
            for fmt in ("png", "jpg"):
                jobs[f"{e2e_count} LFW jpgs -> {fmt} sheets, --int8"] = (
                    tmp / "lfw-e2e", e2e_count, batch + ["--format", fmt, "--int8"])
            jobs[f"{e2e_count} LFW jpgs -> jpg sheets, --int8, CVAE float"] = (
                tmp / "lfw-e2e", e2e_count,
                batch + ["--format", "jpg", "--int8", "--model", str(float_decoder)])
            jobs[f"{e2e_count} LFW jpgs -> jpg sheets, --int8, condition encoder float"] = (
                tmp / "lfw-e2e", e2e_count,
                batch + ["--format", "jpg", "--int8", "--model", str(float_encoder)])
        if args.scans:
            jobs["4 scans 2-12 MP -> png sheets"] = (tmp / "scans", len(_scan_images(tmp / "scans")), [])
        runs: dict[str, list[EndToEnd]] = {name: [] for name in jobs}
        for i in range(args.repeat):
            for name, (folder, count, extra) in jobs.items():
                runs[name].append(end_to_end(folder, tmp / "out", args.model, args.device, extra))
                r = runs[name][-1]
                print(f"  run {i + 1}/{args.repeat} {name}: {count / r.wall:.2f} img/s incl. start-up, steady "
                      f"{r.steady:.2f}", flush=True)
        for name, results in runs.items():
            count = jobs[name][1]
            rates = sorted(count / r.wall for r in results)
            steady = sorted(r.steady for r in results)
            # results arrive a batch at a time: a steady rate needs many batches after the first quarter
            notes = (f"steady {median(steady):.2f} img/s ({steady[0]:.2f}-{steady[-1]:.2f}); "
                     if count >= 8 * args.batch_size else "")
            notes += (f"{len(results)} runs incl. start-up {rates[0]:.2f}-{rates[-1]:.2f} img/s, median wall "
                      f"{median(r.wall for r in results):.1f} s; peak RSS {max(r.peak_mib for r in results):.0f} MiB")
            if device.type == "cuda":
                notes += f"; GPU {max(r.gpu_mib for r in results):.0f} MiB"
            cpu = results[len(results) // 2].cpu
            notes += f"; CPU s: main {cpu['main']:.1f}, I/O threads {cpu['io']:.1f}, other {cpu['other']:.1f}"
            int8_mode = f"int8 + {'bf16' if use_bf16 else 'fp32'}"
            show((f"(c) end to end, {name}", f"{setting}, {int8_mode if '--int8' in jobs[name][2] else mode}",
                  median(rates), notes))
        print("\n" + header)
        for name, settings, rate, notes in rows:
            print(f"{name:48} {settings:26} {rate:8.2f} {rate / seed_rate:6.1f}x  {notes}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
