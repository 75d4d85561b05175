"""``opensapiens convert IN OUT``: any supported checkpoint -> portable safetensors (or the official layout)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint to portable safetensors",
                       description="Read an official .pth/_clean.pth/TorchScript/bf16 .pt2 file, or an official name, "
                                   "and write our safetensors (config in its metadata). With --official, write the "
                                   "official key layout instead (.pth or .safetensors).")
    p.add_argument("src", help="checkpoint file or official name")
    p.add_argument("dst", type=Path, help="output file (.safetensors, or .pth with --official)")
    p.add_argument("--task", choices=["pose", "seg", "depth", "normal", "features"], default=None)
    p.add_argument("--patch-padding", type=int, choices=[0, 2], default=None)
    p.add_argument("--num-heads", type=int, default=None,
                   help="attention heads, only for non-official widths (official sizes are known)")
    p.add_argument("--official", action="store_true", help="write the official key layout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import CheckpointError, convert_checkpoint, export_official, load_model

    try:
        if args.official:
            model = load_model(args.src, task=args.task, patch_padding=args.patch_padding, num_heads=args.num_heads)
            out = export_official(model, args.dst)
        else:
            out = convert_checkpoint(args.src, args.dst, task=args.task, patch_padding=args.patch_padding,
                                     num_heads=args.num_heads)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
