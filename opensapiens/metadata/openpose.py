"""OpenPose's layouts from Sapiens keypoints, by name: what ControlNet's OpenPose conditioning and pose editors read.

Layouts (OpenPose's own orders):
    body   BODY_18 (COCO-18: what ControlNet's annotator draws) or BODY_25 (adds mid-hip and the feet)
    hands  21 points each: the wrist, then thumb, forefinger, middle, ring and pinky, each base joint to tip
    face   70 points: the 68 iBUG landmarks (COCO-WholeBody's face-0..67, same order), then the two pupils

Where the names differ:
    neck, mid_hip   the midpoint of the shoulders / hips, as OpenPose defines them (and DWPose computes them).
                    Goliath's own `neck` keypoint sits higher, on the neck itself, so it is not used.
    hand wrist      COCO-WholeBody's `*_hand_root`, else the body's `*_wrist` (Goliath has no hand root); a set
                    without finger points (COCO-17) has no hands.
    finger base     COCO-WholeBody's `*_thumb1` / `*_forefinger1` ...; Goliath's `*_third_joint` (the third joint
                    from the tip: a finger's knuckle, the thumb's base), which its skeleton links to the wrist.
                    (The official 308 -> 133 map leaves these out; OpenPose hands need them.)
    face            only COCO-WholeBody sources have the 68 landmarks; Goliath's 238 face points are another
                    layout, so a Goliath face is left empty. The pupils (68, 69) are always left empty.
A point with no source is (0, 0, 0), OpenPose's "not detected".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from . import KeypointSet, keypoint_set

BODY_18 = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
           "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
           "right_eye", "left_eye", "right_ear", "left_ear")
BODY_25 = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
           "left_wrist", "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
           "right_eye", "left_eye", "right_ear", "left_ear", "left_big_toe", "left_small_toe", "left_heel",
           "right_big_toe", "right_small_toe", "right_heel")
BODY_LAYOUTS = {"body18": BODY_18, "body25": BODY_25}
FINGERS = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")
HAND_21 = ("wrist", *(f"{finger}{joint}" for finger in FINGERS for joint in (1, 2, 3, 4)))
FACE_POINTS = 70
MIDPOINTS = {"neck": ("left_shoulder", "right_shoulder"), "mid_hip": ("left_hip", "right_hip")}


def _candidates(point: str, side: str = "") -> list[tuple[str, str]]:
    """The source names that give an OpenPose point, as (a, b) pairs (a == b: a copy; else the midpoint), best first."""
    if point in MIDPOINTS:
        return [MIDPOINTS[point]]
    if side:  # a hand's point
        if point == "wrist":
            names = [f"{side}_hand_root", f"{side}_wrist"]
        elif point.endswith("1"):
            names = [f"{side}_{point}", f"{side}_{point[:-1]}_third_joint"]
        else:
            names = [f"{side}_{point}"]
        return [(n, n) for n in names]
    return [(point, point)]


def _pairs(names: tuple[str, ...], points: tuple[str, ...], side: str = "") -> np.ndarray:
    """(P, 2) source channels per OpenPose point; -1 where the source set has none."""
    where = {n: i for i, n in enumerate(names)}
    out = np.full((len(points), 2), -1, dtype=np.intp)
    for j, point in enumerate(points):
        for a, b in _candidates(point, side):
            if a in where and b in where:
                out[j] = where[a], where[b]
                break
    return out


@cache
def _layout(names: tuple[str, ...], body: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    face = np.full((FACE_POINTS, 2), -1, dtype=np.intp)
    face[:68] = _pairs(names, tuple(f"face-{i}" for i in range(68)))
    hands = [_pairs(names, HAND_21, side) for side in ("left", "right")]
    for hand in hands:  # a set without fingers (COCO-17) has no hands, not a wrist alone
        if (hand[1:] < 0).all():
            hand[:] = -1
    return (_pairs(names, BODY_LAYOUTS[body]), *hands, face)


def _gather(keypoints: np.ndarray, scores: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(N, P, 3) x, y, score: the mean of each pair's two points (one point twice for a copy) and the lower of their
    scores; (0, 0, 0) where a pair has no source."""
    present = pairs[:, 0] >= 0
    a, b = pairs[:, 0].clip(0), pairs[:, 1].clip(0)
    xy = (keypoints[:, a].astype(np.float64) + keypoints[:, b]) / 2
    score = np.minimum(scores[:, a], scores[:, b]).astype(np.float64)
    out = np.concatenate([xy, score[..., None]], axis=-1)
    return np.where(present[None, :, None], out, 0.0).astype(np.float32)


