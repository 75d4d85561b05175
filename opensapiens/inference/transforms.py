"""Whole-image pre-processing to the model input contract, and mapping dense outputs back to each original image.

Model input: (B, 3, H, W) float32 RGB, normalized with ``MEAN``/``STD`` (0-255 scale), default H x W = 1024 x 768.

``resize="stretch"`` is the official protocol: bilinear resize to H x W ignoring the aspect ratio. ``"pad"``
letterboxes: the image is resized to fit H x W with its aspect ratio kept, and the bottom/right remainder is filled
with the mean colour (0 after normalization). Padding only at the bottom/right keeps the image origin fixed, so
input and original pixel coordinates differ by a scale only. ``"center"`` is Sapiens2's protocol for normals and
pointmaps: the aspect kept, the image centred (to an even pixel offset), the rest black (pixel value 0 before
normalization).

Resampling is bilinear with ``align_corners=False`` (pixel centres at integer coordinates, edges clamped), the
convention of ``cv2.resize(INTER_LINEAR)`` and ``F.interpolate``; no anti-aliasing by default, like the official
``cv2.resize``. It runs in float32 torch on the target device (uint8 pixels are uploaded, then converted), so CPU
and GPU give the same numbers up to float rounding. Unlike the official pipeline, the resized image is not rounded
back to uint8 before normalization (a difference of at most half a grey level). ``interpolation="area-cubic"`` is
Sapiens2's seg resize instead: OpenCV's own for arrays bound for the CPU (``cv2_area_cubic``), its restatement in
torch on other devices (``resize_area_cubic``, within a grey level of it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

MEAN = (123.675, 116.28, 103.53)  # RGB, training configs of every Sapiens task
STD = (58.395, 57.12, 57.375)
LITE_MEAN = (123.5, 116.5, 103.5)  # rounded values of the official "lite" demos; for reproducing them only
LITE_STD = (58.5, 57.0, 57.5)

RESIZE_MODES = ("stretch", "pad", "center")
INTERPOLATIONS = ("bilinear", "area-cubic")


@dataclass(frozen=True)
class ResizeMeta:
    """How one image was placed into the model input."""

    original_size: tuple[int, int]  # (H0, W0)
    input_size: tuple[int, int]  # (H, W) of the model input
    scale: tuple[float, float]  # (sy, sx): resized image size / original size
    pad: tuple[int, int, int, int]  # (top, left, bottom, right) input pixels of fill
    mode: str  # "stretch" | "pad"

    @property
    def content_size(self) -> tuple[int, int]:
        """(h, w) of the resized image inside the input."""
        top, left, bottom, right = self.pad
        return self.input_size[0] - top - bottom, self.input_size[1] - left - right

    def to_original(self, points: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Map (..., 2) xy points from model-input pixels to original-image pixels (pixel centres at integers)."""
        offset, scale = self._xy()
        if isinstance(points, torch.Tensor):
            offset, scale = points.new_tensor(offset), points.new_tensor(scale)
        return (points - offset + 0.5) / scale - 0.5

    def to_input(self, points: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Map (..., 2) xy points from original-image pixels to model-input pixels."""
        offset, scale = self._xy()
        if isinstance(points, torch.Tensor):
            offset, scale = points.new_tensor(offset), points.new_tensor(scale)
        return (points + 0.5) * scale - 0.5 + offset

    def _xy(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([self.pad[1], self.pad[0]], float), np.array([self.scale[1], self.scale[0]], float)


def placement(original: tuple[int, int], input_size: tuple[int, int], mode: str) -> ResizeMeta:
    (h0, w0), (h, w) = original, input_size
    if mode == "stretch":
        ch, cw = h, w
    else:
        s = min(h / h0, w / w0)
        ch = min(h, max(1, math.floor(h0 * s + 0.5)))
        cw = min(w, max(1, math.floor(w0 * s + 0.5)))
    # centred to the even pixel, so that half-resolution heads (v1 seg, normal) map back exactly; the official
    # Sapiens2 code centres to the pixel, at most one pixel from this
    top, left = ((h - ch) // 4 * 2, (w - cw) // 4 * 2) if mode == "center" else (0, 0)
    return ResizeMeta((h0, w0), (h, w), (ch / h0, cw / w0), (top, left, h - ch - top, w - cw - left), mode)


class Preprocessor:
    """RGB uint8 images -> normalized model batch plus the ``ResizeMeta`` needed to map outputs back."""

    def __init__(self, input_size: tuple[int, int] = (1024, 768), resize: str = "stretch",
                 mean: Sequence[float] = MEAN, std: Sequence[float] = STD, antialias: bool = False,
                 interpolation: str = "bilinear"):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.interpolation = interpolation
        if len(input_size) != 2 or min(input_size) < 1:
            raise ValueError(f"input_size must be (H, W) with positive sides, got {input_size}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.resize = resize
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.antialias = antialias  # anti-aliased downscaling (not the official protocol)

    def __call__(self, images: Sequence[np.ndarray | torch.Tensor], device: str | torch.device = "cpu"
                 ) -> tuple[torch.Tensor, list[ResizeMeta]]:
        """Images are (H, W, 3) uint8 RGB arrays (or tensors, on any device), sizes may differ.

        Returns the (B, 3, H, W) float32 batch on ``device`` and one ``ResizeMeta`` per image.
        """
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 3:
            images = [images]
        shapes = [check_image(i, img) for i, img in enumerate(images)]
        if not shapes:
            raise ValueError("no images to preprocess")
        device = torch.device(device)
        h, w = self.input_size
        metas = [placement(s, self.input_size, self.resize) for s in shapes]
        batch = torch.zeros(len(images), 3, h, w, dtype=torch.float32, device=device)  # 0 = mean colour
        mean, std = normalization_tensors(self.mean, self.std, device)
        if self.resize == "center":
            batch[:] = -mean / std  # black

        if len(set(shapes)) == 1:  # e.g. video frames: one upload and one resize for the whole batch
            groups = [(list(range(len(images))), metas[0])]
        else:
            groups = [([i], m) for i, m in enumerate(metas)]
        for ids, meta in groups:
            (ch, cw), (top, left) = meta.content_size, meta.pad[:2]
            on_host = device.type == "cpu" and all(isinstance(images[i], np.ndarray) for i in ids)
            if self.interpolation == "area-cubic" and on_host:  # OpenCV itself: the official pixels, and fast
                x = _upload([cv2_area_cubic(images[i], (ch, cw)) for i in ids], device)
            else:
                x = _upload([images[i] for i in ids], device)  # (b, 3, H0, W0) float32, 0-255
                if (ch, cw) != meta.original_size and self.interpolation == "area-cubic":
                    x = resize_area_cubic(x, (ch, cw))
                elif (ch, cw) != meta.original_size:
                    x = F.interpolate(x, size=(ch, cw), mode="bilinear", align_corners=False,
                                      antialias=self.antialias)
            batch[ids, :, top : top + ch, left : left + cw] = (x - mean) / std
        return batch, metas

    def restore(self, outputs: torch.Tensor, metas: Sequence[ResizeMeta], mode: str = "bilinear"
                ) -> list[torch.Tensor]:
        """See ``restore``."""
        return restore(outputs, metas, mode)


def cv2_area_cubic(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Sapiens2's seg resize of a uint8 (H, W, 3) image (its ``SegResize``): ``cv2.resize`` with INTER_AREA when the
    width shrinks, else INTER_CUBIC."""
    h, w = hw
    if img.shape[:2] == (h, w):
        return img
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if w < img.shape[1] else cv2.INTER_CUBIC)


