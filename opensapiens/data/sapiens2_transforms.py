"""Sapiens2's training pipelines (its dense configs and transforms), on numpy RGB uint8, driven by an explicit RNG.

    seg:      background (p 0.8, Reinhard colour transfer) -> keep-ratio resize into r x the input (r in [0.4, 2])
              -> crop to the input (p 0.3; padding labelled ignore) -> Gaussian blur (p 0.3) -> Gaussian noise
              (p 0.3) -> rotation (p 0.5, up to 60 degrees; corners background) -> flip -> photometric distortion
              -> stretch to the input. A sample with under 1 % foreground is replaced by another (drawn at random).
    normal /  photometric distortion -> [normal: down-up resampling, p 0.2] -> random scale (p 0.3, 0.5-2x) ->
    pointmap  crop of random aspect (0.5-2) and area (40-100 %) (p 0.3) -> flip (p 0.3) -> centred aspect-keeping fit
              -> [normal: Gaussian blur, Gaussian noise, solarize, p 0.3 each]. A sample whose mask has under 16
              pixels or covers over 96 % of the input (a pointmap's also: nearest canonical depth under 4 cm) is
              replaced by another.

The seg pipeline runs step by step as the official one (its resizes and the rotation each resample: the
resolution a small r leaves is part of the augmentation). The normal / pointmap geometry is axis-aligned (scale,
crop, mirror, fit), so it is one matrix (``FitPlan``): targets are warped from the source once, the image is
resampled where the official one loses resolution (the down-up step, the random scale) and then warped by the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..inference.transforms import cv2_area_cubic
from .transforms import crop_ratio_ok, mirror, photometric_distortion, replace_background, warp_image


class SampleRejected(Exception):  # noqa: N818 (a signal, not a fault)
    """A training sample that Sapiens2's loader would drop (``DenseDataset`` draws another one in its place)."""


@dataclass(frozen=True)
class Seg2Augment:
    """Sapiens2's seg training pipeline (``configs/seg/shutterstock_goliath``)."""

    background_prob: float = 0.8  # with a background folder; the foreground's colours moved to the background's
    ratio_range: tuple[float, float] = (0.4, 2.0)
    crop_prob: float = 0.3
    cat_max_ratio: float = 0.75
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # 3 x 3 kernel
    noise_prob: float = 0.3
    noise_var: tuple[float, float] = (5.0, 20.0)
    rotate_prob: float = 0.5
    rotate_degree: float = 60.0
    flip_prob: float = 0.5
    photometric: bool = True
    min_foreground: float = 0.01  # share of the input labelled (not background, not ignore)


@dataclass(frozen=True)
class Fit2Augment:
    """Sapiens2's normal and pointmap training pipelines (``configs/normal``, ``configs/pointmap``)."""

    photometric: bool = True
    down_up_prob: float = 0.0  # normal 0.2
    down_up_range: tuple[float, float] = (0.1, 0.7)
    scale_prob: float = 0.3
    scale_range: tuple[float, float] = (0.5, 2.0)
    crop_prob: float = 0.3
    crop_aspect: tuple[float, float] = (0.5, 2.0)  # width / height
    crop_area: tuple[float, float] = (0.4, 1.0)  # share of the image
    crop_attempts: int = 8
    flip_prob: float = 0.3
    blur_prob: float = 0.0  # normal 0.3 (3 x 3 kernel, sigma in blur_sigma)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_prob: float = 0.0  # normal 0.3
    noise_var: tuple[float, float] = (5.0, 20.0)
    solarize_prob: float = 0.0  # normal 0.3
    solarize_threshold: int = 128
    mask_rule: bool = False  # normals: drop a mask of under 16 pixels or over 96 % of the input (pointmaps always
    # drop those, and a nearest canonical depth under 4 cm: ``check_pointmap``)


NORMAL2 = Fit2Augment(down_up_prob=0.2, blur_prob=0.3, noise_prob=0.3, solarize_prob=0.3, mask_rule=True)
POINTMAP2 = Fit2Augment()

# ------------------------------------------------------------------------------------------------ pixel operations

DOWN_UP_INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_LANCZOS4)


def gaussian_blur(img: np.ndarray, rng: np.random.Generator, prob: float, sigma: tuple[float, float]) -> np.ndarray:
    """With ``prob``: a 3 x 3 Gaussian blur of standard deviation drawn from ``sigma``."""
    if prob <= 0 or rng.random() >= prob:
        return img
    return cv2.GaussianBlur(img, (3, 3), float(rng.uniform(*sigma)))