@dataclass
class OpenPosePeople:
    """People in OpenPose's layouts, each point (x, y, score) in image pixels; (0, 0, 0) = not detected."""

    body: np.ndarray  # (N, 18 or 25, 3)
    left_hand: np.ndarray  # (N, 21, 3)
    right_hand: np.ndarray  # (N, 21, 3)
    face: np.ndarray  # (N, 70, 3)
    track_ids: np.ndarray | None = None  # (N,) identities across video frames, written as OpenPose's person_id

    @property
    def body_names(self) -> tuple[str, ...]:
        return BODY_18 if self.body.shape[1] == len(BODY_18) else BODY_25

    def to_json(self, width: int, height: int, threshold: float = 0.3) -> dict:
        """OpenPose's JSON (``pose_keypoints_2d`` = [x, y, c] * points per person, and the hands and face alike),
        with ``canvas_width`` / ``canvas_height`` as ControlNet's pose editors read them. Points scoring under
        ``threshold`` (or not finite) are written as not detected (0, 0, 0)."""
        def flat(points: np.ndarray) -> list[float]:
            kept = np.where(detected(points, threshold)[:, None], points, 0.0) + 0.0  # + 0.0: no -0.0
            return [round(float(v), 3) for v in kept.reshape(-1)]

        ids = [-1] * len(self.body) if self.track_ids is None else [int(i) for i in self.track_ids]
        people = [{"person_id": [i], "pose_keypoints_2d": flat(b), "face_keypoints_2d": flat(f),
                   "hand_left_keypoints_2d": flat(lh), "hand_right_keypoints_2d": flat(rh)}
                  for i, b, lh, rh, f in zip(ids, self.body, self.left_hand, self.right_hand, self.face)]
        return {"version": 1.3, "people": people, "canvas_width": int(width), "canvas_height": int(height)}


def detected(points: np.ndarray, threshold: float) -> np.ndarray:
    """(P,) which of ``points`` (P, 3: x, y, score) count as detected: scored at least ``threshold``, all finite."""
    return (points[:, 2] >= threshold) & np.isfinite(points).all(1)


def to_openpose(keypoints: np.ndarray, scores: np.ndarray, keypoint_set_: KeypointSet | str | int,
                body: str = "body18", track_ids: np.ndarray | None = None) -> OpenPosePeople:
    """``keypoints`` (N, K, 2) and ``scores`` (N, K) of any keypoint set (Goliath 308, COCO-WholeBody 133, COCO 17,
    or a fine-tune's own, matched by name) in OpenPose's layouts; ``body``: "body18" or "body25". ``track_ids``:
    the people's identities (video), kept as OpenPose's ``person_id``."""
    if body not in BODY_LAYOUTS:
        raise ValueError(f"body must be one of {sorted(BODY_LAYOUTS)}, got {body!r}")
    kps = keypoint_set_ if isinstance(keypoint_set_, KeypointSet) else keypoint_set(keypoint_set_)
    keypoints, scores = np.asarray(keypoints), np.asarray(scores)
    if keypoints.ndim == 2:  # one person
        keypoints, scores = keypoints[None], scores[None]
    k = kps.num_keypoints
    if keypoints.ndim != 3 or keypoints.shape[1:] != (k, 2) or scores.shape != keypoints.shape[:2]:
        raise ValueError(f"keypoints {keypoints.shape} and scores {scores.shape} do not fit the {kps.name} set's {k} "
                         f"keypoints: expected (N, {k}, 2) and (N, {k})")
    parts = _layout(tuple(kps.names), body)
    return OpenPosePeople(*(_gather(keypoints, scores, pairs) for pairs in parts), track_ids=track_ids)
