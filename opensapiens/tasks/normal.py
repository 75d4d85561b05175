"""Surface normals: the official cosine + L1 loss on the foreground, and an angular-error evaluator.

Official (``CosineSimilarityLoss`` + ``L1Loss``, both weight 1): the (B, 3, H/2, W/2) output is up-sampled
bilinearly to the target size; over foreground pixels,
    cosine = sum(1 - <pred/|pred|, gt/|gt|>) / n        L1 = sum over pixels and channels |pred - gt| / n
with n the number of foreground pixels in the batch. The L1 term on the raw output pulls |pred| toward 1.
Sapiens2 (full-resolution output): 10 cosine + 1 L1 + 10 grad, grad the squared error of the forward differences
along x and along y (channels summed), each over the pixel pairs wholly in the foreground.
Normals are camera-space unit vectors (X right, Y up, Z toward the camera).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

WEIGHTS = {1: {"cosine": 1.0, "l1": 1.0}, 2: {"cosine": 10.0, "l1": 1.0, "grad": 10.0}}  # by model generation


def normal_loss_terms(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      grad: bool = True) -> dict[str, torch.Tensor]:
    """pred (B, 3, h, w) raw; target (B, 3, H, W) unit normals; mask (B, H, W) foreground -> {term: scalar}, each
    pooled over the batch's foreground pixels (``grad``: also the squared error of the forward differences)."""
    if pred.shape[-2:] != target.shape[-2:]:
        pred = F.interpolate(pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    pred, target = pred.float(), target.float()
    valid = mask.bool() & torch.isfinite(target).all(dim=1)  # (B, H, W)
    target = torch.where(valid[:, None], target, 0.0)  # (an inf read as the largest float would square to inf)
    valid = valid.float()
    n = valid.sum().clamp(min=1)
    cos = (F.normalize(pred, dim=1, eps=1e-6) * F.normalize(target, dim=1, eps=1e-6)).sum(dim=1)  # (B, H, W)
    terms = {"cosine": ((1 - cos) * valid).sum() / n, "l1": ((pred - target).abs().sum(dim=1) * valid).sum() / n}
    if grad:
        e = pred - target  # the differences of pred and of target compared = the differences of the error
        dx, dy = e[..., 1:] - e[..., :-1], e[..., 1:, :] - e[..., :-1, :]
        vx, vy = valid[..., 1:] * valid[..., :-1], valid[..., 1:, :] * valid[..., :-1, :]
        terms["grad"] = ((dx ** 2).sum(1) * vx).sum() / vx.sum().clamp(min=1) + \
            ((dy ** 2).sum(1) * vy).sum() / vy.sum().clamp(min=1)
    return terms


def normal_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, generation: int = 1) -> torch.Tensor:
    """The official loss of a Sapiens (1) or Sapiens2 (2) normal model -> scalar."""
    weights = WEIGHTS[generation]
    terms = normal_loss_terms(pred, target, mask, grad="grad" in weights)
    return sum(weights[k] * v for k, v in terms.items())


@dataclass
class NormalCriterion:
    generation: int = 1  # 2: Sapiens2's weights and its gradient term

    def __call__(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        return normal_loss(output, batch["normals"], batch["mask"], self.generation)


class NormalEvaluator:
    """Angular error (mean, median, % within 11.25/22.5/30 degrees) over all foreground pixels of the set."""

    _SUMMED = ("hist", "sum", "within", "num_pixels", "num_images", "nonfinite_pred", "zero_pred")

    def __init__(self):
        from ..evaluation.normals import NormalAccumulator

        self.acc = NormalAccumulator()

    def update(self, output: torch.Tensor, batch: dict) -> None:
        gt = batch["normals"]  # (B, 3, H, W)
        pred = F.interpolate(output.float(), size=gt.shape[-2:], mode="bilinear", align_corners=False)
        pred = F.normalize(pred, dim=1, eps=1e-5)
        for p, g, m in zip(pred.permute(0, 2, 3, 1).cpu().numpy(), gt.permute(0, 2, 3, 1).cpu().numpy(),
                           batch["mask"].cpu().numpy()):
            self.acc.update(p, g, m)

    def state(self):
        return self.acc

    def merge(self, other) -> None:
        for k in self._SUMMED:  # the accumulator only holds sums and counts
            setattr(self.acc, k, getattr(self.acc, k) + getattr(other, k))

    def compute(self) -> dict:
        out = self.acc.compute()
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in out.items()}
