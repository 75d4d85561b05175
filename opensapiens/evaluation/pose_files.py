"""Pose predictions and ground truth in the files users have: COCO keypoint JSON, COCO results, and ``opensapiens
predict``'s per-image JSON (read as results for the GT image of the same stem, converted between keypoint layouts by
name); the layout of a GT file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metadata import SEG_CLASSES_FILE, conversion_indices, convert_keypoints, keypoint_set
from .pose import annotation_keypoints, person_category, read_coco_json

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


def first_images(gt: dict, results: list, limit: int) -> tuple[dict, list]:
    """The GT cut to its first ``limit`` images with their annotations, and the results for those images (results
    for an image the GT does not have are kept, for evaluate_keypoints to report)."""
    images = gt.get("images") or []
    keep = {im.get("id") for im in images[:limit]}
    drop = {im.get("id") for im in images} - keep
    gt = {**gt, "images": images[:limit],
          "annotations": [a for a in gt.get("annotations") or [] if a.get("image_id") not in drop]}
    return gt, [r for r in results if not isinstance(r, dict) or r.get("image_id") not in drop]


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
        files = [f for f in sorted(Path(pred).glob("*.json")) if f.name != SEG_CLASSES_FILE]  # (a seg job's)
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


def convert_gt(gt: dict, src: str, dst: str) -> dict:
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
