"""Who is who across video frames: a track id per person, by greedy frame-to-frame matching of poses.

Top-down pose returns each frame's people in the detector's order, so one person can be row 0 in a frame and row 2
in the next, and the official code gives no identity at all. ``PoseTracker`` keeps the last pose of every person it
has seen, moved on at the person's last velocity (constant motion: a person walking behind a pillar is looked for
where they would be now), and gives each new frame's people the id of the track whose predicted pose is most similar:

    similarity = OKS(track's predicted pose as the reference, detection)   where the track has visible keypoints,
                 box IoU                                                      where it has none;

pairs are taken greedily, most similar first, down to ``min_similarity`` (the matching of the PoseTrack baselines,
Xiao et al. 2018, without their optical-flow propagation); a detection left over starts a new track; a track not
matched for ``max_missed`` frames in a row is dropped. Ids are never reused. OKS is the COCO formula (pycocotools'
``computeOks``): the mean over the reference's visible keypoints of exp(-d^2 / (2 area (2 sigma)^2)), area = the
reference's box area, taken over the 17 COCO body keypoints of any layout: Goliath's 238 face and hand points
(sigma 0.01) would let a few pixels of jitter on a small person outvote the body and break the track.

    tracker = PoseTracker("goliath")
    for frame in frames:
        result = pose(frame)
        ids = tracker.update(result)   # (N,) int64, also set as result.track_ids
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metadata import KeypointSet, built_in_keypoint_set, conversion_indices, keypoint_set
from .results import PoseResult


@dataclass
class Track:
    id: int
    keypoints: np.ndarray  # (K, 2) the last matched pose
    scores: np.ndarray  # (K,)
    box: np.ndarray  # (4,) xyxy
    velocity: np.ndarray  # (2,) the box centre's shift per frame, between its last two matches
    missed: int = 0  # frames in a row without a match

    def predicted(self) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints, box) moved on to the coming frame at the last velocity."""
        shift = self.velocity * (self.missed + 1)
        return self.keypoints + shift, self.box + np.tile(shift, 2)

    def matched(self, keypoints: np.ndarray, scores: np.ndarray, box: np.ndarray) -> Track:
        """The track continued by a detection ``missed + 1`` frames after its last match."""
        velocity = (_centre(box) - _centre(self.box)) / (self.missed + 1)
        return Track(self.id, keypoints, scores, box, velocity)


def _centre(box: np.ndarray) -> np.ndarray:
    return (box[:2] + box[2:]) / 2


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) and (T, 4) xyxy boxes -> (N, T) intersection over union (0 where both are empty)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def pose_similarity(keypoints: np.ndarray, boxes: np.ndarray, ref_keypoints: np.ndarray, ref_scores: np.ndarray,
                    ref_boxes: np.ndarray, sigmas: np.ndarray, visible_threshold: float) -> np.ndarray:
    """(N, T) similarity of N detections to T references: OKS against each reference's keypoints scoring above
    ``visible_threshold``, or box IoU for a reference with none."""
    var = (2 * np.asarray(sigmas, np.float64)) ** 2  # (K,)
    area = np.clip(ref_boxes[:, 2:] - ref_boxes[:, :2], 0, None).prod(-1)  # (T,)
    d2 = ((keypoints[:, None] - ref_keypoints[None]) ** 2).sum(-1)  # (N, T, K)
    e = d2 / (2 * var * (area[:, None] + np.spacing(1)))[None]
    visible = ref_scores > visible_threshold  # (T, K)
    count = visible.sum(-1)  # (T,)
    oks = (np.exp(-e) * visible[None]).sum(-1) / np.maximum(count, 1)[None]
    return np.where(count[None] > 0, oks, box_iou(boxes, ref_boxes))


def greedy_match(similarity: np.ndarray, min_similarity: float) -> list[tuple[int, int]]:
    """(row, column) pairs taken most similar first, each row and column at most once, none below ``min_similarity``."""
    rows, cols = np.nonzero(similarity >= min_similarity)
    order = np.argsort(-similarity[rows, cols], kind="stable")
    used_rows, used_cols, pairs = set(), set(), []
    for r, c in zip(rows[order].tolist(), cols[order].tolist()):
        if r not in used_rows and c not in used_cols:
            used_rows.add(r)
            used_cols.add(c)
            pairs.append((r, c))
    return pairs


class PoseTracker:
    """Track ids for the people of consecutive frames (see the module docstring).

    Args:
        keypoints: the layout of the results it is given (its OKS sigmas).
        min_similarity: the least OKS (or IoU) at which a detection continues a track.
        max_missed: frames a track may go unmatched (occluded, missed by the detector) and still be continued.
        visible_threshold: keypoints of a track's last pose scoring above this count in its OKS.
    """

    def __init__(self, keypoints: KeypointSet | str | int = "goliath", min_similarity: float = 0.3,
                 max_missed: int = 30, visible_threshold: float = 0.3):
        if not 0 < min_similarity <= 1:
            raise ValueError(f"min_similarity must be in (0, 1], got {min_similarity}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {max_missed}")
        self.keypoint_set = keypoints if isinstance(keypoints, KeypointSet) else keypoint_set(keypoints)
        built_in = built_in_keypoint_set(self.keypoint_set.names)
        # (17,) the body keypoints' channels; a fine-tune's own set: all of its keypoints
        k = self.keypoint_set.num_keypoints
        self.body = conversion_indices(built_in.name, "coco")[1] if built_in else np.arange(k)
        self.sigmas = np.asarray(self.keypoint_set.sigmas, np.float64)[self.body]
        self.min_similarity = min_similarity
        self.max_missed = max_missed
        self.visible_threshold = visible_threshold
        self.tracks: list[Track] = []
        self.next_id = 0

    def reset(self) -> None:
        """Forget every track (a new video); ids start again at 0."""
        self.tracks, self.next_id = [], 0

    def update(self, result: PoseResult) -> np.ndarray:
        """The (N,) int64 track ids of ``result``'s people; also sets ``result.track_ids``."""
        if result.keypoints.shape[1:] != (self.keypoint_set.num_keypoints, 2):
            raise ValueError(f"PoseTracker for the {self.keypoint_set.name} set ({self.keypoint_set.num_keypoints} "
                             f"keypoints) got keypoints of shape {result.keypoints.shape}")
        keypoints = np.asarray(result.keypoints, np.float64)
        boxes = np.asarray(result.boxes, np.float64).reshape(-1, 4)
        ids = np.full(len(keypoints), -1, np.int64)
        matched: set[int] = set()
        if self.tracks and len(keypoints):
            ref_keypoints, ref_boxes = zip(*(t.predicted() for t in self.tracks))
            ref_scores = np.stack([t.scores for t in self.tracks])[:, self.body]
            similarity = pose_similarity(keypoints[:, self.body], boxes, np.stack(ref_keypoints)[:, self.body],
                                         ref_scores, np.stack(ref_boxes), self.sigmas, self.visible_threshold)
            for det, tr in greedy_match(similarity, self.min_similarity):
                ids[det] = self.tracks[tr].id
                matched.add(tr)
                self.tracks[tr] = self.tracks[tr].matched(keypoints[det], np.asarray(result.scores[det]), boxes[det])
        for i, track in enumerate(self.tracks):
            if i not in matched:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for det in np.flatnonzero(ids < 0):
            ids[det] = self.next_id
            self.tracks.append(Track(self.next_id, keypoints[det], np.asarray(result.scores[det]), boxes[det],
                                     np.zeros(2)))
            self.next_id += 1
        result.track_ids = ids
        return ids
