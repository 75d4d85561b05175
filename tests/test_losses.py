"""Task losses and targets against float64 numpy / OpenCV references written from the official formulas."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from opensapiens.tasks import (
    keypoint_mse_loss,
    normal_loss,
    ohkm_mse_loss,
    relative_depth_target,
    seg_ce_loss,
    silog_loss,
)

rng = np.random.default_rng(0)


def test_keypoint_mse_is_mean_over_every_element():
    pred, target = rng.normal(size=(2, 5, 6, 4)), rng.random((2, 5, 6, 4))
    w = np.array([[1, 0, 1, 1, 0], [1, 1, 1, 0, 1]], float)
    expected = ((pred - target) ** 2 * w[..., None, None]).sum() / pred.size
    got = keypoint_mse_loss(torch.tensor(pred), torch.tensor(target), torch.tensor(w))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_ohkm_takes_each_samples_hardest_keypoints():
    pred, target = rng.normal(size=(3, 7, 4, 4)), rng.random((3, 7, 4, 4))
    w = (rng.random((3, 7)) > 0.3).astype(float)
    k = 3
    per_sample = []
    for b in range(3):
        losses = [np.mean((pred[b, j] * w[b, j] - target[b, j] * w[b, j]) ** 2) for j in range(7)]
        per_sample.append(sum(sorted(losses, reverse=True)[:k]) / k)
    got = ohkm_mse_loss(torch.tensor(pred), torch.tensor(target), torch.tensor(w), topk=k)
    assert got.item() == pytest.approx(np.mean(per_sample), rel=1e-6)


def _ce_reference(logits: np.ndarray, labels: np.ndarray, weight: np.ndarray, ignore: int = 255) -> float:
    """Per pixel w[y] * -log softmax_y, 0 where ignored, divided by ALL pixels (official reduction none + mean)."""
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))  # (B, N, H, W)
    total = 0.0
    for b, y, x in np.ndindex(labels.shape):
        c = labels[b, y, x]
        if c != ignore:
            total += -weight[c] * logp[b, c, y, x]
    return total / labels.size


def test_seg_ce_official_reduction_with_upsampling_class_weights_and_ignore():
    B, N, h, w = 2, 4, 3, 5
    logits = rng.normal(size=(B, N, h, w)).astype(np.float32)
    labels = rng.integers(0, N, (B, 2 * h, 2 * w)).astype(np.uint8)
    labels[0, :2, :3] = 255
    weight = np.array([0.5, 1.0, 2.0, 1.5])
    # Bilinear x2 up-sampling with half-pixel centres (OpenCV INTER_LINEAR = torch align_corners=False).
    up = np.stack([np.stack([cv2.resize(logits[b, c], (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
                             for c in range(N)]) for b in range(B)]).astype(np.float64)
    expected = _ce_reference(up, labels, weight)
    got = seg_ce_loss(torch.tensor(logits), torch.tensor(labels), torch.tensor(weight, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # the "logits" resolution samples labels down instead: CE on the logits grid with nearest labels
    near = labels[:, ::2, ::2]
    expected_low = _ce_reference(logits.astype(np.float64), near, weight)
    got_low = seg_ce_loss(torch.tensor(logits), torch.tensor(labels), torch.tensor(weight, dtype=torch.float32),
                          resolution="logits")
    assert got_low.item() == pytest.approx(expected_low, rel=1e-5)


def test_relative_depth_target_and_silog():
    depth = rng.uniform(1.0, 3.0, (2, 6, 5)).astype(np.float32)
    mask = rng.random((2, 6, 5)) > 0.3
    depth[1, 0, 0] = 0.0  # no depth: background even inside the mask
    target = relative_depth_target(torch.tensor(depth), torch.tensor(mask)).numpy().astype(np.float64)
    for b in range(2):
        fg = mask[b] & (depth[b] > 0)
        d = depth[b].astype(np.float64)
        ref = np.where(fg, (d - d[fg].min()) / (d[fg].max() - d[fg].min()), -1.0)
        np.testing.assert_allclose(target[b], ref, atol=1e-6)
    pred = rng.uniform(-0.2, 1.2, (2, 1, 6, 5))
    eps = 1e-6
    per_image = []
    for b in range(2):
        valid = target[b] > eps
        g = np.log(target[b][valid]) - np.log(np.maximum(pred[b, 0][valid], eps))
        per_image.append(np.sqrt(np.mean(g ** 2) - 0.5 * np.mean(g) ** 2))
    got = silog_loss(torch.tensor(pred), torch.tensor(target, dtype=torch.float32))
    assert got.item() == pytest.approx(np.mean(per_image), rel=1e-5)


def test_normal_loss_is_cosine_plus_l1_over_foreground_pixels():
    pred = rng.normal(size=(2, 3, 4, 4))
    gt = rng.normal(size=(2, 3, 4, 4))
    gt /= np.linalg.norm(gt, axis=1, keepdims=True)
    mask = rng.random((2, 4, 4)) > 0.4
    p, g = pred.transpose(0, 2, 3, 1)[mask], gt.transpose(0, 2, 3, 1)[mask]  # (n, 3)
    cos = np.sum(p / np.linalg.norm(p, axis=1, keepdims=True) * g, axis=1)
    expected = np.sum(1 - cos) / mask.sum() + np.abs(p - g).sum() / mask.sum()
    got = normal_loss(torch.tensor(pred), torch.tensor(gt), torch.tensor(mask))
    assert got.item() == pytest.approx(expected, rel=1e-5)
