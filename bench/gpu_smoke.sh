#!/usr/bin/env bash
# First GPU call: check the fast path end to end on one size, and how long compilation takes.
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/smoke_gpu.txt"
python -c "import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version())" | tee -a "$OUT/smoke_gpu.txt"
python bench/make_images.py --n 192 --size 1080x1920 --out /tmp/e2e
timeout 280 python -m opensapiens.cli.main bench --task pose --arch 0.3b --batch 16 --fp8 --e2e /tmp/e2e \
  --out "$OUT/smoke_pose_0.3b.json" 2>&1 | tail -25
timeout 200 python -m opensapiens.cli.main bench --task pose --arch 2b --batch 4 --out "$OUT/smoke_pose_2b.json" 2>&1 | tail -12
