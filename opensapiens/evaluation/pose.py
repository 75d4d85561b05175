"""Keypoint OKS AP / AR with pycocotools' own ``COCOeval`` (COCO-17, COCO-WholeBody-133, Goliath-308).

We do not re-implement OKS matching: every number comes from ``pycocotools.cocoeval.COCOeval`` with
``iouType="keypoints"``. What this module adds is the wiring the reference evaluators keep in private code:
    - ``params.kpt_oks_sigmas`` set to the layout's sigmas (pycocotools' default is the COCO-17 list);
    - per-group scores (body, foot, face, left_hand, right_hand for 133 and 308; the official Goliath groups, the 7
      Goliath "extra" keypoints count only in the whole body): GT and predictions are cut down to the group's
      keypoints, ``num_keypoints`` is recounted from the group's visibility flags (a person with no labelled keypoint
      in the group is ignored, as xtcocotools does), and COCOeval runs with the group's sigmas;
    - the whole-body score over all K keypoints with all K sigmas (``AP``, ``AR``, ...);
    - non-finite predictions are reported and scored, never passed on: COCOeval would turn a NaN coordinate into a
      NaN OKS, and a NaN OKS *matches* (its ``< threshold`` test is False), so a NaN pose would count as a hit.
      A non-finite keypoint is moved far away (OKS term exactly 0, the worst possible); the prediction's box/area
      that ``loadRes`` derives from its keypoints is recomputed from the finite keypoints. A non-finite instance
      score ranks below every finite score. Counts: ``nonfinite_pred`` (keypoints), ``nonfinite_scores``.
GT ``area`` sets the OKS scale. Statistics pycocotools reports as -1 (no GT in that area range) are NaN here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..metadata import KeypointSet
from ..metadata import keypoint_set as get_keypoint_set

GROUP_ORDER = ("body", "foot", "face", "left_hand", "right_hand")
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
FAR = -1.0e7  # where a non-finite keypoint is moved: exp(-OKS exponent) underflows to exactly 0
# COCO-WholeBody files split the 133 keypoints over five fields (order = the 133 layout).
WHOLEBODY_FIELDS = ("keypoints", "foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts")


def read_coco_json(src: str | os.PathLike | dict | list, what: str) -> dict | list:
    """The parsed JSON of a path; dicts and lists pass through. ``what`` names the input in errors."""
    if not isinstance(src, (str, os.PathLike)):
        return src
    path = Path(src)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; pose takes a COCO JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except UnicodeDecodeError:  # a picture, a video, a .npy: named as what it is not, not as a codec error
        raise ValueError(f"{what} file {path} is not a JSON file (not even text)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} file {path} is not valid JSON: {e}") from None


def person_category(gt: dict) -> int:
    """The ground truth's person category id, which predictions must carry to be matched: its only category, else
    the one named "person", else the only one its annotations use, else COCO's 1."""
    categories = gt.get("categories") or []
    if len(categories) == 1:
        return categories[0]["id"]
    named = [c["id"] for c in categories if str(c.get("name", "")).lower() == "person"]
    if len(named) == 1:
        return named[0]
    used = {a["category_id"] for a in gt.get("annotations", []) if "category_id" in a}
    return used.pop() if len(used) == 1 else 1


