#!/usr/bin/env bash
# Inference benchmarks on one GPU (see docs/performance.md). Usage: bash bench/gpu_inference.sh pose|dense
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
B="python -m opensapiens.cli.main bench"
if [ "$1" = pose ]; then
  python bench/make_images.py --n 512 --size 1080x1920 --out /tmp/e2e
  $B --task pose --arch 0.3b --batch 16 --fp8 --e2e /tmp/e2e --out "$OUT/infer_pose_0.3b.json" | grep -v '^{'
  $B --task pose --arch 0.6b --batch 8 --out "$OUT/infer_pose_0.6b.json" | grep -v '^{'
  $B --task pose --arch 1b --batch 8 --fp8 --out "$OUT/infer_pose_1b.json" | grep -v '^{'
  $B --task pose --arch 2b --batch 4 --fp8 --out "$OUT/infer_pose_2b.json" | grep -v '^{'
else
  python bench/make_images.py --n 256 --size 1080x1920 --out /tmp/e2e
  $B --task seg --arch 1b --batch 8 --e2e /tmp/e2e --out "$OUT/infer_seg_1b.json" | grep -v '^{'
  for t in seg depth normal; do
    $B --task $t --arch 0.3b --batch 8 --out "$OUT/infer_${t}_0.3b.json" | grep -v '^{'
  done
  for t in depth normal; do
    $B --task $t --arch 1b --batch 4 --out "$OUT/infer_${t}_1b.json" | grep -v '^{'
  done
fi
