"""Relative depth: the official per-image foreground min-max target and the scale-invariant log (SiLog) loss.

Target (official ``GenerateDepthTarget``): on the foreground, (d - min) / (max - min) per image, so 0 = nearest
foreground pixel and 1 = farthest; background = -1. SiLog (official, eps 1e-6): valid = target > eps (drops the
background and the nearest pixel itself), g = log(target) - log(clamp(pred, eps)) and per image
sqrt(mean(g^2) - 0.5 * mean(g)^2), averaged over the images that have a valid pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

BACKGROUND = -1.0


def relative_depth_target(depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """depth (B, H, W) metres (0 / non-finite = none), mask (B, H, W) foreground -> (B, H, W) in [0, 1] or -1."""
    fg = mask.bool() & torch.isfinite(depth) & (depth > 0)
    d = depth.float()
    lo = torch.where(fg, d, torch.full_like(d, float("inf"))).amin(dim=(1, 2), keepdim=True)
    hi = torch.where(fg, d, torch.full_like(d, float("-inf"))).amax(dim=(1, 2), keepdim=True)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))  # a flat foreground maps to 0 (then invalid)
    return torch.where(fg, (d - lo) / span, torch.full_like(d, BACKGROUND))


def silog_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """pred (B, 1, H, W) or (B, H, W); target (B, H, W) from ``relative_depth_target`` -> scalar."""
    pred = pred.float().reshape(target.shape)
    valid = target > eps  # NaN compares False
    g = torch.log(target.clamp(min=eps)) - torch.log(pred.clamp(min=eps))
    g = torch.where(valid, g, torch.zeros_like(g)).flatten(1)  # (B, HW)
    n = valid.flatten(1).sum(1)  # (B,)
    has = n > 0
    mean = g.sum(1) / n.clamp(min=1)
    mean_sq = (g * g).sum(1) / n.clamp(min=1)
    var = (mean_sq - 0.5 * mean * mean).clamp(min=1e-12)  # >= 0 in exact arithmetic; keeps sqrt' finite
    per_image = torch.sqrt(var)
    if not has.any():
        return pred.sum() * 0.0  # nothing to learn from; keeps the graph (and DDP) intact
    return per_image[has].mean()


@dataclass
class DepthCriterion:
    eps: float = 1e-6

    def __call__(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        target = relative_depth_target(batch["depth"], batch["mask"])
        if output.shape[-2:] != target.shape[-2:]:
            output = F.interpolate(output.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        return silog_loss(output, target, self.eps)


class DepthEvaluator:
    """Per-image ``depth_metrics`` (after per-image scale-and-shift alignment) averaged over images."""

    def __init__(self, align: str = "lstsq"):
        self.align = align
        self.per_image: list[dict] = []

    def update(self, output: torch.Tensor, batch: dict) -> None:
        from ..evaluation import depth_metrics

        gt = batch["depth"]
        pred = F.interpolate(output.float(), size=gt.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        for p, g, m in zip(pred.cpu().numpy(), gt.cpu().numpy(), batch["mask"].cpu().numpy()):
            self.per_image.append(depth_metrics(p, g, m, align=self.align))

    def state(self) -> list[dict]:
        return self.per_image

    def merge(self, other: list[dict]) -> None:
        self.per_image.extend(other)

    def compute(self) -> dict:
        keys = ("rmse", "absrel", "delta1", "delta2", "delta3", "rmse_norm")
        out = {}
        for k in keys:
            vals = [m[k] for m in self.per_image if k in m and not np.isnan(m[k])]
            out[k] = float(np.mean(vals)) if vals else float("nan")
        out["num_images"] = len(self.per_image)
        return out
