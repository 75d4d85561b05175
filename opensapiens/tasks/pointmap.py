"""Sapiens2 pointmaps: canonical targets, the official loss terms and weights, and canonical / metric evaluation.

The network regresses per pixel a 3-D point (OpenCV camera frame: X right, Y down, Z forward) in a canonical camera
of focal length 768, and per image the scale s = 768 / f of the real camera: canonical points = s * metric points.
A sample carries metric ``points`` (B, H, W, 3), a foreground ``mask`` and the ``intrinsics`` (B, 3, 3) of the input
image (pixel centres at integers; any 3x3 with last row 0 0 1: rotation augmentation makes it one), whose focal
is f = sqrt(|det K[:2, :2]|).

Loss terms and weights as the official Sapiens2 code states them (docs/training.md): the pixel terms are pooled
over the batch (one sum over every counted pixel / one count), A = points / m with m the sample's canonical GT mean
depth, and the terms marked "<= 4" are clamped at 4 as a whole:
    2 L1(A) <= 4     1 L1 of A up-sampled 2x (bilinear) <= 4     1 SiLog on Z (per sample)
    1 intrinsics consistency |X - r_x Z| + |Y - r_y Z|     1 shift-invariant L1(A) <= 4
    2 normals of the differences to the right/lower neighbours at the GT scale, (1 - cos) + L1     4 |s^ - s|
A sample counts only with a mask of 16 px to 96 % of the image whose nearest canonical depth is >= 0.04 (the
official loader drops the others, as ``DenseDataset`` does; any that reach the loss, e.g. from the on-the-fly
synthetic stream, leave every term).
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
    return torch.einsum("bij,hwj->bhwi", torch.linalg.inv_ex(K).inverse, pix)  # (inv_ex: no host sync)


def unproject(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """depth (B, H, W) Z in metres, K (B, 3, 3) -> (B, H, W, 3) metric points."""
    return depth[..., None] * pixel_rays(K.to(depth.dtype), tuple(depth.shape[-2:]))


def counting_samples(mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(B, H, W) foreground and canonical GT Z -> (B,) bool: the samples the official loader keeps (it checks the
    canonical depth, s Z, against its 4 cm)."""
    n = mask.flatten(1).sum(1)
    nearest = torch.where(mask, z, torch.full_like(z, float("inf"))).flatten(1).amin(1)
    return (n >= MIN_PIXELS) & (n <= MAX_SHARE * mask[0].numel()) & (nearest >= MIN_DEPTH)


def canonical_targets(points: torch.Tensor, mask: torch.Tensor,
                      K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Metric GT points (B, H, W, 3), mask (B, H, W), K (B, 3, 3) -> the scale s (B,), the canonical GT s * points
    (B, 3, H, W; 0 off the mask), the mask of finite GT points and the samples that count (B,) bool."""
    s = canonical_scale(K.float())
    mask = mask.bool() & torch.isfinite(points).all(-1)
    gt = torch.where(mask[..., None], points.float() * s[:, None, None, None], 0.0).permute(0, 3, 1, 2)
    return s, gt, mask, counting_samples(mask, gt[:, 2])


def _pooled(err: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) per-pixel error, (B, H, W) 0/1 mask -> one mean over every masked pixel of the batch."""
    return (err * mask).sum() / mask.sum().clamp(min=1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, ...) values, (B, ...) 0/1 -> (B,) mean over each sample's mask (0 where it is empty)."""
    return (x * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1)


def _centroid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W), (B, H, W) 0/1 -> (B, 3, 1, 1) mean point over each sample's mask."""
    return (x * mask[:, None]).sum((2, 3), keepdim=True) / mask[:, None].sum((2, 3), keepdim=True).clamp(min=1)


