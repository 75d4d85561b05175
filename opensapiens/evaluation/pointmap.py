"""Pointmap errors on foreground pixels, pooled over all pixels of a set (see docs/evaluation.md).

Valid pixels: foreground (the mask where one is given) whose GT point is finite and in front of the camera (Z > 0:
the zeros of a background without a mask are not scored). Per pixel e = pred - gt (3-D, in the space's units: metres
for metric points): the mean and RMS of ||e||, the mean |e| per axis, and the share of pixels with ||e|| below
5 / 10 / 20 cm (the official ``within_*_cm``). A non-finite prediction (NaN where a segmentation cut the map) is
counted (``nonfinite_pred``), never "within", and left out of the means. Surface normals of both maps (per-channel
5x5 Sobel derivatives along the columns and rows, crossed; the official kernel) are scored with the normal metrics
of ``evaluation.normals`` where the whole 5x5 window is valid.
"""

from __future__ import annotations

import cv2
import numpy as np

from .normals import NormalAccumulator
from .utils import as_hw3, as_mask

WITHIN_CM = (5, 10, 20)


def sobel_normals(points: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) points, (H, W) bool -> unit normals (H, W, 3) and where they are valid (5x5 window in the mask)."""
    p = np.nan_to_num(points.astype(np.float64) * mask[..., None])
    du = np.stack([cv2.Sobel(p[..., c], cv2.CV_64F, 1, 0, ksize=5) for c in range(3)], -1)
    dv = np.stack([cv2.Sobel(p[..., c], cv2.CV_64F, 0, 1, ksize=5) for c in range(3)], -1)
    n = np.cross(du, dv)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    inside = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8), borderType=cv2.BORDER_CONSTANT,
                       borderValue=0) > 0
    return n, inside


class PointmapAccumulator:
    """Streams (pred, gt, mask) point maps; keeps sums and counts only, so states merge across processes.
    ``normals=False`` leaves the surface normals out (a second accumulator of the same maps at another scale)."""

    def __init__(self, normals: bool = True):
        self.num_pixels = self.num_images = self.nonfinite_pred = 0
        self.sum_l2 = self.sum_sq = 0.0
        self.sum_abs = np.zeros(3)
        self.within = np.zeros(len(WITHIN_CM), dtype=np.int64)
        self.normals = NormalAccumulator() if normals else None
        self.focal_rel: list[float] = []  # per image |f^ - f| / f, where a focal length was added

    def update(self, pred, gt, mask=None) -> None:
        """Add one (H, W, 3) prediction / GT pair; mask (H, W) nonzero = foreground (also: GT finite)."""
        p, g = as_hw3(pred, "pred", "point map"), as_hw3(gt, "gt", "point map")
        if p.shape != g.shape:
            raise ValueError(f"prediction shape {p.shape} differs from ground truth shape {g.shape}")
        valid = np.isfinite(g).all(-1) & (np.nan_to_num(g[..., 2]) > 0)
        if mask is not None:
            valid &= as_mask(mask, g.shape[:2])
        e = p[valid] - g[valid]  # (n, 3)
        finite = np.isfinite(e).all(-1)
        length = np.linalg.norm(e[finite], axis=-1)
        self.num_images += 1
        self.num_pixels += e.shape[0]
        self.nonfinite_pred += int((~finite).sum())
        self.sum_l2 += float(length.sum())
        self.sum_sq += float((length ** 2).sum())
        self.sum_abs += np.abs(e[finite]).sum(0)
        self.within += np.array([(length < cm / 100).sum() for cm in WITHIN_CM], dtype=np.int64)
        if self.normals is not None:
            n_pred, _ = sobel_normals(p, valid)
            n_gt, inside = sobel_normals(g, valid)
            self.normals.update(n_pred, n_gt, inside)

    def add_focal(self, pred: float, gt: float) -> None:
        """One image's predicted and true focal length (any one unit)."""
        self.focal_rel.append(abs(pred - gt) / gt)

    def merge(self, other: PointmapAccumulator) -> PointmapAccumulator:
        for k in ("num_pixels", "num_images", "nonfinite_pred", "sum_l2", "sum_sq"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.sum_abs = self.sum_abs + other.sum_abs
        self.within = self.within + other.within
        if self.normals is not None:
            self.normals.merge(other.normals)
        self.focal_rel = self.focal_rel + other.focal_rel
        return self

    def compute(self) -> dict:
        n, scored = self.num_pixels, self.num_pixels - self.nonfinite_pred
        mean = (lambda total: float(total / scored)) if scored else (lambda total: float("nan"))
        out = {"l2_mean": mean(self.sum_l2), "rmse": float(np.sqrt(mean(self.sum_sq)))}
        out.update({f"{axis}_mae": mean(self.sum_abs[i]) for i, axis in enumerate("xyz")})
        out.update({f"within_{cm}cm": float(c / n) if n else float("nan") for cm, c in zip(WITHIN_CM, self.within)})
        if self.normals is not None:
            normals = self.normals.compute()
            out.update({f"normal_{k}": normals[k] for k in ("mean", "median", "within_11.25", "within_22.5",
                                                            "within_30")})
        if self.focal_rel:
            out["focal_abs_rel"] = float(np.mean(self.focal_rel))
        out.update(num_images=self.num_images, num_pixels=n, nonfinite_pred=self.nonfinite_pred)
        return out
