"""``opensapiens pretrain``: MAE pretraining of a Sapiens backbone on your images (one GPU, torchrun DDP or FSDP2).

    opensapiens pretrain --data shards/ --arch 0.3b --steps 100000 --batch-size 32 --out runs/mae
    torchrun --nproc_per_node 8 -m opensapiens.cli.main pretrain ... --fsdp
    opensapiens pretrain --out runs/mae --resume          # continue: the run's config.json supplies the rest
    opensapiens train --task seg ... --init runs/mae/backbone.safetensors

Unset options take the official Sapiens MAE recipe (docs/pretraining.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .main import device_spec, out_folder
from .predict import parse_size
from .train import add_attention_option, option_flags

# Options that may change when a run is resumed; the others come from the run's config.json.
RESUMABLE_OVERRIDES = ("steps", "time_limit", "workers", "device", "log_interval", "ckpt_interval", "keep_last",
                       "vis_interval", "tensorboard", "export_official", "deterministic", "attention", "precision")


def _pair(text: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be two comma-separated numbers") from None
    return a, b


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="MAE-pretrain a backbone on a folder of images or tar shards",
                       description="Masked-autoencoder pretraining (official Sapiens recipe); writes checkpoints, "
                                   "metrics.jsonl, reconstructions and backbone.safetensors under --out.")
    p.add_argument("--data", help="tar shards (folder of *.tar, glob, file) or a folder of images")
    p.add_argument("--out", required=True, type=out_folder, help="run folder")
    p.add_argument("--arch", help="0.3b (default), 0.6b, 1b, 2b, or small / tiny / nano for CPU experiments")
    p.add_argument("--init", help="continue from a pretrain checkpoint: official raw/_clean .pth or our "
                                  "mae/backbone .safetensors")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_const", const=True,
                   help="start afresh in an --out that holds an earlier run: delete its checkpoints, metrics.jsonl "
                   "and tensorboard/ (without it, such an --out is refused)")
    p.add_argument("--steps", type=int, help="optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=int, help="images per GPU per micro-batch (default 32)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--input-size", type=parse_size, help="HxW, default 1024x1024")
    p.add_argument("--mask-ratio", type=float, help="fraction of patches removed (default 0.75); at least one patch "
                   "must be removed and one kept")
    g = p.add_argument_group("decoder (default: 512 wide, 8 blocks, 16 heads)")
    g.add_argument("--decoder-dim", type=int)
    g.add_argument("--decoder-depth", type=int)
    g.add_argument("--decoder-heads", type=int)
    g.add_argument("--no-norm-pix", dest="norm_pix", action="store_const", const=False,
                   help="reconstruct raw (normalized) pixels instead of per-patch normalized ones")
    g = p.add_argument_group("optimization (default: the official recipe)")
    g.add_argument("--blr", type=float, help="base LR per 256 images (default 1.5e-4)")
    g.add_argument("--lr", type=float, help="absolute LR (overrides --blr scaling)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--clip-grad", type=float, help="max gradient norm, 0 = off (default 1.0)")
    g.add_argument("--warmup-steps", type=int, help="default: 40/1600 of the run")
    g = p.add_argument_group("data")
    g.add_argument("--crop-scale", type=_pair, help="RandomResizedCrop area range, default 0.2,1.0")
    g.add_argument("--shuffle-buffer", type=int, help="samples per loader worker shuffle buffer (default 256)")
    g.add_argument("--cpu-jpeg", dest="gpu_jpeg", action="store_const", const=False,
                   help="decode JPEGs in the loader workers even on CUDA")
    g.add_argument("--workers", type=int, help="data-loading processes per GPU (default 4)")
    g = p.add_argument_group("speed and memory")
    g.add_argument("--precision", choices=["bf16", "tf32", "fp32"],
                   help="bf16 autocast (default), or float32 with TF32 (tf32) or full-precision (fp32) matmuls")
    g.add_argument("--checkpointing", choices=["none", "blocks"], help="activation checkpointing")
    g.add_argument("--compile", nargs="?", const="auto", choices=["none", "auto", "blocks", "model"],
                   help="torch.compile: the whole model (forward + loss, fastest measured), each transformer block, "
                   "or (--compile alone: auto) the whole model except under FSDP or block checkpointing (blocks)")
    g.add_argument("--fsdp", action="store_const", const=True, help="FSDP2 sharding (1b / 2b)")
    g.add_argument("--device", type=device_spec)
    add_attention_option(g)
    g.add_argument("--deterministic", action="store_const", const=True,
                   help="deterministic kernels: a bit-identical --resume on GPUs too; slower")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int)
    g.add_argument("--log-interval", type=int, help="steps per train record (default 10; 0: one, at the end)")
    g.add_argument("--ckpt-interval", type=int, help="steps between checkpoints (default 1000; 0: at the end only)")
    g.add_argument("--keep-last", type=int, help="checkpoints to keep (0 = all)")
    g.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="end the run at the first step that finishes past this many seconds after it started "
                   "(weights written; under torchrun the step after; --resume continues the schedule, with this "
                   "invocation's --time-limit or none): a job's wall-clock allowance less a margin that covers the "
                   "final checkpoint and export")
    g.add_argument("--vis-interval", type=int, help="steps between reconstruction images (0: at the end only)")
    g.add_argument("--export-official", action="store_const", const=True,
                   help="also write backbone_clean.pth in the official key layout")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_const", const=False)
    p.set_defaults(func=run, flags=option_flags(p))


def build_config(args: argparse.Namespace):
    """PretrainConfig from the options; on --resume of an existing run, its config.json with allowed overrides."""
    from ..pretrain import PretrainConfig
    from .train import given_options, resumed_settings

    given = given_options(args)
    saved = resumed_settings(args, given, RESUMABLE_OVERRIDES)
    if saved is not None:
        return PretrainConfig.from_dict(saved)
    if "data" not in given and args.resume:
        raise ValueError(f"--resume: no run to resume in {args.out} (it has no config.json); start one with --data")
    if "data" not in given:
        raise ValueError("--data required (or --resume an existing run)")
    return PretrainConfig(**given)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import CheckpointError
    from ..pretrain import pretrain
    from .main import error_text

    try:
        cfg = build_config(args)
        summary = pretrain(cfg)
    except (ValueError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {error_text(e)}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":  # under torchrun: one summary, rank 0's (the others list no outputs)
        return 0
    if summary.get("stopped"):
        print(f"stopped at step {summary['step']}; continue with: opensapiens pretrain --out {args.out} --resume")
        return 0
    print(json.dumps(summary, default=str))
    return 0
