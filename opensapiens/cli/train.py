"""``opensapiens train``: fine-tune pose / seg / depth / normal on your data (one GPU, torchrun DDP or FSDP2).

    opensapiens train --task seg --data data/train --val-data data/val --arch 0.3b \\
        --init sapiens-pretrain-0.3b --steps 20000 --batch-size 2 --out runs/seg
    torchrun --nproc_per_node 8 -m opensapiens.cli.main train ... --fsdp
    opensapiens train --out runs/seg --resume          # continue: the run's config.json supplies the rest

Unset options take the official recipe of the task and size (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .main import device_spec, out_folder
from .predict import parse_size

# Options that may change when a run is resumed; the others come from the run's config.json.
RESUMABLE_OVERRIDES = ("steps", "time_limit", "workers", "device", "log_interval", "eval_interval", "ckpt_interval",
                       "keep_last", "tensorboard", "val_data", "deterministic", "attention", "precision", "clip_grad",
                       "batch_size", "grad_accum")  # these two: to keep the global batch on another process count


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated numbers") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a task model on your data",
                       description="Fine-tune Sapiens for pose, seg, depth, normals or (Sapiens2) pointmaps; "
                                   "writes checkpoints, "
                                   "metrics.jsonl and best/final .safetensors under --out.")
    p.add_argument("--task", choices=["pose", "seg", "depth", "normal", "pointmap"])
    p.add_argument("--data", help="training data: a folder (see docs/training.md) or a COCO keypoint JSON")
    p.add_argument("--val-data", help="validation data in the same layout")
    p.add_argument("--out", required=True, type=out_folder, help="run folder")
    p.add_argument("--arch", help="0.3b, 0.6b, 1b, 2b, or small / tiny / nano for CPU experiments; Sapiens2: "
                   "sapiens2_0.4b / 0.8b / 1b / 5b (default: the --init checkpoint's, else 0.3b)")
    p.add_argument("--init", help="weights to start from: official name (sapiens-pretrain-1b, sapiens2-seg-1b) or "
                   "file")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_const", const=True,
                   help="start afresh in an --out that holds an earlier run: delete its checkpoints, metrics.jsonl "
                   "and tensorboard/ (without it, such an --out is refused)")
    p.add_argument("--steps", type=int, help="optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=int, help="images per GPU per micro-batch (official: pose 4, others 2)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--input-size", type=parse_size, help="HxW, default 1024x768")
    p.add_argument("--head-channels", type=int, help="head width (default: the --init checkpoint's where it has this "
                   "task's head, else official 768, depth 384); smaller for small models")
    g = p.add_argument_group("labels")
    g.add_argument("--keypoints", help="pose: goliath/308 (default), wholebody/133, coco/17 or a keypoint-set JSON: "
                   "your data's")
    g.add_argument("--classes", help="seg: goliath/28 (default), sapiens2/29, face/19 or a class-list JSON: your "
                   "data's (a Sapiens2 seg --init scored on goliath keeps its classifier, mapped by name)")
    g.add_argument("--image-root", help="pose: image folder (default: images/ beside the annotation file)")
    g = p.add_argument_group("optimization (default: the official recipe)")
    g.add_argument("--lr", type=float)
    g.add_argument("--layer-decay", type=float,
                   help="layer-wise LR decay in [0, 1]: block i (0 = first) of L learns at lr x decay^(L - i), the "
                   "head at lr (0 freezes the backbone; default: the official recipe's)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--clip-grad", type=float, help="max gradient norm, 0 = off (default 1.0; Sapiens2 2 or 4)")
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--schedule", choices=["step", "poly", "cosine", "constant"])
    g.add_argument("--milestones", type=_floats, help="step schedule: fractions of the run, e.g. 0.81,0.95")
    g.add_argument("--ohkm-topk", type=int, help="pose: hard keypoints per sample (0 = plain MSE)")
    g.add_argument("--sigma", type=float, help="pose: heatmap Gaussian sigma in heatmap pixels")
    g.add_argument("--seg-loss-resolution", choices=["labels", "logits"],
                   help="seg: CE at label size (official) or at logits size (4x cheaper)")
    g = p.add_argument_group("augmentation")
    g.add_argument("--no-augment", dest="augment", action="store_const", const=False)
    g.add_argument("--backgrounds", help="folder of people-free pictures for the random-background augmentation")
    g = p.add_argument_group("speed and memory")
    g.add_argument("--precision", choices=["bf16", "tf32", "fp32"],
                   help="bf16 (autocast; the default), tf32 (float32 with TF32 matmuls and convolutions; the "
                   "pointmap default, as official: its metric scale is sensitive to bf16) or fp32 (full float32)")
    g.add_argument("--checkpointing", choices=["none", "blocks", "head", "blocks+head"],
                   help="activation checkpointing (recompute in backward)")
    g.add_argument("--checkpoint-blocks", type=int, help="checkpoint only the first N blocks")
    g.add_argument("--head-chunk", type=int, help="with head checkpointing: keep only the inputs of slices of N "
                   "images and recompute the head slice by slice (head memory of N images, whatever the batch)")
    g.add_argument("--save-attention", action="store_const", const=True,
                   help="with block checkpointing: keep each block's attention output (B x N x C), so backward "
                   "does not run fused attention a second time")
    g.add_argument("--save-matmuls", action="store_const", const=True,
                   help="with block checkpointing: keep each block's GEMM and attention outputs, so backward "
                   "recomputes only norms, rotary embedding and activations (no GEMM or attention redone; less "
                   "memory than no checkpointing, more than plain block checkpointing)")
    g.add_argument("--compile", action="store_const", const=True, help="torch.compile blocks and head")
    g.add_argument("--fsdp", action="store_const", const=True, help="FSDP2 sharding (1b / 2b)")
    g.add_argument("--workers", type=int, help="data-loading processes per GPU (default 4)")
    g.add_argument("--device", type=device_spec)
    add_attention_option(g)
    g.add_argument("--deterministic", action="store_const", const=True,
                   help="deterministic kernels (no cuDNN autotuning): a bit-identical --resume on GPUs too; slower")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int)
    g.add_argument("--log-interval", type=int, help="steps per train record (default 10; 0: one, at the end)")
    g.add_argument("--eval-interval", type=int, help="steps between evaluations (0: at the end only)")
    g.add_argument("--ckpt-interval", type=int, help="steps between checkpoints (default 1000; 0: at the end only)")
    g.add_argument("--keep-last", type=int, help="checkpoints to keep (0 = all)")
    g.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="end the run at the first step that finishes past this many seconds after it started "
                   "(final weights written; under torchrun the step after; --resume continues the schedule, with this "
                   "invocation's --time-limit or none): a job's wall-clock allowance less a margin that covers the "
                   "final evaluation, checkpoint and export")
    g.add_argument("--best-metric", help="eval metric for best.safetensors (AP, mIoU, rmse, mean)")
    g.add_argument("--best-mode", choices=["max", "min"])
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_const", const=False)
    p.set_defaults(func=run, flags=option_flags(p))


def option_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Setting -> the option that sets it (``gpu_jpeg`` -> ``--cpu-jpeg``): how a note names what the user typed."""
    return {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}


