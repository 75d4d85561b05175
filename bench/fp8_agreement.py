"""FP8 mode against bf16 on trained weights: keypoint displacement and seg label agreement on synth-val.

    python bench/fp8_agreement.py --checkpoint sapiens-nano --out bench/results/fp8_agreement_nano.json

Both variants run the same bf16 weights: by default ``optimize_for_inference`` with and without ``fp8=True`` (on
CUDA the fused blocks; FP8 = e4m3 GEMMs with per-row activation and per-channel weight scales, their inputs
quantized by the norm and GELU kernels); ``--mode linears`` the plain model with and without its block Linears
swapped for ``Fp8Linear``. Pose runs top-down on the ground-truth boxes of synth-val (rendered in memory from its
preset, so no dataset folder is needed), seg on whole images. Reported: the median and 90th percentile of the
keypoint displacement fp8 vs bf16 in image pixels (all 308 keypoints of every person), and the share of pixels
whose seg label agrees. The performance issue's bar: median < 0.5 px, agreement > 99.5 %.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

from opensapiens.benchmark import write_json
from opensapiens.checkpoints import load_model
from opensapiens.checkpoints.loading import native_input_size
from opensapiens.inference.fp8 import convert_to_fp8
from opensapiens.inference.optimize import optimize_for_inference, pad_attention_weights
from opensapiens.inference.predictors import PosePredictor, SegPredictor
from opensapiens.synth.dataset import SYNTH_VAL, render_indices


def variants(checkpoint: str, task: str, device: torch.device, mode: str) -> dict[str, torch.nn.Module]:
    base = load_model(checkpoint, device=device, dtype=torch.bfloat16, task=task)
    if mode == "linears":  # the plain model, its block Linears swapped for Fp8Linear (e4m3 GEMMs only)
        pad_attention_weights(base)
        return {"bf16": base, "fp8": convert_to_fp8(copy.deepcopy(base))}
    # the user's paths: the default optimized model against its FP8 mode (e4m3 GEMMs)
    return {"bf16": optimize_for_inference(copy.deepcopy(base)), "fp8": optimize_for_inference(base, fp8=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="sapiens-nano", help="pose and seg from one multi-task checkpoint")
    ap.add_argument("--pose-checkpoint", default=None)
    ap.add_argument("--seg-checkpoint", default=None)
    ap.add_argument("--images", type=int, default=SYNTH_VAL.n, help="the first N synth-val images")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--mode", choices=("optimized", "linears"), default="optimized",
                    help="optimized: optimize_for_inference with and without fp8=True (on CUDA: fused blocks); "
                    "linears: the plain model with and without Fp8Linear")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    pose_ckpt = args.pose_checkpoint or args.checkpoint
    seg_ckpt = args.seg_checkpoint or args.checkpoint

    pose = {k: PosePredictor(m, input_size=native_input_size(pose_ckpt) or (1024, 768), batch_size=32)
            for k, m in variants(pose_ckpt, "pose", device, args.mode).items()}
    seg = {k: SegPredictor(m, input_size=native_input_size(seg_ckpt) or (1024, 768), batch_size=args.batch)
           for k, m in variants(seg_ckpt, "seg", device, args.mode).items()}

    displacement, agree, pixels = [], 0, 0
    for start in range(0, args.images, args.batch):
        ids = list(range(start, min(start + args.batch, args.images)))
        batch = render_indices(ids, SYNTH_VAL.seed, SYNTH_VAL.height, SYNTH_VAL.width, device)
        images = [im.permute(1, 2, 0).cpu().numpy() for im in batch.image]
        boxes = []
        for b in range(len(ids)):
            xywh = batch.boxes[b][batch.person_valid[b]].cpu().numpy()
            boxes.append(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1))
        kp = {k: p.predict_batch(images, boxes=boxes) for k, p in pose.items()}
        for a, b in zip(kp["bf16"], kp["fp8"]):
            displacement.append(np.linalg.norm(a.keypoints - b.keypoints, axis=-1).ravel())
        labels = {k: p.predict_batch(images) for k, p in seg.items()}
        for a, b in zip(labels["bf16"], labels["fp8"]):
            agree += int((a.labels == b.labels).sum())
            pixels += a.labels.size
    d = np.concatenate(displacement)
    result = {"pose_checkpoint": pose_ckpt, "seg_checkpoint": seg_ckpt, "device": str(device), "mode": args.mode,
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "images": args.images, "keypoints": int(d.size),
              "median_keypoint_px": float(np.median(d)), "p90_keypoint_px": float(np.percentile(d, 90)),
              "seg_label_agreement": agree / pixels}
    print(json.dumps(result, indent=2))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
