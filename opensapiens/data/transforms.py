"""Training augmentations of the official pipelines, on numpy RGB uint8 images, driven by an explicit RNG.

Every random choice comes from the ``np.random.Generator`` passed in, which the datasets seed per sample from
(run seed, epoch, position): a sample's augmentation does not depend on worker count, world size or resumption.

Geometry is one affine warp per sample (image bilinear; labels, masks, depth and normals nearest):
    pose:  box (+ half-body, shift, scale, rotation, flip) -> UDP crop           (official TopdownAffine, use_udp)
    dense: random resize (keep ratio) -> random crop -> stretch to the input size -> rotation -> flip
           (official RandomResize + RandomCrop + Resize + RandomRotate + RandomFlip composed into one matrix)
Photometric: brightness / contrast / saturation / hue (official PhotoMetricDistortion), box and median blur,
one coarse dropout hole (pose), random background behind the foreground (seg, depth, normal).
Sapiens2's dense pipelines (seg, normal, pointmap) are in ``sapiens2_transforms``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..inference.topdown import udp_affine

# ---------------------------------------------------------------------------------------------------- random helpers


def truncnorm(rng: np.random.Generator, size: int | None = None) -> np.ndarray | float:
    """Standard normal truncated to [-1, 1] (rejection sampling), as mmpose's ``truncnorm.rvs(-1, 1)``."""
    n = 1 if size is None else size
    out = np.empty(n)
    filled = 0
    while filled < n:
        draw = rng.standard_normal(2 * (n - filled) + 4)
        draw = draw[np.abs(draw) <= 1][: n - filled]
        out[filled:filled + len(draw)] = draw
        filled += len(draw)
    return float(out[0]) if size is None else out


# ------------------------------------------------------------------------------------------------------- pose crops


@dataclass(frozen=True)
class PoseAugment:
    """Official top-down training augmentation (mmpose defaults used by every Sapiens pose config)."""

    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_min_keypoints: int = 9  # labelled keypoints needed to try half-body (at most all half-body ids)
    half_body_padding: float = 1.5
    upper_prioritized_prob: float = 0.7
    shift_factor: float = 0.16
    shift_prob: float = 0.3
    scale_range: tuple[float, float] = (0.5, 1.5)
    rotate_factor: float = 80.0
    rotate_prob: float = 0.6
    photometric: bool = True
    photometric_prob: float = 1.0  # Sapiens2: 0.8
    blur_prob: float = 0.1
    median_blur_prob: float = 0.1
    dropout_prob: float = 1.0  # one hole, sides in [0.2, 0.4] of the crop
    dropout_range: tuple[float, float] = (0.2, 0.4)


