"""Body-part segmentation metrics from a streaming confusion matrix (mIoU, mAcc, aAcc, per-class IoU).

Only the (K, K+1) integer count matrix is kept, so a dataset of any size is evaluated in constant memory. Protocol
(the official ``IoUMetric``, see docs/evaluation.md):
    - pixels whose GT is ``ignore_index`` (255) are dropped; every other GT label must be a class id in [0, K);
    - background (class 0) is a class like any other and enters the mean;
    - a predicted label outside [0, K) (including 255) is always wrong: it counts as a miss for the GT class and as a
      false positive for no class; the number of such pixels is reported as ``invalid_pred``;
    - IoU_c = TP / (TP + FP + FN), Acc_c = TP / (TP + FN); a class with an empty denominator is NaN and left out of
      mIoU / mAcc (``nanmean``); aAcc = sum TP / number of evaluated pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .utils import as_numpy


class SegConfusion:
    """Streaming confusion matrix over a dataset: rows = GT class, columns = predicted class (+1 column "invalid")."""

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names) if class_names is not None else tuple(f"class_{i}" for i in
                                                                                     range(num_classes))
        self.counts = np.zeros((num_classes, num_classes + 1), dtype=np.int64)  # (K, K+1); last column = invalid
        self.num_images = 0

    @property
    def matrix(self) -> np.ndarray:
        """(K, K) confusion matrix of valid predictions: ``matrix[g, p]`` = pixels with GT g predicted as p."""
        return self.counts[:, : self.num_classes]

    def update(self, pred, gt) -> None:
        """Add one label map pair (or a batch of them): integer arrays or tensors of the same shape."""
        pred, gt = as_numpy(pred), as_numpy(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
        for name, a in (("prediction", pred), ("ground truth", gt)):
            if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
                raise TypeError(f"{name} must be an integer label map, got dtype {a.dtype}")
        k = self.num_classes
        valid = gt != self.ignore_index
        g = gt[valid].astype(np.int64)  # (P,)
        p = pred[valid].astype(np.int64)  # (P,)
        bad_gt = (g < 0) | (g >= k)
        if bad_gt.any():
            raise ValueError(f"ground truth holds label(s) {np.unique(g[bad_gt])[:10].tolist()} outside [0, {k}) "
                             f"that are not the ignore index {self.ignore_index}")
        p[(p < 0) | (p >= k)] = k  # invalid predictions go to the extra column
        self.counts += np.bincount(g * (k + 1) + p, minlength=k * (k + 1)).reshape(k, k + 1)
        self.num_images += 1 if gt.ndim <= 2 else int(np.prod(gt.shape[:-2]))

    def merge(self, other: SegConfusion) -> SegConfusion:
        """Add another accumulator's counts (e.g. from a worker process)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class counts into {self.num_classes}-class counts")
        self.counts += other.counts
        self.num_images += other.num_images
        return self

    def compute(self) -> dict:
        """mIoU, mAcc, aAcc (fractions in [0, 1]), per-class ``IoU`` / ``Acc`` dicts (NaN = class absent), counts."""
        counts = self.counts.astype(np.float64)
        tp = np.diag(counts[:, : self.num_classes])  # (K,)
        gt_total = counts.sum(1)  # (K,) every valid GT pixel of the class, invalid predictions included
        pred_total = counts[:, : self.num_classes].sum(0)  # (K,)
        union = gt_total + pred_total - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt_total > 0, tp / gt_total, np.nan)
        total = gt_total.sum()
        return {
            "mIoU": _nanmean(iou),
            "mAcc": _nanmean(acc),
            "aAcc": float(tp.sum() / total) if total > 0 else float("nan"),
            "IoU": dict(zip(self.class_names, iou.tolist())),
            "Acc": dict(zip(self.class_names, acc.tolist())),
            "num_classes_present": int(np.isfinite(iou).sum()),
            "num_pixels": int(total),
            "invalid_pred": int(self.counts[:, -1].sum()),
            "num_images": self.num_images,
        }


def _nanmean(x: np.ndarray) -> float:
    """Mean over the finite entries; NaN (not a warning) when there are none."""
    finite = np.isfinite(x)
    return float(x[finite].mean()) if finite.any() else float("nan")
