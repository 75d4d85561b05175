"""Relative-depth metrics on foreground pixels after a per-image alignment (see docs/evaluation.md).

Sapiens predicts relative depth (the official target is foreground depth min-max normalized to [0, 1]), so a
prediction is first mapped onto the ground truth's units, per image, by one of:
    "lstsq":  s * pred + t with (s, t) the least-squares fit over the foreground (closed form, float64);
    "minmax": GT and prediction are each min-max normalized over the foreground (the official target space), and the
              normalized prediction is mapped back onto the GT's range: (p - p_min) / (p_max - p_min) * (g_max - g_min)
              + g_min. ``rmse_norm`` is then exactly the RMSE between the two normalized maps;
    "none":   the prediction is already metric.
Then RMSE, AbsRel and delta < 1.25^k are computed per image over the valid pixels and averaged over images.

Valid pixels: mask (or, without one, the GT's nonzero pixels) AND a finite GT > 0. A non-finite predicted pixel is
never dropped: it is excluded from the alignment fit, counted in ``nonfinite_pred`` and scored as a prediction of 0
("no depth"): its absolute error is the GT depth, its relative error 1, and it fails every delta threshold.
"""

from __future__ import annotations

import numpy as np

from .utils import as_mask, as_numpy

ALIGN_METHODS = ("lstsq", "minmax", "none")
DEPTH_KEYS = ("rmse", "absrel", "delta1", "delta2", "delta3", "rmse_norm")


def _as_2d(x, name: str) -> np.ndarray:
    """(H, W) float64 from (H, W), (1, H, W) or (H, W, 1)."""
    a = as_numpy(x)
    if a.ndim == 3 and 1 in (a.shape[0], a.shape[-1]):
        a = a.reshape(a.shape[1:] if a.shape[0] == 1 else a.shape[:-1])
    if a.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) depth map, got shape {a.shape}")
    return a.astype(np.float64, copy=False)


def fit_scale_shift(pred, target, mask=None) -> tuple[float, float]:
    """(s, t) minimizing sum over mask of (s * pred + t - target)^2, over pixels where both are finite.

    A constant prediction gives (0, mean(target)); no usable pixel gives (0, 0). Constant means a spread within
    rounding of its values (a few ulps): there a fit would divide rounding noise by rounding noise.
    """
    p, g = _as_2d(pred, "pred"), _as_2d(target, "target")
    m = np.isfinite(p) & np.isfinite(g)
    if mask is not None:
        m &= as_mask(mask, g.shape)
    if not m.any():
        return 0.0, 0.0
    p, g = p[m], g[m]
    p_mean, g_mean = p.mean(), g.mean()
    if np.ptp(p) <= 8 * np.finfo(np.float64).eps * np.abs(p).max():
        return 0.0, float(g_mean)
    pc = p - p_mean
    var = float(pc @ pc)
    if var == 0.0:  # a spread that underflows when squared
        return 0.0, float(g_mean)
    s = float(pc @ (g - g_mean)) / var
    return s, float(g_mean - s * p_mean)


def align_depth(pred, target, mask=None, method: str = "lstsq") -> np.ndarray:
    """The prediction mapped onto the target's units by ``method`` (float64 (H, W); non-finite pixels stay so).

    The transform is fitted on the mask (finite pixels only) and applied to every pixel.
    """
    if method not in ALIGN_METHODS:
        raise ValueError(f"unknown depth alignment {method!r}; expected one of {ALIGN_METHODS}")
    p, g = _as_2d(pred, "pred"), _as_2d(target, "target")
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth shape {g.shape}")
    if method == "none":
        return p.copy()
    if method == "lstsq":
        s, t = fit_scale_shift(p, g, mask)
        return s * p + t
    m = np.ones(g.shape, bool) if mask is None else as_mask(mask, g.shape)
    g_fg, p_fg = g[m & np.isfinite(g)], p[m & np.isfinite(p)]
    if g_fg.size == 0:
        return np.where(np.isfinite(p), 0.0, np.nan)
    g_min, g_max = g_fg.min(), g_fg.max()
    if p_fg.size == 0 or p_fg.max() == p_fg.min():  # nothing to normalize: a constant prediction sits mid-range
        normalized = np.where(np.isfinite(p), 0.5, np.nan)
    else:
        normalized = (p - p_fg.min()) / (p_fg.max() - p_fg.min())
    return normalized * (g_max - g_min) + g_min


