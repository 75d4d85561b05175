"""Body-part segmentation: the official class-weighted cross-entropy and an mIoU evaluator.

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


def seg_ce_loss(logits: torch.Tensor, labels: torch.Tensor, class_weight: torch.Tensor | None = None,
                ignore_index: int = 255, resolution: str = "labels") -> torch.Tensor:
    """logits (B, N, h, w); labels (B, H, W) integer class ids (``ignore_index`` = unlabelled) -> scalar."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown loss resolution {resolution!r}; expected one of {RESOLUTIONS}")
    labels = labels.long()
    if resolution == "labels" and logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    elif resolution == "logits" and logits.shape[-2:] != labels.shape[-2:]:
        labels = F.interpolate(labels[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
    weight = None if class_weight is None else class_weight.to(logits.device, torch.float32)
    per_pixel = F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=ignore_index, reduction="none")
    return per_pixel.mean()  # (B, H, W) -> scalar; ignored pixels count in the denominator


@dataclass
class SegCriterion:
    class_weight: torch.Tensor | None = None  # (N,) official Goliath weights, or None for plain CE
    ignore_index: int = 255
    resolution: str = "labels"  # "labels" (official) or "logits"

    def __call__(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        return seg_ce_loss(output, batch["labels"], self.class_weight, self.ignore_index, self.resolution)


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
