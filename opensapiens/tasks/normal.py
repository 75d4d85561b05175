"""Surface normals: the official cosine + L1 loss on the foreground, and an angular-error evaluator.

Official (``CosineSimilarityLoss`` + ``L1Loss``, both weight 1): the (B, 3, H/2, W/2) output is up-sampled
bilinearly to the target size; over foreground pixels,
    cosine = sum(1 - <pred/|pred|, gt/|gt|>) / n        L1 = sum over pixels and channels |pred - gt| / n
with n the number of foreground pixels in the batch. The L1 term on the raw output pulls |pred| toward 1.
Normals are camera-space unit vectors (X right, Y up, Z toward the camera).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def normal_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pred (B, 3, h, w) raw; target (B, 3, H, W) unit normals; mask (B, H, W) foreground -> scalar."""
    if pred.shape[-2:] != target.shape[-2:]:
        pred = F.interpolate(pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    pred, target = pred.float(), target.float()
    valid = (mask.bool() & torch.isfinite(target).all(dim=1)).float()  # (B, H, W)
    target = torch.nan_to_num(target)
    n = valid.sum().clamp(min=1)
    cos = (F.normalize(pred, dim=1, eps=1e-6) * F.normalize(target, dim=1, eps=1e-6)).sum(dim=1)  # (B, H, W)
    cosine = ((1 - cos) * valid).sum() / n
    l1 = ((pred - target).abs().sum(dim=1) * valid).sum() / n
    return cosine + l1


@dataclass
class NormalCriterion:
    def __call__(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        return normal_loss(output, batch["normals"], batch["mask"])


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
