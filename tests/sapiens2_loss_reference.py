"""Independent float64 numpy reference for the Sapiens2 fine-tuning losses of pose, segmentation and normals.

Written by a separate author from the specification alone (below, verbatim; no import from opensapiens, no torch),
so tests can compare the torch implementation against it. Only numpy and math are used; loops are explicit for
clarity, inputs in tests are tiny. The specification (its conventions and the pose, segmentation and surface-normal
sections; the pointmap section is restated in pointmap_reference.py), copied verbatim:

# Sapiens2 fine-tuning losses (the specification; from the official Sapiens2 loss code, restated)

Conventions. Tensors are batch-first. "Pooled" means: a sum over every (sample, pixel[, channel]) of the batch
divided by one count for the whole batch (not a per-sample mean averaged over samples). Denominators written
"max(1, n)" are clamped at 1. Bilinear resampling is PyTorch's `interpolate(mode="bilinear", align_corners=False)`
(pixel centres at half-integers in the [0, size] continuous frame; edge samples replicate the border), nearest is
`interpolate(mode="nearest")` (source index floor(dst * in / out)).

## Pose (Sapiens2), weight 10
pred, target heatmaps (B, K, h, w), keypoint weights w (B, K) (1 labelled, 0 not):
  loss = 10 * mean over all B*K*h*w elements of w[b,k] * (pred - target)^2.
(The same as Sapiens v1's plain KeypointMSELoss, times 10; no hard-keypoint mining.)

## Segmentation (Sapiens2): cross-entropy + Dice, each weight 1
logits (B, C, h, w) are resampled bilinearly to the label size (H, W) first when the sizes differ; labels (B, H, W)
integers, 255 = ignore; class weights w (C,) (Sapiens2's 29: 0.1, 10, 10, 3, 2, 4, 4, 2, 2, 6, 10, 3, 3, 1, 4, 4, 2, 2,
6, 10, 3, 3, 1, 1, 10, 10, 10, 10, 10, i.e. Sapiens v1's 28 weights with Eyeglass = 10 inserted at index 2).
- CE = (1 / (B*H*W)) * sum over ALL pixels of (w[y] * -log softmax(logits)[y] if y != 255 else 0)
  (ignored pixels count in the denominator; no division by the sum of weights).
- Dice: p = softmax over C of the logits (B, C, H, W); valid = (label != 255); t = one-hot of the label (C channels;
  an ignored pixel's one-hot is taken as class 0's); both p and t multiplied by valid. Drop channel 0 (background)
  from p and t (when C > 1). Per sample b and remaining class c, with sums over the H*W pixels:
      inter = sum p*t,  dice[b,c] = (2*inter + 1e-3) / (sum p*p + sum t*t + 1e-3),  present[b,c] = (sum t > 0)
  dice_b = sum_c dice[b,c] * present[b,c] / max(1, sum_c present[b,c])
  counted_b = (sample b has any valid pixel) and (any present[b,c])
  Dice = (1 / B) * sum_b (1 - dice_b) * counted_b        (B = all samples, counted or not)
- loss = CE + Dice.

## Surface normals (Sapiens2): 10 * cosine + 1 * L1 + 10 * gradient MSE
pred (B, 3, h, w) raw (not normalized) is resampled bilinearly to the GT size (H, W) first when sizes differ;
gt (B, 3, H, W) unit normals; M (B, H, W) foreground mask (1/0); pixels whose GT is not finite are outside M and
their GT is read as 0. n = max(1, sum M).
- cosine = sum over pixels of M * (1 - <pred/max(|pred|, 1e-6), gt/max(|gt|, 1e-6)>) / n
- L1 = sum over pixels and the 3 channels of M * |pred - gt| / n     (channels summed, divided by pixel count)
- gradient: forward differences along x: Dx f[.., v, u] = f[.., v, u+1] - f[.., v, u] (width W-1), and along y:
  Dy f[.., v, u] = f[.., v+1, u] - f[.., v, u] (height H-1); Mx = M[v,u] * M[v,u+1], My = M[v,u] * M[v+1,u].
  grad = sum over pixels and channels Mx * (Dx pred - Dx gt)^2 / max(1, sum Mx)
       + sum over pixels and channels My * (Dy pred - Dy gt)^2 / max(1, sum My)
- loss = 10 * cosine + L1 + 10 * grad.
"""

