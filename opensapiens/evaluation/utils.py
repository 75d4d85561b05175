"""Small helpers shared by the metric modules: array and mask conversion."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view of an array-like or a torch tensor (moved to the CPU; bfloat16 becomes float32)."""
    if hasattr(x, "detach"):  # torch.Tensor, imported lazily so that metrics do not need torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def as_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """A boolean foreground mask of ``shape`` (nonzero = foreground); a trailing channel axis is reduced with any()."""
    m = as_numpy(mask)
    if m.ndim == len(shape) + 1 and m.shape[:-1] == shape:
        m = (m != 0).any(-1)
    if m.shape != shape:
        raise ValueError(f"{name} has shape {m.shape}, expected {shape}")
    return m != 0 if m.dtype != np.bool_ else m

