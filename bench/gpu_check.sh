#!/usr/bin/env bash
# Issue 24's measurements on a GPU, in one run, each figure written to a file under $OUT.
#
#   bash bench/gpu_check.sh --prepare   # here: the wheels the GPU machine lacks and a small store, into .device/
#   SMOKE=1 PYTHON=.venv/bin/python bash bench/gpu_check.sh   # here: the same script, tiny, on the CPU
#   bash bench/gpu_check.sh             # on the GPU machine (../shared/device/README.md), .device carried
#
# What it measures (docs/benchmarks.md says how to read the figures):
#   loader.json      the trainer's own step at the paper's scale (batch 128, 112 px, float16) fed from
#                    device memory, by its loader (12 workers, every clip from the store, augmentation
#                    on the GPU) and by the loader before issue 24, for MSCL and RGB-only (target >= 0.9x)
#   flow.json        RAFT large and small alone at batches of 8-64 frame pairs, and the flow stage at its
#                    default batch as a ratio of the best (target >= 0.9x for raft_large)
#   train_step.json  the step under cuDNN's deterministic algorithms (the default) against benchmark
#                    mode, channels-last weights and torch.compile
set -uo pipefail
cd "$(dirname "$0")/.."
STORE=${STORE:-.device/loader/work}
PY=${PYTHON:-python}
if [ "${1:-}" = "--prepare" ]; then
  set -e
  bash ../shared/device/bundle.sh
  # and what the benchmarks import that bundle.sh leaves out (pure Python; FFmpeg itself is not called there)
  "$PY" -m pip download -q --no-deps -d .device/whl $(grep -iE '^(ffmpeg-python|future)==' constraints.txt)
  rm -rf .device/loader
  "$PY" bench/loader.py --build-only --videos 18 --out .device/loader
  rm -rf .device/loader/videos "$STORE"/*.lock "$STORE"/*.partial
  du -sh .device
  exit 0
fi
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if [ "${SMOKE:-0}" = 1 ]; then
  LOADER="--device cpu --scale params --train-batch 4 --train-steps 2 --workers 1"
  FLOW="--raft-device cpu --raft-batches 2 4 --raft-iterations 1 --workers 2 --raft-videos 3"
  STEP="--device cpu --scale params --steps 1 --variants deterministic benchmark benchmark_channels_last"
else
  LOADER="--device cuda --train-batch 128 --train-steps 20 --workers 12"
  FLOW="--raft-device cuda --raft-batches 8 16 32 64 --workers 12"
  STEP="--device cuda --steps 10"
fi
(nvidia-smi; "$PY" -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.is_available())") \
  > "$OUT/versions.txt" 2>&1
# The three limits and the install come to under 600 s, the device's limit for one command; each
# benchmark also logs every figure to its .err as it goes, so a part cut off still leaves its figures.
run() {  # name, limit in seconds, command...: its JSON to $OUT/name.json, its log to $OUT/name.err
  local name=$1 limit=$2
  shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.err"
  echo "$name: exit $? in $((SECONDS - started)) s" | tee -a "$OUT/summary.txt"
}
run loader 220 "$PY" bench/loader.py --store "$STORE" --parts train $LOADER
run flow 120 "$PY" bench/flow.py --store "$STORE" $FLOW
run train_step 200 "$PY" bench/train_step.py $STEP
