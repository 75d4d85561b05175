"""Small helpers shared by the metric modules and the training datasets: array and mask conversion, and the label-map
reader (one for both, so that training and evaluation see the same class ids)."""

from __future__ import annotations

import os
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


def as_hw3(x: Any, name: str, kind: str) -> np.ndarray:
    """A float64 (H, W, 3) array of an array-like or tensor; a ValueError naming ``name`` and ``kind`` (normal map,
    point map) for another shape."""
    a = as_numpy(x)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"{name} must be an (H, W, 3) {kind}, got shape {a.shape}")
    return a.astype(np.float64, copy=False)


def as_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """A boolean foreground mask of ``shape`` (nonzero = foreground); a trailing channel axis is reduced with any()."""
    m = as_numpy(mask)
    if m.ndim == len(shape) + 1 and m.shape[:-1] == shape:
        m = (m != 0).any(-1)
    if m.shape != shape:
        raise ValueError(f"{name} has shape {m.shape}, expected {shape}")
    return m != 0 if m.dtype != np.bool_ else m


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """(H, W) integer class ids of a label PNG.

    Read with Pillow so that a palette (P) PNG gives its indices (OpenCV would give the palette's BGR colours).
    Single-channel PNGs (L, P, 1, I;16, I) are taken as they are; RGB(A) only when the colour channels are equal
    (ids saved as grey pixels), since colour-coded labels have no class ids to read.
    """
    from PIL import Image

    with Image.open(path) as im:
        mode, a = im.mode, np.asarray(im)
    if mode in ("RGB", "RGBA"):
        if not (a[..., 1:3] == a[..., :1]).all():
            raise ValueError(f"{path}: a colour label PNG (mode {mode}); save class ids as a single-channel or "
                             "palette PNG")
        a = a[..., 0]
    elif mode == "LA":
        a = a[..., 0]
    elif mode not in ("L", "P", "1", "I", "I;16"):
        raise ValueError(f"{path}: expected a single-channel label PNG, got mode {mode}")
    return a.astype(np.int64 if mode == "I" else np.uint16 if mode == "I;16" else np.uint8)