def _reflect_normals(q: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) points -> unit normals (B, 3, H, W) of the cross product of the differences to the right and
    lower neighbours at every pixel (reflected at the last row and column), 0 where that product vanishes or off
    the mask; and where it does not vanish, on the mask (B, H, W)."""
    padded = F.pad(q, (1, 1, 1, 1), mode="reflect")[:, :, 1:, 1:]
    a = padded[:, :, :-1, 1:] - q  # right neighbour - centre
    b = padded[:, :, 1:, :-1] - q  # lower neighbour - centre
    c = torch.linalg.cross(a, b, dim=1)
    length = c.norm(dim=1, keepdim=True)
    valid = (length[:, 0] > 1e-10) & mask
    return c / length.clamp(min=1e-10) * valid[:, None], valid


def pointmap_loss_terms(pred: torch.Tensor, pred_scale: torch.Tensor, points: torch.Tensor, mask: torch.Tensor,
                        K: torch.Tensor) -> dict[str, torch.Tensor]:
    """pred (B, 3, h, w) canonical, pred_scale (B, 1); points (B, H, W, 3) metric GT, mask (B, H, W), K (B, 3, 3)
    -> {term: scalar} (unweighted; pixel terms pooled over the batch's counting samples, per-sample ones averaged
    over them). Float32 math even under autocast, which would round the pixel rays' matmul to bf16 (pixel
    coordinates above 256 included)."""
    return _loss_terms(pred, pred_scale, points, mask, K)[0]


def _loss_terms(pred: torch.Tensor, pred_scale: torch.Tensor, points: torch.Tensor, mask: torch.Tensor,
                K: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``pointmap_loss_terms``, and which samples counted (B,) bool."""
    with torch.autocast(pred.device.type, enabled=False):  # (see pointmap_loss_terms)
        H, W = points.shape[1:3]
        if pred.shape[-2:] != (H, W):
            pred = F.interpolate(pred.float(), size=(H, W), mode="bilinear", align_corners=False)
        p = pred.float()  # (B, 3, H, W)
        s, gt, mask, counts = canonical_targets(points, mask, K)
        mask = mask & counts[:, None, None]
        mk = mask.float()
        m = _masked_mean(gt[:, 2], mk).clamp(min=1e-6)[:, None, None, None]  # (B, 1, 1, 1) canonical mean depth
        a, ag = p / m, gt / m

        terms = {"l1": _pooled((a - ag).abs().sum(1), mk).clamp(max=CLAMP)}
        up = F.interpolate(mk[:, None], scale_factor=2, mode="nearest")[:, 0]
        a2, ag2 = (F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False) for x in (a, ag))
        terms["multiscale_l1"] = _pooled((a2 - ag2).abs().sum(1), up).clamp(max=CLAMP)
        d = torch.log(gt[:, 2].clamp(min=1e-4)) - torch.log(p[:, 2].clamp(min=1e-4))
        mean_d, mean_d2 = _masked_mean(d, mk), _masked_mean(d * d, mk)
        silog = (mean_d2 - 0.5 * mean_d * mean_d).clamp(min=1e-12).sqrt()  # (B,)
        terms["silog"] = (silog * counts).sum() / counts.sum().clamp(min=1)
        r = pixel_rays(K.float(), (H, W)).permute(0, 3, 1, 2)  # (B, 3, H, W)
        ic = (p[:, 0] - r[:, 0] * p[:, 2]).abs() + (p[:, 1] - r[:, 1] * p[:, 2]).abs()
        terms["intrinsics"] = _pooled(ic, mk)
        c_a, c_g = _centroid(a, mk), _centroid(ag, mk)  # (B, 3, 1, 1)
        terms["shift_invariant"] = _pooled(((a - c_a) - (ag - c_g)).abs().sum(1), mk).clamp(max=CLAMP)
        inv_s = (1 / s)[:, None, None, None]
        n_pred, _ = _reflect_normals(p * inv_s, mask)
        # the GT's in float64: where both neighbours are off the mask (0) a = b, and a float32 cross product (with
        # fused multiply-adds) leaves rounding noise above the threshold, a normal pointing anywhere; float64 products
        # of float32 values are exact, so it is 0 there
        n_gt, valid = _reflect_normals((gt * inv_s).double(), mask)
        n_gt = n_gt.float()
        cos = (n_pred * n_gt).sum(1).clamp(-1, 1)
        terms["normal"] = _pooled((1 - cos) + (n_pred - n_gt).abs().mean(1), valid.float())
        terms["scale"] = ((pred_scale.float().reshape(-1) - s).abs() * counts).sum() / counts.sum().clamp(min=1)
        return terms, counts


def pointmap_loss(pred: torch.Tensor, pred_scale: torch.Tensor, points: torch.Tensor, mask: torch.Tensor,
                  K: torch.Tensor) -> torch.Tensor:
    return _weighted(pointmap_loss_terms(pred, pred_scale, points, mask, K))


def _weighted(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(WEIGHTS[k] * v for k, v in terms.items())


@dataclass
class PointmapCriterion:
    """The loss, and a count of the samples it left out by the official rule (``take_counts``: a training loop
    reports them, since a dataset whose every sample breaks the rule trains on a loss of 0)."""

    def __post_init__(self) -> None:
        self._seen, self._left_out = 0, None  # (left out: a device tensor, read when taken, not at every step)

    def __call__(self, output: tuple[torch.Tensor, torch.Tensor], batch: dict) -> torch.Tensor:
        pred, pred_scale = output
        terms, counts = _loss_terms(pred, pred_scale, batch["points"], batch["mask"], batch["intrinsics"])
        left_out = (~counts).sum()
        self._seen += len(counts)
        self._left_out = left_out if self._left_out is None else self._left_out + left_out
        return _weighted(terms)

    def take_counts(self) -> tuple[int, int]:
        """(samples seen, samples left out) since the last call."""
        counts = (self._seen, 0 if self._left_out is None else int(self._left_out))
        self._seen, self._left_out = 0, None
        return counts


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
