"""Independent float64 numpy reference for the Sapiens2 pointmap targets, losses and metrics.

Written by a separate author from the specification alone (below, verbatim; no import from opensapiens), so tests
can compare the torch implementation against it. The targets and metrics follow the pointmap specification (the
same rules as docs/training.md's "Pointmaps" section and docs/evaluation.md's); its former "Sample validity" and
"Losses" parts are superseded by the "Pointmaps (Sapiens2)" section of the Sapiens2 fine-tuning losses
specification (restated from the official Sapiens2 loss code), which stands in their place below. Only numpy, cv2
and math are used; loops are explicit for clarity, inputs in tests are tiny. The specification, copied verbatim:

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

## Pointmaps (Sapiens2)
Inputs: pred P (B, 3, h, w) canonical points (resampled bilinearly to the GT size (H, W) first when sizes differ),
pred scale s^ (B, 1); GT metric points (B, H, W, 3) (OpenCV camera frame, X right, Y down, Z forward), mask (B, H, W),
intrinsics K (B, 3, 3) of the input image (general 3x3, last row 0 0 1; pixel centres at integers; the ray of pixel
(u, v) is r = K^-1 (u, v, 1)^T).
- Focal f = sqrt(|K00*K11 - K01*K10|); canonical scale s = 768 / f; canonical GT G = s * points inside the mask,
  0 outside (a pixel counts in the mask only if its GT point is finite).
- Sample rule (the official loader drops other samples; here they are removed from every term): a sample counts when
  its mask has at least 16 and at most 0.96*H*W pixels and the smallest CANONICAL GT Z (G_z) over the mask is >= 0.04.
  Let S = the counting samples and Mk = mask of counting samples (0 for the others). If S is empty the loss is 0.
- m_b = mean of G_z over sample b's mask (canonical mean depth); A = P / m_b, Ag = G / m_b (per sample).
- L1 (weight 2) = min(4, sum over pixels and channels Mk * |A - Ag| / max(1, sum Mk))   [channels SUMMED]
- Multi-scale L1 (weight 1) = min(4, sum over pixels and channels U(Mk) * |U(A) - U(Ag)| / max(1, sum U(Mk))),
  where U resamples x2 in each direction: bilinear for A and Ag, nearest for the mask (2H x 2W).
- SiLog (weight 1), per counting sample over its mask pixels: d = log(max(G_z, 1e-4)) - log(max(P_z, 1e-4));
  silog_b = sqrt(max(mean(d^2) - 0.5 * mean(d)^2, 1e-12)); SiLog = mean over S of silog_b.
- Intrinsics consistency (weight 1) = sum over pixels Mk * (|P_x - r_x P_z| + |P_y - r_y P_z|) / max(1, sum Mk),
  r = K^-1 (u, v, 1)^T with the input image's K (P in canonical units, not divided by m, not clamped).
- Shift-invariant L1 (weight 1): per sample and channel centroids c = mean of A over the mask, cg = mean of Ag over
  the mask; = min(4, sum over pixels and channels Mk * |(A - c) - (Ag - cg)| / max(1, sum Mk)).
- Normal (weight 2): Q = P / s and Qg = G / s (both divided by the GT scale s). For each map, pad by 1 pixel with
  reflection (the padded value beyond column W-1 is column W-2; beyond row H-1 is row H-2), then at every pixel
  a = Q[v, u+1] - Q[v, u], b = Q[v+1, u] - Q[v, u] (using the padded map), c = a x b (3-vector cross product).
  n = c / |c| where |c| > 1e-10, and n = 0 elsewhere or outside Mk. valid = Mk and |c_g| > 1e-10 (from the GT map).
  per pixel e = (1 - clamp(<n, n_g>, -1, 1)) + (1/3) * sum over channels |n - n_g|;
  Normal = sum over valid pixels e / max(1, number of valid pixels).
- Scale (weight 4) = mean over S of |s^_b - s_b|.
- total = 2*L1 + MS + SiLog + IC + SI + 2*Normal + 4*Scale.

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
CLAMP = 4.0  # L1, multi-scale L1 and shift-invariant L1 are clamped at 4 on the term's (pooled) value
MIN_PIXELS = 16
MAX_FRACTION = 0.96
MIN_Z = 0.04  # on the CANONICAL GT Z (s * metric Z)
SILOG_FLOOR = 1e-4
NORMAL_EPS = 1e-10
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
    """min(x, 4)."""
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
# Resampling (PyTorch interpolate semantics, written out in float64)
# ----------------------------------------------------------------------------------------------------------------


def _bilinear_taps(n_in: int, n_out: int) -> list:
    """Per output index i along one axis: (i0, i1, weight of i1), as interpolate(mode="bilinear",
    align_corners=False): x = (i + 0.5) * n_in / n_out - 0.5, clamped at 0 below (PyTorch clamps negative source
    coordinates to 0), i0 = floor(x), i1 = min(i0 + 1, n_in - 1), weight x - i0."""
    taps = []
    for i in range(n_out):
        x = (i + 0.5) * n_in / n_out - 0.5
        x = max(x, 0.0)
        i0 = int(math.floor(x))
        i1 = min(i0 + 1, n_in - 1)
        taps.append((i0, i1, x - i0))
    return taps


def resize_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resample of x (..., h, w) to (..., out_h, out_w) (align_corners=False), in float64."""
    x = np.asarray(x, dtype=np.float64)
    h, w = x.shape[-2:]
    rows = _bilinear_taps(h, out_h)
    cols = _bilinear_taps(w, out_w)
    out = np.zeros(x.shape[:-2] + (out_h, out_w), dtype=np.float64)
    for i, (r0, r1, wy) in enumerate(rows):
        for j, (c0, c1, wx) in enumerate(cols):
            top = (1.0 - wx) * x[..., r0, c0] + wx * x[..., r0, c1]
            bottom = (1.0 - wx) * x[..., r1, c0] + wx * x[..., r1, c1]
            out[..., i, j] = (1.0 - wy) * top + wy * bottom
    return out


