"""``opensapiens eval``: score saved predictions, or a checkpoint on a dataset folder; protocols in docs/evaluation.md.

    opensapiens eval --task pose --pred results.json --gt person_keypoints_val.json --keypoints coco
    opensapiens eval --task seg --pred preds/ --gt labels/ --out seg.json
    opensapiens eval --task depth --pred preds/ --gt depths/ --masks masks/ --align lstsq
    opensapiens eval --task pose --pred predict_out/ --gt annotations.json     # predict's outputs as they are
    opensapiens eval --task normal --checkpoint sapiens-normal-1b --data synth_val/ --out normal.json
    opensapiens eval --task pointmap --checkpoint sapiens2-pointmap-1b --data synth_val/
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .main import add_threads_option, device_spec, out_file
from .predict import positive_int

TASKS = ("pose", "seg", "depth", "normal", "pointmap")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate predictions or a checkpoint (OKS AP, mIoU, depth, normal errors)",
                       description="Score saved predictions against ground truth (--pred/--gt), or run a checkpoint "
                                   "over a dataset folder and score it (--checkpoint/--data). Protocols: "
                                   "docs/evaluation.md.")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--out", type=out_file, help="write all metrics, the protocol and skipped samples to this JSON file")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N samples (quick checks)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("saved predictions")
    g.add_argument("--pred", type=Path, help="pose: COCO results JSON; seg: folder of PNG label maps; "
                                             "depth/normal: folder of NAME.npy; or `opensapiens predict`'s "
                                             "output folder as it is (STEM.json, STEM_seg.png, STEM_depth.npy ...)")
    g.add_argument("--gt", type=Path, help="pose: COCO keypoint JSON; seg/depth/normal: folder like --pred; "
                                           "pointmap: folder of NAME.npy (H, W, 3) points in metres")
    g.add_argument("--masks", type=Path, help="depth/normal/pointmap: folder of NAME.png/.npy foreground masks "
                                              "(default: the GT's nonzero finite pixels)")
    g = p.add_argument_group("model on a dataset folder (synthetic-data layout)")
    g.add_argument("--checkpoint", help="checkpoint file or official name")
    g.add_argument("--data", type=Path, help="folder with images/, annotations.json, seg/, masks/, depths/, normals/ "
                                             "(pointmap: and meta/ or camera_intrinsics/)")
    g.add_argument("--device", type=device_spec, default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="default bf16 on CUDA, else fp32")
    g.add_argument("--batch-size", type=int, default=4, help="images (pose: crops) per forward pass")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="pose flip test (official protocol: on)")
    g = p.add_argument_group("protocol")
    g.add_argument("--keypoints", choices=["coco", "wholebody", "goliath"],
                   help="pose layout to score (default: the GT's; with --checkpoint, the smaller of GT and model)")
    g.add_argument("--classes", default=None,
                   help="seg classes: goliath (28), sapiens2 (29), face (19), a count, a comma list, a class-list "
                   ".json (as train's --classes) or a text file; default: the predictions' own (the model's, or "
                   "predict's seg_classes.json), a Sapiens2 model's 29 scored as goliath's 28 (Eyeglass as "
                   "Face_Neck), else goliath")
    g.add_argument("--ignore-index", type=int, default=255, help="seg GT label that is not scored")
    g.add_argument("--align", default="lstsq", choices=["lstsq", "minmax", "none"],
                   help="depth alignment per image: least-squares scale+shift, official min-max, or none (metric)")
    add_threads_option(p)
    p.set_defaults(func=run)


def _load_predictor(task: str, checkpoint: str, device: str | None, dtype: str | None, **kwargs):
    """The lead's predictor API; a function of its own so tests can replace it."""
    from ..inference.predictors import load_predictor

    return load_predictor(task, checkpoint, device=device, dtype=dtype, **kwargs)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.runner import check_dataset, evaluate_model, evaluate_saved
    from ..io import save_json

    saved, model = args.pred is not None or args.gt is not None, args.checkpoint is not None or args.data is not None
    if saved == model or (saved and (args.pred is None or args.gt is None)) or (
            model and (args.checkpoint is None or args.data is None)):
        print("error: give either --pred and --gt (saved predictions) or --checkpoint and --data (run a model)",
              file=sys.stderr)
        return 2
    common = {"keypoints": args.keypoints, "classes": args.classes, "align": args.align,
              "ignore_index": args.ignore_index, "limit": args.limit, "progress": not args.quiet}
    try:
        if saved:
            result = evaluate_saved(args.task, args.pred, args.gt, masks=args.masks, **common)
        else:
            kwargs = {"batch_size": args.batch_size}
            if args.task == "pose":
                kwargs["flip"] = args.flip
            check_dataset(args.task, args.data)  # before the model loads (maybe a download)
            predictor = _load_predictor(args.task, args.checkpoint, args.device, args.dtype, **kwargs)
            result = evaluate_model(args.task, predictor, args.data, batch_images=args.batch_size, **common)
            result["protocol"]["checkpoint"] = str(args.checkpoint)
            if args.task == "pose":
                result["protocol"]["flip_test"] = args.flip
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(result))
    if result["skipped"]:
        shown = "; ".join(f"{s['name']}: {s['reason']}" for s in result["skipped"][:5])
        print(f"warning: skipped {len(result['skipped'])} sample(s): {shown}", file=sys.stderr)
    if args.out:
        save_json(args.out, result, indent=2)
        print(f"wrote {args.out}")
    return 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    return "\n".join([lines[0], "-" * len(lines[0])] + lines[1:])


