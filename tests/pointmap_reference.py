"""Independent float64 numpy reference for the Sapiens2 pointmap targets, losses and metrics.

Written by a separate author from the specification alone (below, verbatim; the same rules as docs/training.md's
"Pointmaps" section and docs/evaluation.md's; no import from opensapiens), so tests can compare the torch
implementation against it. Only numpy and cv2 are used; loops are explicit for
clarity, inputs in tests are tiny. The specification, copied verbatim:

# Sapiens2 pointmap fine-tuning: targets, losses, metrics (the specification)

Conventions. Camera frame = OpenCV: X right, Y down, Z forward (Z > 0 in front). Pixel centres at integer
coordinates: pixel (row v, column u) has image coordinates (u, v). An intrinsics matrix K is a general 3x3 with
last row (0, 0, 1); the ray of pixel (u, v) is r = K^-1 (u, v, 1)^T (so r_z = 1), and a point P seen at (u, v) is
P = Z r.

## Targets
- Metric points of a depth map Z (H, W; metres) with intrinsics K: P(v, u) = Z(v, u) * K^-1 (u, v, 1)^T.
- Focal of K: f = sqrt(|K00*K11 - K01*K10|) (equals fx when fx = fy; unchanged by in-plane rotation).
- Canonical scale: s = 768 / f. Canonical GT points: Pc = s * P (what the network regresses, with s).
- Affine warp of a sample by a similarity M (2x3; pixel u' = A u + t with A = k R, R a rotation or a rotation
  times a mirror, k > 0): the new points are P' = G P with G = [[R, 0], [0, 1]] (3x3, acting on X, Y), moved with
  the pixels; the new intrinsics are K' = [[A, t], [0, 0, 1]] @ K @ G^-1. (Then P' projects through K' to the
  pixel it lands on.)

## Sample validity (the official rejection rule, applied as a weight)
A sample counts in the loss only if its mask has at least 16 pixels, at most 0.96 * H * W pixels, and the minimum GT
Z over the mask is at least 0.04 m. The loss is the mean of each term over the counting samples (0 when none).

## Losses (per sample; fp32/float64; prediction P^ (3, H, W) canonical at the GT resolution, scale s^)
Let m = mean over mask pixels of Pc_z (canonical GT mean depth). "clamp4" = min(x, 4).
1. L1, weight 2: mean over mask pixels of clamp4( mean over the 3 channels |P^ - Pc| / m ).
2. Multi-scale L1, weight 1: 2x2 average pooling (stride 2) of P^ and of Pc; the cells whose 4 pixels are all in
   the mask count; mean over those cells of clamp4( mean over channels |pool(P^) - pool(Pc)| / m ). 0 if no cell.
3. SiLog, weight 1: d = log(Pc_z) - log(max(P^_z, 1e-6)) over mask pixels; sqrt(max(mean(d^2) - 0.5 mean(d)^2,
   1e-12)).
4. Intrinsics consistency, weight 1: with r = K^-1 (u, v, 1)^T of the sample's K,
   mean over mask pixels of clamp4( (|P^_x - r_x P^_z| + |P^_y - r_y P^_z|) / m ).
5. Shift-invariant L1, weight 1: c^ = mean over mask of P^, c = mean over mask of Pc;
   mean over mask pixels of clamp4( mean over channels |(P^ - c^) - (Pc - c)| / m ).
6. Normal, weight 2: on Q^ = P^ / s and Q = Pc / s (= P) (GT scale for both): forward differences
   dx(v, u) = Q(v, u+1) - Q(v, u), dy(v, u) = Q(v+1, u) - Q(v, u), n = (dx x dy) / max(|dx x dy|, 1e-12); valid at
   (v, u) when (v, u), (v, u+1) and (v+1, u) are all in the mask; mean over valid of (1 - n^.n) + sum over the 3
   channels |n^ - n|. 0 if no valid pixel.
7. Scale, weight 4: |s^ - s|.
Total = 2*L1 + MS + SiLog + IC + SI + 2*Normal + 4*Scale (each averaged over counting samples).

## Metrics (over a set; pixels pooled over all images; both "canonical" = P^ vs Pc and "metric" = P^/s^ vs P)
- l2_mean = mean ||e||, rmse = sqrt(mean ||e||^2), x_mae / y_mae / z_mae = mean |e_x| etc., within_5cm /
  within_10cm / within_20cm = share of pixels with ||e|| < 0.05 / 0.10 / 0.20 (in the space's units), e = pred - gt
  on mask pixels.
- Normals of a point map: per channel cv2.Sobel ksize 5 derivatives along u (Su) and v (Sv) in float64, n = Su x Sv
  normalized; valid where the 5x5 neighbourhood is entirely in the mask (mask eroded by a 5x5 square, border =
  outside). Angular error between predicted and GT normals: mean, median, within 11.25 / 22.5 / 30 degrees.
- Per image: scale_abs_rel = |s^ - s| / s, averaged over images.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

CANONICAL_FOCAL = 768.0
CLAMP = 4.0
MIN_PIXELS = 16
MAX_FRACTION = 0.96
MIN_Z = 0.04
WEIGHTS = {
    "l1": 2.0,
    "multiscale_l1": 1.0,
    "silog": 1.0,
    "intrinsics": 1.0,
    "shift_invariant": 1.0,
    "normal": 2.0,
    "scale": 4.0,
}


def _clamp4(x: float) -> float:
    """clamp4 = min(x, 4)."""
    return min(float(x), CLAMP)


# ----------------------------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------------------------


def unproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """P(v, u) = Z(v, u) * K^-1 (u, v, 1)^T, shape (H, W, 3)."""
    depth = np.asarray(depth, dtype=np.float64)
    K_inv = np.linalg.inv(np.asarray(K, dtype=np.float64))
    H, W = depth.shape
    P = np.zeros((H, W, 3), dtype=np.float64)
    for v in range(H):
        for u in range(W):
            r = K_inv @ np.array([u, v, 1.0])
            P[v, u] = depth[v, u] * r
    return P


def focal(K: np.ndarray) -> float:
    """f = sqrt(|K00*K11 - K01*K10|)."""
    K = np.asarray(K, dtype=np.float64)
    return math.sqrt(abs(K[0, 0] * K[1, 1] - K[0, 1] * K[1, 0]))


def canonical_scale(K: np.ndarray) -> float:
    """s = 768 / f."""
    return CANONICAL_FOCAL / focal(K)


def warp_intrinsics(K: np.ndarray, M: np.ndarray, G: np.ndarray) -> np.ndarray:
    """K' = [[A, t], [0, 0, 1]] @ K @ G^-1 with M = [A | t] (2x3)."""
    M = np.asarray(M, dtype=np.float64)
    M3 = np.eye(3, dtype=np.float64)
    M3[:2, :] = M
    return M3 @ np.asarray(K, dtype=np.float64) @ np.linalg.inv(np.asarray(G, dtype=np.float64))