def resize_area_cubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(b, C, H0, W0) float (0-255) -> (b, C, h, w) as ``cv2_area_cubic`` on the device (within a grey level of it:
    no uint8 rounding here). OpenCV's area interpolation averages the source pixels under each output pixel,
    weighted by overlap, when both sides shrink; when one side grows it is a two-tap interpolation with
    area-derived weights on both."""
    (H0, W0), (h, w) = x.shape[-2:], size
    if w >= W0:
        return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 255)  # (cv2 saturates)
    if h <= H0:
        return _area_mean(_area_mean(x, -1, w), -2, h)
    (ix, wx), (iy, wy) = _area_linear_weights(W0, w, x.device), _area_linear_weights(H0, h, x.device)
    return _along(_along(x, -1, ix, wx), -2, iy, wy)


def _area_mean(x: torch.Tensor, dim: int, n_out: int) -> torch.Tensor:
    """``x`` along ``dim`` (n_in >= n_out samples) to n_out box means: output pixel i is the mean of the source over
    [i s, (i + 1) s), s = n_in / n_out, fractional pixels counted by their overlap; taken as differences of the
    running sum at those edges (memory and work O(n_in), whatever s)."""
    x = x.movedim(dim, -1)
    first, frac = _area_edges(x.shape[-1], n_out, x.device)
    total = F.pad(x.cumsum(-1), (1, 0))  # total[j]: the sum of the first j source pixels
    at_edges = total[..., first] + frac * F.pad(x, (0, 1))[..., first]  # (..., n_out + 1)
    return ((at_edges[..., 1:] - at_edges[..., :-1]) * (n_out / x.shape[-1])).movedim(-1, dim)


def _along(x: torch.Tensor, dim: int, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` along ``dim``: output i = sum_k weight[i, k] x[index[i, k]]."""
    x = x.movedim(dim, -1)
    return (x[..., index] * weight.to(x.dtype)).sum(-1).movedim(-1, dim)


