"""Body-part segmentation: the official class-weighted cross-entropy (Sapiens2: plus a Dice term) and an mIoU
evaluator.

Official loss (mmseg ``CrossEntropyLoss(reduction='none', class_weight=...)`` then ``.mean()``): logits are
up-sampled bilinearly (align_corners=False) to the label resolution, each pixel contributes w[y] * -log p_y (0 for
ignored pixels) and the sum is divided by the number of ALL pixels, ignored ones included, not by sum(w).

``resolution="logits"`` instead nearest-samples the labels down to the logits grid (H/2 x W/2 for Sapiens): 4x
fewer pixels and no (B, N, H, W) float32 up-sampled logits; not numerically the official loss, and a cheaper one
when memory is what limits the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

RESOLUTIONS = ("labels", "logits")


def _same_grid(logits: torch.Tensor, labels: torch.Tensor, resolution: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits bilinearly up to the labels ("labels") or labels nearest down to the logits ("logits")."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown loss resolution {resolution!r}; expected one of {RESOLUTIONS}")
    labels = labels.long()
    if logits.shape[-2:] == labels.shape[-2:]:
        return logits, labels
    if resolution == "labels":
        return F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False), labels
    return logits, F.interpolate(labels[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()


def seg_ce_loss(logits: torch.Tensor, labels: torch.Tensor, class_weight: torch.Tensor | None = None,
                ignore_index: int = 255, resolution: str = "labels") -> torch.Tensor:
    """logits (B, N, h, w); labels (B, H, W) integer class ids (``ignore_index`` = unlabelled) -> scalar."""
    logits, labels = _same_grid(logits, labels, resolution)
    weight = None if class_weight is None else class_weight.to(logits.device, torch.float32)
    per_pixel = F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=ignore_index, reduction="none")
    return per_pixel.mean()  # (B, H, W) -> scalar; ignored pixels count in the denominator


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, eps: float = 1e-3,
              resolution: str = "labels") -> torch.Tensor:
    """Sapiens2's Dice term: per sample, the mean over the foreground classes present in its labels of
    (2 sum p t + eps) / (sum p^2 + sum t^2 + eps) (p softmax, t one-hot, both 0 at ignored pixels); 1 - that,
    averaged over the batch (a sample with no foreground label adds 0)."""
    logits, labels = _same_grid(logits, labels, resolution)
    B, C = logits.shape[:2]
    valid = (labels != ignore_index).flatten(1)  # (B, HW)
    label = torch.where(valid, labels.flatten(1), 0).clamp(max=C - 1)
    p = logits.float().softmax(1).flatten(2) * valid[:, None]  # (B, C, HW)
    # sums over pixels without a one-hot map: p at each pixel's label, and the label counts, added per class
    inter = p.new_zeros(B, C).scatter_add_(1, label, p.gather(1, label[:, None])[:, 0])
    count = p.new_zeros(B, C).scatter_add_(1, label, valid.float())  # sum t^2 = sum t
    dice = (2 * inter + eps) / ((p * p).sum(2) + count + eps)  # (B, C)
    dice, present = dice[:, 1:], (count[:, 1:] > 0).float()  # background left out
    per_sample = (dice * present).sum(1) / present.sum(1).clamp(min=1)
    return ((1 - per_sample) * (present.sum(1) > 0)).mean()


@dataclass
class SegCriterion:
    class_weight: torch.Tensor | None = None  # (N,) official Goliath weights, or None for plain CE
    ignore_index: int = 255
    resolution: str = "labels"  # "labels" (official) or "logits"
    dice: bool = False  # Sapiens2 adds a Dice term (weight 1) to the cross-entropy

    def __call__(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        logits, labels = _same_grid(output, batch["labels"], self.resolution)  # once for both terms
        loss = seg_ce_loss(logits, labels, self.class_weight, self.ignore_index)
        return loss + dice_loss(logits, labels, self.ignore_index) if self.dice else loss


class SegEvaluator:
    """Arg-max of the logits up-sampled to the label size, streamed into a confusion matrix (mIoU, mAcc, aAcc)."""

    def __init__(self, num_classes: int, class_names=None, ignore_index: int = 255):
        from ..evaluation import SegConfusion

        self.confusion = SegConfusion(num_classes, ignore_index, class_names)

    def update(self, output: torch.Tensor, batch: dict) -> None:
        labels = batch["labels"]
        logits = F.interpolate(output.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        self.confusion.update(logits.argmax(1).cpu().numpy(), labels.cpu().numpy())

    def state(self):
        return self.confusion

    def merge(self, other) -> None:
        self.confusion.merge(other)

    def compute(self) -> dict:
        return self.confusion.compute()
