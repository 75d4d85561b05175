"""Dataset-level evaluation: score saved predictions against ground truth, or run a predictor over a dataset folder.

Both stream: one file (or one chunk of images) at a time goes through the metric accumulators, so memory does not
grow with the dataset. A sample that cannot be scored (missing prediction or GT, unreadable file, shape mismatch,
label out of range) is skipped and listed under ``skipped`` with the reason; it is never silently counted. An
evaluation that scores no sample at all is an error.

Dataset folder (the synthetic-data layout, see ``opensapiens.synth``): ``images/NAME.png`` (or .jpg, .webp, ...: any
format ``read_image`` reads), ``seg/NAME.png`` (class ids), ``masks/NAME.png`` (instance ids, 0 = background),
``depths/NAME.npy`` (metres, 0 = background), ``normals/NAME.npy`` (H x W x 3, 0 = background), ``annotations.json``
(COCO keypoints, GT person boxes); pointmaps: the depths and each image's camera (``meta/NAME.json`` or
``camera_intrinsics/NAME.txt``, see ``data.datasets``) give the GT points.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..metadata import SEG_CLASSES_FILE, KeypointSet, keypoint_set, read_seg_classes, seg29_to_28, seg_classes
from .depth import DepthAccumulator
from .normals import NormalAccumulator
from .pointmap import PointmapAccumulator
from .pose import annotation_keypoints, evaluate_keypoints, person_category, read_coco_json
from .pose_files import SAVED_HINT, convert_gt, first_images, infer_keypoint_set, read_pose_predictions
from .segmentation import SegConfusion
from .utils import read_label_png

TASKS = ("pose", "seg", "depth", "normal", "pointmap")
GT_DIRS = {"seg": ("seg", ".png"), "depth": ("depths", ".npy"), "normal": ("normals", ".npy"),
           "pointmap": ("depths", ".npy")}  # (saved pointmaps: --gt holds (H, W, 3) points .npy)


# ------------------------------------------------------------------------------------------------------ file reading


def read_mask(path: Path) -> np.ndarray:
    """(H, W) bool foreground: nonzero pixels of a PNG (any channel) or ``.npy``."""
    if path.suffix == ".npy":
        m = np.load(path, allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(path) as im:
            m = np.asarray(im)
    return (m != 0).any(-1) if m.ndim == 3 else m != 0


def read_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def resolve_classes(spec: str | int | Sequence[str] | None) -> tuple[str, ...]:
    """Class names from "goliath" (28), "sapiens2" (29), "face" (19), a class count, a comma list, a class-list JSON
    (as training takes, ``data.labels.load_classes``) or a text file (one per line)."""
    if spec is None:
        return seg_classes("goliath").names
    if not isinstance(spec, (str, int)):
        return tuple(spec)
    if str(spec).endswith(".json"):
        from ..data.labels import load_classes

        return load_classes(spec).names
    if str(spec) in ("goliath", "28", "sapiens2", "goliath29", "29", "face", "19"):
        return seg_classes(str(spec)).names
    if isinstance(spec, int) or spec.isdigit():
        return tuple(f"class_{i}" for i in range(int(spec)))
    if Path(spec).is_file():
        return tuple(line.strip() for line in Path(spec).read_text().splitlines() if line.strip())
    if "," in spec:
        return tuple(s.strip() for s in spec.split(","))
    raise ValueError(f"unknown class list {spec!r}: use goliath, face, a class count, a comma list or a text file")


def _mask_file(masks: Path, name: str) -> Path | None:
    for ext in (".png", ".npy"):
        if (masks / f"{name}{ext}").is_file():
            return masks / f"{name}{ext}"
    return None


def _progress(items, total: int, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, file=sys.stderr, leave=False)


def _check_scored(scored: int, skipped: list[dict], where: Path) -> None:
    """An evaluation that scored no sample has no numbers: an error, not a report of NaNs."""
    if scored == 0:
        first = f"; first: {skipped[0]['name']}: {skipped[0]['reason']}" if skipped else ""
        raise ValueError(f"{where}: no sample could be scored ({len(skipped)} skipped{first})")


def _dataset_images(folder: Path) -> tuple[dict[str, Path], list[dict]]:
    """{name: file} of the images of a dataset folder (every extension ``read_image`` reads), and the names held by
    several files (skipped: which one the GT belongs to is unknown)."""
    from ..io.images import IMAGE_EXTENSIONS

    by_name: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
            by_name.setdefault(f.stem, []).append(f)
    if not by_name:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    skipped = [{"name": n, "reason": f"several images named {n}: {', '.join(f.name for f in fs)}"}
               for n, fs in by_name.items() if len(fs) > 1]
    return {n: fs[0] for n, fs in by_name.items() if len(fs) == 1}, skipped


def _finish(task: str, metrics: dict, protocol: dict, skipped: list[dict]) -> dict:
    if task == "pose" and metrics["num_gt"] == 0:  # AP over nobody is 0/0: a table of NaNs
        raise ValueError("no ground truth person with a labelled keypoint in the images scored (the ground truth's "
                         "annotations, or --limit's first images): nothing to score")
    return {"task": task, **metrics, "protocol": protocol, "skipped": skipped}


def _dense_accumulator(task: str, classes, align: str, ignore_index: int):
    if task == "seg":
        names = resolve_classes(classes)
        return SegConfusion(len(names), ignore_index, names)
    if task == "pointmap":
        return PointmapAccumulator()
    return DepthAccumulator(align) if task == "depth" else NormalAccumulator()


def _protocol(task: str, acc, align: str) -> dict:
    if task == "seg":
        return {"classes": list(acc.class_names), "ignore_index": acc.ignore_index}
    if task == "depth":
        return {"align": align, "average": "per image, then over images"}
    if task == "pointmap":
        return {"space": "metric (the predicted points / the predicted scale), metres", "average": "pooled over all "
                "pixels; focal per image", "normals": "5x5 Sobel, where the window is foreground"}
    return {"average": "pooled over all pixels", "median": f"histogram, {acc.bin_width} degree bins"}


# --------------------------------------------------------------------------------------------- saved predictions


def predict_suffix(task: str) -> str:
    """What ``opensapiens predict`` appends to an image's stem for its ``task`` map (``_seg.png``, ...)."""
    from ..inference.batch import OUTPUTS  # here, not at the top: inference imports evaluation

    return OUTPUTS[task][0]


