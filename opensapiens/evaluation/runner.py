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

import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..metadata import KeypointSet, conversion_indices, convert_keypoints, keypoint_set, seg29_to_28, seg_classes
from .depth import DepthAccumulator
from .normals import NormalAccumulator
from .pointmap import PointmapAccumulator
from .pose import annotation_keypoints, evaluate_keypoints, person_category, read_coco_json
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
    """Class names from "goliath" (28), "face" (19), a class count, a comma list, a class-list JSON (as training
    takes, ``data.labels.load_classes``) or a text file (one per line)."""
    if spec is None:
        return seg_classes("goliath").names
    if not isinstance(spec, (str, int)):
        return tuple(spec)
    if str(spec).endswith(".json"):
        from ..data.labels import load_classes

        return load_classes(spec).names
    if str(spec) in ("goliath", "28", "face", "19"):
        return seg_classes(spec).names
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


SAVED_HINT = "a fine-tune's own keypoints are scored with its model: eval --checkpoint ... --data ..."


def infer_keypoint_set(gt, hint: str = SAVED_HINT) -> str:
    """The layout of a COCO keypoint GT from its first annotation (17, 133 or 308 keypoints); ``hint`` ends the
    error for any other count."""
    anns = [a for a in read_coco_json(gt, "ground truth").get("annotations") or []
            if a.get("keypoints") or "goliath_wholebody_kpts" in a]  # crowd regions may come without keypoints
    if not anns:
        raise ValueError("ground truth has no annotation with keypoints to infer the keypoint layout from; pass "
                         "--keypoints")
    a = anns[0]
    if "goliath_wholebody_kpts" in a:
        return "goliath"
    if "foot_kpts" in a:
        return "wholebody"
    n = len(a.get("keypoints", [])) // 3
    if n not in (17, 133, 308):
        raise ValueError(f"ground truth keypoints have {n} points; expected 17, 133 or 308 ({hint})")
    return keypoint_set(n).name


def _first_images(gt: dict, results: list, limit: int) -> tuple[dict, list]:
    """The GT cut to its first ``limit`` images with their annotations, and the results for those images (results
    for an image the GT does not have are kept, for evaluate_keypoints to report)."""
    images = gt.get("images") or []
    keep = {im.get("id") for im in images[:limit]}
    drop = {im.get("id") for im in images} - keep
    gt = {**gt, "images": images[:limit],
          "annotations": [a for a in gt.get("annotations") or [] if a.get("image_id") not in drop]}
    return gt, [r for r in results if not isinstance(r, dict) or r.get("image_id") not in drop]


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


def _is_predict_doc(doc) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("image"), dict) and "people" in doc


def _is_openpose_doc(doc) -> bool:
    """``predict --openpose``'s STEM_openpose.json, which sits beside STEM.json: the same people, another layout."""
    return isinstance(doc, dict) and "canvas_width" in doc and "people" in doc and "image" not in doc


def read_pose_predictions(pred: str | Path | list | dict, gt: dict, keypoints: str | None = None) -> list | dict:
    """COCO keypoint results from ``pred``: a COCO results JSON (list, returned as read), or the output of
    ``opensapiens predict --task pose``: its folder of per-image ``STEM.json`` or one such file.

    A predict file (``{"image": {"file_name": STEM, ...}, "keypoint_set", "people": [COCO results]}``) belongs to the
    GT image whose ``file_name`` has that stem; its people become results with that image's id, their keypoints
    converted to the ``keypoints`` layout where the file's differs (308 -> 133 / 17, 133 -> 17, by name, as model
    mode does). A file whose stem matches no GT image, or several, is an error naming it. GT images without a file
    have no predictions.
    """
    if isinstance(pred, (str, Path)) and Path(pred).is_dir():
        files = sorted(Path(pred).glob("*.json"))
        if not files:
            raise FileNotFoundError(f"no .json predictions in {pred} (expected opensapiens predict's STEM.json files)")
        docs = [(f, read_coco_json(f, "predictions")) for f in files]
        docs = [(f, doc) for f, doc in docs if not _is_openpose_doc(doc)]
        for f, doc in docs:
            if not _is_predict_doc(doc):
                raise ValueError(f"predictions file {f} is not an opensapiens predict output (no 'image' and "
                                 "'people'); pass a COCO results JSON file instead of a folder")
    else:
        doc = read_coco_json(pred, "predictions")
        if not _is_predict_doc(doc):
            return doc
        docs = [(pred, doc)]
    by_stem: dict[str, list] = {}
    images = (gt.get("images") or []) if isinstance(gt, dict) else []  # a bad GT: evaluate_keypoints says why
    category = person_category(gt) if isinstance(gt, dict) else 1
    sizes = {}
    for im in images:
        if "file_name" in im:
            by_stem.setdefault(Path(str(im["file_name"])).stem, []).append(im.get("id"))
            sizes[im.get("id")] = (im.get("height"), im.get("width"))
    results = []
    for f, doc in docs:
        stem = str(doc["image"].get("file_name", ""))
        ids = by_stem.get(stem, [])
        if len(ids) != 1:
            why = "no ground truth image" if not ids else f"{len(ids)} ground truth images (ids {ids})"
            raise ValueError(f"predictions file {f}: image {stem!r} matches {why} by file name stem")
        seen, known = (doc["image"].get("height"), doc["image"].get("width")), sizes.get(ids[0], (None, None))
        if None not in seen + known and tuple(map(int, seen)) != tuple(map(int, known)):
            raise ValueError(f"predictions file {f}: predicted on a {seen[0]}x{seen[1]} image, the ground truth's "
                             f"{stem!r} is {known[0]}x{known[1]} (HxW): not the same picture")
        people = doc["people"]
        if not isinstance(people, list) or not all(isinstance(r, dict) for r in people):
            raise ValueError(f"predictions file {f}: 'people' is not a list of COCO keypoint results")
        src = doc.get("keypoint_set")
        if keypoints is not None and src is not None and keypoint_set(src).name != keypoint_set(keypoints).name:
            people = [_converted(r, src, keypoints, f) for r in people]
        # predict writes COCO's person category (1); the ground truth's may be another id
        results += [{**r, "image_id": ids[0], "category_id": category} for r in people]
    return results


