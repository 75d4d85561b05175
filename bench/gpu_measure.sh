#!/usr/bin/env bash
# Measurements that earlier sessions left unrun (see docs/performance.md). One GPU; memory capped to an 80 GB
# H100's 79.65 GiB where the target speaks of an 80 GB card. Usage: bash bench/gpu_measure.sh train|infer|extra|mae|next|final|last|closing|profile|roofline|fused|steady|latency|attention|fp8|fp8sizes|quant|final-fp8|flash|flash-ab|flash-ba|pipeline|mae-final|mae-encoder|fa4|fa4-more|fa4-profile|fa4-tiles|fa4-step|fa4-final|fa4-cli|readback|readback-tests|fa4-2b|e2e-profile|fused-graphs|targets-mae|mae-h100|targets-infer|dark-kernel|dark-ring|e2e-targets|predict-e2e|fa4-keep|fa4-half|tenth-verify|eleventh-diag|eleventh-verify|predict-folder|predict-exit|suite|predict-pipeline|predict-final|predict-writers|e2e-run-batch|decode-suite|decode-rest|writers16|pose-writers|after-calls-76|nvjpeg-test-graphs|graphs-default|graphs-optin|after-calls-81|pose-detector|detector-profile|detector-fold|detect-ahead|detector-ab|gil-switch|pin-readers|spy|two-streams|power|input-power|power-again|energy|infer|video|video-pictures|video-spy|exp2-sweep|flash-configs|x264-threads|sapiens2|sapiens2-dense|pointmap-train|pointmap-infer|pointmap-layout|s2-layout|pointmap-folder|s2-losses|pointmap-precisions|s2-5b|s2-4k|resize-cost|s2-fused|s2-fused-more|s2-fp8acc|s2-fp8pose|save-matmuls
set -uo pipefail
failed=0
trap 'failed=$((failed + 1))' ERR  # each step that fails (a pipeline fails with its first failing command) counts
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
CAP=79.65
install_coco_wheel() {  # pycocotools from .whlcoco/ where carried: the GPU image lacks it, `import opensapiens` needs it
  ls .whlcoco/*.whl > /dev/null 2>&1 && python -m pip install -q --no-deps .whlcoco/*.whl 2>&1 | tail -1
  return 0
}
keep_fa4_first_half() {  # FA4's first half (carried as .fa4a) kept on this machine for the next call's fa4_site
  mkdir -p /tmp/fa4keep && cp .fa4a/part00 /tmp/fa4keep/ && ls -la /tmp/fa4keep
}
fa4_site() {  # FlashAttention-4 where bench/pack_fa4.sh's two halves reached this machine (the first kept in
  # /tmp/fa4keep by mode fa4-half, the second carried as .fa4b): unpacked once, then on PYTHONPATH for this script
  local S=/tmp/fa4keep/site
  if [ ! -d $S ] && [ -f /tmp/fa4keep/part00 ] && [ -f .fa4b/part01 ]; then
    mkdir -p $S && cat /tmp/fa4keep/part00 .fa4b/part01 | xz -d -T16 | tar -C $S -xf - || rm -rf $S
  fi
  [ -d $S ] && export PYTHONPATH=$S:$S/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1
  python -c "import flash_attn.cute" 2>/dev/null && echo "FlashAttention-4: installed" || echo "FlashAttention-4: absent"
}
e2e_images() {  # 512 1080p JPEGs in /tmp/src, and the same four times over in /tmp/e2e2048
  python bench/make_images.py --n 512 --size 1080x1920 --out /tmp/src > /dev/null
  mkdir -p /tmp/e2e2048
  for k in 0 1 2 3; do for f in /tmp/src/*.jpg; do cp "$f" "/tmp/e2e2048/$(basename "$f" .jpg)_$k.jpg"; done; done
}
random_seg_checkpoint() {  # /tmp/seg_0.3b.safetensors, random weights
  python -c "from opensapiens.checkpoints import save_model; from opensapiens.models import build_model
save_model(build_model('seg', '0.3b', out_channels=28), '/tmp/seg_0.3b.safetensors')"
}
predict_one_timed() {  # one image of /tmp/src through the seg checkpoint: the steps timed twice, then the CLI
  for k in 1 2; do /usr/bin/time -f "diag process, run $k: %e s" timeout 120 python bench/diag_predict_one.py seg \
    /tmp/seg_0.3b.safetensors /tmp/src/$(ls /tmp/src | head -1) 2>&1 | grep -v Warn; done
  mkdir -p /tmp/one && cp /tmp/src/$(ls /tmp/src | head -1) /tmp/one/
  /usr/bin/time -f "predict one image (CLI): %e s" timeout 120 python -m opensapiens.cli.main predict --task seg \
    --checkpoint /tmp/seg_0.3b.safetensors /tmp/one --out /tmp/one_out 2>&1 | tail -2
}
overlap_then_predict_one() {  # eager calls beside the seg-0.3b head's compile at each switch interval given
  # (seconds, or "default"; each a fresh process), then one image through predict twice (predict_one_timed)
  random_seg_checkpoint
  for s in "$@"; do
    A=$([ $s = default ] || echo "--switch-interval $s")
    timeout 120 python bench/diag_compile_overlap.py seg /tmp/seg_0.3b.safetensors $A 2>&1 | grep -v Warn | tail -3
  done
  python bench/make_images.py --n 2 --size 1080x1920 --out /tmp/src > /dev/null
  predict_one_timed
  predict_one_timed 2>&1 | tail -1
}
src256_and_pose_checkpoint() {  # 256 1080p JPEGs in /tmp/src; a random pose-0.3B checkpoint (308 keypoints)
  python bench/make_images.py --n 256 --size 1080x1920 --out /tmp/src > /dev/null
  python -c "from opensapiens.checkpoints import save_model; from opensapiens.models import build_model
save_model(build_model('pose', '0.3b', out_channels=308), '/tmp/pose_0.3b.safetensors')"
}
pose_with_both_detectors() {  # bench/pose_detector.py, 3 people per image, the default and the light detector;
  # JSON $OUT/pose_detector_$1ARCH.json, each run under a timeout of $2 s
  for A in fasterrcnn_resnet50_fpn_v2 fasterrcnn_mobilenet_v3_large_fpn; do
    timeout "$2" python bench/pose_detector.py /tmp/pose_0.3b.safetensors /tmp/src --batch 16 --people 3 \
      --detector-arch $A --out "$OUT/pose_detector_$1$A.json" 2>&1 | grep -v Warn | tail -10; done
}
folder512_and_checkpoints() {  # 512 1080p JPEGs in /tmp/f512; random pose and seg 0.3b checkpoints in /tmp
  python bench/make_images.py --n 256 --size 1080x1920 --out /tmp/src > /dev/null
  mkdir -p /tmp/f512 && for k in 0 1; do for f in /tmp/src/*.jpg; do cp "$f" "/tmp/f512/$(basename "$f" .jpg)_$k.jpg"; done; done
  python -c "from opensapiens.checkpoints import save_model; from opensapiens.models import build_model
save_model(build_model('pose', '0.3b', out_channels=308), '/tmp/pose_0.3b.safetensors')"
  random_seg_checkpoint
}
video_predict() {  # NAME RUN...: opensapiens predict on a 1080p H.264 video per RUN ("task batch [flag]")
  # FRAMES (default 900: 30 s at 30 fps) frames, with the picture video and the per-frame outputs unless the flag is
  # --no-vis; pose 0.3B (whole frames, track ids) and seg 0.3B, random weights. Each run's wall time includes the
  # process start and the model's load; a 32-frame clip run the same way gives that fixed cost, so
  # (FRAMES - 32) / (T_long - T_short) is the steady rate. Each task first runs the short clip untimed (the head's
  # compile cached on disk, as for any later run). (Call 100 ran 1800 frames before the encoder thread and the
  # veryfast preset.)
  local name=$1; shift
  install_coco_wheel
  ls .whlav/*.whl > /dev/null 2>&1 && python -m pip install -q --no-deps .whlav/*.whl 2>&1 | tail -1
  python bench/make_video.py --frames ${FRAMES:-900} --size 1080x1920 --out /tmp/clip.mp4
  python bench/make_video.py --frames 32 --size 1080x1920 --out /tmp/short.mp4
  python -c "from opensapiens.checkpoints import save_model; from opensapiens.models import build_model
save_model(build_model('pose', '0.3b', out_channels=308), '/tmp/pose_0.3b.safetensors')
save_model(build_model('seg', '0.3b', out_channels=28), '/tmp/seg_0.3b.safetensors')"
  for run in "$@"; do
    read -r task batch flag <<< "$run"
    [ "$flag" = "" ] && python -m opensapiens.cli.main predict --task $task --checkpoint /tmp/${task}_0.3b.safetensors \
      --batch-size $batch --no-vis /tmp/short.mp4 --out /tmp/vwarm > /dev/null 2>&1
    for clip in short clip; do
      rm -rf /tmp/vout; t0=$(date +%s.%N)
      timeout 240 python -m opensapiens.cli.main predict --task $task --checkpoint /tmp/${task}_0.3b.safetensors \
        --batch-size $batch $flag /tmp/$clip.mp4 --out /tmp/vout 2>&1 | grep -E "frames|failed|rror" | tail -3
      t1=$(date +%s.%N)
      echo "video $run $clip: $(python -c "print(f'{$t1 - $t0:.2f}')") s"
    done
  done | tee "$OUT/${name}_predict.txt"
}
# a mode this script does not have stops here (call 71 ran the old catch-all branch for a mode never added)
grep -q "^elif \[ \"\$1\" = ${1:-none} \]\|^if \[ \"\$1\" = ${1:-none} \]" "$0" \
  || { echo "gpu_measure.sh: unknown mode '${1:-}' (see the usage line at the top)"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu_$1.txt"
python -c "import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version())" \
  | tee -a "$OUT/gpu_$1.txt"
if [ "$1" = mae ]; then
  # where the MAE step's time goes: fused attention backends on the encoder/decoder shapes (decoder head dim 32,
  # also zero-padded to 64), head dims padded to 64 in the step, whole-model compile, top kernels of `optimized`
  timeout 330 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --attention \
    --variants optimized-pad64,optimized,optimized-model --profile --steps 4 --warmup 2 --memory-limit-gib $CAP \
    --out "$OUT/mae_0.3b_diag.json" 2>&1 | grep -v Warning | tee "$OUT/mae_0.3b_diag.log" | tail -60
  # pose end to end without host stalls (was 0.73 of model-only)
  python bench/make_images.py --n 256 --size 1080x1920 --out /tmp/e2e > /dev/null
  timeout 150 python -m opensapiens.cli.main bench --task pose --arch 0.3b --batch 16 --iters 8 --e2e /tmp/e2e \
    --out "$OUT/infer_pose_0.3b_e2e_nostall.json" | grep -v '^{'
elif [ "$1" = fused ]; then
  # the default path now: fused blocks (biases folded out of the residual stream, GEMMs accumulating into it in
  # place, fc1 with cuBLASLt's GELU epilogue, Triton LayerNorm; head dims padded in the weights) beside eager and
  # the whole-model compile; its GPU tests first. (Its first version, before the Triton norm and the weight
  # padding, ran as commit d24ff5c: fused_v1_*.json, device_call7_output.txt.)
  python -m pytest tests/test_fused.py 2>&1 | tail -3
  python bench/make_images.py --n 512 --size 1080x1920 --out /tmp/e2e > /dev/null
  B="timeout 170 python -m opensapiens.cli.main bench --iters 10 --compiled"
  $B --task pose --arch 1b --batch 8 --profile --out "$OUT/fused_pose_1b.json" | grep -v '^{'
  $B --task pose --arch 0.3b --batch 16 --e2e /tmp/e2e --e2e-decode cpu,gpu --out "$OUT/fused_pose_0.3b.json" \
    | grep -v '^{'
  $B --task pose --arch 2b --batch 4 --out "$OUT/fused_pose_2b.json" | grep -v '^{'
  $B --task seg --arch 1b --batch 8 --e2e /tmp/e2e --out "$OUT/fused_seg_1b.json" | grep -v '^{'
elif [ "$1" = attention ]; then
  # our Triton attention kernel (bf16, FP8) against SDPA's backends, its GPU tests first; then the dense-head
  # models on the default fused path (depth, normal and seg 0.3B had only been measured on the compiled path)
  python -m pytest tests/test_fused.py 2>&1 | tail -3  # (its attention tests then lived in the package)
  timeout 240 python bench/attention.py --out "$OUT/attention_h200.json" 2>&1 | grep -v Warn
  for t in depth normal seg; do
    timeout 100 python -m opensapiens.cli.main bench --task $t --arch 0.3b --batch 8 --iters 8 --compiled \
      --out "$OUT/fused_${t}_0.3b.json" | grep -v '^{'
  done
elif [ "$1" = fp8 ]; then
  # FP8 on the fused blocks (norm/GELU kernels quantize the GEMM inputs) against bf16 and the compiled FP8 path;
  # cuDNN's FP8 attention through the cudnn frontend (a wheel in .whl/, see the script); our Triton attention again
  python -m pytest --tb=short tests/test_fused.py tests/test_fp8.py 2>&1 | tail -40
  timeout 90 python bench/cudnn_fp8_attention.py --out "$OUT/cudnn_fp8_attention.json" 2>&1 | grep -v Warn
  timeout 90 python bench/attention.py --shapes 1b --out "$OUT/attention_1b_h200.json" 2>&1 | grep -v Warn
  timeout 120 python bench/fp8_agreement.py --checkpoint sapiens-nano --out "$OUT/fp8_agreement_fused_nano.json" \
    | tail -6
  timeout 260 python -m opensapiens.cli.main bench --task pose --arch 1b --batch 8 --iters 10 --fp8 --compiled \
    --profile --out "$OUT/fp8_pose_1b.json" | grep -v '^{'
elif [ "$1" = fp8sizes ]; then
  # the FP8 fused path at every size beside bf16 (one row per program in the norms again), seg 1b in FP8 too
  python -m pytest tests/test_fused.py tests/test_fp8.py 2>&1 | tail -2
  B="timeout 110 python -m opensapiens.cli.main bench --iters 10 --fp8"
  $B --task pose --arch 1b --batch 8 --profile --out "$OUT/fp8_pose_1b_rows1.json" | grep -v '^{'
  $B --task pose --arch 0.3b --batch 16 --out "$OUT/fp8_pose_0.3b.json" | grep -v '^{'
  $B --task pose --arch 0.6b --batch 8 --out "$OUT/fp8_pose_0.6b.json" | grep -v '^{'
  $B --task pose --arch 2b --batch 4 --out "$OUT/fp8_pose_2b.json" | grep -v '^{'
  $B --task seg --arch 1b --batch 8 --out "$OUT/fp8_seg_1b.json" | grep -v '^{'
elif [ "$1" = quant ]; then
  # the FP8 blocks' quantization passes per launch configuration (GELU erf vs tanh), then pose 1b/2b in FP8
  python -m pytest tests/test_fused.py tests/test_fp8.py 2>&1 | tail -2
  timeout 120 python bench/quantize_kernels.py --out "$OUT/quantize_kernels_1b.json" 2>&1 | grep -v Warn
  B="timeout 110 python -m opensapiens.cli.main bench --iters 10 --fp8"
  $B --task pose --arch 1b --batch 8 --profile --out "$OUT/fp8_pose_1b_tanh.json" | grep -v '^{'
  $B --task pose --arch 2b --batch 4 --out "$OUT/fp8_pose_2b_tanh.json" | grep -v '^{'
  timeout 120 python bench/fp8_agreement.py --checkpoint sapiens-nano --out "$OUT/fp8_agreement_tanh_nano.json" \
    | tail -4
elif [ "$1" = flash ]; then
  # our Triton FlashAttention (forward + backward) at the MAE decoder's head dim 32: its tests; the launch-config sweep
  # (with and without TF32 products) against SDPA's backends; the MAE-0.3B and -1B steps with the decoder on it (the
  # sweep's configs) against SDPA (cuDNN), 0.3B profiled
  python -m pytest --tb=short tests/test_flash_attention.py 2>&1 | tail -4
  timeout 200 python bench/flash_attention_train.py --shapes mae-decoder --out "$OUT/flash_attention_mae-decoder.json" \
    2>&1 | grep -v Warn | grep -v "^ *aten::\|^ *cuda\|^---\|^ *Name "
  FC=""; [ -f "$OUT/flash_attention_mae-decoder.json" ] && FC="--flash-config $OUT/flash_attention_mae-decoder.json"
  timeout 200 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --steps 4 \
    --warmup 2 --variants optimized-sdpa,optimized $FC --memory-limit-gib $CAP --profile \
    --out "$OUT/mae_0.3b_flash.json" 2>&1 | grep -v Warn | grep -v "^ *aten::\|^ *void\|^ *triton_\|^---\|^ *cuda"
  timeout 150 python bench/bench_mae.py --arch 1b --batch 16 --input-size 1024x1024 --in-memory --steps 3 \
    --warmup 2 --checkpointing --variants optimized-sdpa,optimized $FC --memory-limit-gib $CAP \
    --out "$OUT/mae_1b_flash.json" 2>&1 | grep -v Warn | tail -3
elif [ "$1" = flash-ab ]; then
  # the package's launch configs (the `flash` sweep's best): the MAE tests on the GPU (the pretraining loop runs the
  # decoder on our kernels there), then the MAE-0.3B step A/B/A against SDPA (cuDNN), 10 steps each
  timeout 150 python -m pytest --tb=short tests/test_flash_attention.py tests/test_mae.py tests/test_mae_pretrain.py \
    2>&1 | tail -4
  timeout 240 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --steps 10 \
    --warmup 3 --variants optimized,optimized-sdpa,optimized --memory-limit-gib $CAP \
    --out "$OUT/mae_0.3b_flash_ab.json" 2>&1 | grep -v Warn | tail -5
elif [ "$1" = flash-ba ]; then
  # the same A/B/A in the other order: SDPA first and last (the middle variant of a run measured slow twice)
  timeout 240 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --steps 10 \
    --warmup 3 --variants optimized-sdpa,optimized,optimized-sdpa --memory-limit-gib $CAP \
    --out "$OUT/mae_0.3b_flash_ba.json" 2>&1 | grep -v Warn | tail -5
elif [ "$1" = pipeline ]; then
  # one FMA per score and software-pipelined variants of our attention kernels, the fused bias + GELU op, the
  # device-side skip of train_step: their GPU tests; the attention sweep on the decoder's shape; the GELU kernels
  # against Inductor's; MAE-0.3B with everything / with Inductor's GELU / with everything again, the first profiled
  # (call 25 ran commit f747c93; the pipelined kernel variants and their sweep rows were removed after it, so this
  # mode now sweeps the kept kernels only: `git checkout f747c93` reproduces the pipelined rows)
  python -m pytest --tb=short tests/test_flash_attention.py tests/test_gelu_kernels.py \
    -k "flash or gelu or non_finite" 2>&1 | tail -4
  timeout 200 python bench/flash_attention_train.py --shapes mae-decoder --out "$OUT/flash_attention_pipeline.json" \
    2>&1 | grep -v Warn | grep -v "^ *aten::\|^ *cuda\|^---\|^ *Name "
  timeout 90 python bench/gelu_kernels.py --out "$OUT/gelu_kernels.json" 2>&1 | grep -v Warn | tail -30
  FC=""; [ -f "$OUT/flash_attention_pipeline.json" ] && FC="--flash-config $OUT/flash_attention_pipeline.json"
  timeout 260 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --steps 10 \
    --warmup 3 --variants optimized,optimized-inductor-gelu,optimized --profile $FC --memory-limit-gib $CAP \
    --out "$OUT/mae_0.3b_pipeline.json" 2>&1 | grep -v Warn | grep -v "^ *aten::\|^---\|^ *Name "
  [ -f "$OUT/mae_0.3b_pipeline.trace.json" ] && python bench/trace_summary.py "$OUT/mae_0.3b_pipeline.trace.json" --top 40
elif [ "$1" = fa4 ]; then
  # FlashAttention-4 (flash-attn-4 4.0.0b36 with its CuTe DSL, carried as a split archive; see docs/performance.md):
  # its GPU test; the kernels against cuDNN and ours on the MAE, fine-tuning and inference shapes; the MAE-0.3B step
  # with the decoder / all attention on FA4; pose-1B inference with attention on FA4
  timeout 100 python -m pytest -rA --tb=short tests/test_fa4_attention.py 2>&1 | grep -i "passed\|failed\|error\|skipped" | tail -12
  timeout 150 python bench/fa4_attention.py --out "$OUT/fa4_attention.json" 2>&1 | grep -v Warn
  timeout 210 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --steps 8 \
    --warmup 3 --variants optimized,optimized-fa4,optimized-fa4-all --memory-limit-gib $CAP \
    --out "$OUT/mae_0.3b_fa4.json" 2>&1 | grep -v Warn | grep "img/s\|peak\|failed"
  timeout 120 python -m opensapiens.cli.main bench --task pose --arch 1b --batch 8 --iters 10 --fa4 \
    --out "$OUT/fa4_pose_1b.json" | grep -v '^{'
elif [ "$1" = fa4-more ]; then
  # (call 34, run by hand on the machine call 33 left warm) MAE-0.3B FA4 everywhere / ours / FA4 again; MAE-1B ours /
  # FA4; pose-2B and pose-1B (+FP8) inference with attention on FA4
  timeout 230 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --steps 10 \
    --warmup 3 --variants optimized-fa4-all,optimized,optimized-fa4-all --profile --memory-limit-gib $CAP \
    --out "$OUT/mae_0.3b_fa4_aba.json" 2>&1 | grep -v Warn | grep "img/s\|peak\|failed\|kind"
  timeout 170 python bench/bench_mae.py --arch 1b --batch 16 --input-size 1024x1024 --in-memory --checkpointing \
    --steps 6 --warmup 2 --variants optimized,optimized-fa4-all --memory-limit-gib $CAP \
    --out "$OUT/mae_1b_fa4.json" 2>&1 | grep -v Warn | grep "img/s\|peak\|failed"
  B="timeout 90 python -m opensapiens.cli.main bench --iters 10 --fa4"
  $B --task pose --arch 2b --batch 4 --out "$OUT/fa4_pose_2b.json" | grep -v '^{'
  $B --task pose --arch 1b --batch 8 --fp8 --out "$OUT/fa4_fp8_pose_1b.json" | grep -v '^{'
  rm -f "$OUT"/*.trace.json
elif [ "$1" = fa4-profile ]; then
  # (call 35) the MAE-0.3B step with all attention on FA4 (compiled blocks), profiled; GPU idle from its trace
  timeout 150 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --steps 6 \
    --warmup 3 --variants optimized-fa4-all --profile --memory-limit-gib $CAP --out "$OUT/mae_0.3b_fa4_profile.json" \
    2>&1 | grep -v Warn | grep -v "^ *aten::\|^---\|^ *Name " | tail -45
  python bench/trace_summary.py "$OUT/mae_0.3b_fa4_profile.trace.json" --top 30 && rm "$OUT"/*.trace.json
elif [ "$1" = fa4-tiles ]; then
  # FA4's Hopper tiles swept on the MAE shapes (head dims 32, 64); the MAE-0.3B step with all attention on FA4,
  # our tiles / FA4's own / ours again
  timeout 100 python -m pytest -rA --tb=short tests/test_fa4_attention.py 2>&1 | grep -i "passed\|failed\|error\|skipped" | tail -12
  timeout 200 python bench/fa4_attention.py --tiles --shapes mae-decoder,mae-encoder --out "$OUT/fa4_configs.json" \
    2>&1 | grep -v Warn  # (call 36 ran it as bench/fa4_configs.py, commit b470652)
  FC=""; [ -f "$OUT/fa4_configs.json" ] && FC="--fa4-config $OUT/fa4_configs.json"
  timeout 260 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --steps 10 \
    --warmup 3 --variants optimized-fa4-all,optimized-fa4-untuned,optimized-fa4-all $FC --memory-limit-gib $CAP \
    --out "$OUT/mae_0.3b_fa4_tiles.json" 2>&1 | grep -v Warn | grep "img/s\|peak\|failed\|tiles"
elif [ "$1" = fa4-step ]; then
  # the MAE-0.3B step with all attention on FA4: compiled blocks / whole-model compile / blocks as CUDA graphs /
  # blocks again; then fine-tuning seg 0.3B (the docs' recipe) with attention on FA4 / SDPA (cuDNN)
  timeout 400 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --steps 10 \
    --warmup 3 --variants optimized-fa4-all,optimized-fa4-model,optimized-fa4-graphs,optimized-fa4-all \
    --memory-limit-gib $CAP --out "$OUT/mae_0.3b_fa4_step.json" 2>&1 | grep -v Warn | grep "img/s\|peak\|failed"
  timeout 160 python bench/bench_train.py --task seg --arch 0.3b --batch 16 --fsdp --compile --skip-baseline \
    --checkpointing blocks+head --checkpoint-blocks 12 --save-attention --seg-loss-resolution logits \
    --channels-last --steps 4 --warmup 2 --attention fa4,sdpa --memory-limit-gib $CAP \
    --out "$OUT/train_seg_0.3b_fa4.json" 2>&1 | grep -v Warn | grep "img/s\|memory"
elif [ "$1" = fa4-final ]; then
  # MAE-0.3B: our Triton decoder (the step before FA4) / all attention on FA4 with the whole-model compile / with
  # compiled blocks / whole-model again (profiled) / whole-model as CUDA graphs (last: its memory pool stays)
  timeout 480 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --steps 10 \
    --warmup 3 --memory-limit-gib $CAP --profile --profile-variant optimized-fa4-model \
    --variants optimized,optimized-fa4-model,optimized-fa4-all,optimized-fa4-model,optimized-fa4-model-graphs \
    --out "$OUT/mae_0.3b_fa4_final.json" 2>&1 | grep -v Warn | grep "img/s\|peak\|failed\|kind"
  [ -f "$OUT/mae_0.3b_fa4_final.trace.json" ] && python bench/trace_summary.py "$OUT/mae_0.3b_fa4_final.trace.json" \
    --top 12 && rm "$OUT/mae_0.3b_fa4_final.trace.json"
elif [ "$1" = fa4-cli ]; then
  # the user-facing paths with flash-attn-4 installed (attention auto -> FA4): `opensapiens pretrain --compile`
  # (whole model) and `opensapiens train --compile` on the real 0.3B, a few steps each; then the FA4, pretraining
  # and fine-tuning tests on the GPU (exact resume with --deterministic included)
  python bench/make_images.py --n 48 --size 720x960 --out /tmp/pre > /dev/null
  timeout 150 python -m opensapiens.cli.main pretrain --data /tmp/pre --arch 0.3b --input-size 512x512 \
    --batch-size 8 --steps 12 --log-interval 4 --compile --workers 4 --no-tensorboard --out /tmp/pre_run 2>&1 \
    | grep -v Warn | grep -i "attention\|error" | tail -4
  grep '"train"' /tmp/pre_run/metrics.jsonl | tail -2
  timeout 120 python -m opensapiens.cli.main train --task seg --data synth --arch 0.3b --input-size 512x384 \
    --batch-size 4 --steps 8 --log-interval 4 --eval-interval 0 --compile --no-tensorboard --out /tmp/ft_run 2>&1 \
    | grep -v Warn | grep -i "attention\|error" | tail -4
  grep '"train"' /tmp/ft_run/metrics.jsonl | tail -2
  timeout 200 python -m pytest -rA --tb=short tests/test_fa4_attention.py tests/test_mae_pretrain.py \
    tests/test_train.py 2>&1 | grep -i "passed\|failed\|error" | tail -40
elif [ "$1" = fa4-2b ]; then
  # fine-tuning 2B normals at the docs' recipe with attention on FA4 (head dim 60 zero-padded to 64 at run time, new
  # since the ninth session) / on SDPA (cuDNN, padded the same way), same process
  timeout 560 python bench/bench_train.py --task normal --arch 2b --batch 16 --fsdp --compile --skip-baseline \
    --checkpointing blocks+head --head-chunk 2 --save-attention --channels-last --steps 4 --warmup 2 \
    --attention fa4,sdpa --memory-limit-gib $CAP --out "$OUT/train_normal_2b_fa4.json" 2>&1 | grep -v Warn \
    | grep "img/s\|memory\|failed"
elif [ "$1" = e2e-profile ]; then
  # where pose-0.3B end to end loses its last tenth of model-only throughput: the pipeline over 512 1080p JPEGs
  # (host decode, then nvJPEG), each pass once more under the profiler; GPU idle gaps and kernels per batch of 16
  python bench/make_images.py --n 512 --size 1080x1920 --out /tmp/src > /dev/null
  timeout 400 python -m opensapiens.cli.main bench --task pose --arch 0.3b --batch 16 --iters 10 --e2e /tmp/src \
    --e2e-decode cpu,gpu --e2e-trace "$OUT/e2e_pose_0.3b_trace.json" --out "$OUT/e2e_profile_pose_0.3b.json" \
    | grep -v '^{'
  for d in cpu gpu; do python bench/trace_summary.py "$OUT/e2e_pose_0.3b_trace_$d.json" --steps 32 --top 20; done
  rm -f "$OUT"/e2e_pose_0.3b_trace_*.json  # (large; never committed)
elif [ "$1" = fused-graphs ]; then
  # the default fused path captured as CUDA graphs (new, opt-in) beside itself and the whole-model graphs: pose-1B at
  # batch 8, pose-0.3B at batch 1 (latency) and at batch 16 end to end over 2048 1080p JPEGs (host decode)
  python -m pytest -rA --tb=short tests/test_optimize.py 2>&1 | grep -i "passed\|failed\|error" | tail -8
  e2e_images
  B="python -m opensapiens.cli.main bench --iters 10 --cuda-graphs"
  timeout 150 $B --task pose --arch 1b --batch 8 --out "$OUT/graphs_pose_1b.json" | grep -v '^{'
  timeout 100 $B --task pose --arch 0.3b --batch 1 --iters 20 --out "$OUT/graphs_pose_0.3b_b1.json" | grep -v '^{'
  timeout 300 $B --task pose --arch 0.3b --batch 16 --e2e /tmp/e2e2048 --e2e-decode cpu \
    --out "$OUT/graphs_pose_0.3b_e2e.json" | grep -v '^{'
elif [ "$1" = fa4-keep ]; then
  keep_fa4_first_half  # fa4-half without the tests
elif [ "$1" = fa4-half ]; then
  # the first half of FA4 kept on this machine for the next call (carry .fa4a, then .fa4b: bench/pack_fa4.sh); while
  # here, the tests of the CUDA paths that changed since call 104 (the pad-mode resample, the multi-task predictor's
  # chunks, uploaded-tensor checks, topdown/detector/tracking; the video tests skip without PyAV)
  keep_fa4_first_half
  install_coco_wheel
  timeout 300 python -m pytest -q -rfE --tb=short -p no:cacheprovider tests/test_predictors.py \
    tests/test_pipelined_predict.py tests/test_optimize.py tests/test_device_decode.py tests/test_topdown.py \
    tests/test_detector.py tests/test_tracking.py tests/test_multitask_recipe.py tests/test_codec.py tests/test_fused.py \
    > "$OUT/fa4-half_tests.txt" 2>&1
  grep -E "FAILED|ERROR" "$OUT/fa4-half_tests.txt" | head -20; tail -3 "$OUT/fa4-half_tests.txt"
elif [ "$1" = exp2-sweep ]; then
  # (ninth session, after fa4-keep) our Triton attention at the MAE decoder's shape with part of the exponentials on
  # the FMA units and the one-pass backward (dQ by atomic adds), beside cuDNN, flash and FA4 (fa4_site); and the tests
  # of what the session changed on paths this host runs (loader workers ended with their process, pretraining, shards)
  install_coco_wheel
  fa4_site
  timeout 240 python -m pytest -q -rfE --tb=short -p no:cacheprovider tests/test_flash_attention.py \
    tests/test_loader_workers.py tests/test_shards.py tests/test_mae_pretrain.py > "$OUT/exp2-sweep_tests.txt" 2>&1
  grep -E "FAILED|ERROR" "$OUT/exp2-sweep_tests.txt" | head -20; tail -2 "$OUT/exp2-sweep_tests.txt"
  timeout 240 python bench/flash_attention_train.py --shapes mae-decoder --out "$OUT/flash_attention_exp2.json" 2>&1 \
    | grep -v Warn | tail -45
elif [ "$1" = flash-configs ]; then
  # (after call 118) our decoder kernels' launch configs from call 118's sweep, now the package's, against the ones
  # before (bench/results/flash_configs_before_call118.json) in the MAE-0.3B step without FA4 (`optimized`): new / old
  # / new, one process each (the configs are per process); first the flash-attention and MAE tests on the GPU
  install_coco_wheel
  timeout 150 python -m pytest -q -rfE --tb=short -p no:cacheprovider tests/test_flash_attention.py tests/test_mae.py \
    > "$OUT/flash-configs_tests.txt" 2>&1
  tail -2 "$OUT/flash-configs_tests.txt"
  M="python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --steps 10 --warmup 3 \
    --variants optimized --memory-limit-gib $CAP"
  for run in new old new2; do
    FC=""; [ $run = old ] && FC="--flash-config bench/results/flash_configs_before_call118.json"
    timeout 140 $M $FC --out "$OUT/mae_0.3b_flash_configs_$run.json" 2>&1 | grep -v Warn | grep "configs\|img/s\|failed"
  done
elif [ "$1" = targets-mae ]; then
  # issue #6's done-when on the card that is lent (made for an H100; FA4 from fa4_site where carried):
  # MAE-0.3B at 1024², batch 32, plain eager / ours without FA4 / FA4 + whole-model compile, then the last one fed by
  # the real streaming loader (1280x1024 JPEGs in tar shards, nvJPEG, 8 workers) beside its resident-batch run
  install_coco_wheel
  fa4_site
  C=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' _)
  timeout 560 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --steps 10 --warmup 3 \
    --variants eager,optimized,optimized-fa4-model --memory-limit-gib $CAP --out "$OUT/targets_mae_0.3b_$C.json" \
    2>&1 | grep -v Warn | grep "img/s\|peak\|failed"
elif [ "$1" = mae-h100 ]; then
  # (call 111: MAE-0.3B on the H100 at 0.532 MFU with FA4 + whole-model compile, batch 32) the same at batch 48 (fewer
  # launch gaps per image; 46 GiB at 32) and as CUDA graphs, profiled; then batch 32 as CUDA graphs
  install_coco_wheel
  fa4_site
  C=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' _)
  timeout 300 python bench/bench_mae.py --arch 0.3b --batch 48 --input-size 1024x1024 --in-memory --steps 10 \
    --warmup 3 --profile --profile-variant optimized-fa4-model \
    --variants optimized-fa4-model,optimized-fa4-model-graphs --out "$OUT/mae_0.3b_b48_$C.json" 2>&1 \
    | grep -v Warn | grep "img/s\|peak\|failed\|kind"
  [ -f "$OUT/mae_0.3b_b48_$C.trace.json" ] && python bench/trace_summary.py "$OUT/mae_0.3b_b48_$C.trace.json" \
    --top 12 && rm "$OUT/mae_0.3b_b48_$C.trace.json"
  timeout 200 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --steps 10 \
    --warmup 3 --variants optimized-fa4-model,optimized-fa4-model-graphs --out "$OUT/mae_0.3b_graphs_$C.json" 2>&1 \
    | grep -v Warn | grep "img/s\|peak\|failed"
elif [ "$1" = targets-infer ]; then
  # issue #7's done-when on the card that is lent: pose 0.3b/1b/2b eager / fused (+ FA4) / FP8, seg 1b, and pose-0.3b
  # and seg-1b end to end over 2048 1080p JPEGs (host decode and nvJPEG)
  C=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' _)
  install_coco_wheel
  fa4_site
  FA=""; python -c "import flash_attn.cute" 2>/dev/null && FA="--fa4"
  e2e_images
  B="timeout 110 python -m opensapiens.cli.main bench --iters 10 --fp8 $FA"
  $B --task pose --arch 1b --batch 8 --out "$OUT/targets_pose_1b_$C.json" | grep -v '^{'
  $B --task pose --arch 2b --batch 4 --out "$OUT/targets_pose_2b_$C.json" | grep -v '^{'
  E="python -m opensapiens.cli.main bench --iters 10 --e2e /tmp/e2e2048"  # the default path, model-only beside
  timeout 190 $E --task pose --arch 0.3b --batch 16 --e2e-decode cpu,gpu --out "$OUT/targets_pose_0.3b_$C.json" \
    | grep -v '^{'
  timeout 150 $E --task seg --arch 1b --batch 8 --out "$OUT/targets_seg_1b_$C.json" | grep -v '^{'
elif [ "$1" = dark-kernel ]; then
  # (tenth session) DARK's rescale as one Triton pass (codecs/dark_kernel.py) and loading without a random init: the
  # affected tests on CUDA (pycocotools from .whlcoco/ where carried); the maxima alone, then pose-0.3B end to end over
  # 2048 1080p JPEGs with the Triton pass / the PyTorch blur / the blur skipped; where one-image predict's time goes
  install_coco_wheel
  python -c "import pycocotools; print('pycocotools', pycocotools.__version__)"
  timeout 240 python -m pytest -rA --tb=short tests/test_codec.py tests/test_topdown.py tests/test_pipeline.py \
    tests/test_predictors.py tests/test_eval_pose.py tests/test_checkpoints.py 2>&1 | grep -i "passed\|failed\|error" \
    | grep -v "^PASSED" | tail -20
  e2e_images
  timeout 200 python bench/diag_e2e_blur.py /tmp/e2e2048 2>&1 | grep -v Warn
  random_seg_checkpoint
  predict_one_timed
elif [ "$1" = dark-ring ]; then
  # (after call 53, whose first kernel, 121 loads per pixel, ran 4.6x slower than PyTorch) the row-ring kernel: the
  # codec tests on CUDA, the maxima alone and pose-0.3B end to end (as in dark-kernel); then the imports of the
  # predictor (call 53: 5.7 s) and one-image predict's steps with its exit handlers timed
  timeout 120 python -m pytest -rA --tb=short tests/test_codec.py 2>&1 | grep -i "passed\|failed\|error\|^E " \
    | grep -v "^PASSED" | tail -20
  e2e_images
  timeout 200 python bench/diag_e2e_blur.py /tmp/e2e2048 2>&1 | grep -v Warn
  python -X importtime -c "from opensapiens.inference.predictors import load_predictor" 2>&1 \
    | sort -t'|' -k2 -n | tail -30
  random_seg_checkpoint
  for threads in "" 1; do  # Inductor's default compile-worker pool (a sidecar process), then compiling in-process
    /usr/bin/time -f "diag process (TORCHINDUCTOR_COMPILE_THREADS=$threads): %e s" env \
      ${threads:+TORCHINDUCTOR_COMPILE_THREADS=$threads} timeout 120 python bench/diag_predict_one.py seg \
      /tmp/seg_0.3b.safetensors /tmp/src/$(ls /tmp/src | head -1) 2>&1 | grep -v Warn
  done
elif [ "$1" = predict-e2e ]; then
  # (after call 54) the head compiled in-process (no Inductor worker pool to wait for at exit), torch.compile and
  # torchvision imported off the predict path: the CUDA tests of the background compile and the optimized paths;
  # one-image predict's steps twice (cold, then warm Inductor cache) and the CLI; then pose-0.3B end to end with the
  # DARK kernel through the documented command (2048 1080p JPEGs, host decode and nvJPEG, model-only beside)
  timeout 240 python -m pytest -rA --tb=short tests/test_background_compile.py tests/test_optimize.py 2>&1 \
    | grep -i "passed\|failed\|error\|^E " | grep -v "^PASSED" | tail -20
  e2e_images
  random_seg_checkpoint
  predict_one_timed
  C=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' _)
  timeout 250 python -m opensapiens.cli.main bench --iters 10 --e2e /tmp/e2e2048 --task pose --arch 0.3b \
    --batch 16 --e2e-decode cpu,gpu --out "$OUT/e2e_pose_0.3b_$C.json" | grep -v '^{'
elif [ "$1" = predict-pipeline ]; then
  # predict over a folder with each batch submitted before the one before it is read back (Predictor.submit, uploads
  # from pinned memory on a side stream, post-processing on another): the predictor/CLI tests under CUDA, then
  # bench/predict_pipeline.py (pipelined vs one batch at a time vs the model alone, one process, outputs compared,
  # the main thread's time by stage, one batch's submit and result() alone), seg-0.3b (batch 8; its pipelined pass
  # profiled without pictures) and pose-0.3b (batch 16), 1024 images without pictures, 512 with
  install_coco_wheel
  timeout 150 python -m pytest -rfs tests/test_pipelined_predict.py tests/test_predictors.py tests/test_cli.py \
    2>&1 | grep -v Warn | grep "passed\|failed\|FAILED\|SKIPPED\|Error" | tail -8
  folder512_and_checkpoints
  mkdir -p /tmp/f1024 && for k in a b; do for f in /tmp/f512/*.jpg; do cp "$f" "/tmp/f1024/$(basename "$f" .jpg)$k.jpg"; done; done
  for t in seg pose; do for v in --no-vis ""; do
    B=$([ $t = pose ] && echo 16 || echo 8)
    F=$([ -n "$v" ] && echo /tmp/f1024 || echo /tmp/f512)
    T=$([ $t$v = seg--no-vis ] && echo "--trace /tmp/seg.trace.json")
    timeout 130 python bench/predict_pipeline.py $t /tmp/${t}_0.3b.safetensors $F --batch $B $v $T \
      --out "$OUT/predict_pipeline_$t${v:+_novis}.json" 2>&1 | grep -v Warn | tail -8
    if [ -n "$T" ]; then python bench/trace_summary.py /tmp/seg.trace.json --steps 16 --top 15 2>&1 | tail -40; fi
  done; done
elif [ "$1" = predict-final ]; then
  # after call 69: the pipelined-predict tests under CUDA (the race test's images fixed: call 69's seg images had no
  # foreground); how run_batch's writing scales with threads on this host's CPU (seg pictures bound predict at 0.45 of
  # model-only), with OpenCV's own pool as is and at 1; then `opensapiens predict` over 2048 1080p JPEGs as users run
  # it (process start and compile included), pose and seg 0.3b with and without pictures, as in call 67
  install_coco_wheel
  timeout 150 python -m pytest -rfs tests/test_pipelined_predict.py tests/test_predictors.py tests/test_cli.py \
    2>&1 | grep -v Warn | grep "passed\|failed\|FAILED\|SKIPPED\|Error" | tail -8
  timeout 100 python bench/writer_scaling.py --out "$OUT/writer_scaling_seg.json"
  timeout 100 python bench/writer_scaling.py --cv2-threads 1 --out "$OUT/writer_scaling_seg_cv1.json"
  folder512_and_checkpoints
  mkdir -p /tmp/f2048 && for k in 0 1 2 3; do for f in /tmp/f512/*.jpg; do cp "$f" "/tmp/f2048/$(basename "$f" .jpg)_$k.jpg"; done; done
  P="python -m opensapiens.cli.main predict"
  for t in pose seg; do for v in --no-vis ""; do
    B=$([ $t = pose ] && echo 16 || echo 8)
    /usr/bin/time -f "  process: %e s" timeout 120 $P --task $t --checkpoint /tmp/${t}_0.3b.safetensors /tmp/f2048 \
      --out /tmp/out3_$t$v --batch-size $B $v 2>&1 | grep -v Warn | tr '\r' '\n' | tail -2 | sed "s/^/$t $v: /"
  done; done
elif [ "$1" = predict-writers ]; then
  # call 70: writing seg pictures scales with threads on this host (67 img/s with 8, 104 with 16); run_batch now
  # defaults to one writer per core (was 8). predict over a folder side by side (bench/predict_pipeline.py) with
  # 8 and 16 writers: seg-0.3b and pose-0.3b with pictures; then seg-1b without pictures
  folder512_and_checkpoints
  for w in 8 16; do
    timeout 110 python bench/predict_pipeline.py seg /tmp/seg_0.3b.safetensors /tmp/f512 --batch 8 --writers $w \
      --out "$OUT/predict_pipeline_seg_w$w.json" 2>&1 | grep -v Warn | tail -7
  done
  timeout 100 python bench/predict_pipeline.py pose /tmp/pose_0.3b.safetensors /tmp/f512 --batch 16 --writers 16 \
    --out "$OUT/predict_pipeline_pose_w16.json" 2>&1 | grep -v Warn | tail -7
  # seg-1B (issue #7's end-to-end model) through predict, without pictures, beside the model alone
  python -c "from opensapiens.checkpoints import save_model; from opensapiens.models import build_model
save_model(build_model('seg', '1b', out_channels=28), '/tmp/seg_1b.safetensors')"
  timeout 150 python bench/predict_pipeline.py seg /tmp/seg_1b.safetensors /tmp/f512 --batch 8 --no-vis \
    --out "$OUT/predict_pipeline_seg_1b_novis.json" 2>&1 | grep -v Warn | tail -7
elif [ "$1" = e2e-run-batch ]; then
  # bench --e2e now measures run_batch, predict's own loop (inference/pipeline.py is gone), with host decode and
  # predict --decode device (nvJPEG on the loader threads): first the tests that touch it under CUDA, then pose-0.3b
  # over 2048 1080p JPEGs and seg-1b over 1024, model-only beside each
  C=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' _)
  timeout 200 python -m pytest -rfE --tb=short -p no:cacheprovider tests/test_device_decode.py \
    tests/test_pipelined_predict.py tests/test_shards.py tests/test_detector.py 2>&1 | tail -8
  e2e_images
  mkdir -p /tmp/e2e1024 && cp /tmp/e2e2048/*_[01].jpg /tmp/e2e1024/
  E="python -m opensapiens.cli.main bench --iters 10 --e2e-decode host,device"
  timeout 170 $E --e2e /tmp/e2e2048 --task pose --arch 0.3b --batch 16 --out "$OUT/e2e_run_batch_pose_0.3b_$C.json" \
    | grep -v '^{'
  timeout 200 $E --e2e /tmp/e2e1024 --task seg --arch 1b --batch 8 --out "$OUT/e2e_run_batch_seg_1b_$C.json" \
    | grep -v '^{'
elif [ "$1" = decode-suite ]; then
  # call 72 failed two device-decode tests under CUDA without showing why (its output cut): those tests in full
  # (tightened since), then the whole suite with each test's verdict logged as it ends (a cut run still shows where)
  install_coco_wheel
  timeout 120 python -m pytest -s -rfE --tb=short -p no:cacheprovider tests/test_device_decode.py 2>&1 | tail -40
  timeout 470 python -m pytest -v -rfE --tb=line -p no:cacheprovider --durations=10 > "$OUT/suite_log.txt" 2>&1
  grep -c PASSED "$OUT/suite_log.txt"; grep -E "FAILED|ERROR" "$OUT/suite_log.txt" | head -20; tail -16 "$OUT/suite_log.txt"
elif [ "$1" = decode-rest ]; then
  # call 73: the suite passed on this host up to test_train_distributed (cut there by its time limit) but for two
  # new nvJPEG tests whose bounds were wrong (4:2:0 chroma: nvJPEG is 6 levels from libjpeg-turbo on a busy image)
  # and whose pose check compared different batches; those tests rewritten, then the suite's files not reached
  install_coco_wheel
  timeout 120 python -m pytest -s -rfE --tb=short -p no:cacheprovider tests/test_device_decode.py 2>&1 \
    | grep -v "^skipped: cannot read" | tail -30
  timeout 330 python -m pytest -rA --tb=short -p no:cacheprovider --durations=5 tests/test_train_distributed.py \
    tests/test_transforms.py tests/test_visualize.py 2>&1 | grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed|s call" \
    | tail -40
elif [ "$1" = writers16 ]; then
  # run_batch's default writers are now one per core, at most 16 (was 8; call 70: seg pictures 67 img/s with 8
  # threads, 104 with 16): predict's loop over 512 1080p JPEGs with pictures at the default, seg-0.3b and pose-0.3b,
  # beside the model alone (bench/predict_pipeline.py)
  folder512_and_checkpoints
  timeout 130 python bench/predict_pipeline.py seg /tmp/seg_0.3b.safetensors /tmp/f512 --batch 8 \
    --out "$OUT/predict_pipeline_seg_w16.json" 2>&1 | grep -v Warn | tail -7
  timeout 110 python bench/predict_pipeline.py pose /tmp/pose_0.3b.safetensors /tmp/f512 --batch 16 \
    --out "$OUT/predict_pipeline_pose_w16.json" 2>&1 | grep -v Warn | tail -7
elif [ "$1" = pose-writers ]; then
  # call 75: with 16 writers pose with pictures fell to 0.68 of model-only (call 69, 8 writers: 0.87-0.90) while seg
  # with pictures rose to 0.62-0.64 (0.44-0.47): pose with 8 and 16 writers in one call, side by side
  folder512_and_checkpoints
  for w in 8 16; do
    timeout 75 python bench/predict_pipeline.py pose /tmp/pose_0.3b.safetensors /tmp/f512 --batch 16 --writers $w \
      --out "$OUT/predict_pipeline_pose_pictures_w$w.json" 2>&1 | grep -v Warn | grep "pipelined\|one at a time\|model only"
  done
elif [ "$1" = after-calls-76 ]; then
  # what changed after call 76, unmeasured on a GPU: the tests it touches under CUDA; bench --e2e pose-0.3b with the
  # readers' new default (8, was 4: call 72 measured 0.934 host decode with 4); predict's loop with pictures at the
  # new default writers (pose 8, seg 16) and the faster pose drawing (call 76: pose 0.755-0.776 with 8 writers).
  # pycocotools from .whlcoco/ (carried): `import opensapiens` needs it since the results moved (call 77 failed on it)
  C=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' _)
  install_coco_wheel
  timeout 150 python -m pytest -rfE --tb=short -p no:cacheprovider tests/test_device_decode.py tests/test_bundled.py \
    tests/test_pipelined_predict.py tests/test_predictors.py tests/test_detector.py 2>&1 | tail -40  # call 78's tail -6 lost a failure's text
  e2e_images
  timeout 170 python -m opensapiens.cli.main bench --iters 10 --e2e-decode host,device --e2e /tmp/e2e2048 --task pose \
    --arch 0.3b --batch 16 --out "$OUT/e2e_run_batch_readers8_pose_0.3b_$C.json" | grep -v '^{'
  folder512_and_checkpoints
  timeout 80 python bench/predict_pipeline.py pose /tmp/pose_0.3b.safetensors /tmp/f512 --batch 16 \
    --out "$OUT/predict_pipeline_pose_pictures_default.json" 2>&1 | grep -v Warn | tail -7
  timeout 120 python bench/predict_pipeline.py seg /tmp/seg_0.3b.safetensors /tmp/f512 --batch 8 \
    --out "$OUT/predict_pipeline_seg_pictures_default.json" 2>&1 | grep -v Warn | tail -7
elif [ "$1" = nvjpeg-test-graphs ]; then
  # call 78 failed test_run_batch_with_nvjpeg_writes_what_host_decode_writes_for_those_pixels (passed in call 74; its
  # text was cut off; likely cause: torchvision's nvJPEG wrote into a block the decode stream still read, fixed in
  # decode_jpegs): the test twice with the whole traceback, the whole file (with the new race test); then
  # predict with pictures, default and graphed (--cuda-graphs); bench --e2e pose-0.3b through the graphed models
  # (--cuda-graphs: a Predictor over the fused path replayed as graphs, short chunks padded), host decode
  install_coco_wheel
  C=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' _)
  # the hazard itself, with torchvision called directly (what decode_jpegs did before): a clone queued behind a GPU
  # sleep reads a freed block of the decoded image's size while nvJPEG decodes
  timeout 60 python -c "
import io, numpy as np, torch
from PIL import Image
from torchvision.io import decode_jpeg
b = io.BytesIO(); Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(b, 'JPEG')
data = torch.frombuffer(bytearray(b.getvalue()), dtype=torch.uint8)
bad = 0
for _ in range(5):
    freed = torch.full((3, 96, 128), 7, dtype=torch.uint8, device='cuda'); torch.cuda._sleep(200_000_000)
    copy = freed.clone(); del freed
    out = decode_jpeg(data, device='cuda'); torch.cuda.synchronize(); bad += int((copy != 7).any())
print(f'torchvision decode_jpeg called directly: the queued copy read decoded pixels in {bad} of 5 tries')
" 2>&1 | grep -v Warn | tail -3
  for k in 1 2; do timeout 60 python -m pytest -rfE --tb=long -p no:cacheprovider \
    "tests/test_device_decode.py::test_run_batch_with_nvjpeg_writes_what_host_decode_writes_for_those_pixels" 2>&1 \
    | grep -v Warn | tail -60; done
  timeout 60 python -m pytest -rfE --tb=short -p no:cacheprovider tests/test_device_decode.py 2>&1 | tail -15
  # GIL contention in predict with pictures: the default path launches hundreds of kernels per batch from the main
  # thread while 8 writers draw; graphs launch one per batch. Side by side: default, then graphed
  folder512_and_checkpoints
  for G in "" --cuda-graphs; do timeout 100 python bench/predict_pipeline.py pose /tmp/pose_0.3b.safetensors /tmp/f512 \
    --batch 16 $G --out "$OUT/predict_pipeline_pose_pictures${G:+_graphs}.json" 2>&1 | grep -v Warn | tail -7; done
  e2e_images  # (call 79's bench --cuda-graphs also ran the fused graphs, which --fused-graphs asks for now)
  timeout 220 python -m opensapiens.cli.main bench --iters 10 --cuda-graphs --fused-graphs --e2e-decode host --e2e /tmp/e2e2048 \
    --task pose --arch 0.3b --batch 16 --out "$OUT/e2e_cuda_graphs_pose_0.3b_$C.json" | grep -v '^{'
elif [ "$1" = graphs-default ]; then
  # call 80: the fused path replayed as CUDA graphs by default (a shape captured at its second call, once the head's
  # compile is done; commit 12fac8d, reverted after this call: launching is the default again, and the flags below
  # ask for the graphed path): the tests that touch it under CUDA; pose-1B model-only with and without graphs side by side
  # (call 42: 17.87 -> 18.28 ms/img with graphs), FP8 graphed too; pose-0.3B predict with pictures on the default path (call 79:
  # 0.651-0.789 without graphs, 0.895-0.941 with)
  install_coco_wheel
  C=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' _)
  timeout 210 python -m pytest -rfE --tb=short -p no:cacheprovider -n 4 tests/test_optimize.py \
    tests/test_background_compile.py tests/test_fp8.py tests/test_predictors.py tests/test_pipelined_predict.py \
    tests/test_bundled.py tests/test_device_decode.py 2>&1 | grep -v Warn | tail -30
  timeout 190 python -m opensapiens.cli.main bench --iters 10 --fused-graphs --fp8 --task pose --arch 1b --batch 8 \
    --out "$OUT/graphs_default_pose_1b_$C.json" | grep -v '^{'
  folder512_and_checkpoints
  timeout 100 python bench/predict_pipeline.py pose /tmp/pose_0.3b.safetensors /tmp/f512 --batch 16 --cuda-graphs \
    --out "$OUT/predict_pipeline_pose_pictures_graphs_default.json" 2>&1 | grep -v Warn | tail -7
elif [ "$1" = graphs-optin ]; then
  # call 81: graphs opt-in again (reverted after call 80); under CUDA the tests of the graphed path (its capture
  # policy, threads sharing a graphed model) and of device decoding (the keypoint tolerance call 80 outgrew); then
  # pose-0.3B predict with pictures launched and graphed, a third pair (calls 79 and 80 disagreed)
  install_coco_wheel
  timeout 100 python -m pytest -rfE --tb=short -p no:cacheprovider -n 3 tests/test_optimize.py \
    tests/test_background_compile.py tests/test_device_decode.py 2>&1 | grep -v Warn | tail -25
  folder512_and_checkpoints
  for G in "" --cuda-graphs; do timeout 90 python bench/predict_pipeline.py pose /tmp/pose_0.3b.safetensors /tmp/f512 \
    --batch 16 $G --out "$OUT/predict_pipeline_pose_pictures_call81${G:+_graphs}.json" 2>&1 | grep -v Warn | tail -7; done
elif [ "$1" = after-calls-81 ]; then
  # what changed after call 81, unmeasured on a GPU: draw_pose draws one OpenCV call per colour (~20 per Goliath
  # skeleton instead of ~370; on the 2-core development machine the thread feeding the GPU kept 0.82-0.87 of its
  # speed beside two drawing writers instead of 0.58-0.64). The same contention on this host's cores with 8 writers;
  # then pose-0.3B predict with pictures, launched and graphed (calls 79-81: 0.65-0.81 launched)
  # Also since call 81: pose with our detector detects on the crops' upload (tests under CUDA first)
  install_coco_wheel
  timeout 120 python -m pytest -rfE --tb=short -p no:cacheprovider -n 3 tests/test_detector.py \
    tests/test_visualize.py tests/test_bundled.py tests/test_predictors.py 2>&1 | grep -v Warn | tail -25
  timeout 60 python bench/draw_contention.py --writers 8 --pictures-per-s 160 --rounds 2 \
    --out "$OUT/draw_contention_h200_host.json" 2>&1 | tail -5
  folder512_and_checkpoints
  for G in "" --cuda-graphs; do timeout 100 python bench/predict_pipeline.py pose /tmp/pose_0.3b.safetensors /tmp/f512 \
    --batch 16 $G --out "$OUT/predict_pipeline_pose_pictures_draw${G:+_graphs}.json" 2>&1 | grep -v Warn | tail -7; done
elif [ "$1" = pose-detector ]; then
  # (calls 83-86. The detect stream and detect-ahead were reverted after call 86, no gain: this mode as measured
  # runs at commit 9b044b0; since then it tests and times what is left)
  # pose with our person detector, never measured on a GPU: since call 82 the detection runs on a side stream beside
  # the previous batch's pose model (its read-backs waited for that model on the model's stream). The new CUDA test,
  # then the same test against the code before (bench/old_predictors_py.txt, when present: it must fail), then
  # bench/pose_detector.py: side stream vs the model's stream vs each part alone, 3 and 1 people per image
  install_coco_wheel
  T=tests/test_pipelined_predict.py::test_pose_with_our_detector_detects_the_next_batch_while_the_model_runs
  timeout 120 python -m pytest -rfE --tb=short -p no:cacheprovider "$T" 2>&1 | grep -v Warn | tail -8
  if [ -f bench/old_predictors_py.txt ]; then
    cp opensapiens/inference/predictors.py /tmp/new_predictors.py && cp bench/old_predictors_py.txt opensapiens/inference/predictors.py
    echo "the same test on the code before (expected to fail):"
    timeout 120 python -m pytest -rfE --tb=line -p no:cacheprovider "$T" 2>&1 | grep -v Warn | tail -4 || true
    cp /tmp/new_predictors.py opensapiens/inference/predictors.py
  fi
  src256_and_pose_checkpoint
  for P in 3 1; do timeout 240 python bench/pose_detector.py /tmp/pose_0.3b.safetensors /tmp/src --batch 16 --people $P \
    --out "$OUT/pose_detector_people$P.json" 2>&1 | grep -v Warn | tail -9; done
elif [ "$1" = detector-profile ]; then
  # (calls 83-86. The detect stream and detect-ahead were reverted after call 86, no gain: this mode as measured
  # runs at commit 9b044b0; since then it tests and times what is left)
  # call 83: the detector alone ran 21 img/s on 1080p images, as fast under bf16 autocast, and set the pace of pose
  # with detection (its random classifier kept no person, and the score filter then was 0.05 whatever ours was).
  # Where its time goes (batches of 4 and 16, one batch profiled), then pose with it at 3 people per image
  install_coco_wheel
  timeout 120 python -m pytest -rfE --tb=short -p no:cacheprovider tests/test_detector.py 2>&1 | grep -v Warn | tail -4
  src256_and_pose_checkpoint
  timeout 150 python bench/pose_detector.py /tmp/pose_0.3b.safetensors /tmp/src --batch 16 --profile 2>&1 \
    | grep -v Warn | tee "$OUT/detector_profile.txt" | head -70
  timeout 240 python bench/pose_detector.py /tmp/pose_0.3b.safetensors /tmp/src --batch 16 --people 3 \
    --out "$OUT/pose_detector_people3.json" 2>&1 | grep -v Warn | tail -9
elif [ "$1" = detector-fold ]; then
  # (calls 83-86. The detect stream and detect-ahead were reverted after call 86, no gain: this mode as measured
  # runs at commit 9b044b0; since then it tests and times what is left)
  # call 84: the default detector is GPU-bound (~8 ms/img, a sixth of it BatchNorm) and pose with it ran at the serial
  # sum of the parts, the side stream or not. Now its BatchNorms are folded into the convolutions. Tests under CUDA;
  # the fold measured; then a light detector (mobilenet), where the side stream has host time to hide
  install_coco_wheel
  timeout 120 python -m pytest -rfE --tb=short -p no:cacheprovider tests/test_detector.py \
    tests/test_pipelined_predict.py 2>&1 | grep -v Warn | tail -4
  src256_and_pose_checkpoint
  pose_with_both_detectors people3_ 200
elif [ "$1" = detect-ahead ]; then
  # (calls 83-86. The detect stream and detect-ahead were reverted after call 86, no gain: this mode as measured
  # runs at commit 9b044b0; since then it tests and times what is left)
  # call 85: pose with a detector ran at or below the serial sum of the parts, the detection in submit on a side
  # stream or not (the host waits for its read-backs either way). Now run_batch detects a batch ahead on a thread
  install_coco_wheel
  timeout 100 python -m pytest -rfE --tb=short -p no:cacheprovider tests/test_pipelined_predict.py \
    tests/test_detector.py 2>&1 | grep -v Warn | tail -4
  src256_and_pose_checkpoint
  pose_with_both_detectors ahead_ 170
elif [ "$1" = detector-ab ]; then
  # after call 86: the detectors alone with BatchNorm folded or not, now A B A B (call 86 timed the folded one first
  # only, and the light detector was slower folded), with cudnn.benchmark flipped and in channels_last (candidates for
  # the detector, exact but for rounding); pose with each; the CLI's --detector-arch under CUDA; then a folder of
  # mixed sizes (cudnn.benchmark, which the pose model turns on, autotunes the detector for each)
  install_coco_wheel
  timeout 100 python -m pytest -rfE --tb=short -p no:cacheprovider tests/test_detector.py \
    tests/test_cli.py -k "detector" 2>&1 | grep -v Warn | tail -4
  src256_and_pose_checkpoint
  pose_with_both_detectors ab_ 170
  # photos of four sizes interleaved, as a phone folder has them: the detector autotunes each new size under
  # cudnn.benchmark, and now runs one call per size (was one call per batch, padded to its largest image)
  mkdir -p /tmp/mixed && for S in 1080x1920 1920x1080 720x1280 1536x2048; do
    python bench/make_images.py --n 64 --size $S --seed ${S%%x*} --out /tmp/mixed_$S > /dev/null
    for f in /tmp/mixed_$S/*.jpg; do cp "$f" "/tmp/mixed/$(basename "$f" .jpg)_$S.jpg"; done; done
  timeout 200 python bench/pose_detector.py /tmp/pose_0.3b.safetensors /tmp/mixed --batch 16 --people 3 \
    --out "$OUT/pose_detector_ab_mixed_sizes.json" 2>&1 | grep -v Warn | tail -10
elif [ "$1" = gil-switch ]; then
  # after call 87: predict with pictures stays at 0.80-0.82 of model-only while its main thread spends 3.2 of 4.0 s in
  # submit. A thread that releases the GIL (each torch op does) waits up to Python's switch interval (5 ms) to get it
  # back from a writer running Python: the pipelined loop at 5, 1 and 0.2 ms, A B A B, with the upload's share of
  # submit; pose and seg with pictures, pose without (the targets' path) at 5 and 0.5 ms
  install_coco_wheel
  folder512_and_checkpoints
  timeout 150 python bench/predict_pipeline.py pose /tmp/pose_0.3b.safetensors /tmp/f512 --batch 16 \
    --switch-intervals 5 1 0.2 --out "$OUT/predict_pipeline_pose_pictures_switch.json" 2>&1 | grep -v Warn | tail -9
  timeout 150 python bench/predict_pipeline.py seg /tmp/seg_0.3b.safetensors /tmp/f512 --batch 8 --writers 16 \
    --switch-intervals 5 1 0.2 --out "$OUT/predict_pipeline_seg_pictures_switch.json" 2>&1 | grep -v Warn | tail -9
  timeout 150 python bench/predict_pipeline.py pose /tmp/pose_0.3b.safetensors /tmp/f512 --batch 16 --no-vis \
    --switch-intervals 5 0.5 --out "$OUT/predict_pipeline_pose_switch.json" 2>&1 | grep -v Warn | tail -7
elif [ "$1" = pin-readers ]; then
  # after call 89: the upload took 35-45 % of predict's main thread with pictures (staging each image into pinned
  # memory, then the copy); the reader threads now pin each image (streams.pin) and submit copies it from there. The
  # CUDA tests of it, then A B A B against staging in submit: pose and seg with pictures, pose without
  install_coco_wheel
  timeout 150 python -m pytest -rfE --tb=short -p no:cacheprovider tests/test_pipelined_predict.py \
    tests/test_device_decode.py tests/test_predictors.py 2>&1 | grep -v Warn | tail -6
  folder512_and_checkpoints
  timeout 120 python bench/predict_pipeline.py pose /tmp/pose_0.3b.safetensors /tmp/f512 --batch 16 --pin-ab \
    --out "$OUT/predict_pipeline_pose_pictures_pin.json" 2>&1 | grep -v Warn | tail -7
  timeout 120 python bench/predict_pipeline.py seg /tmp/seg_0.3b.safetensors /tmp/f512 --batch 8 --writers 16 \
    --pin-ab --out "$OUT/predict_pipeline_seg_pictures_pin.json" 2>&1 | grep -v Warn | tail -7
  timeout 120 python bench/predict_pipeline.py pose /tmp/pose_0.3b.safetensors /tmp/f512 --batch 16 --no-vis \
    --pin-ab --out "$OUT/predict_pipeline_pose_pin.json" 2>&1 | grep -v Warn | tail -7
elif [ "$1" = spy ]; then
  # after call 90: with pictures predict's main thread still spends most of its time in submit, the upload gone from
  # it. py-spy (its wheel carried in .whlspy/) samples every thread, native frames included (a wait for the GIL shows
  # as take_gil), through the pipelined loop with pictures, pose then seg; bench/spy_summary.py splits the main
  # thread's samples within submit by innermost frame
  install_coco_wheel
  python -m pip install -q --no-deps .whlspy/*.whl 2>&1 | tail -1
  timeout 100 python -m pytest -rfE --tb=short -p no:cacheprovider tests/test_pipelined_predict.py \
    tests/test_device_decode.py 2>&1 | grep -v Warn | tail -3  # run_batch's reading restructured after call 90
  folder512_and_checkpoints
  for T in pose seg; do
    A=$([ $T = pose ] && echo "--batch 16" || echo "--batch 8 --writers 16")
    timeout 150 py-spy record -r 40 --threads --idle --native -f raw -o "$OUT/spy_${T}_pictures.txt" -- \
      python bench/predict_pipeline.py $T /tmp/${T}_0.3b.safetensors /tmp/f512 $A --switch-intervals 5 \
      2>&1 | grep -v Warn | tail -5
    python bench/spy_summary.py "$OUT/spy_${T}_pictures.txt" --top 25 | tee "$OUT/spy_${T}_pictures_summary.txt"
  done
elif [ "$1" = two-streams ]; then
  # after call 91: the CUDA tests of the pin mend (upload_images stages with streams.pin); then the fused path with
  # its batch split across 2 (4) CUDA streams against one stream, A B A B (bench/two_streams.py): whether one chunk's
  # memory-bound passes and launch gaps hide behind another's GEMMs
  install_coco_wheel
  timeout 100 python -m pytest -rfE --tb=short -p no:cacheprovider tests/test_pipelined_predict.py \
    tests/test_device_decode.py 2>&1 | grep -v Warn | tail -3
  # the SM clock, power and throttle reasons every 200 ms beside them: does the card hold its clock under the model?
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
    --format=csv -lms 200 > "$OUT/two_streams_clocks.csv" 2>&1 &
  SMI=$!
  S="timeout 100 python bench/two_streams.py --memory-limit-gib $CAP"
  $S --task pose --arch 1b --batch 8 --splits 1 2 4 --out "$OUT/two_streams_pose_1b.json" 2>&1 | grep -v Warn
  $S --task pose --arch 0.3b --batch 16 --splits 1 2 4 --out "$OUT/two_streams_pose_0.3b.json" 2>&1 | grep -v Warn
  $S --task pose --arch 2b --batch 4 --splits 1 2 --out "$OUT/two_streams_pose_2b.json" 2>&1 | grep -v Warn
  $S --task pose --arch 1b --batch 8 --fp8 --splits 1 2 --out "$OUT/two_streams_fp8_pose_1b.json" 2>&1 | grep -v Warn
  $S --task seg --arch 1b --batch 8 --splits 1 2 --out "$OUT/two_streams_seg_1b.json" 2>&1 | grep -v Warn
  kill $SMI
  python bench/clock_summary.py "$OUT/two_streams_clocks.csv"
elif [ "$1" = power ]; then
  # after call 92 (the card sat at its 700 W power cap, SM clock ~1650 of 1980 MHz, while every model ran; the matmul
  # peak is a 35 ms burst at the boost clock): bench and bench_mae now also measure the peak after 3 s of load and
  # the SM clock while each variant is timed. Pose 1b (+ FP8) and 2b, MAE-0.3B eager / optimized (no FA4 here)
  install_coco_wheel
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
    --format=csv -lms 200 > "$OUT/power_clocks.csv" 2>&1 &
  SMI=$!
  B="timeout 130 python -m opensapiens.cli.main bench --iters 10"
  $B --task pose --arch 1b --batch 8 --fp8 --out "$OUT/power_pose_1b.json" | grep -v '^{'
  $B --task pose --arch 2b --batch 4 --out "$OUT/power_pose_2b.json" | grep -v '^{'
  timeout 300 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --steps 10 --warmup 3 \
    --in-memory --variants eager,optimized --memory-limit-gib $CAP --out "$OUT/power_mae_0.3b.json" 2>&1 \
    | grep -v Warn | grep "img/s\|peak\|failed"
  kill $SMI
  python bench/clock_summary.py "$OUT/power_clocks.csv"
elif [ "$1" = input-power ]; then
  # after call 94 (the pose models run at the 700 W cap): does the input change the clock? bench feeds N(0, 1) noise;
  # photos are smooth. Pose 1b and 0.3b, fused, on noise / synthetic humans / a grey image, A B C A B C
  install_coco_wheel
  timeout 150 python bench/input_power.py --task pose --arch 1b --batch 8 --out "$OUT/input_power_pose_1b.json" \
    2>&1 | grep -v Warn
  timeout 150 python bench/input_power.py --task pose --arch 0.3b --batch 16 --out "$OUT/input_power_pose_0.3b.json" \
    2>&1 | grep -v Warn
elif [ "$1" = power-again ]; then
  # call 94's MAE clocks sampled the compile too; bench_mae.py now samples the timed steps only. MAE-0.3B eager /
  # optimized, then pose 0.3b (its first run with both peaks); whether nvidia-smi offers an instantaneous power reading
  install_coco_wheel
  nvidia-smi --query-gpu=power.draw,power.draw.instant,power.draw.average --format=csv 2>&1 | tail -2
  timeout 300 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --steps 10 --warmup 3 \
    --in-memory --variants eager,optimized --memory-limit-gib $CAP --out "$OUT/power_mae_0.3b_timed.json" 2>&1 \
    | grep -v Warn | grep "img/s\|peak\|failed"
  timeout 130 python -m opensapiens.cli.main bench --iters 10 --task pose --arch 0.3b --batch 16 \
    --out "$OUT/power_pose_0.3b.json" | grep -v '^{'
elif [ "$1" = energy ]; then
  # after call 97: energy per image from power.draw.instant (the driver has it); pose-0.3B eager / fused / FP8
  install_coco_wheel
  timeout 150 python -m opensapiens.cli.main bench --iters 20 --task pose --arch 0.3b --batch 16 --fp8 \
    --out "$OUT/energy_pose_0.3b.json" | grep -v '^{'
elif [ "$1" = suite ]; then
  # the whole test suite on the GPU host and nothing else: it outgrew 420 s there (call 63; each torchrun test starts
  # processes that import torch in 3-5 s), so it gets a call of its own
  # (each verdict goes to $OUT/suite_log.txt as it ends: call 102, cut by the session's device time, kept nothing)
  install_coco_wheel
  ls .whlav/*.whl > /dev/null 2>&1 && python -m pip install -q --no-deps .whlav/*.whl 2>&1 | tail -1
  timeout 570 python -m pytest -v -rfE --tb=line -p no:cacheprovider --durations=10 > "$OUT/suite_log.txt" 2>&1
  grep -c PASSED "$OUT/suite_log.txt"; grep -E "FAILED|ERROR" "$OUT/suite_log.txt" | head -20; tail -16 "$OUT/suite_log.txt"
elif [ "$1" = tenth-verify ]; then
  # what the tenth session changed after its last device call: the whole suite on the GPU (torchrun's workers now
  # find the package; pycocotools from .whlcoco/ where carried), then one-image predict (a lone image no longer padded
  # to batch_size: "second result" should drop from ~1 s; loading without the head's init on meta)
  install_coco_wheel
  timeout 420 python -m pytest -rfE --tb=line -p no:cacheprovider 2>&1 | tail -15
  e2e_images
  random_seg_checkpoint
  predict_one_timed
elif [ "$1" = eleventh-diag ]; then
  # call 63's suite stopped at its 420 s limit in the torchrun MAE test (318th); that run alone, outside pytest, every
  # process dumping its Python stacks (faulthandler) if it is still running after 100 s; the pytest test alone if
  # the run finishes. Then the eager calls beside the head's background compile (1.52 s for one image in call 63)
  # at Python's 5 ms switch interval and at 0.2 ms, each in a fresh process with empty compile caches; then one
  # image through the CLI (a compile outliving the main thread failed in call 63)
  df -h /dev/shm | tail -1; nproc; python --version
  SMALL=$(python -c "
import sys; sys.path.insert(0, 'tests')
import numpy as np
from test_mae_pretrain import SMALL, jpeg, smooth_image
from opensapiens.data.shards import ShardWriter
rng = np.random.default_rng(0)
with ShardWriter('/tmp/pt/shards', max_count=5) as w:
    [w.write(f'img{i:03d}', jpeg(smooth_image(rng)), '.jpg') for i in range(20)]
print(' '.join(SMALL))")
  (sleep 100; pkill -ABRT -f "cli.main pretrain"; pkill -ABRT -f forkserver) > /dev/null 2>&1 &
  WATCH=$!
  (cd /tmp/pt && OMP_NUM_THREADS=1 PYTHONFAULTHANDLER=1 /usr/bin/time -f "torchrun pretrain: %e s, rc %x" \
    python -m torch.distributed.run --standalone --nproc_per_node 2 -m opensapiens.cli.main pretrain --data \
    /tmp/pt/shards --steps 8 --batch-size 2 --workers 2 --shuffle-buffer 4 --ckpt-interval 4 --keep-last 0 \
    --device cpu --deterministic $SMALL --out /tmp/pt/straight > "$OUT/pretrain_torchrun.log" 2>&1)
  kill $WATCH 2> /dev/null
  tail -5 "$OUT/pretrain_torchrun.log"
  if grep -q "rc 0" "$OUT/pretrain_torchrun.log"; then
    timeout 200 python -m pytest -rfE --tb=short -p no:cacheprovider --durations=3 \
      tests/test_train_distributed.py tests/test_background_compile.py 2>&1 | tail -25
  fi
  overlap_then_predict_one default 0.0002
elif [ "$1" = eleventh-verify ]; then
  # the eleventh session's fixes on the GPU: the CUDA tests of the inference path (the full suite outgrew call 63's
  # 420 s on this host; its torchrun tests are CPU-only and ran here); the eager calls beside the head's compile at a
  # 0.2 ms switch interval (the caller's forward raised NameError there in call 64) and at Python's 5 ms; one image
  # through the CLI (images read on threads, no loader processes; the compile now finishes at exit)
  install_coco_wheel
  timeout 240 python -m pytest -rfE --tb=short -p no:cacheprovider --durations=5 tests/test_background_compile.py \
    tests/test_cli.py tests/test_fused.py tests/test_predictors.py tests/test_optimize.py tests/test_pipeline.py \
    tests/test_codec.py tests/test_topdown.py tests/test_fp8.py 2>&1 | tail -15
  overlap_then_predict_one 0.0002 0.0002 default
elif [ "$1" = predict-folder ]; then
  # opensapiens predict over a folder of 512 1080p JPEGs as a user runs it (every documented output written, with and
  # without the pictures), random weights; its images/s line (the run after loading, warm-up and the head's
  # background compile included). Model-only rates for comparison: `opensapiens bench` (not in this call)
  folder512_and_checkpoints
  P="python -m opensapiens.cli.main predict"
  for t in pose seg; do for v in "" --no-vis; do
    B=$([ $t = pose ] && echo 16 || echo 8)
    /usr/bin/time -f "  process: %e s" timeout 150 $P --task $t --checkpoint /tmp/${t}_0.3b.safetensors /tmp/f512 \
      --out /tmp/out_$t$v --batch-size $B $v 2>&1 | grep -v Warn | tail -2 | sed "s/^/$t $v: /"
  done; done
elif [ "$1" = predict-exit ]; then
  # call 66: seg predict over 512 JPEGs wrote every output in 30 s and had not exited at 80 s (killed). Again, with
  # every thread's Python stack dumped (faulthandler, SIGABRT) if the process is still running after 100 s; the CLI
  # now says when it waits for the head's compile at exit. Then predict's steady rate on 2048 images (the compile
  # cached by the runs before), pose and seg 0.3b with and without pictures, and model-only beside (bench, fused)
  folder512_and_checkpoints
  P="python -m opensapiens.cli.main predict"
  PYTHONFAULTHANDLER=1 /usr/bin/time -f "  process: %e s, rc %x" timeout -s ABRT 100 $P --task seg --checkpoint \
    /tmp/seg_0.3b.safetensors /tmp/f512 --out /tmp/out_seg --batch-size 8 2>&1 | grep -v Warn | tr '\r' '\n' \
    | grep -v "img/s\]$" | tail -80
  mkdir -p /tmp/f2048 && for k in 0 1 2 3; do for f in /tmp/f512/*.jpg; do cp "$f" "/tmp/f2048/$(basename "$f" .jpg)_$k.jpg"; done; done
  for t in pose seg; do for v in --no-vis ""; do
    B=$([ $t = pose ] && echo 16 || echo 8)
    /usr/bin/time -f "  process: %e s" timeout 150 $P --task $t --checkpoint /tmp/${t}_0.3b.safetensors /tmp/f2048 \
      --out /tmp/out2_$t$v --batch-size $B $v 2>&1 | grep -v Warn | tr '\r' '\n' | tail -3 | sed "s/^/$t $v: /"
  done; done
  timeout 150 python -m opensapiens.cli.main bench --task pose --arch 0.3b --batch 16 --iters 10 | grep -v '^{'
  timeout 150 python -m opensapiens.cli.main bench --task seg --arch 0.3b --batch 8 --iters 10 | grep -v '^{'
elif [ "$1" = e2e-targets ]; then
  # issue #7's end-to-end rows on the card that is lent (targets-infer's last two lines): pose-0.3b over 2048 1080p
  # JPEGs (host decode and nvJPEG) and seg-1b, model-only beside each
  C=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' _)
  e2e_images
  E="python -m opensapiens.cli.main bench --iters 10 --e2e /tmp/e2e2048"  # the default path, model-only beside
  timeout 250 $E --task pose --arch 0.3b --batch 16 --e2e-decode cpu,gpu --out "$OUT/e2e_pose_0.3b_$C.json" \
    | grep -v '^{'
  timeout 200 $E --task seg --arch 1b --batch 8 --out "$OUT/e2e_seg_1b_$C.json" | grep -v '^{'
elif [ "$1" = readback ]; then
  # (after the ninth session, which had no GPU) the MAE-0.3B step with FA4 and the whole-model compile, reading each
  # step's loss back at once (the loop before) / reading two steps late (now) / A / B again; then the last one fed
  # by the real streaming loader (1280x1024 JPEGs, nvJPEG, 8 workers) beside it; pose-1B inference with FA4 (the
  # opt-in path, refactored since its last GPU run)
  timeout 420 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --steps 10 --warmup 3 \
    --variants optimized-fa4-model-read,optimized-fa4-model,optimized-fa4-model-read,optimized-fa4-model \
    --memory-limit-gib $CAP --out "$OUT/mae_0.3b_readback.json" 2>&1 | grep -v Warn | grep "img/s\|peak\|failed"
  timeout 150 python -m opensapiens.cli.main bench --task pose --arch 1b --batch 8 --iters 10 --fa4 \
    --out "$OUT/fa4_pose_1b_rerun.json" | grep -v '^{'
elif [ "$1" = readback-tests ]; then
  # the ninth session's changes under CUDA: the step results' pinned copy, the loops' late reads, the masking noise
  # drawn outside the compiled graph; with FA4 installed, the FA4 and inference-optimization tests too
  timeout 500 python -m pytest -rA --tb=short tests/test_train.py tests/test_mae_pretrain.py \
    tests/test_fa4_attention.py tests/test_optimize.py tests/test_background_compile.py tests/test_fused.py \
    2>&1 | grep -i "passed\|failed\|error" | tail -50
  # the first result without the compile: one image through `opensapiens predict` (the head eager, its compile in
  # the background), timed from the shell, twice (the second with Inductor's on-disk cache warm)
  python bench/make_images.py --n 1 --size 1080x1920 --out /tmp/one > /dev/null
  random_seg_checkpoint
  for k in 1 2; do /usr/bin/time -f "predict one image, run $k: %e s" timeout 120 python -m opensapiens.cli.main \
    predict --task seg --checkpoint /tmp/seg_0.3b.safetensors /tmp/one --out /tmp/one_out 2>&1 | tail -2; done
elif [ "$1" = mae-final ]; then
  # after call 25: the kept attention kernels (one FMA per score and the unmasked loop in the forward; the backward as
  # before), the fused bias + GELU op, the device-side skip. GPU tests; the attention sweep; the GELU kernels;
  # MAE-0.3B with everything / Inductor's GELU / SDPA in the decoder / everything again; MAE-1B SDPA / ours
  python -m pytest --tb=short tests/test_flash_attention.py tests/test_gelu_kernels.py \
    tests/test_mae.py tests/test_mae_pretrain.py tests/test_train.py::test_non_finite_loss_skips_the_step 2>&1 | tail -4
  timeout 150 python bench/flash_attention_train.py --shapes mae-decoder --out "$OUT/flash_attention_final.json" \
    2>&1 | grep -v Warn | grep -v "^ *aten::\|^ *cuda\|^---\|^ *Name "
  timeout 80 python bench/gelu_kernels.py --out "$OUT/gelu_kernels_final.json" 2>&1 | grep -v Warn | tail -20
  FC=""; [ -f "$OUT/flash_attention_final.json" ] && FC="--flash-config $OUT/flash_attention_final.json"
  timeout 240 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --steps 10 \
    --warmup 3 --variants optimized,optimized-inductor-gelu,optimized-sdpa,optimized --profile $FC \
    --memory-limit-gib $CAP --out "$OUT/mae_0.3b_final.json" 2>&1 | grep -v Warn | grep "img/s\|kind\|peak"
  [ -f "$OUT/mae_0.3b_final.trace.json" ] && python bench/trace_summary.py "$OUT/mae_0.3b_final.trace.json" --top 25
  timeout 170 python bench/bench_mae.py --arch 1b --batch 16 --input-size 1024x1024 --in-memory --checkpointing \
    --steps 6 --warmup 2 --variants optimized-sdpa,optimized $FC --memory-limit-gib $CAP \
    --out "$OUT/mae_1b_final.json" 2>&1 | grep -v Warn | grep "img/s\|peak"
elif [ "$1" = mae-encoder ]; then
  # the training tests on the GPU (fine-tuning and pretraining loops: the device-side skip with fused AdamW); the
  # attention sweep with more pipelining stages for the backward; the encoder's shape (head dim 64) swept; MAE-0.3B
  # with the decoder on our kernels / the encoder too / the decoder alone again
  python -m pytest --tb=short tests/test_train.py tests/test_flash_attention.py tests/test_mae_pretrain.py \
    2>&1 | tail -3
  timeout 130 python bench/flash_attention_train.py --shapes mae-decoder --out "$OUT/flash_attention_stages.json" \
    2>&1 | grep -v Warn | grep -v "^ *aten::\|^ *cuda\|^---\|^ *Name "
  timeout 110 python bench/flash_attention_train.py --shapes mae-encoder --out "$OUT/flash_attention_encoder.json" \
    2>&1 | grep -v Warn | grep -v "^ *aten::\|^ *cuda\|^---\|^ *Name "
  FC=""; for f in flash_attention_stages flash_attention_encoder; do
    [ -f "$OUT/$f.json" ] && FC="$FC $OUT/$f.json"; done
  [ -n "$FC" ] && FC="--flash-config$FC"
  timeout 240 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --steps 10 \
    --warmup 3 --variants optimized,optimized-flash64,optimized $FC --memory-limit-gib $CAP \
    --out "$OUT/mae_0.3b_encoder.json" 2>&1 | grep -v Warn | grep "img/s\|peak\|configs"
elif [ "$1" = final-fp8 ]; then
  # the whole test suite on a GPU (CUDA paths of every module), then the FP8 rows not yet run with the tanh GELU pass
  timeout 200 python -m pytest -x -n 8 2>&1 | tail -4
  B="timeout 100 python -m opensapiens.cli.main bench --iters 10 --fp8"
  $B --task pose --arch 0.3b --batch 16 --out "$OUT/fp8_pose_0.3b_tanh.json" | grep -v '^{'
  $B --task pose --arch 0.6b --batch 8 --out "$OUT/fp8_pose_0.6b_tanh.json" | grep -v '^{'
  $B --task seg --arch 1b --batch 8 --out "$OUT/fp8_seg_1b_tanh.json" | grep -v '^{'
elif [ "$1" = steady ]; then
  # pose-0.3b end to end over 2048 JPEGs (the 512 of make_images, each 4 times): a pipeline's fill and drain
  # (~0.1 s: the first batch's reads and decodes, the last batch's writes) weigh a quarter as much as over 512
  e2e_images
  timeout 240 python -m opensapiens.cli.main bench --task pose --arch 0.3b --batch 16 --iters 10 \
    --e2e /tmp/e2e2048 --e2e-decode cpu,gpu --out "$OUT/fused_pose_0.3b_e2e2048.json" | grep -v '^{'
elif [ "$1" = latency ]; then
  # single-image latency: eager, the default fused path, and the whole-model compile replayed as CUDA graphs
  B="timeout 95 python -m opensapiens.cli.main bench --iters 20 --batch 1 --cuda-graphs"
  $B --task pose --arch 0.3b --out "$OUT/latency_pose_0.3b_b1.json" | grep -v '^{'
  $B --task pose --arch 1b --out "$OUT/latency_pose_1b_b1.json" | grep -v '^{'
elif [ "$1" = roofline ]; then
  # the parts of one block (GEMMs bf16/FP8, attention per backend, elementwise passes) against the whole block;
  # then the whole pose models by kernel kind, and Inductor's max-autotune (Triton GEMMs with fused epilogues)
  R="timeout 120 python bench/roofline.py"
  $R --arch 1b --batch 8 --profile --out "$OUT/roofline_1b.json" 2>&1 | grep -v Warn
  $R --arch 0.3b --batch 16 --out "$OUT/roofline_0.3b.json" 2>&1 | grep -v Warn
  $R --arch 2b --batch 4 --out "$OUT/roofline_2b.json" 2>&1 | grep -v Warn
  B="timeout 170 python -m opensapiens.cli.main bench --iters 8 --profile"
  $B --task pose --arch 1b --batch 8 --out "$OUT/profile_pose_1b.json" | grep -v '^{'
  timeout 330 python -m opensapiens.cli.main bench --iters 8 --profile --task pose --arch 0.3b --batch 16 \
    --compile-mode max-autotune-no-cudagraphs --out "$OUT/profile_pose_0.3b.json" | grep -v '^{'
elif [ "$1" = profile ]; then
  # not yet run: where the remaining inference and fine-tuning time goes, by kernel kind (GEMM / attention /
  # convolution / fused elementwise / other), for the next round of work on the MFU targets
  B="timeout 150 python -m opensapiens.cli.main bench --iters 8 --profile"
  $B --task pose --arch 1b --batch 8 --out "$OUT/profile_pose_1b.json" | grep -v '^{'
  $B --task pose --arch 0.3b --batch 16 --out "$OUT/profile_pose_0.3b.json" | grep -v '^{'
  $B --task seg --arch 0.3b --batch 8 --channels-last --out "$OUT/profile_seg_0.3b.json" | grep -v '^{'
  # single-image latency: does replaying the forward as CUDA graphs pay once launches are not hidden by big batches?
  $B --task pose --arch 0.3b --batch 1 --cuda-graphs --out "$OUT/latency_pose_0.3b_b1.json" | grep -v '^{'
  timeout 150 python bench/bench_train.py --task seg --arch 0.3b --batch 16 --fsdp --compile --skip-baseline \
    --checkpointing blocks+head --checkpoint-blocks 12 --save-attention --seg-loss-resolution logits \
    --channels-last --steps 3 --warmup 2 --profile --memory-limit-gib $CAP --out "$OUT/profile_train_seg_0.3b.json" \
    2>&1 | grep -v Warning | grep "kind"
elif [ "$1" = closing ]; then
  # pose end to end with the heatmaps decoded in bf16 in place (no float32 copy), then pose 1b with FP8
  python bench/make_images.py --n 512 --size 1080x1920 --out /tmp/e2e > /dev/null
  timeout 150 python -m opensapiens.cli.main bench --task pose --arch 0.3b --batch 16 --iters 8 --e2e /tmp/e2e \
    --e2e-decode cpu,gpu --out "$OUT/infer_pose_0.3b_e2e_bf16decode.json" | grep -v '^{'
  timeout 280 python -m opensapiens.cli.main bench --task pose --arch 1b --batch 8 --iters 8 --fp8 \
    --out "$OUT/infer_pose_1b_gemm_embed.json" | grep -v '^{'
elif [ "$1" = last ]; then
  # host decode ceiling, then pose end to end with OpenCV host decode; pose 1b (+FP8) and 2b with the GEMM patch embed
  python bench/make_images.py --n 512 --size 1080x1920 --out /tmp/e2e > /dev/null
  for t in 8 16; do python bench/host_decode.py /tmp/e2e --threads $t --n 256 --out "$OUT/host_decode_$t.json"; done
  timeout 150 python -m opensapiens.cli.main bench --task pose --arch 0.3b --batch 16 --iters 8 --e2e /tmp/e2e \
    --e2e-decode cpu,gpu --out "$OUT/infer_pose_0.3b_e2e_cv2.json" | grep -v '^{'
  timeout 170 python -m opensapiens.cli.main bench --task pose --arch 1b --batch 8 --iters 8 --fp8 \
    --out "$OUT/infer_pose_1b_gemm_embed.json" | grep -v '^{'
  timeout 170 python -m opensapiens.cli.main bench --task pose --arch 2b --batch 4 --iters 8 \
    --out "$OUT/infer_pose_2b_gemm_embed.json" | grep -v '^{'
elif [ "$1" = final ]; then
  # after the patch-embedding GEMM and host decode: pose end to end over 512 images, decoded by nvJPEG and on the host
  python bench/make_images.py --n 512 --size 1080x1920 --out /tmp/e2e > /dev/null
  timeout 150 python -m opensapiens.cli.main bench --task pose --arch 0.3b --batch 16 --iters 8 --e2e /tmp/e2e \
    --e2e-decode gpu,cpu --out "$OUT/infer_pose_0.3b_e2e_decode.json" | grep -v '^{'
  # 2B normals at batch 16: + attention outputs kept (no attention recompute), head by slices of 2 images
  timeout 200 python bench/bench_train.py --task normal --arch 2b --batch 16 --baseline-batch 8 --fsdp --compile \
    --checkpointing blocks+head --head-chunk 2 --save-attention --channels-last --steps 3 --warmup 2 \
    --memory-limit-gib $CAP --out "$OUT/train_normal_2b_saveattn.json" 2>&1 | grep -v Warning | tail -3
  # the dense heads' share of inference time (depth and normal were never measured)
  for t in depth normal; do
    timeout 80 python -m opensapiens.cli.main bench --task $t --arch 0.3b --batch 8 --iters 8 \
      --out "$OUT/infer_${t}_0.3b.json" | grep -v '^{'
  done
  # MAE with the GEMM patch embedding
  timeout 150 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory --attention \
    --variants optimized --steps 4 --warmup 2 --memory-limit-gib $CAP --out "$OUT/mae_0.3b_gemm_embed.json" 2>&1 \
    | grep -v Warning | grep "attention\|optimized\|peak"
  # 0.3B seg: 12 of 24 blocks recomputed, attention outputs kept, NHWC head
  timeout 100 python bench/bench_train.py --task seg --arch 0.3b --batch 16 --baseline-batch 8 --fsdp --compile \
    --checkpointing blocks+head --checkpoint-blocks 12 --save-attention --seg-loss-resolution logits \
    --channels-last --steps 4 --warmup 2 --memory-limit-gib $CAP --out "$OUT/train_seg_0.3b_saveattn.json" 2>&1 \
    | grep -v Warning | tail -3
elif [ "$1" = next ]; then
  # what this project changed after its last GPU call, not yet measured (see docs/performance.md):
  # 2B normals at batch 16 with the head checkpointed by slices of 4 images (predicted peak ~64 GiB of 79.65)
  timeout 300 python bench/bench_train.py --task normal --arch 2b --batch 16 --baseline-batch 8 --fsdp --compile \
    --checkpointing blocks+head --head-chunk 4 --channels-last --steps 3 --warmup 2 --memory-limit-gib $CAP \
    --out "$OUT/train_normal_2b_chunk.json" 2>&1 | grep -v Warning | tail -3
  # 0.3B seg at batch 16 without block recomputation, the head by slices of 4 images
  timeout 200 python bench/bench_train.py --task seg --arch 0.3b --batch 16 --baseline-batch 8 --fsdp --compile \
    --checkpointing head --head-chunk 4 --channels-last --seg-loss-resolution logits --steps 4 --warmup 2 \
    --memory-limit-gib $CAP --out "$OUT/train_seg_0.3b_chunk.json" 2>&1 | grep -v Warning | tail -3
elif [ "$1" = extra ]; then
  # the MAE loader check (rerun), NHWC heads for seg inference and fine-tuning
  timeout 140 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --variants optimized \
    --steps 6 --warmup 2 --memory-limit-gib $CAP --out "$OUT/mae_0.3b_loader.json" 2>&1 | grep -v Warning | tail -6
  timeout 100 python -m opensapiens.cli.main bench --task seg --arch 0.3b --batch 8 --iters 8 --channels-last \
    --out "$OUT/infer_seg_0.3b.json" | grep -v '^{'
  timeout 120 python bench/bench_train.py --task seg --arch 0.3b --batch 16 --baseline-batch 8 --fsdp --compile \
    --checkpointing blocks+head --checkpoint-blocks 12 --seg-loss-resolution logits --channels-last --steps 4 \
    --warmup 2 --memory-limit-gib $CAP --out "$OUT/train_seg_0.3b_nhwc.json" 2>&1 | grep -v Warning | tail -3
elif [ "$1" = train ]; then
  # Sapiens-2B normals at 1024x768: plain bf16 + block checkpointing at batch 8 vs the optimized step at batch 16
  timeout 300 python bench/bench_train.py --task normal --arch 2b --batch 16 --baseline-batch 8 --fsdp --compile \
    --checkpointing blocks+head --steps 3 --warmup 2 --memory-limit-gib $CAP --out "$OUT/train_normal_2b.json" 2>&1 \
    | grep -v Warning | tail -4
  # Sapiens-0.3B seg at 1024x768: plain bf16 batch 8 vs batch 16 recomputing half the blocks; top kernels
  timeout 200 python bench/bench_train.py --task seg --arch 0.3b --batch 16 --baseline-batch 8 --fsdp --compile \
    --checkpointing blocks+head --checkpoint-blocks 12 --seg-loss-resolution logits --steps 4 --warmup 2 --profile \
    --memory-limit-gib $CAP --out "$OUT/train_seg_0.3b_h200.json" 2>&1 | grep -v Warning | tail -40
  # MAE-0.3B at 1024^2: the optimized step fed by the streaming loader against the resident batch
  timeout 220 python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --variants optimized \
    --steps 6 --warmup 2 --memory-limit-gib $CAP --out "$OUT/mae_0.3b_loader.json" 2>&1 | grep -v Warning | tail -6
elif [ "$1" = video ]; then
  video_predict video "pose 16" "pose 16 --no-vis" "seg 8" "seg 8 --no-vis"
  B="timeout 150 python -m opensapiens.cli.main bench --iters 10"
  $B --task pose --arch 0.3b --batch 16 --out "$OUT/video_model_pose_0.3b.json" | grep -v '^{'
  $B --task seg --arch 0.3b --batch 8 --out "$OUT/video_model_seg_0.3b.json" | grep -v '^{'
elif [ "$1" = video-spy ]; then
  # call 106: seg with pictures at 26.7 frames/s against 85 without them (pose: 69 and 149); every thread of the seg
  # clip's run sampled by py-spy (wheel in .whlspy/), native frames included; summarized by bench/spy_summary.py
  python -m pip install -q --no-deps .whlspy/*.whl 2>&1 | tail -1
  FRAMES=${FRAMES:-300} video_predict video-spy "seg 8"
  timeout 150 py-spy record -r 50 --threads --idle --native -f raw -o "$OUT/spy_video_seg.txt" -- \
    python -m opensapiens.cli.main predict --task seg --checkpoint /tmp/seg_0.3b.safetensors --batch-size 8 \
    /tmp/clip.mp4 --out /tmp/vspy 2>&1 | tail -3
  python bench/spy_summary.py "$OUT/spy_video_seg.txt" --thread opensapiens-encode --within encode --top 8
  python bench/spy_summary.py "$OUT/spy_video_seg.txt" --thread MainThread --within run_video --top 8 | head -12
  gzip -9 "$OUT/spy_video_seg.txt"  # 12.5 MB of raw stacks -> 0.9 MB (spy_summary.py reads either)
elif [ "$1" = x264-threads ]; then
  # call 120: PyAV's encoders default to slice threading, which gives x264 its sliced threads (made for latency);
  # VideoWriter now asks for frame threads. The encoder alone, both ways (bench/video_encode.py), then the seg clip
  # with pictures (1080x3840 side-by-side frames, x264-bound in call 107) with frame threads and, the patch reversed,
  # with sliced threads; and the tests of this session's changes on this host
  install_coco_wheel
  ls .whlav/*.whl > /dev/null 2>&1 && python -m pip install -q --no-deps .whlav/*.whl 2>&1 | tail -1
  timeout 200 python bench/video_encode.py --frames 150 --out "$OUT/video_encode_h200.json"
  timeout 200 python -m pytest -q -p no:cacheprovider tests/test_loader_workers.py tests/test_curate.py \
    tests/test_io.py 2>&1 | tail -4
  video_predict x264-frame "seg 8"
  sed -i '/frame threads: PyAV/,+1d' opensapiens/io/video.py  # the two lines that ask for frame threads
  ! grep -q 'thread_type = "FRAME"' opensapiens/io/video.py && echo "removed: sliced threads again"
  video_predict x264-slice "seg 8"
elif [ "$1" = sapiens2 ]; then
  # Sapiens2 on the GPU for the first time (call 126): its tests on this host, grouped-query attention per SDPA
  # backend and the predictors on CUDA against fp32 on the CPU (bench/sapiens2_cuda.py), then opensapiens bench of
  # pose: eager against the default path (the blocks as they are, the head compiled) and the whole-model compile
  install_coco_wheel
  timeout 150 python -m pytest -q -p no:cacheprovider tests/test_sapiens2.py tests/test_sapiens2_training.py 2>&1 \
    | tail -3
  timeout 200 python bench/sapiens2_cuda.py --out "$OUT/sapiens2_cuda.json"
  for run in "pose sapiens2_0.4b 16" "pose sapiens2_1b 8"; do
    read -r task arch batch <<< "$run"
    timeout 200 python -m opensapiens.cli.main bench --iters 10 --profile --compiled --task $task --arch $arch \
      --batch $batch --out "$OUT/sapiens2_${task}_${arch#sapiens2_}.json" | grep -v '^{'
  done
elif [ "$1" = sapiens2-dense ]; then
  # call 127: Sapiens2's default CUDA path is now the whole model compiled in the background (eager until then):
  # bench of pose 0.4B / 1B, seg and normal 1B against eager (bench waits for the compile: compile s), then
  # predict on one image twice (a cold and a warm Inductor cache: what the first result and the exit wait cost)
  install_coco_wheel
  timeout 100 python -m pytest -q -p no:cacheprovider tests/test_sapiens2.py 2>&1 | tail -2
  for run in "pose sapiens2_0.4b 16" "pose sapiens2_1b 8" "seg sapiens2_1b 8" "normal sapiens2_1b 8"; do
    read -r task arch batch <<< "$run"
    timeout 150 python -m opensapiens.cli.main bench --iters 10 --task $task --arch $arch --batch $batch \
      --out "$OUT/sapiens2_default_${task}_${arch#sapiens2_}.json" | grep -v '^{'
  done
  python -c "from opensapiens.models import build_model; from opensapiens.checkpoints import save_model; \
save_model(build_model('seg', 'sapiens2_0.4b'), '/tmp/s2seg.safetensors')"
  python bench/make_images.py --n 1 --size 1080x1920 --out /tmp/one > /dev/null
  for pass in cold warm; do
    /usr/bin/time -f "predict seg 0.4b one image ($pass cache): %e s" timeout 200 python -m opensapiens.cli.main \
      predict --task seg --checkpoint /tmp/s2seg.safetensors /tmp/one --out /tmp/one_out_$pass 2>&1 | tail -3
  done
elif [ "$1" = pointmap-train ]; then
  # call 128: Sapiens2 pointmap fine-tuning on CUDA for the first time. bench_train: 0.4B at the official 8 images
  # per GPU, eager bf16 against the optimized step in float32 (the recipe's precision) and in bf16; then a short
  # `opensapiens train` on synthetic data rendered on the GPU, and `eval` of its model on a rendered folder
  install_coco_wheel
  BT="timeout 170 python bench/bench_train.py --task pointmap --arch sapiens2_0.4b --batch 8 --steps 6 --warmup 2"
  $BT --precision pytorch --channels-last --out "$OUT/train_pointmap_0.4b_fp32.json" | grep -v '^{'
  $BT --channels-last --skip-baseline --out "$OUT/train_pointmap_0.4b_bf16.json" | grep -v '^{'
  timeout 150 python -m opensapiens.cli.main train --task pointmap --arch sapiens2_0.4b --data synth --steps 24 \
    --batch-size 4 --log-interval 8 --ckpt-interval 0 --out /tmp/pm_run 2>&1 | grep -v 'step/s' | tail -4
  grep '"train"' /tmp/pm_run/metrics.jsonl | cut -c1-220
  timeout 60 python -m opensapiens.cli.main synth --out /tmp/pm_val --n 8 --device cuda --seed 9 > /dev/null
  timeout 120 python -m opensapiens.cli.main eval --task pointmap --checkpoint /tmp/pm_run/final.safetensors \
    --data /tmp/pm_val --quiet --out "$OUT/eval_pointmap_0.4b_24steps.json"
elif [ "$1" = pointmap-layout ]; then
  # call 129: call 128's optimized bf16 step (NHWC head) was slower than eager: the same step with the head NCHW and
  # NHWC, twice each in turn (noise), the fp32 step at batch 4 (8 did not fit), then pointmap inference speed
  install_coco_wheel
  BT="timeout 100 python bench/bench_train.py --task pointmap --arch sapiens2_0.4b --steps 6 --warmup 2"
  for k in 1 2; do
    $BT --batch 8 --out "$OUT/train_pointmap_0.4b_nchw_$k.json" | grep -v '^{'
    $BT --batch 8 --skip-baseline --channels-last --out "$OUT/train_pointmap_0.4b_nhwc_$k.json" | grep -v '^{'
  done
  $BT --batch 4 --precision pytorch --skip-baseline --out "$OUT/train_pointmap_0.4b_fp32_b4.json" | grep -v '^{'
  timeout 170 python -m opensapiens.cli.main bench --iters 10 --task pointmap --arch sapiens2_1b --batch 8 \
    --out "$OUT/sapiens2_default_pointmap_1b.json" | grep -v '^{'
elif [ "$1" = s2-layout ]; then
  # call 131: does the NHWC head layout pay for Sapiens2's other heads? seg (deconvolution head, kept NHWC by
  # train) and normal (pixel shuffle, kept NCHW since call 129) 0.4B fine-tune steps, NCHW then NHWC in turn
  install_coco_wheel
  BT="timeout 100 python bench/bench_train.py --arch sapiens2_0.4b --batch 8 --steps 6 --warmup 2 --skip-baseline"
  for task in seg normal; do
    $BT --task $task --out "$OUT/train_${task}_s2_0.4b_nchw.json" | grep -v '^{'
    $BT --task $task --channels-last --out "$OUT/train_${task}_s2_0.4b_nhwc.json" | grep -v '^{'
  done
elif [ "$1" = pointmap-folder ]; then
  # call 132: a pointmap fine-tune from a folder (cameras from meta/, the resampled-depth augmentation, loader
  # workers) on CUDA in bf16, validated on the same folder, then `eval` of the model it wrote
  install_coco_wheel
  timeout 60 python -m opensapiens.cli.main synth --out /tmp/pmf --n 16 --device cuda --seed 21 > /dev/null
  timeout 200 python -m opensapiens.cli.main train --task pointmap --arch sapiens2_0.4b --data /tmp/pmf \
    --val-data /tmp/pmf --steps 16 --batch-size 4 --precision bf16 --log-interval 8 --ckpt-interval 0 \
    --out /tmp/pmf_run 2>&1 | grep -v 'step/s' | tail -3
  grep '"eval"' /tmp/pmf_run/metrics.jsonl | cut -c1-400
  timeout 120 python -m opensapiens.cli.main eval --task pointmap --checkpoint /tmp/pmf_run/final.safetensors \
    --data /tmp/pmf --quiet --out "$OUT/eval_pointmap_folder_16steps.json"
elif [ "$1" = s2-losses ]; then
  # call 133: Sapiens2's own losses and the TF32 pointmap default. The 0.4B pointmap step at batch 4 in TF32, full
  # float32 and bf16 side by side; the 0.4B seg step with its Dice term; then short runs from synthetic data on the
  # GPU with the defaults (pointmap: TF32; seg: CE + Dice; pose: MSE x 10) and `eval` of the pointmap model
  install_coco_wheel
  BT="timeout 150 python bench/bench_train.py --arch sapiens2_0.4b --steps 6 --warmup 2 --skip-baseline"
  timeout 420 python bench/bench_train.py --arch sapiens2_0.4b --steps 6 --warmup 2 --skip-baseline \
    --task pointmap --batch 4 --precision tf32,fp32,bf16 --out "$OUT/train_pointmap_0.4b_precisions.json" \
    | grep -v '^{'  # (call 133 ran this under the 150 s of the others: killed before its first row)
  $BT --task seg --batch 8 --out "$OUT/train_seg_s2_0.4b_dice.json" | grep -v '^{'
  for task in pointmap seg pose; do
    timeout 150 python -m opensapiens.cli.main train --task $task --arch sapiens2_0.4b --data synth --steps 24 \
      --batch-size 4 --log-interval 8 --ckpt-interval 0 --out /tmp/s2_$task 2>&1 | grep -v 'step/s' | tail -2
    grep '"train"' /tmp/s2_$task/metrics.jsonl | cut -c1-200
    grep -o '"precision": "[a-z0-9]*"\|"clip_grad": [0-9.]*' /tmp/s2_$task/config.json | tr '\n' ' '; echo
  done
  timeout 60 python -m opensapiens.cli.main synth --out /tmp/pm_val --n 8 --device cuda --seed 9 > /dev/null
  timeout 120 python -m opensapiens.cli.main eval --task pointmap --checkpoint /tmp/s2_pointmap/final.safetensors \
    --data /tmp/pm_val --quiet --out "$OUT/eval_pointmap_0.4b_24steps_tf32.json"
elif [ "$1" = pointmap-precisions ]; then
  # call 134: call 133's first step again with the time it needs
  install_coco_wheel
  timeout 500 python bench/bench_train.py --arch sapiens2_0.4b --steps 6 --warmup 2 --skip-baseline \
    --task pointmap --batch 4 --precision tf32,fp32,bf16 --out "$OUT/train_pointmap_0.4b_precisions.json" \
    | grep -v '^{'
elif [ "$1" = resize-cost ]; then
  # call 137: what Sapiens2's official resampling costs on the device: the seg input resize (area / bicubic)
  # against bilinear at 1080p and 12 MP, and bicubic against bilinear pose crops; the device path against OpenCV
  install_coco_wheel
  timeout 200 python bench/bench_resize.py --device cuda --iters 20 --out "$OUT/resize_cost_cuda.json"
  timeout 100 python -m pytest -x -q -p no:cacheprovider tests/test_transforms.py tests/test_topdown.py 2>&1 | tail -3
elif [ "$1" = s2-4k ]; then
  # call 136: the 4K Sapiens2 backbone (window tokenizer, 4096x3072 inputs) beside the 1K one it feeds (1024x768):
  # features at batch 1, eager against the default path, and where the 4K run's time goes
  install_coco_wheel
  timeout 330 python -m opensapiens.cli.main bench --iters 10 --task features --arch sapiens2_1b_4k --batch 1 \
    --input-size 4096x3072 --profile --out "$OUT/sapiens2_features_1b_4k.json" | grep -v '^{'
  timeout 200 python -m opensapiens.cli.main bench --iters 10 --task features --arch sapiens2_1b --batch 1 \
    --out "$OUT/sapiens2_features_1b.json" | grep -v '^{'
elif [ "$1" = s2-5b ]; then
  # call 135: the 5B Sapiens2 models, unmeasured so far: pose and seg, eager against the default path (the whole
  # model compiled in the background; bench waits for it: compile s)
  install_coco_wheel
  for run in "pose 4" "seg 4"; do
    read -r task batch <<< "$run"
    timeout 270 python -m opensapiens.cli.main bench --iters 10 --task $task --arch sapiens2_5b --batch $batch \
      --out "$OUT/sapiens2_default_${task}_5b.json" | grep -v '^{'
  done
elif [ "$1" = pointmap-infer ]; then
  # call 130: the Sapiens2 rows' accuracy columns again, now taken from the compiled model (calls 126-127 compared
  # the eager fallback), and pointmap 0.4B inference speed (eager against the default path)
  install_coco_wheel
  for run in "pose sapiens2_0.4b 16" "seg sapiens2_1b 8" "pointmap sapiens2_0.4b 16"; do
    read -r task arch batch <<< "$run"
    timeout 150 python -m opensapiens.cli.main bench --iters 10 --task $task --arch $arch --batch $batch \
      --out "$OUT/sapiens2_default_${task}_${arch#sapiens2_}.json" | grep -v '^{'
  done
elif [ "$1" = s2-fused ]; then
  # call 138: Sapiens2's fused blocks (inference/fused2.py), the new default CUDA path: the GPU tests of the fused
  # blocks (bf16 and FP8 against fp32, the Triton kernels), then pose 0.4B / 1B: eager, the default (fused blocks,
  # head compiled), the whole-model compile (the previous default) and FP8 on the fused blocks, profiled
  install_coco_wheel
  timeout 200 python -m pytest -q -p no:cacheprovider tests/test_fused2.py tests/test_fused.py tests/test_optimize.py \
    tests/test_sapiens2.py 2>&1 | tail -4
  for run in "pose sapiens2_0.4b 16" "pose sapiens2_1b 8"; do
    read -r task arch batch <<< "$run"
    timeout 240 python -m opensapiens.cli.main bench --iters 10 --profile --compiled --fp8 --task $task --arch $arch \
      --batch $batch --out "$OUT/s2_fused_${task}_${arch#sapiens2_}.json" | grep -v '^{'
  done
elif [ "$1" = s2-fused-more ]; then
  # call 139: the fused default on seg (and FP8) / normal / pointmap 1B, the 4K backbone and pose 5B (and FP8)
  install_coco_wheel
  for run in "seg sapiens2_1b 8 --fp8" "normal sapiens2_1b 8" "pointmap sapiens2_1b 8"; do
    read -r task arch batch fp8 <<< "$run"
    timeout 120 python -m opensapiens.cli.main bench --iters 10 $fp8 --task $task --arch $arch --batch $batch \
      --out "$OUT/s2_fused_${task}_${arch#sapiens2_}.json" | grep -v '^{'
  done
  timeout 150 python -m opensapiens.cli.main bench --iters 10 --task features --arch sapiens2_1b_4k --batch 1 \
    --input-size 4096x3072 --out "$OUT/s2_fused_features_1b_4k.json" | grep -v '^{'
  timeout 200 python -m opensapiens.cli.main bench --iters 10 --fp8 --task pose --arch sapiens2_5b --batch 4 \
    --out "$OUT/s2_fused_pose_5b.json" | grep -v '^{'
elif [ "$1" = s2-fp8acc ]; then
  # calls 143-145: FP8 against bf16 on trained Sapiens2 weights. sapiens2_0.1b fine-tuned from random init on the
  # on-the-fly synthetic stream at 1024x768, pose and seg side by side on the one GPU for 300 s each (batch 12: 24
  # ran out of memory, two processes at 64 and 75 GiB; call 144 ran without --time-limit and was cut short without
  # weights), then bench/fp8_agreement.py (synth-val: keypoint displacement, seg label agreement) on the fused blocks
  # and on the Fp8Linear path
  install_coco_wheel
  for task in pose seg; do
    timeout 420 python -m opensapiens.cli.main train --task $task --arch sapiens2_0.1b --data synth \
      --steps ${S2_STEPS:-400} --time-limit ${S2_SECONDS:-300} --batch-size 12 --layer-decay 1 --warmup-steps 50 \
      --schedule cosine --eval-interval 0 --ckpt-interval 0 --log-interval 25 --no-tensorboard --out /tmp/s2_$task \
      > "$OUT/s2_fp8acc_train_$task.log" 2>&1 &
  done
  wait
  for task in pose seg; do tail -c 400 "$OUT/s2_fp8acc_train_$task.log"; echo; cp /tmp/s2_$task/metrics.jsonl \
    "$OUT/s2_fp8acc_metrics_$task.jsonl"; done
  for mode in optimized linears; do
    timeout 150 python bench/fp8_agreement.py --pose-checkpoint /tmp/s2_pose/final.safetensors \
      --seg-checkpoint /tmp/s2_seg/final.safetensors --mode $mode --out "$OUT/fp8_agreement_s2_0.1b_$mode.json" | tail -12
  done
elif [ "$1" = s2-fp8pose ]; then
  # call 146: call 145's pose model kept flat heatmaps (its loss stalled at 0.024 from step 100), so its keypoint
  # displacement measured nothing. Pose alone on the GPU at 512x384 (synth-val's size; 4x fewer tokens, so ~4x the
  # images in the time), then the agreement (seg: the bundled v1 model, measured before)
  install_coco_wheel
  timeout 480 python -m opensapiens.cli.main train --task pose --arch sapiens2_0.1b --data synth --input-size 512x384 \
    --steps ${S2_STEPS:-1500} --time-limit ${S2_SECONDS:-370} --batch-size 32 --layer-decay 1 --warmup-steps 100 \
    --schedule cosine --eval-interval 0 --ckpt-interval 0 --log-interval 50 --no-tensorboard --out /tmp/s2_pose \
    > "$OUT/s2_fp8pose_train.log" 2>&1
  tail -c 300 "$OUT/s2_fp8pose_train.log"; echo; cp /tmp/s2_pose/metrics.jsonl "$OUT/s2_fp8pose_metrics.jsonl"
  for mode in optimized linears; do
    timeout 60 python bench/fp8_agreement.py --pose-checkpoint /tmp/s2_pose/final.safetensors \
      --seg-checkpoint sapiens-nano --mode $mode --out "$OUT/fp8_agreement_s2_0.1b_pose512_$mode.json" | tail -12
  done
elif [ "$1" = save-matmuls ]; then
  # (written in the eighth 3-Dec session, not run yet) the step time and peak memory of --save-matmuls (block
  # checkpointing that keeps GEMM and attention outputs) against no checkpointing and plain block checkpointing
  install_coco_wheel
  for run in "seg sapiens2_0.4b 8" "seg 0.3b 8"; do
    read -r task arch batch <<< "$run"
    for ck in "--checkpointing none" "--checkpointing blocks" "--checkpointing blocks --save-matmuls"; do
      timeout 150 python bench/bench_train.py --task $task --arch $arch --batch $batch --skip-baseline $ck \
        --out "$OUT/train_${task}_${arch}_$(echo $ck | tr -d ' -').json" 2>&1 | tail -3
    done
  done
elif [ "$1" = video-pictures ]; then
  # the two runs with pictures only (call 105: RGB -> yuv420p in OpenCV, was swscale's on the encoder thread)
  video_predict video-pictures "pose 16" "seg 8"
elif [ "$1" = infer ]; then
  # results land in one tar (a device call returns at most 8 files), re-packed after every step
  RES=/tmp/infer_results; mkdir -p $RES; cp "$OUT/gpu_$1.txt" $RES/
  pack() { tar cf "$OUT/infer_results.tar" -C $RES .; }
  python bench/make_images.py --n 256 --size 1080x1920 --out /tmp/e2e > /dev/null
  B="timeout 150 python -m opensapiens.cli.main bench --iters 8"
  # FP8 against bf16 on trained weights (the bundled model) on synth-val
  timeout 120 python bench/fp8_agreement.py --checkpoint "${FP8_CHECKPOINT:-sapiens-nano}" \
    --out $RES/fp8_agreement_nano.json | tail -4; pack
  $B --task pose --arch 0.3b --batch 16 --e2e /tmp/e2e --out $RES/infer_pose_0.3b_e2e.json | grep -v '^{'; pack
  $B --task seg --arch 1b --batch 8 --e2e /tmp/e2e --out $RES/infer_seg_1b.json | grep -v '^{'; pack
  for t in seg depth normal; do
    $B --task $t --arch 0.3b --batch 8 --out $RES/infer_${t}_0.3b.json | grep -v '^{'; pack
  done
fi
if [ "$failed" != 0 ]; then
  echo "gpu_measure.sh $1: $failed step(s) failed, see above"
  exit 1
fi
