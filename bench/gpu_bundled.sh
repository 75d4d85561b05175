#!/usr/bin/env bash
# GPU call: synthetic-data throughput, then the bundled multi-task model trained on on-the-fly synthetic humans.
# SKIP_SYNTH=1 skips the throughput part (it was measured in an earlier call: bench/results/synth_cuda_*.json).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
if [ -z "${SKIP_SYNTH:-}" ]; then
  timeout 100 python bench/bench_synth.py --size 1024x768 --device cuda --n 256 --batch-size 32 \
    --json "$OUT/synth_cuda_1024x768.json" 2>&1 | tail -4
  timeout 60 python bench/bench_synth.py --size 384x288 --device cuda --n 384 --batch-size 64 \
    --json "$OUT/synth_cuda_384x288.json" 2>&1 | tail -4
fi
mkdir -p "$OUT/bundled"
timeout 480 python -m opensapiens.training.multitask --arch tiny --head-channels 128 --batch-size 64 --views 3 \
  --steps 8000 --time-limit "${TRAIN_SECONDS:-420}" --save-dtype fp16 --out "$OUT/bundled" \
  > "$OUT/bundled/train.log" 2>&1
tail -5 "$OUT/bundled/train.log"
ls -la "$OUT/bundled"