def format_report(result: dict) -> str:
    """A plain-text table of the metrics in ``result`` (as returned by the evaluation runners)."""
    task = result["task"]
    if task == "pose":
        cols = ["AP", "AP50", "AP75", "APm", "APl", "AR"]
        groups = [""] + [g + "_" for g in ("body", "foot", "face", "left_hand", "right_hand") if g + "_AP" in result]
        whole = "whole body" if len(groups) > 1 else "all"
        rows = [[g[:-1] if g else whole] + [result[g + c] for c in cols] for g in groups]
        body = _table(["keypoints"] + cols, rows)
        counts = (f"{result['keypoint_set']}: {result['num_gt']} GT people, {result['num_predictions']} predictions, "
                  f"{result['nonfinite_pred']} non-finite keypoints, {result['nonfinite_scores']} non-finite scores")
    elif task == "seg":
        rows = [[name, result["IoU"][name], result["Acc"][name]] for name in result["IoU"]]
        body = _table(["class", "IoU", "Acc"], rows) + "\n\n" + _table(
            ["mIoU", "mAcc", "aAcc"], [[result["mIoU"], result["mAcc"], result["aAcc"]]])
        counts = (f"{result['num_images']} images, {result['num_pixels']} pixels, {result['num_classes_present']} "
                  f"classes present, {result['invalid_pred']} predictions outside the class range")
    elif task == "depth":
        cols = ["rmse", "absrel", "delta1", "delta2", "delta3", "rmse_norm"]
        body = _table(cols, [[result[c] for c in cols]])
        counts = (f"align={result['align']}; {result['num_images']} images ({result['empty_images']} without "
                  f"foreground), {result['num_pixels']} pixels, {result['nonfinite_pred']} non-finite predictions")
    elif task == "pointmap":
        cols = ["l2_mean", "rmse", "z_mae", "within_5cm", "within_10cm", "within_20cm", "normal_mean"]
        cols += ["focal_abs_rel"] if "focal_abs_rel" in result else []
        body = _table(cols, [[result[c] for c in cols]])
        counts = f"metres, metric points; {result['num_images']} images, {result['num_pixels']} pixels"
    else:
        cols = ["mean", "median", "within_11.25", "within_22.5", "within_30"]
        body = _table(cols, [[result[c] for c in cols]])
        counts = (f"{result['num_images']} images, {result['num_pixels']} pixels, {result['nonfinite_pred']} "
                  f"non-finite and {result['zero_pred']} zero-length predictions (scored 180 deg)")
    return f"{body}\n{counts}"
