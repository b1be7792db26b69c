#!/usr/bin/env bash
# The CUDA checks and benchmarks in one go, for a lent GPU machine (see README "Speed"). Run from the repo
# root with the package importable (PYTHONPATH=. or installed). Writes its tables under ${OUT:-/tmp/cuda-out}.
#   COLORIZE_SHARED: a folder laid out like ../shared/data's parent (LFW test split, an old photo), if
#   ../shared is not beside the repo. For a machine that gets only the repo (13 MB, git-ignored):
#     mkdir -p .bench_shared/data/lfw-splits .bench_shared/data/old_photos/ddcolor
#     cp ../shared/data/lfw-splits/test.txt .bench_shared/data/lfw-splits/
#     (cd ../shared/data && tar cf - $(cat lfw-splits/test.txt)) | (cd .bench_shared/data && tar xf -)
#     cp "$(ls ../shared/data/old_photos/ddcolor/*.jpg | head -1)" .bench_shared/data/old_photos/ddcolor/
#     # what the CLI tests use (tests needing more of ../shared skip on this copy, saying what is missing)
#     cp "../shared/data/old_photos/ddcolor/Audrey Hepburn.jpg" .bench_shared/data/old_photos/ddcolor/
#     mkdir -p .bench_shared/data/old_photos/bringing-old-photos-back
#     cp ../shared/data/old_photos/bringing-old-photos-back/a.png .bench_shared/data/old_photos/bringing-old-photos-back/
#     echo /.bench_shared/ >> .git/info/exclude
#   then carry .bench_shared and run: COLORIZE_SHARED=$PWD/.bench_shared bash benchmarks/run_cuda.sh
#   Time limits per step (seconds): PYTEST_S, BENCH_S, PROFILE_S, VARIANTS_S; E2E_IMAGES, REPEAT,
#   PROFILE_IMAGES, CUDA_ROWS (bench_inference.py --cuda-rows), VARIANT_PARTS (none: skip the variants).
set -o pipefail
OUT=${OUT:-/tmp/cuda-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
python3 -c "import torch, torchvision, cv2, numpy; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cv2', cv2.__version__, 'numpy', numpy.__version__)"
echo "cores: $(nproc)"
# tests that need what a partial copy (COLORIZE_SHARED) lacks skip, naming it
timeout "${PYTEST_S:-90}" python3 -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_imageio.py tests/test_cli.py -k "not edge_cases and not killed" -rs 2>&1 | tail -15 | tee "$OUT/pytest.txt"
cd benchmarks
timeout "${BENCH_S:-240}" python3 bench_inference.py --device cuda --images 512 --e2e-images "${E2E_IMAGES:-4096}" \
    --repeat "${REPEAT:-1}" --scans --compile --cuda-rows="${CUDA_ROWS:---no-cuda-graphs,--merge cpu,--workers 8}" \
    2>&1 | tee "$OUT/bench.txt"
timeout "${PROFILE_S:-90}" python3 profile_e2e.py --device cuda --images "${PROFILE_IMAGES:-4096}" --top 40 \
    -- --format jpg 2>&1 | cut -c1-200 > "$OUT/profile.txt"
# the same pipeline with the model's predictions made up at once: the CPU side's own ceiling on this machine
timeout "${PROFILE_S:-90}" python3 profile_e2e.py --no-model --images "${PROFILE_IMAGES:-4096}" --top 40 \
    -- --format jpg 2>&1 | cut -c1-200 > "$OUT/profile_no_model.txt"
[ "${VARIANT_PARTS:-}" = none ] || timeout "${VARIANTS_S:-120}" python3 bench_cuda_variants.py --passes 10 --out "$OUT/variants.txt" \
    --parts "${VARIANT_PARTS:-batches,layout,graphs,compile}"
