"""Sapiens2 pointmaps: canonical targets, the official loss terms and weights, and canonical / metric evaluation.

The network regresses per pixel a 3-D point (OpenCV camera frame: X right, Y down, Z forward) in a canonical camera
of focal length 768, and per image the scale s = 768 / f of the real camera: canonical points = s * metric points.
A sample carries metric ``points`` (B, H, W, 3), a foreground ``mask`` and the ``intrinsics`` (B, 3, 3) of the input
image (pixel centres at integers; any 3x3 with last row 0 0 1: rotation augmentation makes it one), whose focal
is f = sqrt(|det K[:2, :2]|).

Loss terms (official names and weights; the exact per-term statements are ours, docs/training.md), each per
sample, then averaged over the samples that count (mask of 16 px to 96 % of the image, nearest point >= 4 cm):
    2 L1 / m   1 multi-scale (2x2 pooled) L1 / m   1 SiLog on Z   1 intrinsics consistency / m
    1 shift-invariant L1 / m   2 normals of forward differences ((1 - cos) + L1)   4 |s^ - s|
with m the canonical GT mean depth and every per-pixel "/ m" error clamped at 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CANONICAL_FOCAL = 768.0
WEIGHTS = {"l1": 2.0, "multiscale_l1": 1.0, "silog": 1.0, "intrinsics": 1.0, "shift_invariant": 1.0,
           "normal": 2.0, "scale": 4.0}
CLAMP = 4.0
MIN_PIXELS, MAX_SHARE, MIN_DEPTH = 16, 0.96, 0.04  # the official sample rejection rule


def focal_length(K: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (...,) sqrt(|fx fy - skew terms|): fx for a square-pixel camera, whatever its in-plane turn."""
    return (K[..., 0, 0] * K[..., 1, 1] - K[..., 0, 1] * K[..., 1, 0]).abs().sqrt()


def canonical_scale(K: torch.Tensor) -> torch.Tensor:
    return CANONICAL_FOCAL / focal_length(K)


def camera_matrix(fx_fy_cx_cy: torch.Tensor) -> torch.Tensor:
    """(..., 4) -> (..., 3, 3) pinhole matrices."""
    fx, fy, cx, cy = fx_fy_cx_cy.unbind(-1)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack([fx, zero, cx, zero, fy, cy, zero, zero, one], -1).unflatten(-1, (3, 3))


def pixel_rays(K: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, 3, 3) -> (B, H, W, 3) rays K^-1 (u, v, 1) of every pixel (so a point seen there is Z * ray)."""
    H, W = hw
    v, u = torch.meshgrid(torch.arange(H, dtype=K.dtype, device=K.device),
                          torch.arange(W, dtype=K.dtype, device=K.device), indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1)  # (H, W, 3)
    return torch.einsum("bij,hwj->bhwi", torch.linalg.inv(K), pix)


def unproject(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """depth (B, H, W) Z in metres, K (B, 3, 3) -> (B, H, W, 3) metric points."""
    return depth[..., None] * pixel_rays(K.to(depth.dtype), tuple(depth.shape[-2:]))


def counting_samples(mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(B, H, W) foreground and GT Z -> (B,) bool: the samples the official loader would keep."""
    n = mask.flatten(1).sum(1)
    nearest = torch.where(mask, z, torch.full_like(z, float("inf"))).flatten(1).amin(1)
    return (n >= MIN_PIXELS) & (n <= MAX_SHARE * mask[0].numel()) & (nearest >= MIN_DEPTH)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, ...) values, (B, ...) bool -> (B,) mean over the mask (0 where it is empty)."""
    m = mask.to(x.dtype)
    return (x * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1)


def _pool2(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) -> (B, H/2, W/2, 3) 2x2 means."""
    return F.avg_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)