@functools.cache
def _area_edges(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The n_out + 1 box edges i n_in / n_out as (whole source pixels before them, fraction of the next)."""
    edges = torch.arange(n_out + 1, dtype=torch.float64) * (n_in / n_out)
    first = edges.floor().clamp(max=n_in)
    return first.long().to(device), (edges - first).float().to(device)


@functools.cache
def _area_linear_weights(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_out, 2) indices and weights of OpenCV's INTER_AREA where it does not average (a side grows): output pixel
    i reads source pixels floor(i s) and the next, the second weighted by the fractional part of
    (i + 1) - (floor(i s) + 1) / s where that is positive (else 0)."""
    s = n_in / n_out
    i = torch.arange(n_out, dtype=torch.float64)
    first = torch.floor(i * s)
    f = (i + 1) - (first + 1) / s
    f = torch.where(f <= 0, 0.0, f - torch.floor(f))
    index = torch.stack([first, first + 1], 1).long().clamp(0, n_in - 1)
    return index.to(device), torch.stack([1 - f, f], 1).float().to(device)


def check_image(i: int, img: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """(H, W) of image ``i`` when it is an (H, W, 3) uint8 array or tensor (on any device); else a clear error."""
    shape, dtype = tuple(getattr(img, "shape", ())), getattr(img, "dtype", type(img).__name__)
    if len(shape) != 3 or shape[2] != 3 or str(dtype) not in ("uint8", "torch.uint8") or 0 in shape:
        raise ValueError(f"image {i}: expected an RGB uint8 array of shape (H, W, 3), got shape {shape} dtype "
                         f"{dtype}; read files with opensapiens.io.read_image")
    return shape[0], shape[1]


@functools.cache
def normalization_tensors(mean: tuple[float, ...], std: tuple[float, ...],
                          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 3, 1, 1) normalization constants, uploaded once per device (each upload would stall the host)."""
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1))


def _upload(images: list[np.ndarray | torch.Tensor], device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) images -> (b, 3, H, W) float32 on ``device``; the transfer is done in uint8 (4x smaller)."""
    if all(isinstance(img, np.ndarray) for img in images):
        x = torch.from_numpy(np.stack(images))
    else:
        x = torch.stack([(torch.from_numpy(np.ascontiguousarray(img)) if isinstance(img, np.ndarray) else img
                          ).to(device) for img in images])
    return x.to(device).permute(0, 3, 1, 2).float()


def _span(start: float, length: float, size: int, what: str) -> tuple[int, int]:
    """First and last output pixels whose centres lie in the content span [start, start + length) (edge coords)."""
    if abs(start - round(start)) > 1e-6:
        raise ValueError(f"content must start on an output pixel boundary, got {what} offset {start}")
    lo = min(int(round(start)), size - 1)
    hi = max(min(math.ceil(start + length - 0.5 - 1e-9) - 1, size - 1), lo)
    return lo, hi


def restore(outputs: torch.Tensor, metas: Sequence[ResizeMeta], mode: str = "bilinear") -> list[torch.Tensor]:
    """Map dense outputs (B, C, h, w) of any stride (h/H = w/W = 1, 1/2, 1/4, ...) back to each original image.

    Output pixel (i, j) of an original image samples the output map at the point its centre maps to, as one
    ``F.interpolate(align_corners=False)`` from the content region to (H0, W0) would. When the stride does not
    divide the content size, the content ends inside an output pixel: samples are clamped to the last output pixel
    whose centre is in the content, so the fill never leaks in. ``mode`` is "bilinear" or "nearest" (nearest-exact,
    for label maps). Returns one (C, H0, W0) tensor per image, on the outputs' device and in their dtype.
    """
    if outputs.ndim != 4 or outputs.shape[0] != len(metas):
        raise ValueError(f"expected outputs (B, C, h, w) with B = {len(metas)} metas, got {tuple(outputs.shape)}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    kwargs = {"mode": "bilinear", "align_corners": False} if mode == "bilinear" else {"mode": "nearest-exact"}
    h, w = outputs.shape[-2:]
    restored = []
    for i, meta in enumerate(metas):
        (H, W), (h0, w0) = meta.input_size, meta.original_size
        (ch, cw), (top, left) = meta.content_size, meta.pad[:2]
        ry, rx = h / H, w / W  # output pixels per input pixel
        (y0, y1), (x0, x1) = _span(top * ry, ch * ry, h, "top"), _span(left * rx, cw * rx, w, "left")
        out = outputs[i : i + 1]
        if (y0, y1 + 1, x0, x1 + 1) == (0, h, 0, w) and (ch * ry, cw * rx) == (h, w):  # no fill: plain resize
            restored.append(F.interpolate(out, size=(h0, w0), **kwargs)[0])
            continue
        # The content ends inside an output pixel: sample it explicitly, one axis at a time (F.interpolate with a
        # scale_factor copies an axis whose length it would keep, whatever the scale: up to half a pixel off).
        rows = _resample(out[0], 1, h0, ch * ry, y0, y1, mode)  # (C, h0, w)
        restored.append(_resample(rows, 2, w0, cw * rx, x0, x1, mode))  # (C, h0, w0)
    return restored


def _resample(x: torch.Tensor, dim: int, n: int, length: float, first: int, last: int, mode: str) -> torch.Tensor:
    """``n`` samples along ``dim`` of the content that starts at pixel ``first`` and is ``length`` pixels long:
    sample i sits at content coordinate (i + 0.5) * length / n - 0.5 (``align_corners=False``; nearest-exact rounds
    it), reads clamped to pixels ``first..last``."""
    centre = (torch.arange(n, device=x.device, dtype=torch.float64) + 0.5) * (length / n)
    if mode == "nearest":
        return x.index_select(dim, (centre.floor().long() + first).clamp_(max=last))
    at = (centre - 0.5).clamp_(min=0) + first
    below = at.floor()
    weight = (at - below).to(x.dtype).view([-1] + [1] * (x.ndim - 1 - dim))
    below = below.long()
    return torch.lerp(x.index_select(dim, below.clamp(max=last)), x.index_select(dim, (below + 1).clamp_(max=last)),
                      weight)