def _converted(result: dict, src: str, dst: str, where: Path | str) -> dict:
    """One COCO result's ``[x, y, score] * K`` in another keypoint layout (channels without a source score 0)."""
    flat = np.asarray(result.get("keypoints", []), np.float64)
    k = keypoint_set(src).num_keypoints
    if flat.size != 3 * k:
        raise ValueError(f"predictions file {where}: a person has {flat.size // 3} keypoints, its file's "
                         f"keypoint_set {src!r} has {k}")
    kp, sc = convert_keypoints(flat.reshape(k, 3)[:, :2], flat.reshape(k, 3)[:, 2], src, dst)
    return {**result, "keypoints": np.concatenate([kp, sc[:, None]], axis=1).reshape(-1).tolist()}


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
            gt_data = _convert_gt(gt_data, infer_keypoint_set(gt_data), name)  # in another layout mapped by name
        results = read_pose_predictions(pred, gt_data, name)
        if limit is not None and isinstance(gt_data, dict) and isinstance(results, list):
            gt_data, results = _first_images(gt_data, results, limit)
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
    predicted = _saved_class_names(pred) if task == "seg" else None
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


SEG_CLASSES_FILE = "classes.json"  # (inference.batch.SEG_CLASSES_FILE: imported there from here would cycle)
SAPIENS2_MAPPED = "Sapiens2's 29 classes mapped to the 28 (Eyeglass scored as Face_Neck)"


def _saved_class_names(pred: Path) -> tuple[str, ...] | None:
    """The class names ``opensapiens predict`` recorded beside its seg label maps (None where it wrote none)."""
    f = pred / SEG_CLASSES_FILE
    try:
        names = json.loads(f.read_text())["class_names"] if f.is_file() else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{f}: not predict's class list ({e!r})") from None
    return tuple(names) if names else None


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


def _convert_gt(gt: dict, src: str, dst: str) -> dict:
    """A copy of a COCO keypoint GT with every annotation's keypoints converted to another layout (flat)."""
    if src == dst:
        return gt
    dst_ids, src_ids = conversion_indices(src, dst)
    k_src, k_dst = keypoint_set(src).num_keypoints, keypoint_set(dst).num_keypoints
    anns = []
    for a in gt["annotations"]:
        kp = annotation_keypoints(a, k_src, f"ground truth annotation {a.get('id', '?')}")
        out = np.zeros((k_dst, 3))
        out[dst_ids] = kp[src_ids]
        anns.append({**a, "keypoints": out.ravel().tolist(), "num_keypoints": int((out[:, 2] > 0).sum())})
    return {**gt, "annotations": anns}


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
    gt_eval = _convert_gt({**gt, "images": [im for im in gt["images"] if im["id"] in evaluated]}, gt_name, eval_name)
    gt_eval["annotations"] = [a for a in gt_eval["annotations"] if a["image_id"] in evaluated]
    metrics = evaluate_keypoints(gt_eval, results, own or eval_name)
    protocol = {"keypoints": eval_name, "boxes": "ground truth (top-down)", "instance_score": "bbox_keypoint, thr 0.2",
                "num_images": len(evaluated)}
    return _finish("pose", metrics, protocol, skipped)


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
    elif not (data / GT_DIRS[task][0]).is_dir():
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

    gt_dir, ext = GT_DIRS[task]
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
                g = data / gt_dir / f"{name}{ext}"
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
