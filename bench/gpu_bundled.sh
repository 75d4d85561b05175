#!/usr/bin/env bash
# GPU call: synthetic-data throughput, then the bundled multi-task model trained on on-the-fly synthetic humans.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
timeout 100 python bench/bench_synth.py --size 1024x768 --device cuda --n 256 --batch-size 32 \
  --json "$OUT/synth_cuda_1024x768.json" 2>&1 | tail -4
timeout 60 python bench/bench_synth.py --size 384x288 --device cuda --n 384 --batch-size 64 \
  --json "$OUT/synth_cuda_384x288.json" 2>&1 | tail -4
mkdir -p "$OUT/bundled"
timeout 420 python -m opensapiens.training.multitask --arch tiny --head-channels 128 --batch-size 64 \
  --steps 8000 --time-limit ${TRAIN_SECONDS:-360} --save-dtype fp16 --out "$OUT/bundled" > "$OUT/bundled/train.log" 2>&1
tail -5 "$OUT/bundled/train.log"
ls -la "$OUT/bundled"
