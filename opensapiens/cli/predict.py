"""``opensapiens predict``: run a task over images, folders, globs or list files."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .main import add_threads_option, device_spec, out_folder


def parse_size(text: str) -> tuple[int, int]:
    """'1024x768' -> (1024, 768) as (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must look like HxW, e.g. 1024x768") from None
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive and divisible by 16")
    return h, w


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


DETECTOR_ARCH = "fasterrcnn_resnet50_fpn_v2"
DET_THRESHOLD = 0.5
# Options that only some tasks read: (flag, its attribute, its default, the tasks it applies to). Given with another
# task they would change nothing, silently; the run refuses them instead.
TASK_OPTIONS = (
    ("--detections", "detections", None, {"pose"}),
    ("--detector", "detector", None, {"pose"}),
    ("--detector-arch", "detector_arch", DETECTOR_ARCH, {"pose"}),
    ("--det-threshold", "det_threshold", DET_THRESHOLD, {"pose"}),
    ("--flip", "flip", False, {"pose"}),
    ("--no-track", "no_track", False, {"pose"}),
    ("--openpose", "openpose", False, {"pose"}),
    ("--resize", "resize", None, {"seg", "depth", "normal", "pointmap", "features"}),  # pose crops keep the aspect
    ("--seg-checkpoint", "seg_checkpoint", None, {"depth", "normal", "pointmap"}),
    ("--masks", "masks", None, {"depth", "normal", "pointmap"}),
    ("--ply", "ply", False, {"pointmap"}),
)


def misplaced_options(args: argparse.Namespace) -> str | None:
    """What is wrong with options given for a task that does not read them, or None."""
    wrong = [f"{flag} is for --task {' / '.join(sorted(tasks))}" for flag, dest, default, tasks in TASK_OPTIONS
             if args.task not in tasks and getattr(args, dest) != default]
    if not wrong:
        if args.task == "pose" and args.detector_arch != DETECTOR_ARCH and args.detector is None:
            return "--detector-arch picks the --detector's model: give --detector too"
        return None
    return f"{'; '.join(wrong)}, not {args.task}"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run pose / seg / depth / normal / features on images and videos",
                       description="Run a Sapiens model over images and videos and write the documented outputs per "
                       "input.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, folders, globs or .txt lists")
    p.add_argument("--task", required=True, choices=["pose", "seg", "depth", "normal", "pointmap", "features"],
                   help="pointmap: Sapiens2 models only (sapiens2-pointmap-*)")
    p.add_argument("--checkpoint", required=True, help="file (.pth/.pt2/.safetensors) or official name")
    p.add_argument("--out", required=True, type=out_folder, help="output folder")
    p.add_argument("--input-size", type=parse_size, default=None,
                   help="model input HxW (default: the checkpoint's own, else 1024x768)")
    p.add_argument("--device", type=device_spec, default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="default bf16 on CUDA, else fp32")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--fp8", action="store_true",
                   help="e4m3 GEMMs in the transformer blocks (CUDA, Hopper or newer): 1.1-1.3x faster, keypoints "
                   "within ~0.14 px of bf16 on the bundled v1 model, ~0.11 px on a 0.1B Sapiens2 trained here (the "
                   "released Sapiens2 sizes unmeasured; docs/performance.md)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="CUDA: no torch.compile of the head (it compiles in the background, 10-50 s, which an "
                   "unfinished job's exit waits for): for short jobs")
    p.add_argument("--workers", type=int, default=None,
                   help="image-reading threads (default: up to 8, at most one per core; 0: read in the main thread)")
    p.add_argument("--decode", default="host", choices=["host", "device"],
                   help="where JPEGs are decoded: host (OpenCV on the --workers threads) or device (nvJPEG on the "
                   "GPU, for machines with few cores per GPU; it takes GPU time from the model)")
    p.add_argument("--writers", type=positive_int, default=None,
                   help="output-writing threads (default: up to 16 for seg/depth/normal pictures, up to 8 "
                   "otherwise, at most one per core; a picture takes 20-90 ms)")
    p.add_argument("--resize", default=None, choices=["stretch", "pad", "center"],
                   help="stretch; pad (aspect kept, the rest of the input the mean colour at the bottom/right); "
                   "center (aspect kept, centred on black). Default: the official protocol: stretch, and center "
                   "for Sapiens2 normals and pointmaps")
    p.add_argument("--raw", action="store_true", help="also save the raw head output as .npy")
    p.add_argument("--no-vis", action="store_true", help="skip the visualization images")
    p.add_argument("--resume", action="store_true",
                   help="skip inputs whose outputs already exist (videos: those a finished run recorded)")
    p.add_argument("--step", type=positive_int, default=1,
                   help="videos: every STEP-th frame (frames 0, STEP, 2 STEP, ...; the picture video plays at "
                   "the source's rate / STEP)")
    g = p.add_argument_group("pose")
    g.add_argument("--detections", type=Path, help="COCO-style detections JSON with person boxes")
    g.add_argument("--detector", "--detector-weights", dest="detector", default=None,
                   help="detect people with a torchvision detector: its weights file, or 'torchvision' to use its "
                        "download (--detector-weights: the same, as curate names it)")
    g.add_argument("--detector-arch", default=DETECTOR_ARCH,
                   help="its torchvision model: the default (46.7 box AP; ~100 1080p images/s on an H200), or e.g. "
                        "fasterrcnn_mobilenet_v3_large_fpn (32.8 AP; ~1.8x faster)")
    g.add_argument("--det-threshold", type=float, default=DET_THRESHOLD,
                   help="keep person boxes scoring above this (--detector and --detections; default 0.5)")
    g.add_argument("--flip", action="store_true", help="flip test (average with the mirrored crop)")
    g.add_argument("--no-track", action="store_true",
                   help="videos: no track ids (by default each person keeps an id from frame to frame)")
    g.add_argument("--openpose", action="store_true",
                   help="also write STEM_openpose.json (OpenPose's JSON: body 18, hands, face) and STEM_openpose.png "
                   "(the skeletons on black, as ControlNet's OpenPose conditioning draws them)")
    g = p.add_argument_group("depth / normal / pointmap")
    g.add_argument("--seg-checkpoint",
                   help="segmentation model whose foreground masks the depth/normal/pointmap pictures, the normals' "
                   "background and the pointmap's (NaN there; STEM_depth.npy stays the whole map, as official)")
    g.add_argument("--ply", action="store_true",
                   help="pointmap: also STEM_pointmap.ply, the valid points coloured by the image (binary PLY)")
    g.add_argument("--masks", type=Path,
                   help="folder of foreground masks STEM.png (non-zero = person: any channel's stored value, palette "
                        "index or 16-bit value; alpha ignored), each the size of its image")
    add_threads_option(p)
    p.set_defaults(func=run)