from __future__ import annotations

import math

import numpy as np
from pointmap_reference import resize_bilinear  # (the same written-out float64 bilinear resampling)

POSE_WEIGHT = 10.0
IGNORE_INDEX = 255
DICE_SMOOTH = 1e-3
NORMAL_NORM_EPS = 1e-6
NORMAL_WEIGHTS = {"cosine": 10.0, "l1": 1.0, "grad": 10.0}
# Sapiens v1's 28 body-part weights with Eyeglass = 10 inserted at index 2
SAPIENS2_CLASS_WEIGHT = (
    0.1, 10.0, 10.0, 3.0, 2.0, 4.0, 4.0, 2.0, 2.0, 6.0, 10.0, 3.0, 3.0, 1.0, 4.0, 4.0, 2.0, 2.0,
    6.0, 10.0, 3.0, 3.0, 1.0, 1.0, 10.0, 10.0, 10.0, 10.0, 10.0,
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Resampling (PyTorch interpolate(mode="bilinear", align_corners=False), written out in float64)
# ----------------------------------------------------------------------------------------------------------------


def _to_size(x: np.ndarray, H: int, W: int) -> np.ndarray:
    """x (B, C, h, w) in float64, resampled bilinearly to (H, W) only when the sizes differ."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-2:] != (H, W):
        x = resize_bilinear(x, H, W)
    return x


# ----------------------------------------------------------------------------------------------------------------
# Pose
# ----------------------------------------------------------------------------------------------------------------


def pose_loss(pred: np.ndarray, target: np.ndarray, weights: np.ndarray) -> float:
    """10 * mean over all B*K*h*w elements of w[b, k] * (pred - target)^2. pred, target (B, K, h, w); w (B, K)."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    B, K, h, w = pred.shape
    total = 0.0
    for b in range(B):
        for k in range(K):
            for v in range(h):
                for u in range(w):
                    total += weights[b, k] * (pred[b, k, v, u] - target[b, k, v, u]) ** 2
    return POSE_WEIGHT * total / (B * K * h * w)


# ----------------------------------------------------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------------------------------------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    """Softmax of a vector of C logits, float64, with the max subtracted."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax of a vector of C logits, float64: z - max - log(sum exp(z - max))."""
    z = np.asarray(z, dtype=np.float64)
    shifted = z - z.max()
    return shifted - math.log(float(np.exp(shifted).sum()))


def _check_labels(labels: np.ndarray, C: int) -> np.ndarray:
    labels = np.asarray(labels).astype(np.int64)
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= C))
    if bad.any():
        raise ValueError(f"labels must be in [0, {C}) or {IGNORE_INDEX}")
    return labels


def seg_ce(logits: np.ndarray, labels: np.ndarray, class_weight) -> float:
    """(1 / (B*H*W)) * sum over ALL pixels of w[y] * -log softmax(logits)[y] (0 where y == 255).

    logits (B, C, h, w), resampled bilinearly to the labels' (H, W) when the sizes differ; labels (B, H, W);
    class_weight (C,). Ignored pixels count in the denominator; no division by the sum of weights."""
    labels = np.asarray(labels)
    B, H, W = labels.shape
    logits = _to_size(logits, H, W)
    C = logits.shape[1]
    labels = _check_labels(labels, C)
    class_weight = np.asarray(class_weight, dtype=np.float64)
    total = 0.0
    for b in range(B):
        for v in range(H):
            for u in range(W):
                y = int(labels[b, v, u])
                if y == IGNORE_INDEX:
                    continue
                total += class_weight[y] * -_log_softmax(logits[b, :, v, u])[y]
    return total / (B * H * W)