def resize_nearest(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Nearest resample of x (..., h, w) to (..., out_h, out_w): source index floor(dst * in / out)."""
    x = np.asarray(x)
    h, w = x.shape[-2:]
    out = np.zeros(x.shape[:-2] + (out_h, out_w), dtype=x.dtype)
    for i in range(out_h):
        si = min(int(math.floor(i * h / out_h)), h - 1)
        for j in range(out_w):
            sj = min(int(math.floor(j * w / out_w)), w - 1)
            out[..., i, j] = x[..., si, sj]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Sample validity
# ----------------------------------------------------------------------------------------------------------------


def effective_mask(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The mask (H, W) as the loss reads it: a pixel counts only if it is in the mask and its GT point is finite."""
    mask = np.asarray(mask, dtype=bool)
    points = np.asarray(points, dtype=np.float64)
    return mask & np.isfinite(points).all(axis=-1)


def canonical_gt(points: np.ndarray, mask: np.ndarray, K: np.ndarray) -> np.ndarray:
    """G = s * points inside the (effective) mask, 0 outside; (H, W, 3)."""
    s = canonical_scale(K)
    points = np.asarray(points, dtype=np.float64)
    H, W = mask.shape
    G = np.zeros((H, W, 3), dtype=np.float64)
    for v in range(H):
        for u in range(W):
            if mask[v, u]:
                G[v, u] = s * points[v, u]
    return G


def sample_counts(mask: np.ndarray, canonical_z: np.ndarray) -> bool:
    """At least 16 mask pixels, at most 0.96 * H * W of them, and the smallest CANONICAL GT Z (G_z = s * Z) over the
    mask >= 0.04. mask: the effective mask (H, W); canonical_z: G_z (H, W)."""
    mask = np.asarray(mask, dtype=bool)
    canonical_z = np.asarray(canonical_z, dtype=np.float64)
    H, W = mask.shape
    n = int(mask.sum())
    if n < MIN_PIXELS:
        return False
    if n > MAX_FRACTION * H * W:
        return False
    return bool(canonical_z[mask].min() >= MIN_Z)


# ----------------------------------------------------------------------------------------------------------------
# Losses (batch-pooled over the counting samples)
# ----------------------------------------------------------------------------------------------------------------


def _normal_map(Q: np.ndarray, Mk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q (H, W, 3). Pad by 1 pixel with reflection (np.pad mode="reflect": beyond column W-1 is column W-2, beyond
    row H-1 is row H-2; the left / top pads are never read), a = Q[v, u+1] - Q[v, u], b = Q[v+1, u] - Q[v, u],
    c = a x b. Returns n (H, W, 3) = c / |c| where |c| > 1e-10 and Mk, else 0; and |c| (H, W)."""
    H, W = Q.shape[:2]
    Qp = np.pad(Q, ((1, 1), (1, 1), (0, 0)), mode="reflect")  # Qp[v + 1, u + 1] = Q[v, u]
    n = np.zeros((H, W, 3), dtype=np.float64)
    c_norm = np.zeros((H, W), dtype=np.float64)
    for v in range(H):
        for u in range(W):
            q = Qp[v + 1, u + 1]
            a = Qp[v + 1, u + 2] - q
            b = Qp[v + 2, u + 1] - q
            c = np.cross(a, b)
            length = float(np.linalg.norm(c))
            c_norm[v, u] = length
            if length > NORMAL_EPS and Mk[v, u]:
                n[v, u] = c / length
    return n, c_norm


def loss_terms(pred: np.ndarray, pred_scale: np.ndarray, points: np.ndarray, mask: np.ndarray, K: np.ndarray) -> dict:
    """pred (B, 3, h, w) canonical, pred_scale (B,) or (B, 1), points (B, H, W, 3) metric GT, mask (B, H, W),
    K (B, 3, 3).

    Returns the seven terms and "total" (the weighted sum). Every term is 0.0 when no sample counts. L1, multi-scale
    L1, intrinsics, shift-invariant and normal are pooled over the counting samples' pixels (one sum, one count);
    SiLog and scale are means over the counting samples.
    """
    pred = np.asarray(pred, dtype=np.float64)
    pred_scale = np.asarray(pred_scale, dtype=np.float64).reshape(-1)
    points = np.asarray(points, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    K = np.asarray(K, dtype=np.float64)
    B, H, W = points.shape[:3]
    if pred.shape[-2:] != (H, W):
        pred = resize_bilinear(pred, H, W)
    P = np.transpose(pred, (0, 2, 3, 1))  # (B, H, W, 3)

    masks = [effective_mask(mask[b], points[b]) for b in range(B)]
    scales = [canonical_scale(K[b]) for b in range(B)]
    G = [canonical_gt(points[b], masks[b], K[b]) for b in range(B)]
    counting = [b for b in range(B) if sample_counts(masks[b], G[b][:, :, 2])]
    if not counting:
        out = {name: 0.0 for name in WEIGHTS}
        out["total"] = 0.0
        return out

    Mk = np.zeros((B, H, W), dtype=bool)  # mask of the counting samples, 0 for the others
    for b in counting:
        Mk[b] = masks[b]
    m = {b: float(G[b][masks[b]][:, 2].mean()) for b in counting}  # canonical mean depth
    A = {b: P[b] / m[b] for b in counting}
    Ag = {b: G[b] / m[b] for b in counting}

    # 1. L1: pooled, channels summed, divided by the pixel count, clamped at 4
    num, den = 0.0, 0
    for b in counting:
        for v in range(H):
            for u in range(W):
                if Mk[b, v, u]:
                    num += float(np.sum(np.abs(A[b][v, u] - Ag[b][v, u])))
                    den += 1
    l1 = _clamp4(num / max(1, den))

    # 2. Multi-scale L1: x2 bilinear up-sampling of A and Ag, nearest for the mask
    num, den = 0.0, 0
    for b in counting:
        UA = np.transpose(resize_bilinear(np.transpose(A[b], (2, 0, 1)), 2 * H, 2 * W), (1, 2, 0))
        UAg = np.transpose(resize_bilinear(np.transpose(Ag[b], (2, 0, 1)), 2 * H, 2 * W), (1, 2, 0))
        UM = resize_nearest(Mk[b], 2 * H, 2 * W)
        for v in range(2 * H):
            for u in range(2 * W):
                if UM[v, u]:
                    num += float(np.sum(np.abs(UA[v, u] - UAg[v, u])))
                    den += 1
    multiscale = _clamp4(num / max(1, den))

    # 3. SiLog: per counting sample over its mask, then the mean over the counting samples
    silogs = []
    for b in counting:
        d = []
        for v in range(H):
            for u in range(W):
                if Mk[b, v, u]:
                    d.append(math.log(max(G[b][v, u, 2], SILOG_FLOOR)) - math.log(max(P[b][v, u, 2], SILOG_FLOOR)))
        d = np.array(d, dtype=np.float64)
        silogs.append(math.sqrt(max(float(np.mean(d * d)) - 0.5 * float(np.mean(d)) ** 2, 1e-12)))
    silog = float(np.mean(silogs))

    # 4. Intrinsics consistency: P in canonical units, pooled, not divided by m, not clamped
    num, den = 0.0, 0
    for b in counting:
        K_inv = np.linalg.inv(K[b])
        for v in range(H):
            for u in range(W):
                if Mk[b, v, u]:
                    r = K_inv @ np.array([u, v, 1.0])
                    x, y, z = P[b][v, u]
                    num += abs(x - r[0] * z) + abs(y - r[1] * z)
                    den += 1
    intrinsics = num / max(1, den)

    # 5. Shift-invariant L1: per-sample, per-channel centroids over the mask; pooled, channels summed, clamped at 4
    num, den = 0.0, 0
    for b in counting:
        c = A[b][Mk[b]].mean(axis=0)
        cg = Ag[b][Mk[b]].mean(axis=0)
        for v in range(H):
            for u in range(W):
                if Mk[b, v, u]:
                    num += float(np.sum(np.abs((A[b][v, u] - c) - (Ag[b][v, u] - cg))))
                    den += 1
    shift_invariant = _clamp4(num / max(1, den))

    # 6. Normal: both maps divided by the GT scale s; pooled over the valid pixels of the counting samples
    num, den = 0.0, 0
    for b in counting:
        n, _ = _normal_map(P[b] / scales[b], Mk[b])
        n_g, c_g = _normal_map(G[b] / scales[b], Mk[b])
        for v in range(H):
            for u in range(W):
                if Mk[b, v, u] and c_g[v, u] > NORMAL_EPS:
                    dot = min(max(float(np.dot(n[v, u], n_g[v, u])), -1.0), 1.0)
                    num += (1.0 - dot) + float(np.sum(np.abs(n[v, u] - n_g[v, u]))) / 3.0
                    den += 1
    normal = num / max(1, den)

    # 7. Scale: mean over the counting samples
    scale = float(np.mean([abs(float(pred_scale[b]) - scales[b]) for b in counting]))

    out = {
        "l1": l1,
        "multiscale_l1": multiscale,
        "silog": silog,
        "intrinsics": intrinsics,
        "shift_invariant": shift_invariant,
        "normal": normal,
        "scale": scale,
    }
    out = {name: float(value) for name, value in out.items()}
    out["total"] = float(sum(WEIGHTS[name] * out[name] for name in WEIGHTS))
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
