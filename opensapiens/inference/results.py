"""What the predictors return: per-image results in image coordinates, and turning relative depth into metres."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..evaluation.depth import fit_scale_shift
from ..metadata import KeypointSet, convert_keypoints, keypoint_set
from ..metadata.openpose import OpenPosePeople, to_openpose


@dataclass
class PoseResult:
    """Keypoints of every person in one image, in image pixel coordinates (x right, y down)."""

    keypoints: np.ndarray  # (N, K, 2) float32
    scores: np.ndarray  # (N, K) float32: heatmap maxima, ~0..1
    boxes: np.ndarray  # (N, 4) float32 xyxy person boxes that were cropped
    box_scores: np.ndarray  # (N,) float32 detector scores (1 for whole-image boxes and given boxes without scores)
    keypoint_set: str | KeypointSet = "goliath"  # a built-in set's name, or a fine-tune's own (train --keypoints)
    heatmaps: np.ndarray | None = None  # (N, K, h, w) raw heatmaps when requested
    track_ids: np.ndarray | None = None  # (N,) int64 identities across video frames (``PoseTracker``), if tracked

    def convert(self, dst: str | int) -> PoseResult:
        """The same people in another keypoint layout (308 -> 133/17, 133 -> 17); missing channels score 0."""
        if isinstance(self.keypoint_set, KeypointSet):
            raise ValueError(f"no conversion from the {self.keypoint_set.name} keypoints a fine-tune defined")
        kp, sc = convert_keypoints(self.keypoints, self.scores, self.keypoint_set, dst)
        return PoseResult(kp, sc, self.boxes, self.box_scores, keypoint_set(dst).name, track_ids=self.track_ids)

    def to_openpose(self, body: str = "body18") -> OpenPosePeople:
        """The people in OpenPose's layouts (body 18 or 25 points, 21-point hands, 70-point face) for ControlNet and
        pose editors: ``.to_json(width, height)``, ``visualize.draw_openpose``. See ``metadata.openpose``."""
        return to_openpose(self.keypoints, self.scores, self.keypoint_set, body, self.track_ids)

    @property
    def keypoint_set_name(self) -> str:
        return self.keypoint_set.name if isinstance(self.keypoint_set, KeypointSet) else self.keypoint_set

    def to_coco(self, image_id: int | str = 0, score_threshold: float = 0.2, category_id: int = 1) -> list[dict]:
        """COCO results entries (``category_id``: the ground truth's person category, COCO's 1 by default); the
        person score is the official ``bbox_keypoint`` mode: box score x mean of the keypoint scores above
        ``score_threshold``. Tracked people also carry ``track_id``."""
        out = []
        for i, (kp, sc, box, bs) in enumerate(zip(self.keypoints, self.scores, self.boxes, self.box_scores)):
            good = sc[sc > score_threshold]
            flat = np.concatenate([kp, sc[:, None]], axis=1).reshape(-1)
            x0, y0, x1, y1 = (float(v) for v in box)
            out.append({"image_id": image_id, "category_id": category_id,
                        "keypoints": [round(float(v), 3) for v in flat],
                        "score": float(bs) * (float(good.mean()) if good.size else 0.0),
                        "bbox": [x0, y0, x1 - x0, y1 - y0]})
            if self.track_ids is not None:
                out[-1]["track_id"] = int(self.track_ids[i])
        return out


@dataclass
class SegResult:
    labels: np.ndarray  # (H, W) uint8 class ids
    class_names: tuple[str, ...] = ()
    logits: np.ndarray | None = None  # (N, h, w) float32 raw logits at model resolution when requested

    @property
    def foreground(self) -> np.ndarray:
        """(H, W) bool: every class but background (0)."""
        return self.labels > 0


@dataclass
class DepthResult:
    """Relative depth as the official models predict it: larger = farther, scale and shift unknown per image.

    The models were trained on per-image foreground-normalized depth (0 = nearest person pixel, 1 = farthest), so
    on foreground pixels ``depth`` is approximately that; values outside the foreground are not meaningful.
    """

    depth: np.ndarray  # (H, W) float32
    mask: np.ndarray | None = None  # (H, W) bool foreground used for normalization/visualization, if any
    raw: np.ndarray | None = None  # (1, h, w) raw model output when requested

    def normalized(self) -> np.ndarray:
        """Per-image min-max normalization over the foreground (NaN outside it), as the official demo shows."""
        return normalize_depth(self.depth, self.mask)


@dataclass
class NormalResult:
    """Unit surface normals in camera coordinates: X right, Y up, Z toward the camera."""

    normals: np.ndarray  # (H, W, 3) float32, unit length
    mask: np.ndarray | None = None
    raw: np.ndarray | None = None  # (3, h, w) raw output when requested


@dataclass
class PointmapResult:
    """Sapiens2 pointmap: per pixel a 3-D point in metres in the camera frame of the image (OpenCV's axes: X right, Y
    down, Z forward, so ``depth`` is the distance along the optical axis), and the focal length the model found.

    The points follow from the predicted focal length: a wrong focal scales the whole cloud (and its depth) with it.
    """

    points: np.ndarray  # (H, W, 3) float32 metres; NaN off ``mask``
    focal: tuple[float, float]  # (fx, fy) in this image's pixels (they differ only where the image was stretched)
    scale: float  # the model's canonical scale, 768 / f in model-input pixels
    mask: np.ndarray | None = None  # (H, W) bool foreground, if one was given or segmented
    raw: np.ndarray | None = None  # (4, h, w): the canonical points and the scale as a constant channel

    @property
    def depth(self) -> np.ndarray:
        """(H, W) float32 metres along the optical axis (Z)."""
        return self.points[..., 2]

    def save_ply(self, path, image: np.ndarray | None = None) -> Path:
        """The valid points (finite; inside ``mask`` where there is one) as a binary PLY point cloud, coloured by
        ``image`` (the (H, W, 3) uint8 RGB input) if given."""
        from ..io.writers import save_ply

        return save_ply(path, self.points, image, self.mask)

    def intrinsics(self) -> np.ndarray:
        """(3, 3) pinhole camera matrix in this image's pixels: the predicted focal length, and the principal point
        that places the points where they are seen (u = fx X/Z + cx, the median over pixels; the image centre where
        no point is valid)."""
        h, w = self.points.shape[:2]
        (fx, fy), cx, cy = self.focal, (w - 1) / 2, (h - 1) / 2
        X, Y, Z = (self.points[..., i].astype(np.float64) for i in range(3))
        valid = np.isfinite(self.points).all(-1) & (Z > 0)
        if valid.any():
            v, u = np.nonzero(valid)
            cx = float(np.median(u - fx * X[valid] / Z[valid]))
            cy = float(np.median(v - fy * Y[valid] / Z[valid]))
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@dataclass
class FeatureResult:
    features: np.ndarray  # (C, H/16, W/16) float32 backbone features after the final norm


def normalize_depth(depth: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Min-max over ``mask`` (all pixels when None) to [0, 1]; NaN outside the mask."""
    m = np.isfinite(depth) if mask is None else (mask & np.isfinite(depth))
    out = np.full(depth.shape, np.nan, dtype=np.float32)
    if m.any():
        lo, hi = depth[m].min(), depth[m].max()
        out[m] = (depth[m] - lo) / max(hi - lo, 1e-8)
    return out