def _centroid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3), (B, H, W) -> (B, 1, 1, 3) mean point over the mask."""
    m = mask[..., None].to(x.dtype)
    return (x * m).sum((1, 2), keepdim=True) / m.sum((1, 2), keepdim=True).clamp(min=1)


def _forward_normals(q: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) points -> (B, H-1, W-1, 3) unit normals of the forward differences' cross product."""
    dx = q[:, :-1, 1:] - q[:, :-1, :-1]
    dy = q[:, 1:, :-1] - q[:, :-1, :-1]
    n = torch.linalg.cross(dx, dy, dim=-1)
    return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def pointmap_loss_terms(pred: torch.Tensor, pred_scale: torch.Tensor, points: torch.Tensor, mask: torch.Tensor,
                        K: torch.Tensor) -> dict[str, torch.Tensor]:
    """pred (B, 3, h, w) canonical, pred_scale (B, 1); points (B, H, W, 3) metric GT, mask (B, H, W), K (B, 3, 3)
    -> {term: scalar} (each averaged over the counting samples; unweighted)."""
    H, W = points.shape[1:3]
    if pred.shape[-2:] != (H, W):
        pred = F.interpolate(pred.float(), size=(H, W), mode="bilinear", align_corners=False)
    p = pred.float().permute(0, 2, 3, 1)  # (B, H, W, 3)
    s = canonical_scale(K.float())  # (B,)
    gt = points.float() * s[:, None, None, None]  # canonical GT
    mask = mask.bool() & torch.isfinite(points).all(-1)
    gt = torch.where(mask[..., None], gt, torch.zeros_like(gt))
    counts = counting_samples(mask, gt[..., 2] / s[:, None, None])
    m = _masked_mean(gt[..., 2], mask).clamp(min=1e-6)[:, None, None]  # (B, 1, 1) canonical mean depth

    def clamped(err: torch.Tensor) -> torch.Tensor:
        return (err / m).clamp(max=CLAMP)

    per_sample = {"l1": _masked_mean(clamped((p - gt).abs().mean(-1)), mask)}
    full = F.avg_pool2d(mask[:, None].float(), 2)[:, 0] == 1  # cells whose 4 pixels are foreground
    per_sample["multiscale_l1"] = _masked_mean(clamped((_pool2(p) - _pool2(gt)).abs().mean(-1)), full)
    d = torch.log(gt[..., 2].clamp(min=1e-6)) - torch.log(p[..., 2].clamp(min=1e-6))
    mean_d, mean_d2 = _masked_mean(d, mask), _masked_mean(d * d, mask)
    per_sample["silog"] = (mean_d2 - 0.5 * mean_d * mean_d).clamp(min=1e-12).sqrt()
    r = pixel_rays(K.float(), (H, W))  # (B, H, W, 3)
    ic = (p[..., 0] - r[..., 0] * p[..., 2]).abs() + (p[..., 1] - r[..., 1] * p[..., 2]).abs()
    per_sample["intrinsics"] = _masked_mean(clamped(ic), mask)
    c_pred, c_gt = _centroid(p, mask), _centroid(gt, mask)  # (B, 1, 1, 3)
    per_sample["shift_invariant"] = _masked_mean(clamped(((p - c_pred) - (gt - c_gt)).abs().mean(-1)), mask)
    inv_s = (1 / s)[:, None, None, None]
    n_pred, n_gt = _forward_normals(p * inv_s), _forward_normals(gt * inv_s)
    both = mask[:, :-1, :-1] & mask[:, :-1, 1:] & mask[:, 1:, :-1]
    normal_err = (1 - (n_pred * n_gt).sum(-1)) + (n_pred - n_gt).abs().sum(-1)
    per_sample["normal"] = _masked_mean(normal_err, both)
    per_sample["scale"] = (pred_scale.float().reshape(-1) - s).abs()

    w = counts.float()
    denom = w.sum().clamp(min=1)
    return {k: (v * w).sum() / denom for k, v in per_sample.items()}


def pointmap_loss(pred: torch.Tensor, pred_scale: torch.Tensor, points: torch.Tensor, mask: torch.Tensor,
                  K: torch.Tensor) -> torch.Tensor:
    terms = pointmap_loss_terms(pred, pred_scale, points, mask, K)
    return sum(WEIGHTS[k] * v for k, v in terms.items())


@dataclass
class PointmapCriterion:
    def __call__(self, output: tuple[torch.Tensor, torch.Tensor], batch: dict) -> torch.Tensor:
        pred, pred_scale = output
        return pointmap_loss(pred, pred_scale, batch["points"], batch["mask"], batch["intrinsics"])


class PointmapEvaluator:
    """Official canonical-space errors (prediction as regressed vs GT * s) and the metric ones a user gets
    (prediction / predicted scale vs GT; ``metric_*``, and the focal length's relative error), pooled over the
    foreground pixels of the set."""

    def __init__(self):
        from ..evaluation.pointmap import PointmapAccumulator

        # (normals are the same in both spaces: scaling does not turn them)
        self.canonical, self.metric = PointmapAccumulator(), PointmapAccumulator(normals=False)

    def update(self, output: tuple[torch.Tensor, torch.Tensor], batch: dict) -> None:
        pred, pred_scale = output
        points, K = batch["points"].float(), batch["intrinsics"].float()
        pred = F.interpolate(pred.float(), size=points.shape[1:3], mode="bilinear", align_corners=False)
        pred = pred.permute(0, 2, 3, 1)
        s, s_pred = canonical_scale(K), pred_scale.float().reshape(-1)
        for i in range(len(pred)):
            mask = batch["mask"][i].bool().cpu().numpy()
            gt = points[i].cpu().numpy()
            self.canonical.update(pred[i].cpu().numpy(), gt * float(s[i]), mask)
            self.metric.update((pred[i] / s_pred[i]).cpu().numpy(), gt, mask)
            self.metric.add_focal(CANONICAL_FOCAL / float(s_pred[i]), CANONICAL_FOCAL / float(s[i]))

    def state(self):
        return self.canonical, self.metric

    def merge(self, other) -> None:
        self.canonical.merge(other[0])
        self.metric.merge(other[1])

    def compute(self) -> dict:
        out, metric = self.canonical.compute(), self.metric.compute()
        counts = ("num_images", "num_pixels", "nonfinite_pred", "focal_abs_rel")  # (the canonical ones)
        out.update({f"metric_{k}": v for k, v in metric.items() if k not in counts})
        out["focal_abs_rel"] = metric.get("focal_abs_rel", float("nan"))
        return out