def seg_dice(logits: np.ndarray, labels: np.ndarray) -> float:
    """Dice loss: (1 / B) * sum_b (1 - dice_b) * counted_b, over the classes other than 0 (when C > 1).

    logits (B, C, h, w), resampled bilinearly to the labels' (H, W) when the sizes differ; labels (B, H, W)."""
    labels = np.asarray(labels)
    B, H, W = labels.shape
    logits = _to_size(logits, H, W)
    C = logits.shape[1]
    labels = _check_labels(labels, C)
    p = np.zeros((B, C, H, W), dtype=np.float64)
    t = np.zeros((B, C, H, W), dtype=np.float64)
    valid = labels != IGNORE_INDEX
    for b in range(B):
        for v in range(H):
            for u in range(W):
                if not valid[b, v, u]:
                    continue  # p and t are multiplied by valid (the ignored pixel's class-0 one-hot becomes 0)
                p[b, :, v, u] = _softmax(logits[b, :, v, u])
                t[b, int(labels[b, v, u]), v, u] = 1.0
    classes = list(range(1, C)) if C > 1 else [0]  # drop the background channel when C > 1
    total = 0.0
    for b in range(B):
        dice_sum = 0.0
        n_present = 0
        for c in classes:
            inter = float(np.sum(p[b, c] * t[b, c]))
            denom = float(np.sum(p[b, c] * p[b, c])) + float(np.sum(t[b, c] * t[b, c]))
            dice = (2.0 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH)
            if float(np.sum(t[b, c])) > 0:
                dice_sum += dice
                n_present += 1
        dice_b = dice_sum / max(1, n_present)
        counted = bool(valid[b].any()) and n_present > 0
        if counted:
            total += 1.0 - dice_b
    return total / B


def seg_loss(logits: np.ndarray, labels: np.ndarray, class_weight) -> float:
    """CE + Dice, each weight 1."""
    return seg_ce(logits, labels, class_weight) + seg_dice(logits, labels)


# ----------------------------------------------------------------------------------------------------------------
# Surface normals
# ----------------------------------------------------------------------------------------------------------------