def gaussian_noise(img: np.ndarray, rng: np.random.Generator, prob: float, var: tuple[float, float]) -> np.ndarray:
    """With ``prob``: i.i.d. normal noise per value, its variance drawn from ``var`` (in 8-bit levels squared),
    rounded down and clipped to uint8 as the official float -> uint8 cast."""
    if prob <= 0 or rng.random() >= prob:
        return img
    sigma = math.sqrt(rng.uniform(*var))
    noisy = img.astype(np.float32) + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def solarize(img: np.ndarray, rng: np.random.Generator, prob: float, threshold: int) -> np.ndarray:
    """With ``prob``: every value above ``threshold`` inverted (v -> 255 - v)."""
    if prob <= 0 or rng.random() >= prob:
        return img
    return np.where(img > threshold, 255 - img, img).astype(np.uint8)


def down_up_sample(img: np.ndarray, rng: np.random.Generator, prob: float, factor: tuple[float, float]
                   ) -> np.ndarray:
    """With ``prob``: resized down by a factor from ``factor`` and back up, each way with an interpolation drawn
    from nearest, linear, cubic, area and Lanczos (the official RandomDownUpSampleImage)."""
    if prob <= 0 or rng.random() >= prob:
        return img
    H, W = img.shape[:2]
    f = rng.uniform(*factor)
    down, up = (DOWN_UP_INTERPOLATIONS[int(i)] for i in rng.integers(len(DOWN_UP_INTERPOLATIONS), size=2))
    small = cv2.resize(img, (max(1, int(W * f)), max(1, int(H * f))), interpolation=down)
    return cv2.resize(small, (W, H), interpolation=up)


