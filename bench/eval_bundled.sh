#!/usr/bin/env bash
# Scores of the bundled model and of trivial predictions on synth-val (the numbers in docs/bundled_model.md).
#   bash bench/eval_bundled.sh [SYNTH_VAL_DIR]     (generates synth-val there first if missing)
set -euo pipefail
DATA=${1:-/tmp/synth-val}
OUT=bench/results/bundled_eval
mkdir -p "$OUT"
[ -f "$DATA/annotations.json" ] || opensapiens synth --preset synth-val --out "$DATA"
for t in pose seg depth normal; do
  opensapiens eval --task $t --checkpoint sapiens-nano --data "$DATA" --device cpu --quiet --out "$OUT/nano_$t.json"
done
python bench/trivial_baseline.py --data "$DATA" --out /tmp/trivial
opensapiens eval --task pose --pred /tmp/trivial/pose.json --gt "$DATA/annotations.json" --quiet --out "$OUT/trivial_pose.json"
opensapiens eval --task seg --pred /tmp/trivial/seg --gt "$DATA/seg" --quiet --out "$OUT/trivial_seg.json"
opensapiens eval --task depth --pred /tmp/trivial/depths --gt "$DATA/depths" --quiet --out "$OUT/trivial_depth.json"
opensapiens eval --task normal --pred /tmp/trivial/normals --gt "$DATA/normals" --quiet --out "$OUT/trivial_normal.json"