def mirror(width: int) -> np.ndarray:
    """(3, 3) horizontal mirror of an image ``width`` pixels wide: x -> width - 1 - x (cv2.flip)."""
    return np.array([[-1.0, 0.0, width - 1], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def bbox_center_scale(bbox_xywh: np.ndarray, aspect: float | None, padding: float = 1.25
                      ) -> tuple[np.ndarray, np.ndarray]:
    """COCO (x, y, w, h) box -> center (2,), scale (2,) padded and widened to ``aspect`` = W / H of the crop (None:
    not widened, the box the augmentation shifts by)."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    center, scale = np.array([x + w / 2, y + h / 2]), np.array([w, h]) * padding
    return center, scale if aspect is None else widen_to_aspect(scale, aspect)


def widen_to_aspect(scale: np.ndarray, aspect: float) -> np.ndarray:
    """(w, h) grown along one axis to w / h = ``aspect`` (TopdownAffine's rule; never shrinks)."""
    w, h = scale
    return np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h])


def half_body_box(keypoints: np.ndarray, visible: np.ndarray, upper: np.ndarray, lower: np.ndarray,
                  aug: PoseAugment, aspect: float, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """Center/scale around the upper or lower body's labelled keypoints (official RandomHalfBody), or None.

    As mmpose's ``_get_half_body_bbox``: the centre is the keypoints' mean (not their box's middle), the scale their
    box x padding, not yet widened to ``aspect`` (``pose_crop`` does that last, as TopdownAffine). A box flat in one
    direction (keypoints on a line) is kept; only one of zero size, which no crop can be made from, gives None.
    """
    vis = visible > 0
    up, lo = upper[vis[upper]], lower[vis[lower]]
    if len(up) < 2 and len(lo) < 3:  # official minimums: 2 upper, 3 lower keypoints
        return None
    if len(lo) < 3 or (len(up) >= 2 and rng.random() < aug.upper_prioritized_prob):
        ids = up
    else:
        ids = lo
    pts = keypoints[ids]
    center = pts.mean(0)
    w, h = pts.max(0) - pts.min(0)
    if w <= 0 and h <= 0:
        return None
    return center, np.array([w, h]) * aug.half_body_padding


def pose_crop(image_hw: tuple[int, int], keypoints: np.ndarray, visible: np.ndarray, center: np.ndarray,
              scale: np.ndarray, out_hw: tuple[int, int], rng: np.random.Generator | None, aug: PoseAugment | None,
              flip_indices: np.ndarray | None = None, half_body: tuple[np.ndarray, np.ndarray] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image -> crop affine (2, 3) and the keypoints (K, 2) / visibility (K,) in crop pixels.

    With ``rng``/``aug`` None this is the plain validation crop. Flip mirrors the image (x -> W - 1 - x), the
    keypoints and swaps left/right channels; it is folded into the matrix instead of flipping the image. ``scale``
    is the padded box, widened to the crop's aspect only after the augmentation (official: the shift is a fraction
    of the box itself, the aspect fixed by TopdownAffine).
    """
    H_img, W_img = image_hw
    aspect = out_hw[1] / out_hw[0]
    kp, vis = keypoints.astype(np.float64).copy(), visible.astype(np.float32).copy()
    center, scale = center.astype(np.float64).copy(), scale.astype(np.float64).copy()
    rotation, flip = 0.0, False
    if aug is not None and rng is not None:
        if rng.random() < aug.flip_prob and flip_indices is not None:
            flip = True
            center[0] = W_img - 1 - center[0]
            kp[:, 0] = W_img - 1 - kp[:, 0]
            kp, vis = kp[flip_indices], vis[flip_indices]
        # A set with fewer distinct half-body keypoints than the official minimum of 9 (a custom one) needs them all
        if half_body is not None and (vis > 0).sum() >= min(aug.half_body_min_keypoints, len(np.union1d(*half_body))) \
                and rng.random() < aug.half_body_prob:
            hb = half_body_box(kp, vis, half_body[0], half_body[1], aug, aspect, rng)
            if hb is not None:
                center, scale = hb
        if rng.random() < aug.shift_prob:
            center = center + truncnorm(rng, 2) * aug.shift_factor * scale
        lo, hi = aug.scale_range
        scale = scale * ((hi + lo) / 2 + truncnorm(rng) * (hi - lo) / 2)
        if rng.random() < aug.rotate_prob:
            rotation = truncnorm(rng) * aug.rotate_factor
    scale = widen_to_aspect(scale, aspect)
    A = udp_affine(torch.from_numpy(center)[None], torch.from_numpy(scale)[None], out_hw, rotation)[0].numpy()
    kp_crop = kp @ A[:, :2].T + A[:, 2]  # (K, 2)
    if flip:  # the matrix applies to the mirrored image; fold the mirror x -> W - 1 - x in
        A = A @ mirror(W_img)
    return A, kp_crop.astype(np.float32), vis


# ------------------------------------------------------------------------------------------ dense (seg/depth/normal)


@dataclass(frozen=True)
class DenseAugment:
    """Official dense-task geometry and photometry (mmseg RandomResize/RandomCrop/Resize/RandomRotate/RandomFlip)."""

    ratio_range: tuple[float, float] = (0.2, 2.0)
    cat_max_ratio: float = 1.0  # seg: retry the crop (10x) while one class covers more than this share
    rotate_prob: float = 0.5
    rotate_degree: float = 45.0  # seg 45, depth 60, normal 0 (no rotation officially)
    flip_prob: float = 0.5
    photometric: bool = True
    background_prob: float = 0.0  # seg 0.8, depth/normal 0.5 when a background folder is given


def crop_ratio_ok(labels: np.ndarray, box: tuple[int, int, int, int], max_ratio: float, ignore: int = 255) -> bool:
    """Official cat_max_ratio test: more than one class in the crop and none above ``max_ratio`` of it."""
    y0, y1, x0, x1 = box
    step = max(1, int(math.sqrt((y1 - y0) * (x1 - x0) / 65536)))  # a ~256x256 subsample is enough for a ratio
    patch = labels[y0:y1:step, x0:x1:step].ravel()
    counts = np.bincount(patch[patch != ignore], minlength=1)
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < max_ratio


def dense_affine(image_hw: tuple[int, int], out_hw: tuple[int, int], rng: np.random.Generator | None,
                 aug: DenseAugment | None, labels: np.ndarray | None = None) -> tuple[np.ndarray, float, bool]:
    """The source -> input affine (2, 3), its rotation (degrees, counter-clockwise on screen) and the flip flag.

    Validation (``aug`` None) is the official test resize: a plain stretch to the input size.
    Pixel centres follow cv2.resize: resizing by f maps x to (x + 0.5) f - 0.5.
    """
    H, W = image_hw
    oh, ow = out_hw
    if aug is None or rng is None:
        sx, sy = ow / W, oh / H
        return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]]), 0.0, False
    r = rng.uniform(*aug.ratio_range)
    s = r * min(max(oh, ow) / max(H, W), min(oh, ow) / min(H, W))  # keep-ratio resize into (ow*r, oh*r)
    Hs, Ws = max(1, int(H * s + 0.5)), max(1, int(W * s + 0.5))
    fy, fx = Hs / H, Ws / W
    ch, cw = min(oh, Hs), min(ow, Ws)
    for _ in range(10 if (labels is not None and aug.cat_max_ratio < 1.0) else 1):
        y0, x0 = int(rng.integers(0, Hs - ch + 1)), int(rng.integers(0, Ws - cw + 1))
        if labels is None or aug.cat_max_ratio >= 1.0:
            break
        box = (int(y0 / fy), int(math.ceil((y0 + ch) / fy)), int(x0 / fx), int(math.ceil((x0 + cw) / fx)))
        if crop_ratio_ok(labels, box, aug.cat_max_ratio):
            break
    ky, kx = oh / ch, ow / cw  # stretch the crop to the input size
    # x_out = ((x + 0.5) fx - 0.5 - x0 + 0.5) kx - 0.5
    M = np.array([[fx * kx, 0.0, 0.5 * fx * kx - x0 * kx - 0.5],
                  [0.0, fy * ky, 0.5 * fy * ky - y0 * ky - 0.5],
                  [0.0, 0.0, 1.0]])
    M, angle, flip = _rotate_flip(M, out_hw, rng, aug)
    return M[:2], angle, flip


def _rotate_flip(M: np.ndarray, out_hw: tuple[int, int], rng: np.random.Generator,
                 aug: DenseAugment) -> tuple[np.ndarray, float, bool]:
    """(3, 3) affine -> the same followed by the random rotation about the input's centre and mirror."""
    oh, ow = out_hw
    angle = 0.0
    if aug.rotate_degree > 0 and rng.random() < aug.rotate_prob:
        angle = float(rng.uniform(-aug.rotate_degree, aug.rotate_degree))
        R = cv2.getRotationMatrix2D(((ow - 1) * 0.5, (oh - 1) * 0.5), angle, 1.0)
        M = np.vstack([R, [0, 0, 1]]) @ M
    flip = bool(rng.random() < aug.flip_prob)
    if flip:
        M = mirror(ow) @ M
    return M, angle, flip


def warp_depth(depth: np.ndarray, fg: np.ndarray, M: np.ndarray, out_hw: tuple[int, int]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Depth (H, W) and its foreground (H, W) bool warped by M: bilinear where the whole 2x2 source footprint is
    foreground, nearest elsewhere, so a magnified surface stays smooth (nearest alone makes steps of repeated
    points, whose normals are degenerate) and no depth is blended across a silhouette; the foreground nearest."""
    d = np.where(fg, depth, 0).astype(np.float32)
    smooth = warp(fg.astype(np.float32), M, out_hw, nearest=False) >= 1 - 1e-6
    warped = np.where(smooth, warp(d, M, out_hw, nearest=False), warp(d, M, out_hw, nearest=True))
    mask = warp(fg.astype(np.uint8), M, out_hw, nearest=True).astype(bool) & (warped > 0)
    return warped, mask


def warp_camera(K: np.ndarray, M: np.ndarray, G: np.ndarray) -> np.ndarray:
    """The camera (3, 3) of an image warped by M whose frame turned by G: K' = [M; 0 0 1] K G^-1, through which the
    turned points G P project to where their pixels landed (Z, which G keeps, is the warped depth)."""
    return np.vstack([M, [0.0, 0.0, 1.0]]) @ K @ np.linalg.inv(G)


def warp_image(image: np.ndarray, M: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear warp whose content edge is not blended with the black outside (replicated, then cut), as a resize
    then a paste would give: ``predict``'s centred input."""
    inside = warp(np.ones(image.shape[:2], np.uint8), M, out_hw, nearest=True).astype(bool)
    out = warp(image, M, out_hw, nearest=False, replicate=True)
    out[~inside] = 0
    return out


def warp(array: np.ndarray, M: np.ndarray, out_hw: tuple[int, int], nearest: bool, border: float = 0,
         replicate: bool = False) -> np.ndarray:
    """cv2.warpAffine to (H, W) (bilinear for images, nearest for labels/depth/normals) with a constant ``border``, or
    with ``replicate`` the edge pixels continued."""
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    mode = cv2.BORDER_REPLICATE if replicate else cv2.BORDER_CONSTANT
    return cv2.warpAffine(array, M.astype(np.float64), (out_hw[1], out_hw[0]), flags=flags, borderMode=mode,
                          borderValue=border)


def transform_normals(normals: np.ndarray, angle_deg: float, flip: bool) -> np.ndarray:
    """Turn camera-space normals (H, W, 3; X right, Y up) with the image: in-plane rotation, then mirror (X -> -X)."""
    out = normals.copy()
    if angle_deg:
        c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
        x, y = normals[..., 0], normals[..., 1]
        out[..., 0], out[..., 1] = c * x - s * y, s * x + c * y  # counter-clockwise on screen = in the Y-up frame
    if flip:
        out[..., 0] = -out[..., 0]
    return out


# ------------------------------------------------------------------------------------------------------ photometric


def photometric_distortion(img: np.ndarray, rng: np.random.Generator, brightness: float = 32,
                           contrast: tuple[float, float] = (0.5, 1.5), saturation: tuple[float, float] = (0.5, 1.5),
                           hue: int = 18) -> np.ndarray:
    """Official PhotoMetricDistortion on RGB uint8: each step with p = 0.5, contrast before or after HSV jitter.

    Brightness and contrast are 256-entry lookup tables (clipped and truncated to uint8 after each step, as the
    official ``convert``); saturation and hue act in OpenCV's 8-bit HSV (hue in [0, 180)).
    """
    values = np.arange(256, dtype=np.float32)

    def lut(table: np.ndarray, a: np.ndarray) -> np.ndarray:
        return cv2.LUT(a, np.clip(table, 0, 255).astype(np.uint8))

    def contrast_step(a: np.ndarray) -> np.ndarray:
        return lut(values * rng.uniform(*contrast), a) if rng.integers(2) else a

    if rng.integers(2):
        img = lut(values + rng.uniform(-brightness, brightness), img)
    contrast_first = bool(rng.integers(2))
    if contrast_first:
        img = contrast_step(img)
    do_sat, do_hue = rng.integers(2), rng.integers(2)
    sat = rng.uniform(*saturation) if do_sat else 1.0
    shift = int(rng.integers(-hue, hue + 1)) if do_hue else 0
    if do_sat or do_hue:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        if do_sat:
            hsv[..., 1] = lut(values * sat, hsv[..., 1])
        if do_hue:
            hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first:
        img = contrast_step(img)
    return img


def random_blur(img: np.ndarray, rng: np.random.Generator, blur_prob: float, median_prob: float) -> np.ndarray:
    """Box blur then median blur, each with its probability and a random odd kernel in {3, 5, 7} (albumentations)."""
    if rng.random() < blur_prob:
        k = int(rng.choice([3, 5, 7]))
        img = cv2.blur(img, (k, k))
    if rng.random() < median_prob:
        img = cv2.medianBlur(img, int(rng.choice([3, 5, 7])))
    return img


def coarse_dropout(img: np.ndarray, rng: np.random.Generator, size_range: tuple[float, float]) -> np.ndarray:
    """Zero one rectangle whose sides are random fractions of the image sides."""
    H, W = img.shape[:2]
    h = int(H * rng.uniform(*size_range))
    w = int(W * rng.uniform(*size_range))
    y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    img = img.copy()
    img[y:y + h, x:x + w] = 0
    return img


def replace_background(img: np.ndarray, foreground: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Keep the foreground pixels, take the rest from ``background`` resized to the image (official RandomBackground,
    without its optional colour transfer)."""
    H, W = img.shape[:2]
    bg = cv2.resize(background, (W, H), interpolation=cv2.INTER_LINEAR)
    return np.where(foreground[..., None], img, bg)