def _is_number(value, finite: bool = True) -> bool:
    """A JSON number (not a bool, string or null); finite unless told otherwise."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return ok and (not finite or bool(np.isfinite(value)))


def annotation_keypoints(ann: dict, k: int, what: str) -> np.ndarray:
    """(K, 3) [x, y, v-or-score] of one annotation: flat ``keypoints`` of length 3K, the COCO-WholeBody split
    fields (K = 133) or the official Goliath ``goliath_wholebody_kpts`` field (K = 308)."""
    kp = ann.get("keypoints")
    if k == 133 and kp is not None and len(kp) == 51 and all(f in ann for f in WHOLEBODY_FIELDS[1:]):
        kp = [v for f in WHOLEBODY_FIELDS for v in ann[f]]
    elif k == 308 and "goliath_wholebody_kpts" in ann:
        kp = ann["goliath_wholebody_kpts"]
    if kp is None and ann.get("iscrowd"):  # a crowd region without keypoints: nothing labelled in it
        return np.zeros((k, 3))
    if kp is None or len(kp) != 3 * k:
        n = "no" if kp is None else len(kp)
        raise ValueError(f"{what}: 'keypoints' has {n} values, expected {3 * k} ([x, y, v] for {k} keypoints)")
    return np.asarray(kp, dtype=np.float64).reshape(k, 3)


def _prepare_gt(gt: dict, k: int) -> tuple[list[dict], list[dict], list[tuple[dict, np.ndarray]]]:
    """(images, categories, [(annotation, (K, 3) keypoints)]) with the input checked and left unmodified."""
    if not isinstance(gt, dict) or "images" not in gt or "annotations" not in gt:
        raise ValueError("ground truth must be a COCO dict (or JSON file) with 'images' and 'annotations'")
    images = [{"id": im["id"], **{f: im[f] for f in ("width", "height", "file_name") if f in im}}
              for im in gt["images"]]
    image_ids = {im["id"] for im in images}
    anns = []
    for i, a in enumerate(gt["annotations"]):
        what = f"ground truth annotation #{i} (id {a.get('id', '?')}, image {a.get('image_id', '?')})"
        for field in ("image_id", "bbox", "area"):
            if field not in a:
                raise ValueError(f"{what}: missing '{field}' (OKS needs the GT area and box)")
        if not (_is_number(a["area"]) and a["area"] >= 0):  # a NaN area gives NaN OKS: a match for anything
            raise ValueError(f"{what}: 'area' must be a finite number >= 0, got {a['area']!r}")
        if not (isinstance(a["bbox"], (list, tuple)) and len(a["bbox"]) == 4 and all(map(_is_number, a["bbox"]))):
            raise ValueError(f"{what}: 'bbox' must be 4 finite numbers [x, y, w, h], got {a['bbox']!r}")
        if a["image_id"] not in image_ids:
            raise ValueError(f"{what}: image_id is not among the ground truth images")
        kp = annotation_keypoints(a, k, what)
        if not np.isfinite(kp[kp[:, 2] > 0, :2]).all():
            raise ValueError(f"{what}: a labelled keypoint has a non-finite coordinate")
        core = {f: a[f] for f in ("image_id", "bbox", "area", "iscrowd", "category_id") if f in a}
        core.setdefault("category_id", 1)
        core.setdefault("iscrowd", 0)
        core["id"] = i + 1  # our own ids: unique whatever the file holds
        anns.append((core, kp))
    categories = gt.get("categories") or [{"id": c, "name": "person"}
                                          for c in sorted({a["category_id"] for a, _ in anns} or {1})]
    return images, categories, anns


def check_keypoint_gt(gt: dict, k: int, source: str) -> None:
    """Raise ValueError, naming ``source``, where ``gt`` lacks what OKS AP needs (each annotation's box and area...)."""
    try:
        _prepare_gt(gt, k)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def _prepare_results(results: list[dict], k: int, image_ids: set, categories: list[dict]
                     ) -> tuple[list[tuple[dict, np.ndarray, np.ndarray]], int, int]:
    """([(result core, (K, 2) coordinates made finite, (K,) was-finite flags)], non-finite keypoint count,
    non-finite score count)."""
    if not isinstance(results, list):
        raise ValueError("predictions must be a list of COCO keypoint results (or a JSON file holding one)")
    default_cat = categories[0]["id"] if len(categories) == 1 else None
    out, bad_kp, bad_score = [], 0, 0
    for i, r in enumerate(results):
        what = f"prediction #{i} (image {r.get('image_id', '?')!r})"
        if r.get("image_id") not in image_ids:
            kinds, kind = sorted({type(i).__name__ for i in image_ids}), type(r.get("image_id")).__name__
            hint = (f" (the ground truth's ids are {' and '.join(kinds)}s, this one is a {kind})"
                    if "image_id" in r and kind not in kinds else "")
            raise ValueError(f"{what}: image_id is missing or not among the ground truth images{hint}")
        cat = r.get("category_id", default_cat)
        if cat is None:
            raise ValueError(f"{what}: missing 'category_id' and the ground truth has several categories")
        if "score" not in r:
            raise ValueError(f"{what}: missing 'score'")
        xy = annotation_keypoints(r, k, what)[:, :2].copy()
        finite = np.isfinite(xy).all(1)  # (K,)
        bad_kp += int((~finite).sum())
        xy[~finite] = FAR
        score = r["score"]
        if score is None:  # NaN as strict JSON writes it (save_json): non-finite, ranked last like NaN
            score = float("nan")
        if not _is_number(score, finite=False):
            raise ValueError(f"{what}: 'score' must be a number, got {score!r}")
        score = float(score)
        if not np.isfinite(score):
            bad_score += 1
            score = float("-inf")
        out.append(({"image_id": r["image_id"], "category_id": cat, "score": score}, xy, finite))
    return out, bad_kp, bad_score


def _quiet(fn, *args):
    """Call a pycocotools function without its progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def _run_cocoeval(images, categories, gt_anns, dts, idx: np.ndarray, sigmas: np.ndarray) -> list[float]:
    """The 10 COCOeval keypoint stats over the keypoints ``idx`` (NaN where pycocotools says -1)."""
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "categories": categories, "annotations": [
        {**a, "keypoints": kp[idx].ravel().tolist(), "num_keypoints": int((kp[idx, 2] > 0).sum())}
        for a, kp in gt_anns]}
    _quiet(coco_gt.createIndex)
    if dts:
        z = np.zeros((len(idx), 1))
        res = [{**r, "keypoints": np.concatenate([xy[idx], z], 1).ravel().tolist()} for r, xy, _ in dts]
        coco_dt = _quiet(coco_gt.loadRes, res)
        for ann, (_, xy, finite) in zip(coco_dt.dataset["annotations"], dts):
            pts = xy[idx][finite[idx]]
            if len(pts) < len(idx):  # loadRes measured the far-away placeholders: use the real keypoints only
                x0, y0 = pts.min(0) if len(pts) else (0.0, 0.0)
                x1, y1 = pts.max(0) if len(pts) else (0.0, 0.0)
                ann["bbox"], ann["area"] = [x0, y0, x1 - x0, y1 - y0], (x1 - x0) * (y1 - y0)
    else:  # loadRes cannot take an empty list; an empty result set scores 0
        coco_dt = COCO()
        coco_dt.dataset = {"images": images, "categories": categories, "annotations": []}
        _quiet(coco_dt.createIndex)
    ev = COCOeval(coco_gt, coco_dt, iouType="keypoints")
    ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    _quiet(ev.summarize)
    return [float("nan") if s == -1 else float(s) for s in ev.stats]


def evaluation_groups(ks: KeypointSet) -> dict[str, tuple[int, ...]]:
    """The per-part groups scored besides the whole body (none for COCO-17)."""
    return {g: ks.groups[g] for g in GROUP_ORDER if g in ks.groups and len(ks.groups[g]) < ks.num_keypoints}


def evaluate_keypoints(gt, results, keypoint_set: str | int | KeypointSet = "coco", groups: bool = True) -> dict:
    """OKS AP/AR of keypoint predictions.

    Args:
        gt: COCO keypoint ground truth (dict or JSON path): ``images``; ``annotations`` with ``image_id``, ``bbox``
            (xywh), ``area``, ``keypoints`` flat [x, y, v] * K (or the COCO-WholeBody split fields), ``iscrowd``.
        results: COCO keypoint results (list or JSON path): ``image_id``, ``keypoints`` [x, y, score] * K, ``score``.
        keypoint_set: "coco"/17, "wholebody"/133, "goliath"/308, or a ``KeypointSet``.
        groups: also score each keypoint group (133 and 308 layouts).
    Returns:
        ``AP``, ``AP50``, ``AP75``, ``APm``, ``APl``, ``AR``, ... over all K keypoints (fractions in [0, 1]), the same
        per group as ``<group>_AP`` etc., ``nonfinite_pred``, ``nonfinite_scores``, ``num_predictions``, ``num_gt``.
    """
    ks = keypoint_set if isinstance(keypoint_set, KeypointSet) else get_keypoint_set(keypoint_set)
    k = ks.num_keypoints
    images, categories, gt_anns = _prepare_gt(read_coco_json(gt, "ground truth"), k)
    dts, bad_kp, bad_score = _prepare_results(read_coco_json(results, "predictions"), k, {im["id"] for im in images},
                                              categories)
    sigmas = np.asarray(ks.sigmas, dtype=np.float64)
    runs = {"": np.arange(k)}
    if groups:
        runs.update({f"{g}_": np.asarray(ids) for g, ids in evaluation_groups(ks).items()})
    out: dict = {}
    for prefix, idx in runs.items():
        stats = _run_cocoeval(images, categories, gt_anns, dts, idx, sigmas[idx])
        out.update({prefix + name: v for name, v in zip(STAT_NAMES, stats)})
    out.update(keypoint_set=ks.name, num_predictions=len(dts), nonfinite_pred=bad_kp, nonfinite_scores=bad_score,
               num_gt=sum(1 for a, kp in gt_anns if not a["iscrowd"] and (kp[:, 2] > 0).any()))
    return out

