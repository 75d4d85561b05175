"""``opensapiens demo``: the whole system on a CPU, offline, with the bundled multi-task model.

With no image arguments it renders a few fresh synthetic scenes, runs pose, segmentation, depth and normals with
``sapiens-nano``, writes one side-by-side picture per image (input | skeleton | parts | depth | normals) plus the
JSON/PNG/NPY outputs, and prints metrics against the exact synthetic labels (pose on the scenes' true person
boxes). With images it runs on them, pose on the whole image as one person (``opensapiens predict --detector`` finds
people first).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .main import add_threads_option, device_spec, out_folder
from .predict import parse_size

DEMO_SEED = 7  # fresh scenes: not the synth-val seed, not the bundled model's training seed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run all four tasks with the bundled model (synthetic scenes or your images)")
    p.add_argument("images", nargs="*", help="images to run on (default: fresh synthetic scenes)")
    p.add_argument("--out", type=out_folder, default="demo_out")
    p.add_argument("--n", type=int, default=3, help="synthetic scenes to render")
    p.add_argument("--size", type=parse_size, default=(512, 384), help="synthetic scene size HxW")
    p.add_argument("--seed", type=int, default=DEMO_SEED)
    p.add_argument("--checkpoint", default="sapiens-nano", help="a multi-task checkpoint (default: bundled)")
    p.add_argument("--device", type=device_spec, default="cpu")
    add_threads_option(p)
    p.set_defaults(func=run)


def _say(msg: str) -> None:
    print(msg, flush=True)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints.hub import BUNDLED
    from ..inference.batch import write_result
    from ..inference.predictors import load_predictor
    from ..io.images import ImageReadError, is_video, read_image
    from ..io.writers import save_jpg
    from ..visualize import colorize_depth, colorize_normals, draw_pose, seg_overlay, side_by_side

    args.out = Path(args.out)  # out_folder checked it and kept the text
    t0 = time.perf_counter()
    if args.checkpoint == "sapiens-nano" and not BUNDLED.is_file():
        print(f"error: the bundled model is missing ({BUNDLED}); reinstall the package or pass --checkpoint",
              file=sys.stderr)
        return 2
    _say(f"[1/3] loading {args.checkpoint} on {args.device}")
    predictor = load_predictor(None, args.checkpoint, device=args.device, dtype="fp32")
    if not hasattr(predictor, "pose"):
        print(f"error: {args.checkpoint} is a single-task model; the demo needs a multi-task one", file=sys.stderr)
        return 2

    truth = None
    if args.images:
        names, images, boxes = [], [], []
        for spec in args.images:
            if is_video(spec):
                print(f"skipped: {spec} is a video; the demo takes images (opensapiens predict runs videos)",
                      file=sys.stderr)
                continue
            try:
                images.append(read_image(spec))
                names.append(Path(spec).stem)
                boxes.append(None)
            except ImageReadError as e:
                print(f"skipped: {e}", file=sys.stderr)
        if not images:
            return 1
        _say(f"[2/3] {len(images)} image(s) from the command line")
    else:
        from ..synth import render_indices

        _say(f"[2/3] rendering {args.n} synthetic scene(s) at {args.size[0]}x{args.size[1]} (seed {args.seed})")
        truth = render_indices(list(range(args.n)), args.seed, args.size[0], args.size[1])
        images = [im.permute(1, 2, 0).numpy() for im in truth.image]
        names = [f"synthetic_{i:02d}" for i in range(args.n)]
        boxes = []
        for b in range(args.n):  # the renderer's person boxes stand in for a detector (none ships offline)
            xywh = truth.boxes[b][truth.person_valid[b]].numpy().copy()
            xywh[:, 2:] += xywh[:, :2]
            boxes.append(xywh)

    _say(f"[3/3] running pose, segmentation, depth and normals -> {args.out}/")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, (name, image) in enumerate(zip(names, images)):
        t = time.perf_counter()
        res = predictor(image, boxes=boxes[i])
        results.append(res)
        for task in ("pose", "seg", "depth", "normal"):
            write_result(task, args.out, name, image, res[task], vis=False)
        pose = res["pose"]
        panel = side_by_side(
            [image, draw_pose(image, pose.keypoints, pose.scores, pose.keypoint_set, boxes=pose.boxes),
             seg_overlay(image, res["seg"].labels), colorize_depth(res["depth"].depth, res["depth"].mask),
             colorize_normals(res["normal"].normals, res["normal"].mask)],
            titles=["input", "pose (308)", "body parts", "depth", "normals"])
        save_jpg(args.out / f"{name}_demo.jpg", panel)
        _say(f"  {name}: {len(pose.keypoints)} person(s), {time.perf_counter() - t:.2f} s -> {name}_demo.jpg")

    if truth is not None:
        _say("metrics against the synthetic ground truth (these few scenes; see docs/bundled_model.md for synth-val):")
        for key, value in _metrics(truth, results).items():
            _say(f"  {key:<28} {value:.3f}" if isinstance(value, float) else f"  {key:<28} {value}")
    _say(f"done in {time.perf_counter() - t0:.1f} s; pictures: {args.out}/*_demo.jpg")
    return 0


def _metrics(truth, results) -> dict:
    """mIoU, aligned depth RMSE (relative to the scene's depth range), normal angular error, keypoint OKS AP."""
    import numpy as np

    from ..evaluation import DepthAccumulator, NormalAccumulator, SegConfusion, evaluate_keypoints

    seg = SegConfusion(28)
    depth = DepthAccumulator(align="lstsq")
    normal = NormalAccumulator()
    gt_anns, preds, images = [], [], []
    for b, res in enumerate(results):
        gt_seg = truth.seg[b].numpy()
        seg.update(res["seg"].labels, gt_seg)
        fg = truth.depth[b].numpy() > 0
        depth.update(res["depth"].depth, truth.depth[b].numpy(), fg)
        normal.update(res["normal"].normals, truth.normal[b].permute(1, 2, 0).numpy(), fg)
        images.append({"id": b + 1, "height": gt_seg.shape[0], "width": gt_seg.shape[1]})
        for p in np.flatnonzero(truth.person_valid[b].numpy()):
            kp = truth.keypoints[b, p].numpy()
            vis = np.where(kp[:, 2] > 0, 2, 0)
            x, y, w, h = (float(v) for v in truth.boxes[b, p])
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": b + 1, "category_id": 1, "iscrowd": 0,
                            "bbox": [x, y, w, h], "area": float(truth.areas[b, p]),
                            "num_keypoints": int((vis > 0).sum()),
                            "keypoints": np.stack([kp[:, 0], kp[:, 1], vis], 1).reshape(-1).tolist()})
        preds += res["pose"].to_coco(image_id=b + 1)
    gt = {"images": images, "annotations": gt_anns, "categories": [{"id": 1, "name": "person"}]}
    pose = evaluate_keypoints(gt, preds, "goliath", groups=True)  # body: the 17 COCO-body points of the 308
    s, d, n = seg.compute(), depth.compute(), normal.compute()
    return {"pose AP (body 17, OKS)": float(pose["body_AP"]), "pose AP (all 308, OKS)": float(pose["AP"]),
            "seg mIoU (28 classes)": float(s["mIoU"]),
            "depth AbsRel (aligned)": float(d["absrel"]), "normal mean error (deg)": float(n["mean"]),
            "normal within 30 deg": float(n["within_30"])}