# ----------------------------------------------------------------------------------------------------------------
# Sample validity
# ----------------------------------------------------------------------------------------------------------------


def sample_counts(mask: np.ndarray, gt_z: np.ndarray) -> bool:
    """At least 16 mask pixels, at most 0.96 * H * W of them, and min GT Z over the mask >= 0.04 m."""
    mask = np.asarray(mask, dtype=bool)
    gt_z = np.asarray(gt_z, dtype=np.float64)
    H, W = mask.shape
    n = int(mask.sum())
    if n < MIN_PIXELS:
        return False
    if n > MAX_FRACTION * H * W:
        return False
    return bool(gt_z[mask].min() >= MIN_Z)


# ----------------------------------------------------------------------------------------------------------------
# Losses (one sample at a time)
# ----------------------------------------------------------------------------------------------------------------


def _loss_l1(Ph: np.ndarray, Pc: np.ndarray, mask: np.ndarray, m: float) -> float:
    """Ph, Pc: (H, W, 3)."""
    vals = []
    H, W = mask.shape
    for v in range(H):
        for u in range(W):
            if mask[v, u]:
                vals.append(_clamp4(np.mean(np.abs(Ph[v, u] - Pc[v, u])) / m))
    return float(np.mean(vals))


def _avg_pool2(X: np.ndarray) -> np.ndarray:
    """2x2 average pooling, stride 2, on (H, W, 3): output (H // 2, W // 2, 3)."""
    H, W = X.shape[:2]
    out = np.zeros((H // 2, W // 2, 3), dtype=np.float64)
    for i in range(H // 2):
        for j in range(W // 2):
            out[i, j] = (X[2 * i, 2 * j] + X[2 * i, 2 * j + 1] + X[2 * i + 1, 2 * j] + X[2 * i + 1, 2 * j + 1]) / 4.0
    return out


def _loss_multiscale(Ph: np.ndarray, Pc: np.ndarray, mask: np.ndarray, m: float) -> float:
    Ph2 = _avg_pool2(Ph)
    Pc2 = _avg_pool2(Pc)
    vals = []
    for i in range(Ph2.shape[0]):
        for j in range(Ph2.shape[1]):
            cell = mask[2 * i : 2 * i + 2, 2 * j : 2 * j + 2]  # the 4 pixels of the cell
            if cell.all():
                vals.append(_clamp4(np.mean(np.abs(Ph2[i, j] - Pc2[i, j])) / m))
    if not vals:
        return 0.0
    return float(np.mean(vals))


def _loss_silog(Ph: np.ndarray, Pc: np.ndarray, mask: np.ndarray) -> float:
    d = []
    H, W = mask.shape
    for v in range(H):
        for u in range(W):
            if mask[v, u]:
                d.append(math.log(Pc[v, u, 2]) - math.log(max(Ph[v, u, 2], 1e-6)))
    d = np.array(d, dtype=np.float64)
    return math.sqrt(max(np.mean(d * d) - 0.5 * np.mean(d) ** 2, 1e-12))


def _loss_intrinsics(Ph: np.ndarray, mask: np.ndarray, K: np.ndarray, m: float) -> float:
    K_inv = np.linalg.inv(K)
    vals = []
    H, W = mask.shape
    for v in range(H):
        for u in range(W):
            if mask[v, u]:
                r = K_inv @ np.array([u, v, 1.0])
                x, y, z = Ph[v, u]
                vals.append(_clamp4((abs(x - r[0] * z) + abs(y - r[1] * z)) / m))
    return float(np.mean(vals))


def _loss_shift_invariant(Ph: np.ndarray, Pc: np.ndarray, mask: np.ndarray, m: float) -> float:
    c_hat = Ph[mask].mean(axis=0)
    c = Pc[mask].mean(axis=0)
    vals = []
    H, W = mask.shape
    for v in range(H):
        for u in range(W):
            if mask[v, u]:
                vals.append(_clamp4(np.mean(np.abs((Ph[v, u] - c_hat) - (Pc[v, u] - c))) / m))
    return float(np.mean(vals))


def _forward_diff_normal(Q: np.ndarray, v: int, u: int) -> np.ndarray:
    dx = Q[v, u + 1] - Q[v, u]
    dy = Q[v + 1, u] - Q[v, u]
    n = np.cross(dx, dy)
    return n / max(float(np.linalg.norm(n)), 1e-12)


def _loss_normal(Ph: np.ndarray, Pc: np.ndarray, mask: np.ndarray, s: float) -> float:
    Qh = Ph / s
    Q = Pc / s
    H, W = mask.shape
    vals = []
    for v in range(H - 1):
        for u in range(W - 1):
            if mask[v, u] and mask[v, u + 1] and mask[v + 1, u]:
                nh = _forward_diff_normal(Qh, v, u)
                n = _forward_diff_normal(Q, v, u)
                vals.append((1.0 - float(np.dot(nh, n))) + float(np.sum(np.abs(nh - n))))
    if not vals:
        return 0.0
    return float(np.mean(vals))


def _sample_terms(Ph: np.ndarray, s_hat: float, P: np.ndarray, mask: np.ndarray, K: np.ndarray) -> dict:
    """All seven terms of one (counting) sample. Ph: (H, W, 3) canonical prediction; P: (H, W, 3) metric GT."""
    s = canonical_scale(K)
    Pc = s * P
    m = float(Pc[mask][:, 2].mean())
    return {
        "l1": _loss_l1(Ph, Pc, mask, m),
        "multiscale_l1": _loss_multiscale(Ph, Pc, mask, m),
        "silog": _loss_silog(Ph, Pc, mask),
        "intrinsics": _loss_intrinsics(Ph, mask, K, m),
        "shift_invariant": _loss_shift_invariant(Ph, Pc, mask, m),
        "normal": _loss_normal(Ph, Pc, mask, s),
        "scale": abs(float(s_hat) - s),
    }


def loss_terms(pred: np.ndarray, pred_scale: np.ndarray, points: np.ndarray, mask: np.ndarray, K: np.ndarray) -> dict:
    """pred (B, 3, H, W) canonical, pred_scale (B,), points (B, H, W, 3) metric GT, mask (B, H, W), K (B, 3, 3).

    Each term is averaged over the counting samples (0.0 when none count); "total" is the weighted sum.
    """
    pred = np.asarray(pred, dtype=np.float64)
    pred_scale = np.asarray(pred_scale, dtype=np.float64).reshape(-1)
    points = np.asarray(points, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    K = np.asarray(K, dtype=np.float64)
    B = pred.shape[0]
    sums = {name: 0.0 for name in WEIGHTS}
    n_counting = 0
    for b in range(B):
        if not sample_counts(mask[b], points[b, :, :, 2]):
            continue
        n_counting += 1
        Ph = np.transpose(pred[b], (1, 2, 0))  # (H, W, 3)
        terms = _sample_terms(Ph, float(pred_scale[b]), points[b], mask[b], K[b])
        for name in WEIGHTS:
            sums[name] += terms[name]
    out = {name: (sums[name] / n_counting if n_counting > 0 else 0.0) for name in WEIGHTS}
    out["total"] = sum(WEIGHTS[name] * out[name] for name in WEIGHTS)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------


def pointmap_normals(points: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel (ksize 5, float64, default border) per channel along u (columns) and v (rows); n = Su x Sv normalized.

    valid = mask eroded by a 5x5 square with the outside counted as not-in-mask.
    """
    points = np.asarray(points, dtype=np.float64)
    H, W = points.shape[:2]
    Su = np.zeros((H, W, 3), dtype=np.float64)
    Sv = np.zeros((H, W, 3), dtype=np.float64)
    for c in range(3):
        channel = np.ascontiguousarray(points[:, :, c])
        Su[:, :, c] = cv2.Sobel(channel, cv2.CV_64F, 1, 0, ksize=5)
        Sv[:, :, c] = cv2.Sobel(channel, cv2.CV_64F, 0, 1, ksize=5)
    n = np.cross(Su, Sv)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    normals = n / np.maximum(norm, 1e-12)
    kernel = np.ones((5, 5), dtype=np.uint8)
    eroded = cv2.erode(
        np.asarray(mask, dtype=bool).astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0
    )
    return normals, eroded.astype(bool)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two 3-vectors in degrees: arctan2(|a x b|, a.b)."""
    return math.degrees(math.atan2(float(np.linalg.norm(np.cross(a, b))), float(np.dot(a, b))))


def metrics(preds: list, gts: list, masks: list) -> dict:
    """Point and normal metrics, pixels pooled over all images (in whatever space preds / gts are given)."""
    errors = []  # e = pred - gt on mask pixels
    angles = []  # angular normal errors (degrees) on pixels valid for both normal maps
    for pred, gt, mask in zip(preds, gts, masks):
        pred = np.asarray(pred, dtype=np.float64)
        gt = np.asarray(gt, dtype=np.float64)
        mask = np.asarray(mask, dtype=bool)
        H, W = mask.shape
        for v in range(H):
            for u in range(W):
                if mask[v, u]:
                    errors.append(pred[v, u] - gt[v, u])
        n_pred, valid_pred = pointmap_normals(pred, mask)
        n_gt, valid_gt = pointmap_normals(gt, mask)
        valid = valid_pred & valid_gt
        for v in range(H):
            for u in range(W):
                if valid[v, u]:
                    angles.append(_angle_deg(n_pred[v, u], n_gt[v, u]))

    out = {}
    if errors:
        e = np.array(errors, dtype=np.float64)  # (N, 3)
        norms = np.linalg.norm(e, axis=1)
        out["l2_mean"] = float(norms.mean())
        out["rmse"] = float(math.sqrt(np.mean(norms**2)))
        out["x_mae"] = float(np.abs(e[:, 0]).mean())
        out["y_mae"] = float(np.abs(e[:, 1]).mean())
        out["z_mae"] = float(np.abs(e[:, 2]).mean())
        out["within_5cm"] = float(np.mean(norms < 0.05))
        out["within_10cm"] = float(np.mean(norms < 0.10))
        out["within_20cm"] = float(np.mean(norms < 0.20))
    else:
        for key in ("l2_mean", "rmse", "x_mae", "y_mae", "z_mae", "within_5cm", "within_10cm", "within_20cm"):
            out[key] = float("nan")
    if angles:
        a = np.array(angles, dtype=np.float64)
        out["normal_mean"] = float(a.mean())
        out["normal_median"] = float(np.median(a))
        out["normal_within_11.25"] = float(np.mean(a < 11.25))
        out["normal_within_22.5"] = float(np.mean(a < 22.5))
        out["normal_within_30"] = float(np.mean(a < 30.0))
    else:
        for key in ("normal_mean", "normal_median", "normal_within_11.25", "normal_within_22.5", "normal_within_30"):
            out[key] = float("nan")
    return out