def _prediction_file(task: str, pred: Path, gt_file: Path) -> Path | None:
    """The prediction for a GT file: the file of the same name, else the one ``opensapiens predict`` writes."""
    for p in (pred / gt_file.name, pred / f"{gt_file.stem}{predict_suffix(task)}"):
        if p.is_file():
            return p
    return None


def evaluate_saved(task: str, pred: str | Path, gt: str | Path, *, keypoints: str | None = None,
                   masks: str | Path | None = None, classes=None, align: str = "lstsq", ignore_index: int = 255,
                   limit: int | None = None, progress: bool = False) -> dict:
    """Score saved predictions against ground truth.

    pose: ``gt`` is a COCO keypoint JSON file; ``pred`` a COCO results JSON file, or ``opensapiens predict``'s
    output (its folder of per-image JSONs, or one of them; see ``read_pose_predictions``). seg: folders of PNG label
    maps. depth / normal: folders of ``.npy`` maps, foreground from ``masks`` (``NAME.png`` or ``NAME.npy``, nonzero
    = foreground) or, without it, the GT's nonzero finite pixels. Files are paired by name; the GT folder decides
    which samples exist. The prediction for GT ``NAME.png`` / ``NAME.npy`` is the file of that name, else the one
    ``opensapiens predict`` writes (``NAME_seg.png``, ``NAME_depth.npy``, ``NAME_normal.npy``). ``limit``: only the
    first GT files by name (pose: the first GT images of the file, their annotations and their results).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if task == "pose":
        gt_data = read_coco_json(gt, "ground truth")
        name = keypoint_set(keypoints).name if keypoints else infer_keypoint_set(gt_data)
        if keypoints and isinstance(gt_data, dict) and gt_data.get("annotations"):  # scored in --keypoints: a GT
            gt_data = convert_gt(gt_data, infer_keypoint_set(gt_data), name)  # in another layout mapped by name
        results = read_pose_predictions(pred, gt_data, name)
        if limit is not None and isinstance(gt_data, dict) and isinstance(results, list):
            gt_data, results = first_images(gt_data, results, limit)
        metrics = evaluate_keypoints(gt_data, results, name)
        return _finish(task, metrics, {"keypoints": keypoint_set(name).name, "source": "saved"}, [])
    pred, gt = Path(pred), Path(gt)
    for what, d in (("prediction", pred), ("ground truth", gt)) + ((("mask", Path(masks)),) if masks else ()):
        if d.is_file():
            raise ValueError(f"{what} {d} is a file; {task} takes a folder (of {GT_DIRS[task][1]} files and the "
                             "like, see docs/evaluation.md)")
        if not d.is_dir():
            raise FileNotFoundError(f"{what} folder not found: {d}")
    ext = GT_DIRS[task][1]
    gt_files = sorted(gt.glob(f"*{ext}"))[:limit]
    if not gt_files:
        raise FileNotFoundError(f"no {ext} ground truth files in {gt}")
    predicted = _saved_class_names(pred, given=classes is not None) if task == "seg" else None
    acc = _dense_accumulator(task, _scored_classes(classes, predicted), align, ignore_index)
    to_scored = _label_mapping(predicted, acc, f"the predictions ({pred / SEG_CLASSES_FILE}) have")
    skipped: list[dict] = []
    for g in _progress(gt_files, len(gt_files), progress, f"eval {task}"):
        p = _prediction_file(task, pred, g)
        m = _mask_file(Path(masks), g.stem) if masks else None
        if p is None:
            skipped.append({"name": g.stem, "reason": f"no prediction {g.name} or {g.stem}{predict_suffix(task)} "
                                                      f"in {pred}"})
            continue
        if masks and m is None:
            skipped.append({"name": g.stem, "reason": f"no mask {g.stem}.png/.npy in {masks}"})
            continue
        try:
            if task == "seg":
                labels = read_label_png(p)
                acc.update(labels if to_scored is None else _mapped(to_scored, labels), read_label_png(g))
            else:
                acc.update(read_npy(p), read_npy(g), None if m is None else read_mask(m))
        except (OSError, ValueError, TypeError) as e:
            skipped.append({"name": g.stem, "reason": str(e)})
    _check_scored(acc.num_images, skipped, gt)
    protocol = {**_protocol(task, acc, align), "source": "saved", "masks": str(masks) if masks else "gt nonzero"}
    if to_scored is not None:
        protocol["predictions"] = SAPIENS2_MAPPED
    return _finish(task, acc.compute(), protocol, skipped)


SAPIENS2_MAPPED = "Sapiens2's 29 classes mapped to the 28 (Eyeglass scored as Face_Neck)"


def _saved_class_names(pred: Path, given: bool) -> tuple[str, ...] | None:
    """The class names ``opensapiens predict`` recorded beside its seg label maps (None where it wrote none); a record
    that cannot be read is an error, or with ``--classes`` given (``given``) a warning."""
    try:
        return read_seg_classes(pred)
    except ValueError as e:
        if not given:
            raise ValueError(f"{e}; pass --classes to score the label maps as that list's ids") from None
        import warnings

        warnings.warn(f"{e}: ignored, the ids are scored as --classes", stacklevel=3)
        return None


def _scored_classes(classes, predicted: Sequence[str] | None):
    """``classes`` where given, else the predictions' own, except that a Sapiens2 model's 29 are scored on Goliath's
    28 (mapped by ``_label_mapping``): the classes of the synthetic datasets and of v1's ground truth."""
    if classes is not None or not predicted:
        return classes
    return "goliath" if tuple(predicted) == seg_classes("sapiens2").names else predicted


