"""Surface-normal angular error on foreground pixels, pooled over all pixels of a dataset (see docs/evaluation.md).

Per pixel: the angle between the prediction and the GT, both L2-normalized, computed as atan2(|p x g|, p . g) in
float64 (accurate at small angles, unlike arccos). A prediction with a non-finite component or zero length has no
direction: it scores the maximal error, 180 degrees, and is counted (``nonfinite_pred`` / ``zero_pred``).
Valid pixels: mask (or, without one, GT pixels whose vector is nonzero) AND a finite, nonzero GT vector.

Dataset statistics pool every valid pixel of every image (large images weigh more). The mean and the "% within"
fractions are exact; the median comes from a histogram of 0.01-degree bins, with linear interpolation inside the
bin that holds the ceil(N/2)-th smallest error, so it is within 0.01 degrees of that order statistic.
"""

from __future__ import annotations

import numpy as np

from .utils import as_hw3, as_mask, as_numpy

THRESHOLDS = (11.25, 22.5, 30.0)


def angular_error(pred, gt) -> np.ndarray:
    """(...,) angle in degrees between (..., 3) vectors; 180 where the prediction is non-finite or zero."""
    p, g = as_numpy(pred).astype(np.float64), as_numpy(gt).astype(np.float64)
    cross = np.linalg.norm(np.cross(p, g), axis=-1)
    dot = np.einsum("...c,...c->...", p, g)
    with np.errstate(invalid="ignore"):
        angle = np.degrees(np.arctan2(cross, dot))  # scale-free: no need to normalize p and g first
    usable = np.isfinite(p).all(-1) & (np.abs(p).max(-1) > 0)
    return np.where(usable & np.isfinite(angle), angle, 180.0)


class NormalAccumulator:
    """Streams normal maps; keeps an error histogram, exact sums and threshold counts (no per-pixel storage)."""

    def __init__(self, bin_width: float = 0.01):
        self.bin_width = bin_width
        self.hist = np.zeros(int(round(180.0 / bin_width)), dtype=np.int64)
        self.sum = 0.0
        self.within = np.zeros(len(THRESHOLDS), dtype=np.int64)
        self.num_pixels = self.num_images = self.nonfinite_pred = self.zero_pred = 0

    def update(self, pred, gt, mask=None) -> None:
        """Add one (H, W, 3) prediction / GT pair; mask (H, W) nonzero = foreground."""
        p, g = as_hw3(pred, "pred", "normal map"), as_hw3(gt, "gt", "normal map")
        if p.shape != g.shape:
            raise ValueError(f"prediction shape {p.shape} differs from ground truth shape {g.shape}")
        valid = np.isfinite(g).all(-1) & (np.abs(g).max(-1) > 0)
        if mask is not None:
            valid &= as_mask(mask, g.shape[:2])
        p, g = p[valid], g[valid]  # (n, 3)
        finite = np.isfinite(p).all(-1)
        self.nonfinite_pred += int((~finite).sum())
        self.zero_pred += int((finite & (np.abs(p).max(-1) == 0)).sum())
        err = angular_error(p, g)  # (n,)
        self.num_images += 1
        self.num_pixels += err.size
        self.sum += float(err.sum())
        self.within += np.array([(err < t).sum() for t in THRESHOLDS], dtype=np.int64)
        bins = np.minimum((err / self.bin_width).astype(np.int64), self.hist.size - 1)
        self.hist += np.bincount(bins, minlength=self.hist.size)

    def merge(self, other: NormalAccumulator) -> NormalAccumulator:
        """Add another accumulator's state (e.g. from another process); all of it is sums and counts."""
        if other.hist.size != self.hist.size:
            raise ValueError("cannot merge accumulators with different histogram bins")
        self.hist += other.hist
        self.within += other.within
        self.sum += other.sum
        for k in ("num_pixels", "num_images", "nonfinite_pred", "zero_pred"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        return self

    def median(self) -> float:
        """The ceil(N/2)-th smallest error, from the histogram (error < one bin width)."""
        n = self.num_pixels
        if n == 0:
            return float("nan")
        rank = (n + 1) // 2  # ceil(n / 2), 1-based
        cum = np.cumsum(self.hist)
        b = int(np.searchsorted(cum, rank))  # first bin with cum >= rank
        before = cum[b - 1] if b > 0 else 0
        return float((b + (rank - before) / self.hist[b]) * self.bin_width)

    def compute(self) -> dict:
        n = self.num_pixels
        out = {"mean": self.sum / n if n else float("nan"), "median": self.median()}
        for t, c in zip(THRESHOLDS, self.within):
            out[f"within_{t:g}"] = float(c / n) if n else float("nan")
        out.update(num_images=self.num_images, num_pixels=n, nonfinite_pred=self.nonfinite_pred,
                   zero_pred=self.zero_pred, median_bin_width=self.bin_width)
        return out


def normal_metrics(pred, gt, mask=None) -> dict:
    """mean, median (degrees) and within_11.25 / within_22.5 / within_30 (fractions) of one image."""
    acc = NormalAccumulator()
    acc.update(pred, gt, mask)
    return acc.compute()