def metric_depth(pred: np.ndarray, metric_points: np.ndarray | dict, mask: np.ndarray | None = None,
                 inverse: bool = False) -> np.ndarray:
    """Fit ``scale * pred + shift`` to a few known metric depths by least squares and apply it to the whole map.

    Args:
        pred: (H, W) relative depth from a ``DepthResult``.
        metric_points: either an (M, 3) array of (x, y, depth_m) pixel samples, or an (H, W) metric map with
            NaN/0 where unknown.
        mask: optional (H, W) bool restricting which samples are used.
        inverse: fit ``1 / depth = scale * pred + shift`` instead (the maintainers' recipe for disparity-like use).
    Returns (H, W) float32 metric depth (or its inverse fit mapped back to depth).
    """
    pred = np.asarray(pred, dtype=np.float64)
    if isinstance(metric_points, dict):
        raise TypeError("metric_points must be an (M, 3) array of (x, y, depth) or an (H, W) map")
    pts = np.asarray(metric_points, dtype=np.float64)
    if pts.ndim == 2 and pts.shape == pred.shape:
        valid = np.isfinite(pts) & (pts > 0) & np.isfinite(pred)
        if mask is not None:
            valid &= mask
        p, t = pred[valid], pts[valid]
    elif pts.ndim == 2 and pts.shape[1] == 3:
        xs, ys = np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int)
        inside = (xs >= 0) & (ys >= 0) & (xs < pred.shape[1]) & (ys < pred.shape[0])
        if mask is not None:
            inside[inside] &= mask[ys[inside], xs[inside]]
        p, t = pred[ys[inside], xs[inside]], pts[inside, 2]
    else:
        raise ValueError(f"metric_points has shape {pts.shape}; expected (M, 3) or {pred.shape}")
    if p.size < 2 or np.ptp(p) == 0:
        raise ValueError(f"metric_depth needs at least 2 samples with distinct predictions, got {p.size} of "
                         f"{len(pts) if pts.shape[1:] == (3,) else int(np.isfinite(pts).sum())} (samples outside the "
                         "image, outside ``mask``, non-finite or not positive are left out)")
    scale, shift = fit_scale_shift(p[None], (1.0 / t if inverse else t)[None])  # the evaluation's least squares
    fitted = scale * pred + shift
    if inverse:
        with np.errstate(divide="ignore"):
            fitted = np.where(fitted > 0, 1.0 / fitted, np.nan)
    return fitted.astype(np.float32)
