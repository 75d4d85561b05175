"""``opensapiens convert IN OUT``: any supported checkpoint -> portable safetensors, the official layout, or ONNX."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .predict import parse_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint to portable safetensors (or ONNX)",
                       description="Read an official .pth/_clean.pth/TorchScript/bf16 .pt2 file, or an official name, "
                                   "and write our safetensors (config in its metadata). With --official, write the "
                                   "official key layout instead (.pth or .safetensors). To OUT.onnx: the model as an "
                                   "ONNX graph (normalized (B, 3, H, W) input, raw head output; B dynamic).")
    p.add_argument("src", help="checkpoint file or official name")
    p.add_argument("dst", type=Path, help="output file (.safetensors; .pth with --official; .onnx)")
    p.add_argument("--task", choices=["pose", "seg", "depth", "normal", "pointmap", "features"], default=None)
    p.add_argument("--patch-padding", type=int, choices=[0, 2], default=None)
    p.add_argument("--num-heads", type=int, default=None,
                   help="attention heads, only for non-official widths (official sizes are known)")
    p.add_argument("--official", action="store_true", help="write the official key layout")
    p.add_argument("--transformers", action="store_true",
                   help="Sapiens2: write OUT as a Hugging Face transformers model folder (model.safetensors and "
                   "config.json, with the class or keypoint names), for Sapiens2For*.from_pretrained(OUT)")
    g = p.add_argument_group("ONNX (OUT.onnx)")
    g.add_argument("--input-size", type=parse_size, default=None,
                   help="the graph's input HxW (default: the model's training size, 1024x768 for the official "
                   "pose/seg/depth/normal models)")
    g.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="the graph's weights and input")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import (
        CheckpointError,
        check_onnx,
        convert_checkpoint,
        export_official,
        export_onnx,
        load_model,
    )

    onnx = args.dst.suffix.lower() == ".onnx"
    if onnx and args.official:
        print("error: --official writes a .pth or .safetensors, not .onnx", file=sys.stderr)
        return 2
    if not onnx and (args.dtype != "fp32" or (args.input_size is not None and not args.transformers)):
        print("error: --input-size is for an ONNX export (OUT.onnx) or --transformers, --dtype for ONNX",
              file=sys.stderr)
        return 2
    if args.transformers and (onnx or args.official):
        print("error: --transformers writes a model folder, not --official or .onnx", file=sys.stderr)
        return 2
    try:
        if args.transformers:
            out = _export_transformers(args)
        elif args.official or onnx:
            model = load_model(args.src, task=args.task, patch_padding=args.patch_padding, num_heads=args.num_heads)
            out = (export_onnx(model, args.dst, args.input_size, args.dtype) if onnx
                   else export_official(model, args.dst))
        else:
            out = convert_checkpoint(args.src, args.dst, task=args.task, patch_padding=args.patch_padding,
                                     num_heads=args.num_heads)
    except (CheckpointError, FileNotFoundError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    if onnx:
        if importlib.util.find_spec("onnxruntime") is None:
            print("(install onnxruntime to have the export checked against the model)")
        else:
            errors = check_onnx(model, out)
            print("onnxruntime vs PyTorch, largest difference relative to the output's largest value: "
                  + ", ".join(f"{name} {err:.1e}" for name, err in errors.items()))
    return 0


def _export_transformers(args: argparse.Namespace) -> Path:
    """The model with the names its predictor gives its outputs (classes, keypoints and their mirror pairs) and
    the input size it was trained at (or --input-size), as a transformers folder."""
    from ..checkpoints import export_transformers, load_model
    from ..inference.predictors import load_predictor

    try:
        predictor = load_predictor(args.task, args.src, device="cpu", dtype="fp32", optimize=False,
                                   input_size=args.input_size)
        model, size = predictor.model, predictor.input_size
    except ValueError:  # outputs no built-in set names (a head of another size whose names were not recorded)
        model = load_model(args.src, task=args.task)
        predictor, size = None, args.input_size or tuple(model.config.extra.get("input_size") or (1024, 768))
    names = getattr(predictor, "class_names", None)
    keypoints = getattr(predictor, "keypoint_set", None)
    pairs = None
    if keypoints is not None:
        names = keypoints.names
        pairs = [(i, j) for i, j in enumerate(keypoints.flip_indices) if i < j]
    return export_transformers(model, args.dst, size, names, pairs)