def resize_labels(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return labels if labels.shape == hw else cv2.resize(labels, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)


# ---------------------------------------------------------------------------------------------------- background


def fit_background(background: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The background picture at the image's height, aspect kept, its middle cut to the image's width (stretched to
    it where narrower), as the official SegRandomBackground."""
    H, W = hw
    bh, bw = background.shape[:2]
    nw = max(1, int(H * bw / bh))
    bg = cv2.resize(background, (nw, H), interpolation=cv2.INTER_LINEAR)
    if nw > W:
        x0 = (nw - W) // 2
        bg = bg[:, x0:x0 + W]
    return bg if bg.shape[:2] == (H, W) else cv2.resize(bg, (W, H), interpolation=cv2.INTER_LINEAR)


def reinhard_transfer(img: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """The foreground's colours moved to the background's statistics (Reinhard et al. 2001, in OpenCV's 8-bit Lab):
    per channel, fg' = (fg - mean_fg) std_bg / std_fg + mean_bg; the background kept. Needs both regions."""
    fg = foreground.astype(bool)
    if fg.all() or not fg.any():
        return img
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2Lab).astype(np.float64)
    inside, outside = lab[fg], lab[~fg]  # (n, 3)
    ratio = outside.std(0) / np.maximum(inside.std(0), 1e-6)
    moved = lab * ratio + (outside.mean(0) - inside.mean(0) * ratio)
    moved = np.clip(np.rint(np.abs(moved)), 0, 255).astype(np.uint8)  # cv2.convertScaleAbs, as the official code
    out = img.copy()
    out[fg] = cv2.cvtColor(moved, cv2.COLOR_Lab2RGB)[fg]
    return out


def paste_background(img: np.ndarray, foreground: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The foreground kept, the rest from ``background`` (``fit_background``), then ``reinhard_transfer``."""
    return reinhard_transfer(replace_background(img, foreground, fit_background(background, img.shape[:2])), foreground)


# ------------------------------------------------------------------------------------------------------------ seg


def seg2_sample(image: np.ndarray, labels: np.ndarray, out_hw: tuple[int, int], rng: np.random.Generator,
                aug: Seg2Augment, flip_lut: np.ndarray, ignore: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W, 3) and labels (H, W) through the seg pipeline (after the background) to ``out_hw``."""
    oh, ow = out_hw
    H, W = labels.shape
    r = rng.uniform(*aug.ratio_range)
    s = min(int(ow * r) / W, int(oh * r) / H)  # keep-ratio resize into r x the input
    hw = (max(1, round(H * s)), max(1, round(W * s)))
    image, labels = cv2_area_cubic(image, hw), resize_labels(labels, hw)
    if rng.random() < aug.crop_prob:
        image, labels = _crop(image, labels, out_hw, rng, aug.cat_max_ratio, ignore)
    image = gaussian_blur(image, rng, aug.blur_prob, aug.blur_sigma)
    image = gaussian_noise(image, rng, aug.noise_prob, aug.noise_var)
    if rng.random() < aug.rotate_prob:  # about the image's centre, w / 2 and h / 2 as the official code
        h, w = labels.shape
        R = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-aug.rotate_degree, aug.rotate_degree)), 1.0)
        image = cv2.warpAffine(image, R, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
        labels = cv2.warpAffine(labels, R, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)  # corners: background
    if rng.random() < aug.flip_prob:
        image, labels = image[:, ::-1], flip_lut[labels[:, ::-1]]
    image = np.ascontiguousarray(image)
    if aug.photometric:
        image = photometric_distortion(image, rng)
    return cv2_area_cubic(image, out_hw), resize_labels(np.ascontiguousarray(labels), out_hw)


def _crop(image: np.ndarray, labels: np.ndarray, out_hw: tuple[int, int], rng: np.random.Generator,
          cat_max_ratio: float, ignore: int) -> tuple[np.ndarray, np.ndarray]:
    """An input-sized window; a smaller image padded below and right first (black, labelled ``ignore``). While the
    window holds one class only, or one covers more than ``cat_max_ratio`` of it (counted on a ~256 x 256
    subsample, ``crop_ratio_ok``), another is drawn (10 more at most)."""
    oh, ow = out_hw
    ph, pw = max(oh - labels.shape[0], 0), max(ow - labels.shape[1], 0)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        labels = np.pad(labels, ((0, ph), (0, pw)), constant_values=ignore)
    H, W = labels.shape
    for _ in range(11 if cat_max_ratio < 1.0 else 1):
        y0, x0 = int(rng.integers(0, H - oh + 1)), int(rng.integers(0, W - ow + 1))
        if cat_max_ratio >= 1.0 or crop_ratio_ok(labels, (y0, y0 + oh, x0, x0 + ow), cat_max_ratio, ignore):
            break
    return image[y0:y0 + oh, x0:x0 + ow], labels[y0:y0 + oh, x0:x0 + ow]


def check_foreground(labels: np.ndarray, least: float, ignore: int = 255) -> None:
    """``SampleRejected`` when less than ``least`` of the labels are foreground (not 0, not ``ignore``)."""
    share = float(((labels > 0) & (labels != ignore)).mean())
    if share < least:
        raise SampleRejected(f"foreground {share:.2%} of the input, under Sapiens2's {least:.0%}")


# ------------------------------------------------------------------------------------------- normal and pointmap


def _scaling(hw_from: tuple[int, int], hw_to: tuple[int, int]) -> np.ndarray:
    """(3, 3) resize between pixel grids, centres mapped as cv2.resize: x -> (x + 0.5) w' / w - 0.5."""
    sy, sx = hw_to[0] / hw_from[0], hw_to[1] / hw_from[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def _translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def centred_fit(image_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """(3, 3) the aspect-keeping resize into ``out_hw``, centred (``predict``'s ``resize="center"``)."""
    from ..inference.transforms import placement

    meta = placement(image_hw, out_hw, "center")
    return _translation(meta.pad[1], meta.pad[0]) @ _scaling(image_hw, meta.content_size)


def continuous_crop(hw: tuple[int, int], rng: np.random.Generator, aug: Fit2Augment
                    ) -> tuple[int, int, int, int] | None:
    """(y0, x0, h, w) of a crop with aspect w / h from ``aug.crop_aspect`` and area share from ``aug.crop_area``,
    placed at random; None when none of ``aug.crop_attempts`` draws fits in the image."""
    H, W = hw
    for _ in range(aug.crop_attempts):
        aspect, area = rng.uniform(*aug.crop_aspect), rng.uniform(*aug.crop_area) * H * W
        h = math.sqrt(area / aspect)
        w = aspect * h
        if w <= W and h <= H:
            h, w = max(1, round(h)), max(1, round(w))
            return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w
    return None


@dataclass(frozen=True)
class FitPlan:
    """One normal / pointmap sample's geometry: ``M`` (3, 3) source -> input pixels; the source first resampled to
    ``scaled_hw`` (the random scale), which the image takes as its own step; mirrored or not."""

    M: np.ndarray
    scaled_hw: tuple[int, int] | None
    flip: bool

    def image_matrix(self, source_hw: tuple[int, int]) -> np.ndarray:
        """(2, 3) from the image as resampled to ``scaled_hw`` (or the source) to the input."""
        if self.scaled_hw is None:
            return self.M[:2]
        return (self.M @ np.linalg.inv(_scaling(source_hw, self.scaled_hw)))[:2]


def fit_plan(image_hw: tuple[int, int], out_hw: tuple[int, int], rng: np.random.Generator | None,
             aug: Fit2Augment | None) -> FitPlan:
    """The random scale, crop and mirror of ``aug`` and the centred fit (validation, ``aug`` None: the fit alone)."""
    hw, M, scaled, flip = tuple(image_hw), np.eye(3), None, False
    if aug is not None and rng is not None:
        if rng.random() < aug.scale_prob:
            s = rng.uniform(*aug.scale_range)
            scaled = (max(1, round(hw[0] * s)), max(1, round(hw[1] * s)))
            M, hw = _scaling(hw, scaled), scaled
        if rng.random() < aug.crop_prob and (box := continuous_crop(hw, rng, aug)) is not None:
            y0, x0, h, w = box
            M, hw = _translation(-x0, -y0) @ M, (h, w)
        flip = bool(rng.random() < aug.flip_prob)
        if flip:
            M = mirror(hw[1]) @ M
    return FitPlan(centred_fit(hw, out_hw) @ M, scaled, flip)


def fit2_image(image: np.ndarray, plan: FitPlan, out_hw: tuple[int, int], rng: np.random.Generator | None,
               aug: Fit2Augment | None) -> np.ndarray:
    """The image through the pixel steps and ``plan`` (photometric, down-up and scale before the warp; blur, noise
    and solarize after it)."""
    source_hw = image.shape[:2]
    if aug is not None and rng is not None:
        if aug.photometric:
            image = photometric_distortion(image, rng)
        image = down_up_sample(image, rng, aug.down_up_prob, aug.down_up_range)
    if plan.scaled_hw is not None:
        image = cv2.resize(image, plan.scaled_hw[::-1], interpolation=cv2.INTER_LINEAR)
    image = warp_image(image, plan.image_matrix(source_hw), out_hw)
    if aug is not None and rng is not None:
        image = gaussian_blur(image, rng, aug.blur_prob, aug.blur_sigma)
        image = gaussian_noise(image, rng, aug.noise_prob, aug.noise_var)
        image = solarize(image, rng, aug.solarize_prob, aug.solarize_threshold)
    return image


def check_mask(mask: np.ndarray) -> None:
    """``SampleRejected`` for a mask of under 16 pixels or over 96 % of the input (Sapiens2's normal and pointmap
    loaders; the numbers are ``tasks.pointmap``'s)."""
    from ..tasks.pointmap import MAX_SHARE, MIN_PIXELS

    n = int(np.count_nonzero(mask))
    if n < MIN_PIXELS or n > MAX_SHARE * mask.size:
        raise SampleRejected(f"mask of {n} pixels ({n / mask.size:.1%} of the input), outside Sapiens2's "
                             f"{MIN_PIXELS} pixels to {MAX_SHARE:.0%}")


def check_pointmap(depth: np.ndarray, mask: np.ndarray, K: np.ndarray) -> None:
    """``SampleRejected`` for a pointmap sample Sapiens2's loader drops (``tasks.pointmap.counting_samples``: a mask
    of 16 pixels to 96 % of the input, its nearest canonical depth 4 cm or more)."""
    import torch

    from ..tasks.pointmap import MAX_SHARE, MIN_DEPTH, MIN_PIXELS, canonical_scale, counting_samples

    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None]
    z = torch.from_numpy(depth)[None] * canonical_scale(torch.from_numpy(K))
    if not bool(counting_samples(m, z)[0]):
        n = int(m.sum())
        nearest = float(z[m].min()) if n else float("nan")
        raise SampleRejected(f"mask of {n} pixels ({n / mask.size:.1%} of the input) with its nearest canonical depth "
                             f"{nearest:.3f}, outside Sapiens2's {MIN_PIXELS} pixels to {MAX_SHARE:.0%} and "
                             f"{MIN_DEPTH}")
