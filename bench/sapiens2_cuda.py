"""Sapiens2 on CUDA: its grouped-query attention per SDPA backend, and its predictors against the fp32 CPU path.

    python bench/sapiens2_cuda.py [--arch sapiens2_1b] [--out RESULT.json]

1. Attention of one grouped-query block at 1024x768 (3081 tokens, 24 query heads, 12 key/value heads at 1b) in bf16:
   SDPA with ``enable_gqa`` on each backend that takes it, against the same with k and v repeated to every head.
2. Each task's predictor on CUDA (bf16, optimized: eager blocks, the head compiled) against the same weights in fp32
   on the CPU at 1024x768 on a few generated images: keypoint shift, seg agreement, normal angle, pointmap error.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opensapiens.checkpoints import save_model  # noqa: E402
from opensapiens.inference.predictors import load_predictor  # noqa: E402
from opensapiens.models import ARCHS2, build_model  # noqa: E402


def attention_backends(arch_name: str) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    arch = ARCHS2[arch_name]
    B, N, hd, nh = 8, 9 + 64 * 48, arch.head_dim, arch.num_heads
    q = torch.randn(B, nh, N, hd, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, nh // 2, N, hd, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    flops = 4 * B * nh * N * N * hd
    out = {}
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.MATH):
        for mode in ("gqa", "repeated"):
            def run(mode=mode):
                if mode == "gqa":
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                return F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
            try:
                with sdpa_kernel(backend):
                    for _ in range(3):
                        run()
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    for _ in range(10):
                        run()
                    torch.cuda.synchronize()
                ms = (time.perf_counter() - t0) / 10 * 1e3
                out[f"{backend.name.lower()}_{mode}"] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1)}
            except RuntimeError as e:
                out[f"{backend.name.lower()}_{mode}"] = {"error": str(e).splitlines()[0][:120]}
            print(f"{backend.name:>20} {mode:>9}: {out[f'{backend.name.lower()}_{mode}']}", flush=True)
    return out


def predictors_agree(arch_name: str) -> dict:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (960, 720, 3), dtype=np.uint8) for _ in range(2)]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in ("pose", "seg", "normal", "pointmap"):
            torch.manual_seed(0)
            model = build_model(task, arch_name)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith("gamma.weight"):
                        p.fill_(0.2)  # attention that matters (the init's 1e-4 layer scale hides it)
            path = save_model(model, Path(tmp) / f"{task}.safetensors")
            del model
            gpu = load_predictor(None, path, device="cuda")
            cpu = load_predictor(None, path, device="cpu")
            t0 = time.perf_counter()
            got = gpu.predict_batch(images)
            got = gpu.predict_batch(images)  # (the head compiled by now or not: the results are the same)
            gpu_s = time.perf_counter() - t0
            want = cpu.predict_batch(images)
            if task == "pose":
                shift = [np.linalg.norm(g.keypoints - w.keypoints, axis=-1) for g, w in zip(got, want)]
                row = {"median_keypoint_shift_px": float(np.median(np.concatenate(shift)))}
            elif task == "seg":
                row = {"label_agreement": float(np.mean([(g.labels == w.labels).mean() for g, w in zip(got, want)]))}
            elif task == "normal":
                cos = [np.clip((g.normals * w.normals).sum(-1), -1, 1) for g, w in zip(got, want)]
                row = {"median_angle_deg": float(np.degrees(np.median(np.arccos(np.concatenate(cos)))))}
            else:
                rel = [np.nanmedian(np.linalg.norm(g.points - w.points, axis=-1) / np.linalg.norm(w.points, axis=-1))
                       for g, w in zip(got, want)]
                row = {"median_rel_point_error": float(np.median(rel)),
                       "focal_gpu": [round(v, 2) for v in got[0].focal],
                       "focal_cpu": [round(v, 2) for v in want[0].focal]}
            row["gpu_seconds_two_batches"] = round(gpu_s, 2)
            out[task] = row
            print(f"{task}: {row}", flush=True)
            del gpu, cpu
            torch.cuda.empty_cache()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="sapiens2_1b", choices=list(ARCHS2))
    p.add_argument("--predictors-arch", default="sapiens2_0.4b", choices=list(ARCHS2),
                   help="the predictors' size (the CPU reference runs it in fp32)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "attention": attention_backends(args.arch), "predictors": predictors_agree(args.predictors_arch)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