def normal_terms(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict:
    """pred (B, 3, h, w) raw, resampled bilinearly to gt's (H, W) when the sizes differ; gt (B, 3, H, W) (may hold
    NaN outside the mask); mask (B, H, W) 1/0 (read as mask != 0).

    A pixel whose GT is not finite (any channel) is outside the mask and its GT is read as 0. Returns cosine, l1,
    grad and total = 10 * cosine + l1 + 10 * grad, every term pooled over the batch."""
    gt = np.asarray(gt, dtype=np.float64)
    B, _, H, W = gt.shape
    pred = _to_size(pred, H, W)
    finite = np.isfinite(gt).all(axis=1)  # (B, H, W)
    M = (np.asarray(mask) != 0) & finite
    gt = np.where(finite[:, None], gt, 0.0)

    n = max(1, int(M.sum()))
    cos_sum = 0.0
    l1_sum = 0.0
    for b in range(B):
        for v in range(H):
            for u in range(W):
                if not M[b, v, u]:
                    continue
                p = pred[b, :, v, u]
                g = gt[b, :, v, u]
                p_unit = p / max(float(np.linalg.norm(p)), NORMAL_NORM_EPS)
                g_unit = g / max(float(np.linalg.norm(g)), NORMAL_NORM_EPS)
                cos_sum += 1.0 - float(np.dot(p_unit, g_unit))
                l1_sum += float(np.sum(np.abs(p - g)))
    cosine = cos_sum / n
    l1 = l1_sum / n

    gx_sum, nx = 0.0, 0
    gy_sum, ny = 0.0, 0
    for b in range(B):
        for v in range(H):
            for u in range(W - 1):  # Dx: width W-1; Mx = M[v, u] * M[v, u+1]
                if M[b, v, u] and M[b, v, u + 1]:
                    dp = pred[b, :, v, u + 1] - pred[b, :, v, u]
                    dg = gt[b, :, v, u + 1] - gt[b, :, v, u]
                    gx_sum += float(np.sum((dp - dg) ** 2))
                    nx += 1
        for v in range(H - 1):  # Dy: height H-1; My = M[v, u] * M[v+1, u]
            for u in range(W):
                if M[b, v, u] and M[b, v + 1, u]:
                    dp = pred[b, :, v + 1, u] - pred[b, :, v, u]
                    dg = gt[b, :, v + 1, u] - gt[b, :, v, u]
                    gy_sum += float(np.sum((dp - dg) ** 2))
                    ny += 1
    grad = gx_sum / max(1, nx) + gy_sum / max(1, ny)

    out = {"cosine": cosine, "l1": l1, "grad": grad}
    out["total"] = sum(NORMAL_WEIGHTS[name] * out[name] for name in NORMAL_WEIGHTS)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Self-checks of the reference itself
# ----------------------------------------------------------------------------------------------------------------


def _self_checks() -> None:
    rng = np.random.default_rng(0)

    # bilinear: a constant stays constant; a linear ramp is reproduced at every output whose (unclamped) source
    # coordinate lies inside [0, n - 1]; equal sizes are the identity
    for h, w, H, W in [(5, 7, 10, 14), (16, 12, 8, 6), (7, 5, 3, 11), (6, 9, 13, 5)]:
        const = np.full((2, 3, h, w), 2.5)
        assert np.allclose(resize_bilinear(const, H, W), 2.5, rtol=0, atol=1e-12)
        yy, xx = np.mgrid[:h, :w].astype(np.float64)
        ramp = 0.7 * xx - 1.3 * yy + 4.0
        out = resize_bilinear(ramp, H, W)
        for i in range(H):
            y = (i + 0.5) * h / H - 0.5
            for j in range(W):
                x = (j + 0.5) * w / W - 0.5
                if 0 <= y <= h - 1 and 0 <= x <= w - 1:
                    assert abs(out[i, j] - (0.7 * x - 1.3 * y + 4.0)) < 1e-12
        x = rng.normal(size=(2, 3, h, w))
        assert np.allclose(resize_bilinear(x, h, w), x, rtol=0, atol=1e-15)
    # x2 up-sampling by hand: row [0, 1] -> [0, 0.25, 0.75, 1] (outer samples replicate the border)
    assert np.allclose(resize_bilinear(np.array([[0.0, 1.0]]), 1, 4), [[0.0, 0.25, 0.75, 1.0]])

    # pose: one labelled keypoint, one not
    pred = np.zeros((1, 2, 2, 2))
    target = np.ones((1, 2, 2, 2))
    assert abs(pose_loss(pred, target, np.array([[1.0, 0.0]])) - 10 * 4 / 8) < 1e-12
    assert pose_loss(target, target, np.ones((1, 2))) == 0.0

    # segmentation: a perfect prediction with huge logits costs ~0 (CE and Dice); with uniform logits the CE is the
    # weighted log C over the labelled pixels divided by ALL pixels
    B, C, H, W = 2, 29, 6, 5
    labels = rng.integers(0, C, (B, H, W))
    labels[0, 0, :] = IGNORE_INDEX
    logits = np.full((B, C, H, W), -50.0)
    for b in range(B):
        for v in range(H):
            for u in range(W):
                if labels[b, v, u] != IGNORE_INDEX:
                    logits[b, labels[b, v, u], v, u] = 50.0
    assert seg_ce(logits, labels, SAPIENS2_CLASS_WEIGHT) < 1e-30
    assert seg_dice(logits, labels) < 1e-12
    assert seg_loss(logits, labels, SAPIENS2_CLASS_WEIGHT) < 1e-12
    uniform = np.zeros((B, C, H, W))
    want = sum(SAPIENS2_CLASS_WEIGHT[y] for y in labels.ravel() if y != IGNORE_INDEX) * math.log(C) / (B * H * W)
    assert abs(seg_ce(uniform, labels, SAPIENS2_CLASS_WEIGHT) - want) < 1e-12
    # a sample with every pixel ignored, or only background, is not counted (but stays in the 1 / B)
    only_bg = np.zeros((2, H, W), dtype=np.int64)
    only_bg[1] = IGNORE_INDEX
    assert seg_dice(rng.normal(size=(2, C, H, W)), only_bg) == 0.0
    # a wrong confident prediction of one foreground class: dice = 1e-3 / (N + N + 1e-3), one of two samples counted
    wrong = np.zeros((2, 3, 2, 2))
    wrong[:, 2] = 100.0  # predicts class 2 everywhere
    lab = np.array([[[1, 1], [1, 1]], [[0, 0], [0, 0]]])
    dice_b = (0.0 + 1e-3) / (0.0 + 4.0 + 1e-3)  # class 1 present: p ~ 0, t = 1 on 4 pixels
    assert abs(seg_dice(wrong, lab) - (1 - dice_b) / 2) < 1e-9
    # logits at half the label size are resampled first (a constant field stays what it was)
    small = np.zeros((B, C, 3, 3))
    small[:, 1] = 5.0
    big = np.broadcast_to(small[:, :, :1, :1], (B, C, H, W))
    assert abs(seg_ce(small, labels, SAPIENS2_CLASS_WEIGHT) - seg_ce(big, labels, SAPIENS2_CLASS_WEIGHT)) < 1e-12

    # normals: a perfect prediction costs 0, with NaN GT outside the mask (and at one masked pixel); a prediction that
    # is the GT times 3 costs no cosine but L1 = 2 * sum|gt| per pixel
    B, H, W = 2, 7, 6
    gt = rng.normal(size=(B, 3, H, W))
    gt /= np.linalg.norm(gt, axis=1, keepdims=True)
    mask = np.zeros((B, H, W))
    mask[:, 1:6, 1:5] = 1
    gt_nan = gt.copy()
    gt_nan[:, :, 0, :] = np.nan
    gt_nan[0, :, 3, 3] = np.nan  # inside the mask: this pixel leaves it
    terms = normal_terms(gt, gt_nan, mask)
    assert all(abs(value) < 1e-12 for value in terms.values()), terms
    terms = normal_terms(3 * gt, gt, mask)
    m = mask.astype(bool)
    assert abs(terms["cosine"]) < 1e-12
    assert abs(terms["l1"] - 2 * np.abs(gt).sum(axis=1)[m].mean()) < 1e-12
    assert terms["grad"] > 0
    assert abs(terms["total"] - (10 * terms["cosine"] + terms["l1"] + 10 * terms["grad"])) < 1e-12
    # a prediction at half the size is resampled to the GT size first: a constant prediction, equal to a constant GT
    const_gt = np.broadcast_to(np.array([0.0, 0.6, 0.8])[None, :, None, None], (B, 3, H + 1, W)).copy()
    const_pred = np.broadcast_to(np.array([0.0, 1.2, 1.6])[None, :, None, None], (B, 3, 4, 3)).copy()
    terms = normal_terms(const_pred, const_gt, np.ones((B, H + 1, W)))
    assert abs(terms["cosine"]) < 1e-12 and abs(terms["grad"]) < 1e-12 and abs(terms["l1"] - 1.4) < 1e-12
    # an empty mask gives 0 everywhere
    assert all(value == 0.0 for value in normal_terms(gt, gt + 1, np.zeros((B, H, W))).values())

    print("sapiens2_loss_reference: all self-checks passed")


if __name__ == "__main__":
    _self_checks()