def _load(args: argparse.Namespace):
    """The task's predictor, with the detector or the masking seg model its options ask for."""
    from ..inference.predictors import load_predictor

    kwargs: dict = {"batch_size": args.batch_size, "resize": args.resize}
    if args.task == "pose":
        kwargs.pop("resize")
        kwargs["flip"] = args.flip
        if args.detector:  # (with --detections too: the videos', which the detections do not cover)
            from ..inference.detector import PersonDetector

            weights = None if args.detector == "torchvision" else args.detector
            kwargs["detector"] = PersonDetector(weights, arch=args.detector_arch,
                                                device=args.device or _default_device(),
                                                score_threshold=args.det_threshold)
    if args.task in ("depth", "normal", "pointmap") and args.seg_checkpoint:
        kwargs["seg"] = load_predictor("seg", args.seg_checkpoint, device=args.device, dtype=args.dtype,
                                       batch_size=args.batch_size, compile=args.compile)
    return load_predictor(args.task, args.checkpoint, device=args.device, dtype=args.dtype,
                          input_size=args.input_size, fp8=args.fp8, compile=args.compile, **kwargs)


def _detection_entry(dets: dict, path: Path) -> dict | None:
    """``path``'s entry of ``load_detections``: by file name, by stem, or by a numeric stem as the COCO image_id
    (000000000139.jpg is image 139 in files without file names, as COCO_val2017_detections_AP_H_70_person.json)."""
    entry = dets.get(path.name) or dets.get(path.stem)
    if entry is None and path.stem.isascii() and path.stem.isdigit():
        entry = dets.get(int(path.stem))
    return entry


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..inference.batch import READER_THREADS, run_batch, unique_stems
    from ..inference.video_job import run_video, video_finished
    from ..io.images import is_video, list_inputs, read_mask

    args.out = Path(args.out)  # out_folder checked it and kept the text
    if (wrong := misplaced_options(args)) is not None:
        print(f"error: {wrong}", file=sys.stderr)
        return 2
    try:  # bad inputs first, then the model: an unknown name or missing file, a checkpoint that does not fit, ...
        paths = list_inputs(args.inputs)
        stems = dict(zip(paths, unique_stems(paths)))  # images and videos named together: no two write one name
        if args.masks is not None and not args.masks.is_dir():
            raise FileNotFoundError(f"--masks {str(args.masks)!r}: no such folder")
        dets = None
        if args.task == "pose" and args.detections:
            from ..inference.detector import load_detections  # (torchvision: only when asked for)

            dets = load_detections(args.detections, score_threshold=args.det_threshold)
        predictor = _load(args)
        if args.task == "seg" and getattr(predictor, "class_names", None) and not all(map(is_video, paths)):
            from ..metadata import record_seg_classes  # a folder of another model's label maps: refused before work

            args.out.mkdir(parents=True, exist_ok=True)
            record_seg_classes(args.out, predictor.class_names)
    except (OSError, ValueError) as e:  # OSError: missing files, a detector download that failed
        print(f"error: {e}", file=sys.stderr)
        return 2

    videos = [p for p in paths if is_video(p)]
    images = [p for p in paths if not is_video(p)]
    given = [flag for flag, on in (("--detections", dets is not None), ("--masks", args.masks is not None)) if on]
    if videos and given:
        frames = "the --detector's boxes" if args.detector else "whole frames"
        print(f"warning: {' and '.join(given)} apply to images only: the {len(videos)} video(s) run on {frames}",
              file=sys.stderr, flush=True)
    per_batch = None
    if dets is not None:
        if images and not any(_detection_entry(dets, path) is not None for path in images):
            print(f"warning: no input image matches an entry of {args.detections} (by file name, stem, or numeric "
                  "stem as image_id): no people will be found", file=sys.stderr, flush=True)

        def per_batch(batch_paths, images):
            boxes = []
            for path in batch_paths:  # (N, 5): x1, y1, x2, y2 and the box score, which each person's score includes
                entry = _detection_entry(dets, path)
                boxes.append(np.zeros((0, 5), np.float32) if entry is None else
                             np.concatenate([entry["boxes"], entry["scores"][:, None]], axis=1))
            return {"boxes": boxes}
    elif args.task in ("depth", "normal", "pointmap") and args.masks:
        def per_batch(batch_paths, images):
            masks = []
            for path, image in zip(batch_paths, images):
                mask_file = args.masks / f"{path.stem}.png"
                mask = read_mask(mask_file) if mask_file.is_file() else None
                if mask is not None and mask.shape != tuple(image.shape[:2]):
                    raise ValueError(f"mask {mask_file} is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image is "
                                     f"{image.shape[0]}x{image.shape[1]}")
                masks.append(mask)
            return {"masks": masks}

    t0 = time.perf_counter()
    workers = READER_THREADS if args.workers is None else args.workers
    report = run_batch(predictor, images, args.out, batch_size=args.batch_size, workers=workers,
                       writers=args.writers, vis=not args.no_vis, raw=args.raw, resume=args.resume,
                       predict_kwargs=per_batch, decode=args.decode, stems=[stems[p] for p in images],
                       openpose=args.openpose, ply=args.ply)
    seconds, images_done = time.perf_counter() - t0, len(report.done)
    for video in videos:  # frames in batches; pose uses whole frames or the detector (per-image boxes do not apply)
        if args.resume and video_finished(args.task, args.out, stems[video], vis=not args.no_vis, raw=args.raw,
                                           step=args.step, track=not args.no_track, openpose=args.openpose,
                                           ply=args.ply):
            report.skipped.append(video)
            continue
        try:
            n = run_video(predictor, video, args.out, batch_size=args.batch_size, vis=not args.no_vis, raw=args.raw,
                          writers=args.writers, track=not args.no_track, stem=stems[video], step=args.step,
                          openpose=args.openpose, ply=args.ply)
            report.done.append(video)
            print(f"{video.name}: {n} frames")
        except Exception as e:  # noqa: BLE001 - a bad video is reported like a bad image
            report.failed.append((video, f"{video}: {type(e).__name__}: {e}"))
    rate = f" (images: {images_done / seconds:.1f}/s over {seconds:.1f} s)" if images_done else ""
    print(f"{len(report.done)} done, {len(report.skipped)} skipped (already finished), {len(report.failed)} failed"
          f"{rate} -> {args.out}", flush=True)
    for _path, err in report.failed:
        print(f"  failed: {err}", file=sys.stderr)
    compiles = [getattr(p.model, "background", None) for p in (predictor, getattr(predictor, "seg", None)) if p]
    if any(c is not None and not c.wait(timeout=0) for c in compiles):  # (CUDA: the head's or the whole model's)
        print("every output is written; the model's compile is still running and the process ends when it does "
              "(the next run finds it cached; --no-compile skips it)", file=sys.stderr, flush=True)
    return 1 if report.failed else 0


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