def depth_metrics(pred, gt, mask=None, align: str = "lstsq") -> dict:
    """Metrics of one image: rmse, absrel, delta1-3, rmse_norm (RMSE / GT foreground range), pixel counts.

    Metrics are NaN when the image has no valid pixel (``num_pixels`` 0).
    """
    p, g = _as_2d(pred, "pred"), _as_2d(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth shape {g.shape}")
    valid = np.isfinite(g) & (g > 0)
    if mask is not None:
        valid &= as_mask(mask, g.shape)
    n = int(valid.sum())
    out = dict.fromkeys(DEPTH_KEYS, float("nan"))
    out.update(num_pixels=n, nonfinite_pred=int((valid & ~np.isfinite(p)).sum()))
    if n == 0:
        return out
    a = align_depth(p, g, valid, align)[valid]  # (n,)
    g = g[valid]
    a[~np.isfinite(p[valid])] = 0.0  # non-finite prediction -> "no depth"
    err = a - g
    rmse = float(np.sqrt(np.mean(err * err)))
    with np.errstate(divide="ignore"):
        ratio = np.where(a > 0, np.maximum(a / g, g / a), np.inf)
    g_range = float(g.max() - g.min())
    out.update(
        rmse=rmse,
        absrel=float(np.mean(np.abs(err) / g)),
        delta1=float(np.mean(ratio < 1.25)),
        delta2=float(np.mean(ratio < 1.25**2)),
        delta3=float(np.mean(ratio < 1.25**3)),
        rmse_norm=rmse / g_range if g_range > 0 else float("nan"),
    )
    return out


class DepthAccumulator:
    """Streams images through ``depth_metrics`` and keeps only running sums: metrics are per-image means.

    Images without a valid pixel are counted in ``empty_images`` and left out of the means; ``rmse_norm`` also
    leaves out images whose GT foreground is flat (zero range).
    """

    def __init__(self, align: str = "lstsq"):
        if align not in ALIGN_METHODS:
            raise ValueError(f"unknown depth alignment {align!r}; expected one of {ALIGN_METHODS}")
        self.align = align
        self.sums = dict.fromkeys(DEPTH_KEYS, 0.0)
        self.counts = dict.fromkeys(DEPTH_KEYS, 0)
        self.num_images = self.empty_images = self.num_pixels = self.nonfinite_pred = 0

    def update(self, pred, gt, mask=None) -> dict:
        """Add one image; returns its own metrics."""
        m = depth_metrics(pred, gt, mask, self.align)
        self.num_images += 1
        self.num_pixels += m["num_pixels"]
        self.nonfinite_pred += m["nonfinite_pred"]
        if m["num_pixels"] == 0:
            self.empty_images += 1
        for k in DEPTH_KEYS:
            if not np.isnan(m[k]):  # inf (a huge prediction) is kept: it must show
                self.sums[k] += m[k]
                self.counts[k] += 1
        return m

    def merge(self, other: DepthAccumulator) -> DepthAccumulator:
        """Add another accumulator's sums and counts (e.g. from another process)."""
        if other.align != self.align:
            raise ValueError(f"cannot merge {other.align!r}-aligned depth metrics into {self.align!r}-aligned ones")
        for k in DEPTH_KEYS:
            self.sums[k] += other.sums[k]
            self.counts[k] += other.counts[k]
        for k in ("num_images", "empty_images", "num_pixels", "nonfinite_pred"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        return self

    def compute(self) -> dict:
        out = {k: self.sums[k] / self.counts[k] if self.counts[k] else float("nan") for k in DEPTH_KEYS}
        out.update(align=self.align, num_images=self.num_images, empty_images=self.empty_images,
                   num_pixels=self.num_pixels, nonfinite_pred=self.nonfinite_pred)
        return out
