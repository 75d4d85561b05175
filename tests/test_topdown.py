"""Top-down crops against closed forms, OpenCV's warpAffine and a float64 numpy bilinear sampler."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from opensapiens.codecs import decode_udp_heatmaps
from opensapiens.inference.topdown import (
    boxes_to_center_scale,
    crop_people,
    crop_to_image,
    flip_test,
    image_to_crop,
    udp_affine,
)

OUT = (64, 48)  # (H, W) crop, aspect 0.75 like 1024 x 768


def ref_udp_matrix(c, s, rot_deg, out_hw) -> np.ndarray:
    """Official UDP warp matrix, written out from its definition (float64)."""
    H, W = out_hw
    a = math.radians(rot_deg)
    sx, sy = (W - 1) / s[0], (H - 1) / s[1]
    return np.array([
        [math.cos(a) * sx, -math.sin(a) * sx, sx * (-c[0] * math.cos(a) + c[1] * math.sin(a) + 0.5 * s[0])],
        [math.sin(a) * sy, math.cos(a) * sy, sy * (-c[0] * math.sin(a) - c[1] * math.cos(a) + 0.5 * s[1])],
    ])


def ref_bilinear(img: np.ndarray, M: np.ndarray, out_hw) -> np.ndarray:
    """warpAffine semantics in float64: dst(u, v) = bilinear img at M^-1 (u, v), zero outside the image."""
    H, W = out_hw
    A = np.linalg.inv(np.vstack([M, [0, 0, 1]]))[:2]
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    x = A[0, 0] * u + A[0, 1] * v + A[0, 2]
    y = A[1, 0] * u + A[1, 1] * v + A[1, 2]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    h, w = img.shape[:2]
    out = np.zeros((H, W, img.shape[2]))
    for dy, dx, wt in [(0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)]:
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        out[ok] += wt[ok, None] * img[yi[ok], xi[ok]]
    return out


def test_boxes_to_center_scale_enlarges_to_aspect():
    boxes = torch.tensor([[10.0, 20.0, 110.0, 60.0], [0.0, 0.0, 30.0, 200.0], [5.0, 5.0, 80.0, 105.0]])
    center, scale = boxes_to_center_scale(boxes, padding=1.25, aspect=0.75)
    np.testing.assert_allclose(center.numpy(), [[60, 40], [15, 100], [42.5, 55]])
    expect = []
    for x1, y1, x2, y2 in boxes.tolist():
        w, h = (x2 - x1) * 1.25, (y2 - y1) * 1.25
        expect.append([w, w / 0.75] if w / h > 0.75 else [h * 0.75, h])
    np.testing.assert_allclose(scale.numpy(), expect, rtol=1e-6)
    padded = (boxes[:, 2:] - boxes[:, :2]) * 1.25
    assert (scale >= padded - 1e-4).all()  # never shrinks
    np.testing.assert_allclose((scale[:, 0] / scale[:, 1]).numpy(), 0.75, rtol=1e-6)


def test_udp_affine_matches_official_matrix_and_maps_box_edges():
    center = torch.tensor([[100.0, 80.0], [-20.0, 300.0], [640.0, 512.0]], dtype=torch.float64)
    scale = torch.tensor([[90.0, 120.0], [30.0, 40.0], [750.0, 1000.0]], dtype=torch.float64)
    rot = torch.tensor([0.0, 35.0, -120.0], dtype=torch.float64)
    mats = udp_affine(center, scale, OUT, rot)
    for i in range(3):
        np.testing.assert_allclose(mats[i].numpy(), ref_udp_matrix(center[i], scale[i], rot[i].item(), OUT),
                                   rtol=1e-12, atol=1e-9)
    # box edges -> first / last pixel centres (UDP), no rotation
    corners = torch.stack([center - scale / 2, center + scale / 2], dim=1)  # (N, 2, 2)
    crop = image_to_crop(corners[:1], center[:1], scale[:1], OUT)
    np.testing.assert_allclose(crop[0].numpy(), [[0, 0], [OUT[1] - 1, OUT[0] - 1]], atol=1e-9)


def test_image_crop_image_round_trip():
    rng = np.random.default_rng(0)
    center = torch.from_numpy(rng.uniform(0, 4000, (5, 2)))
    scale = torch.from_numpy(rng.uniform(20, 3000, (5, 2)))
    rot = torch.from_numpy(rng.uniform(-180, 180, 5))
    pts = torch.from_numpy(rng.uniform(-100, 4100, (5, 30, 2)))
    back = crop_to_image(image_to_crop(pts, center, scale, (1024, 768), rot), center, scale, (1024, 768), rot)
    assert (back - pts).abs().max() < 1e-9
    back32 = crop_to_image(image_to_crop(pts.float(), center.float(), scale.float(), (1024, 768), rot.float()),
                           center.float(), scale.float(), (1024, 768), rot.float())
    assert (back32.double() - pts).abs().max() < 2e-3  # float32 at image coordinates up to ~4000
    pts_small = torch.from_numpy(rng.uniform(0, 700, (5, 30, 2)))
    c, s = center * 0.15, scale * 0.2
    back = crop_to_image(image_to_crop(pts_small.float(), c.float(), s.float()), c.float(), s.float())
    assert (back.double() - pts_small).abs().max() < 1e-4


def test_no_people_map_and_crop_to_empty_results():
    center, scale = boxes_to_center_scale(torch.zeros(0, 4))
    assert crop_to_image(torch.zeros(0, 17, 2), center, scale).shape == (0, 17, 2)
    assert image_to_crop(torch.zeros(0, 17, 2), center, scale).shape == (0, 17, 2)
    crops = crop_people([torch.zeros(3, 20, 20, dtype=torch.uint8)], [], center, scale, (64, 48))
    assert crops.shape == (0, 3, 64, 48)


def test_crop_people_matches_numpy_bilinear_and_opencv():
    rng = np.random.default_rng(1)
    noise = [rng.integers(0, 256, (90, 70, 3), dtype=np.uint8), rng.integers(0, 256, (50, 120, 3), dtype=np.uint8)]
    smooth = [cv2.resize(rng.uniform(0, 255, (8, 6, 3)).astype(np.float32), (70, 90), interpolation=cv2.INTER_CUBIC),
              cv2.resize(rng.uniform(0, 255, (5, 9, 3)).astype(np.float32), (120, 50), interpolation=cv2.INTER_CUBIC)]
    boxes = torch.tensor([[10.0, 12.0, 60.0, 80.0], [-15.0, 30.0, 40.0, 110.0], [50.0, 5.0, 118.0, 45.0],
                          [0.0, 0.0, 70.0, 90.0], [30.0, -10.0, 80.0, 40.0]], dtype=torch.float64)
    index = [0, 0, 1, 0, 1]
    rot = torch.tensor([0.0, 25.0, 0.0, -40.0, 90.0], dtype=torch.float64)
    center, scale = boxes_to_center_scale(boxes)
    mats = udp_affine(center, scale, OUT, rot).numpy()

    crops = crop_people([torch.from_numpy(im).permute(2, 0, 1) for im in noise], torch.tensor(index), center, scale,
                        OUT, rot)
    assert crops.shape == (5, 3, *OUT) and crops.dtype == torch.float32
    for i, b in enumerate(index):
        ref = ref_bilinear(noise[b].astype(np.float64), mats[i], OUT)
        np.testing.assert_allclose(crops[i].permute(1, 2, 0).numpy(), ref, atol=1e-3 * 255, err_msg=f"crop {i}")

    crops = crop_people([torch.from_numpy(im).permute(2, 0, 1) for im in smooth], index, center, scale, OUT, rot)
    for i, b in enumerate(index):
        ref = cv2.warpAffine(smooth[b], mats[i], (OUT[1], OUT[0]), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        # OpenCV quantizes sample positions to 1/32 px; on this smooth image that is < 0.1 of 255
        np.testing.assert_allclose(crops[i].permute(1, 2, 0).numpy(), ref, atol=0.1, err_msg=f"crop {i}")


def test_crop_people_rejects_bad_input():
    img = torch.zeros(3, 10, 10)
    c, s = torch.tensor([[5.0, 5.0]]), torch.tensor([[6.0, 8.0]])
    with pytest.raises(ValueError, match="image_index"):
        crop_people([img], [1], c, s, OUT)
    with pytest.raises(ValueError, match=r"images\[0\]"):
        crop_people([torch.zeros(10, 10, 3)], [0], c, s, OUT)
    with pytest.raises(ValueError, match="scale"):
        crop_people([img], [0], c, torch.tensor([[0.0, 8.0]]), OUT)


def test_decode_then_crop_to_image_equals_official_pipeline():
    """Official: kp_input = kp_hm / (w-1) * W, then image = kp_input / W * scale + center - scale / 2."""
    rng = np.random.default_rng(2)
    h, w = 64, 48
    yy, xx = np.mgrid[0:h, 0:w]
    peaks = rng.uniform(10, [w - 11, h - 11], (6, 2))
    heat = np.stack([np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / 8.0) for px, py in peaks])
    kp_crop, _ = decode_udp_heatmaps(torch.from_numpy(heat).float().view(2, 3, h, w), (256, 192))
    center = torch.tensor([[300.0, 200.0], [40.0, 900.0]], dtype=torch.float64)
    scale = torch.tensor([[150.0, 200.0], [600.0, 800.0]], dtype=torch.float64)
    img = crop_to_image(kp_crop.double(), center, scale, (256, 192))
    official_input = peaks.reshape(2, 3, 2) / [w - 1, h - 1] * [192, 256]
    c, s = center.numpy()[:, None], scale.numpy()[:, None]
    official = official_input / [192, 256] * s + c - s / 2
    np.testing.assert_allclose(img.numpy(), official, atol=1e-3)


# ---- flip test -----

def blob_pose_model(crops: torch.Tensor) -> torch.Tensor:
    """A stand-in pose network that is mirror-equivariant like a trained one.

    Channel 0 "left wrist": intensity centroid of the crop's right half (a person facing the camera has the left
    side on the image right); channel 1 "right wrist": the left half; channel 2 "nose": the whole crop. Each is
    drawn as a Gaussian at the centroid mapped to heatmap pixels with the UDP scale.
    """
    N, _, H, W = crops.shape
    h, w = H // 4, W // 4
    inten = crops.mean(dim=1)  # (N, H, W)
    u = torch.arange(W, dtype=torch.float32)
    v = torch.arange(H, dtype=torch.float32)
    right = (u > (W - 1) / 2).float()
    masks = [right, 1 - right, torch.ones(W)]
    out = []
    for m in masks:
        wgt = inten * m  # (N, H, W)
        total = wgt.sum(dim=(1, 2))
        cx = (wgt * u).sum(dim=(1, 2)) / total * (w - 1) / (W - 1)
        cy = (wgt * v[:, None]).sum(dim=(1, 2)) / total * (h - 1) / (H - 1)
        gx = torch.arange(w, dtype=torch.float32)
        gy = torch.arange(h, dtype=torch.float32)
        d2 = (gx - cx[:, None, None]) ** 2 + (gy[:, None] - cy[:, None, None]) ** 2
        out.append(torch.exp(-d2 / 8.0))
    return torch.stack(out, dim=1)  # (N, 3, h, w)


def test_flip_test_keeps_equivariant_predictions_and_swaps_left_right():
    rng = np.random.default_rng(3)
    crops = torch.from_numpy(rng.uniform(0, 1, (2, 3, 64, 48)) ** 4).float()  # blobby random content
    plain = blob_pose_model(crops)
    flipped = flip_test(blob_pose_model, crops, [1, 0, 2])
    np.testing.assert_allclose(flipped.numpy(), plain.numpy(), atol=1e-5)
    kp_plain, _ = decode_udp_heatmaps(plain, (64, 48))
    kp_flip, _ = decode_udp_heatmaps(flipped, (64, 48))
    np.testing.assert_allclose(kp_flip.numpy(), kp_plain.numpy(), atol=1e-3)
    # without the channel swap the left and right wrists would be averaged together
    unswapped = flip_test(blob_pose_model, crops, [0, 1, 2])
    assert (unswapped[:, :2] - plain[:, :2]).abs().max() > 0.1


def test_flip_test_formula_on_fixed_outputs():
    rng = np.random.default_rng(4)
    fixed = torch.from_numpy(rng.standard_normal((1, 4, 8, 6))).float()
    seen = []

    def forward(x):
        seen.append(x.clone())
        return fixed + x.mean()

    crops = torch.from_numpy(rng.standard_normal((1, 3, 32, 24))).float()
    flip = [2, 3, 0, 1]
    out = flip_test(forward, crops, flip)
    f = fixed.numpy()[0] + crops.mean().item()
    expect = 0.5 * (f + f[flip][:, :, ::-1])
    np.testing.assert_allclose(out[0].numpy(), expect, atol=1e-6)
    np.testing.assert_array_equal(seen[1].numpy(), crops.numpy()[..., ::-1])  # the second pass sees the mirror
    with pytest.raises(ValueError, match="flip_indices"):
        flip_test(forward, crops, [0, 1])


def test_non_positive_scale_error_says_which_boxes_give_one():
    """A box of zero width but some height still gets a positive scale (enlarged to the aspect): only boxes whose
    width and height are both <= 0 reach the check, and its message must say so, not blame any zero side."""
    center, scale = boxes_to_center_scale(torch.tensor([[5.0, 5.0, 5.0, 20.0], [5.0, 5.0, 5.0, 5.0],
                                                        [10.0, 10.0, 5.0, 5.0], [0.0, 0.0, 8.0, -3.0]]))
    assert (scale[[0, 3]] > 0).all() and (scale[[1, 2]] <= 0).all()
    udp_affine(center[[0]], scale[[0]], OUT)
    with pytest.raises(ValueError, match=r"2 of 4 \(w, h\).*width and height are both zero or negative"):
        udp_affine(center, scale, OUT)


def test_sapiens2_crops_are_bicubic_where_they_magnify_as_opencv_warps_them():
    """``cubic_enlarging`` (Sapiens2's PoseTopdownAffine): a box smaller than the crop is warped as
    cv2.warpAffine(INTER_CUBIC) of the uint8 image (saturated), a larger one as INTER_LINEAR, both in one image."""
    import cv2

    from opensapiens.inference.topdown import crop_people, udp_affine

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    boxes = torch.tensor([[150.0, 100.0], [200.0, 150.0], [60.0, 50.0]])  # centres
    scale = torch.tensor([[24.0, 32.0], [300.0, 400.0], [36.0, 48.0]])  # (w, h): magnified, shrunk, magnified
    crops = crop_people([torch.from_numpy(img).permute(2, 0, 1)], [0, 0, 0], boxes, scale, (64, 48),
                        cubic_enlarging=True)
    plain = crop_people([torch.from_numpy(img).permute(2, 0, 1)], [0, 0, 0], boxes, scale, (64, 48))
    A = udp_affine(boxes.double(), scale.double(), (64, 48)).numpy()
    for i, flag in enumerate((cv2.INTER_CUBIC, cv2.INTER_LINEAR, cv2.INTER_CUBIC)):
        ref = cv2.warpAffine(img, A[i], (48, 64), flags=flag, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        got = crops[i].permute(1, 2, 0).numpy()
        assert np.abs(np.rint(got) - ref).max() <= 1 and np.abs(got - ref).mean() < 0.3, i
    assert torch.equal(crops[1], plain[1]) and not torch.allclose(crops[0], plain[0], atol=1)
