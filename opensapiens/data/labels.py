"""Label vocabularies for training: built-in keypoint sets and class lists, or your own from a small JSON file.

Keypoint set JSON (custom pose)::

    {"names": ["head", "left_hand", "right_hand", ...],
     "flip_pairs": [[1, 2], ...],            # left/right partners (swapped by the flip augmentation)
     "sigmas": [0.05, ...],                  # OKS sigmas for evaluation (optional, 0.05 each)
     "skeleton": [[0, 1], ...],              # drawing only (optional)
     "upper_body": [...], "lower_body": [...]}   # half-body augmentation ids (optional; none = no half-body)

Class list JSON (custom segmentation)::

    {"names": ["background", "shirt", "left_sleeve", "right_sleeve"],
     "class_weight": [0.5, 1, 1, 1],          # cross-entropy weights (optional; none = plain CE)
     "flip_pairs": [[2, 3]],                  # classes swapped by the flip augmentation
     "palette": [[0, 0, 0], ...]}             # drawing colours (optional)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..metadata import KeypointSet, SegClasses, generic_palette, goliath_half_body, keypoint_set, seg_classes


class DataError(ValueError):
    """A dataset folder, annotation or label file that cannot be used; the message names it and what is wrong."""


@dataclass(frozen=True)
class PoseLayout:
    """A keypoint set plus the ids the half-body augmentation uses (empty: no half-body)."""

    keypoints: KeypointSet
    upper_body: tuple[int, ...] = ()
    lower_body: tuple[int, ...] = ()


def _read_json(path: Path, what: str) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{what} file {path}: cannot read it ({e})") from e
    if not isinstance(d, dict) or not isinstance(d.get("names"), list) or not d["names"]:
        raise DataError(f"{what} file {path}: needs a non-empty \"names\" list")
    return d


def _pairs(d: dict, n: int, path: Path, what: str) -> tuple[tuple[int, int], ...]:
    pairs = tuple((int(i), int(j)) for i, j in d.get("flip_pairs", []))
    for i, j in pairs:
        if not (0 <= i < n and 0 <= j < n):
            raise DataError(f"{what} file {path}: flip pair ({i}, {j}) outside [0, {n})")
    return pairs


def load_keypoint_layout(spec: str | int | Path) -> PoseLayout:
    """Built-in set ("goliath"/308, "wholebody"/133, "coco"/17) or a keypoint-set JSON (module docstring)."""
    if str(spec).endswith(".json"):
        path = Path(spec)
        d = _read_json(path, "keypoint set")
        names = tuple(d["names"])
        K = len(names)
        flip = list(range(K))
        for i, j in _pairs(d, K, path, "keypoint set"):
            flip[i], flip[j] = j, i
        sigmas = tuple(float(s) for s in d.get("sigmas", [0.05] * K))
        if len(sigmas) != K:
            raise DataError(f"keypoint set file {path}: {len(sigmas)} sigmas for {K} keypoints")
        kps = KeypointSet(path.stem, names, tuple(flip), sigmas, tuple(tuple(p) for p in d.get("skeleton", [])),
                          {"all": tuple(range(K))})
        halves = []
        for part in ("upper_body", "lower_body"):
            ids = tuple(int(i) for i in d.get(part, ()))
            if bad := [i for i in ids if not 0 <= i < K]:
                raise DataError(f"keypoint set file {path}: {part} ids {bad[:5]} outside [0, {K})")
            halves.append(ids)
        return PoseLayout(kps, *halves)
    kps = keypoint_set(spec)
    if kps.name == "goliath":
        upper, lower = goliath_half_body()
    elif kps.name == "wholebody":  # body 0-10 and both hands up; legs and feet down
        upper, lower = (*range(0, 11), *range(91, 133)), tuple(range(11, 23))
    else:
        upper, lower = tuple(range(0, 11)), tuple(range(11, 17))
    return PoseLayout(kps, tuple(upper), tuple(lower))


def load_classes(spec: str | int | Path) -> SegClasses:
    """Built-in class list ("goliath"/28, "face"/19) or a class-list JSON (module docstring)."""
    if not str(spec).endswith(".json"):
        return seg_classes(spec)
    path = Path(spec)
    d = _read_json(path, "class list")
    names = tuple(d["names"])
    n = len(names)
    if n > 255:
        raise DataError(f"class list file {path}: {n} classes; label maps are uint8 with 255 = ignore")
    weight = d.get("class_weight")
    if weight is not None and len(weight) != n:
        raise DataError(f"class list file {path}: {len(weight)} class weights for {n} classes")
    palette = d.get("palette") or generic_palette(n)
    return SegClasses(names, tuple(tuple(int(v) for v in c) for c in palette),
                      tuple(float(w) for w in weight) if weight is not None else None, _pairs(d, n, path, "class list"))
