"""Reconstruction panels: for each image, original | masked input | prediction | prediction pasted into the visible
patches, as an RGB uint8 grid."""

from __future__ import annotations

import numpy as np
import torch

from ..data.shards import MEAN, STD


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Normalized (B, 3, H, W) -> (B, H, W, 3) uint8 RGB."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() * std + mean).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def reconstruction_grid(images: torch.Tensor, masked: torch.Tensor, pred: torch.Tensor, pasted: torch.Tensor,
                        gap: int = 4) -> np.ndarray:
    """(rows * H + gaps, 4 * W + gaps, 3) uint8: one row per image, white gaps between panels."""
    panels = [to_uint8(t) for t in (images, masked, pred, pasted)]
    B, H, W, _ = panels[0].shape
    grid = np.full((B * H + (B - 1) * gap, 4 * W + 3 * gap, 3), 255, np.uint8)
    for r in range(B):
        for c, p in enumerate(panels):
            grid[r * (H + gap):r * (H + gap) + H, c * (W + gap):c * (W + gap) + W] = p[r]
    return grid