def add_attention_option(group: argparse._ArgumentGroup) -> None:
    """``--attention``, shared by ``train`` and ``pretrain`` (the choices of ``training.speed.ATTENTION_CHOICES``,
    spelled out so that building the parser does not import torch)."""
    group.add_argument("--attention", choices=["auto", "sdpa", "triton", "fa4"],
                       help="attention kernels (default auto: FlashAttention-4 on Hopper/Blackwell where flash-attn-4 "
                       "is installed, else our Triton kernels at head dim 32 and SDPA elsewhere)")


def given_options(args: argparse.Namespace) -> dict:
    """The options the user set (argparse defaults are None, so the config's defaults stay the official ones)."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "command", "flags") and v is not None}


def resumed_settings(args: argparse.Namespace, given: dict, overrides: tuple[str, ...]) -> dict | None:
    """On ``--resume`` of a run that has ``config.json``: its saved settings plus the allowed ``overrides`` given now
    (other options are reported and ignored). None when this is not such a resume. Shared by train and pretrain."""
    saved_path = Path(args.out) / "config.json"
    if not (args.resume and saved_path.is_file()):
        return None
    saved = json.loads(saved_path.read_text())
    ignored = sorted(k for k, v in given.items() if k not in (*overrides, "resume", "out")
                     and saved.get(k) != (list(v) if isinstance(v, tuple) else v))
    if ignored:
        options = ", ".join(args.flags[k] for k in ignored)
        print(f"note: resuming {args.out} with its saved settings; ignoring {options}", file=sys.stderr)
    saved.pop("time_limit", None)  # a wall-clock budget is one invocation's (a job's allowance), not the run's
    saved.update({k: v for k, v in given.items() if k in overrides}, resume=True, out=args.out)
    return saved


def build_config(args: argparse.Namespace):
    """TrainConfig from the given options; on --resume of an existing run, its config.json with the allowed
    overrides (steps, workers, intervals, ...)."""
    from ..training.config import TrainConfig

    given = given_options(args)
    saved = resumed_settings(args, given, RESUMABLE_OVERRIDES)
    if saved is not None:
        return TrainConfig.from_dict(saved)
    missing = [f"--{k}" for k in ("task", "data") if k not in given]
    if missing and args.resume:
        raise ValueError(f"--resume: no run to resume in {args.out} (it has no config.json); start one with "
                         f"{' and '.join(missing)}")
    if missing:
        raise ValueError(f"{' and '.join(missing)} required (or --resume an existing run)")
    return TrainConfig(**given)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import CheckpointError
    from ..data import DataError
    from ..training import train
    from .main import error_text

    try:
        cfg = build_config(args)
        summary = train(cfg)
    except (ValueError, DataError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {error_text(e)}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":
        return 0
    if summary.get("stopped"):
        print(f"stopped at step {summary['step']}; continue with: opensapiens train --out {args.out} --resume")
        return 0
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}, default=str))
    return 0