def _label_mapping(predicted: Sequence[str] | None, acc, source: str) -> np.ndarray | None:
    """How predicted label ids become scored ones: a Sapiens2 model's 29 classes scored on Goliath's 28 are mapped
    by name (Eyeglass as Face_Neck); None where they are the scored ids; an error where the counts differ (classes
    never predicted would score 0 IoU each)."""
    if not predicted:
        return None
    if tuple(predicted) == seg_classes("sapiens2").names and tuple(acc.class_names) == seg_classes("goliath").names:
        return seg29_to_28()
    if acc.num_classes != len(predicted):
        raise ValueError(f"--classes lists {acc.num_classes} classes; {source} {len(predicted)}")
    return None


def _mapped(lut: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Predicted ids through ``lut``; ids beyond it (not the model's) stay out of range, to be counted as such."""
    return np.where(labels < len(lut), lut[np.minimum(labels, len(lut) - 1)], labels)


# -------------------------------------------------------------------------------------------------- model on data


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _image_path(data: Path, file_name: str) -> Path:
    for cand in (data / "images" / file_name, data / file_name, data / "images" / Path(file_name).name):
        if cand.is_file():
            return cand
    return data / "images" / file_name


def _evaluate_pose_model(predictor, data: Path, keypoints: str | None, limit: int | None, batch_images: int,
                         progress: bool) -> dict:
    from ..inference.streams import submit_ahead
    from ..io import read_image

    gt = read_coco_json(data / "annotations.json", "ground truth")
    category = person_category(gt)  # the id the predictions must carry to match the GT people
    own = getattr(predictor, "result_layout", None)  # a fine-tune's own keypoint set: its GT is in it, scored in it
    own = own if isinstance(own, KeypointSet) else None
    if own is not None and keypoints is not None and keypoint_set(keypoints).name != own.name:
        raise ValueError(f"--keypoints {keypoints}: this model predicts its own {own.name} keypoints, which convert to "
                         "no other layout; it is scored in them")
    layout = getattr(predictor, "keypoint_set", None)
    gt_name = own.name if own is not None else infer_keypoint_set(
        gt, f"this model predicts the {layout.num_keypoints} {layout.name} keypoints; ground truth in a set of its "
            "own is scored by a model fine-tuned on that set" if layout is not None else SAVED_HINT)
    k_gt = own.num_keypoints if own is not None else keypoint_set(gt_name).num_keypoints
    by_image: dict = {}
    for a in gt["annotations"]:  # top-down with GT boxes: every non-crowd person with a labelled keypoint
        kp = annotation_keypoints(a, k_gt, f"ground truth annotation {a.get('id', '?')}")
        if not a.get("iscrowd", 0) and (kp[:, 2] > 0).any():
            x, y, w, h = a["bbox"]
            by_image.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    images = [im for im in gt["images"] if im["id"] in by_image][:limit]
    if not images:
        raise ValueError(f"{data / 'annotations.json'}: no image with a non-crowd person with labelled keypoints")
    results, skipped, eval_name = [], [], keypoints

    def batches():  # (image records, images, boxes) per chunk read; read while the previous chunk runs
        for chunk in _progress(list(_chunks(images, batch_images)), -(-len(images) // batch_images), progress,
                               "eval pose"):
            loaded = []
            for im in chunk:
                try:
                    loaded.append((im, read_image(_image_path(data, im["file_name"]))))
                except (OSError, ValueError) as e:
                    skipped.append({"name": im["file_name"], "image_id": im["id"], "reason": str(e)})
            if loaded:
                boxes = [np.asarray(by_image[im["id"]], np.float32) for im, _ in loaded]
                yield [im for im, _ in loaded], [x for _, x in loaded], {"boxes": boxes}

    for records, predictions, error in submit_ahead(predictor, batches()):
        if error is not None:
            raise error
        for im, res in zip(records, predictions):
            if own is not None:
                results += res.to_coco(im["id"], category_id=category)
                continue
            model_name = keypoint_set(res.keypoint_set).name
            if eval_name is None:  # score in the smaller of the two layouts (conversions go 308 -> 133 -> 17)
                eval_name = min((gt_name, model_name), key=lambda n: keypoint_set(n).num_keypoints)
            if model_name != eval_name:
                res = res.convert(eval_name)
            results += res.to_coco(im["id"], category_id=category)
    eval_name = eval_name or gt_name
    evaluated = {im["id"] for im in images} - {s["image_id"] for s in skipped}
    _check_scored(len(evaluated), skipped, data)
    gt_eval = convert_gt({**gt, "images": [im for im in gt["images"] if im["id"] in evaluated]}, gt_name, eval_name)
    gt_eval["annotations"] = [a for a in gt_eval["annotations"] if a["image_id"] in evaluated]
    metrics = evaluate_keypoints(gt_eval, results, own or eval_name)
    protocol = {"keypoints": eval_name, "boxes": "ground truth (top-down)", "instance_score": "bbox_keypoint, thr 0.2",
                "num_images": len(evaluated)}
    return _finish("pose", metrics, protocol, skipped)


def _gt_dir(data: Path, task: str) -> Path:
    """The ground-truth folder of a dataset (pointmaps: ``depths/``, or the official layout's ``depth/``)."""
    folder = data / GT_DIRS[task][0]
    return data / "depth" if task == "pointmap" and not folder.is_dir() and (data / "depth").is_dir() else folder


def check_dataset(task: str, data: str | Path) -> Path:
    """``data`` as a Path if it has the layout ``evaluate_model`` reads for ``task``; else a clear error (cheap: check
    it before loading a model)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    data = Path(data)
    if not (data / "images").is_dir():
        raise FileNotFoundError(f"{data}: no images/ folder (expected the synthetic-data layout)")
    if task == "pose":
        if not (data / "annotations.json").is_file():
            raise FileNotFoundError(f"{data}: no annotations.json (needed for GT keypoints and boxes)")
    elif not _gt_dir(data, task).is_dir():
        raise FileNotFoundError(f"{data}: no {GT_DIRS[task][0]}/ folder with the {task} ground truth")
    elif task == "pointmap" and not ((data / "camera_intrinsics").is_dir() or (data / "meta").is_dir()):
        raise FileNotFoundError(f"{data}: no cameras for the pointmap ground truth (camera_intrinsics/NAME.txt or "
                                "meta/NAME.json)")
    else:
        _dataset_images(data / "images")  # none: an error now, not after the model loads
    return data


def evaluate_model(task: str, predictor, data: str | Path, *, keypoints: str | None = None, classes=None,
                   align: str = "lstsq", ignore_index: int = 255, limit: int | None = None, batch_images: int = 4,
                   progress: bool = False) -> dict:
    """Run ``predictor`` (see ``opensapiens.inference.predictors``) over a dataset folder and score it.

    The predictor needs ``predict_batch(images, ...)`` returning ``PoseResult`` / ``SegResult`` / ``DepthResult`` /
    ``NormalResult``, or ``submit`` as ours have (each chunk is then read while the one before runs). Pose is
    top-down with the GT boxes of ``annotations.json``; depth and normals are predicted without a mask and scored on
    the GT foreground (``masks/``, else the GT's nonzero pixels).
    """
    data = check_dataset(task, data)
    if task == "pose":
        return _evaluate_pose_model(predictor, data, keypoints, limit, batch_images, progress)
    from ..data.labels import DataError
    from ..inference.streams import submit_ahead
    from ..io import read_image

    gt_dir, ext = _gt_dir(data, task), GT_DIRS[task][1]
    predicted = getattr(predictor, "class_names", None) if task == "seg" else None
    acc = _dense_accumulator(task, _scored_classes(classes, predicted), align, ignore_index)
    to_scored = _label_mapping(predicted, acc, "this model predicts")
    files, skipped = _dataset_images(data / "images")
    names = sorted(files)[:limit]

    def batches():  # ((name, gt, mask) records, images, {}) per chunk read; read while the previous chunk runs
        for chunk in _progress(list(_chunks(names, batch_images)), -(-len(names) // batch_images), progress,
                               f"eval {task}"):
            loaded = []
            for name in chunk:
                g = gt_dir / f"{name}{ext}"
                if not g.is_file():
                    skipped.append({"name": name, "reason": f"no ground truth {g}"})
                    continue
                try:
                    m = _mask_file(data / "masks", name) if task != "seg" else None
                    gt_map = read_label_png(g) if task == "seg" else read_npy(g)
                    mask = None if m is None else read_mask(m)
                    if task == "pointmap":  # the depth's points, and the focal length, from the image's camera
                        gt_map, mask = _pointmap_gt(data, name, gt_map, mask)
                    loaded.append((name, read_image(files[name]), gt_map, mask))
                except (OSError, ValueError, DataError) as e:
                    skipped.append({"name": name, "reason": str(e)})
            if loaded:
                yield [(name, gt_map, mask) for name, _, gt_map, mask in loaded], [x[1] for x in loaded], {}

    for records, predictions, error in submit_ahead(predictor, batches()):
        if error is not None:
            raise error
        for (name, gt_map, mask), res in zip(records, predictions):
            try:
                if task == "seg":
                    acc.update(res.labels if to_scored is None else _mapped(to_scored, res.labels), gt_map)
                elif task == "pointmap":
                    acc.update(res.points, gt_map[0], mask)
                    acc.add_focal(float(np.sqrt(res.focal[0] * res.focal[1])), gt_map[1])
                else:
                    acc.update(res.depth if task == "depth" else res.normals, gt_map, mask)
            except (ValueError, TypeError) as e:
                skipped.append({"name": name, "reason": str(e)})
    _check_scored(acc.num_images, skipped, data)
    protocol = {**_protocol(task, acc, align), "source": "model", "masks": "masks/ (else gt nonzero)"}
    if to_scored is not None:
        protocol["predictions"] = SAPIENS2_MAPPED
    return _finish(task, acc.compute(), protocol, skipped)


def _pointmap_gt(data: Path, name: str, depth: np.ndarray, mask: np.ndarray | None):
    """((H, W, 3) metric GT points, focal length in image pixels) and the foreground with a depth."""
    import torch

    from ..data.datasets import read_intrinsics
    from ..tasks.pointmap import focal_length, unproject

    K = torch.from_numpy(read_intrinsics(data, name))
    depth = np.where(np.isfinite(depth), depth, 0).astype(np.float64)
    points = unproject(torch.from_numpy(depth)[None], K[None])[0].numpy()
    fg = depth > 0 if mask is None else mask & (depth > 0)
    return (points, float(focal_length(K))), fg
