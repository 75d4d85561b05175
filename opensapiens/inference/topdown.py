"""Top-down pose plumbing: person boxes -> UDP crop matrices -> batched crops -> crop keypoints back to the image.

Conventions (x right, y down, pixel centres at integer coordinates):
    * a box is ``center`` (x, y) and ``scale`` (w, h) in image pixels, padded by 1.25 and enlarged to the crop's
      aspect ratio (0.75 = 768 / 1024), as the official ``GetBBoxCenterScale`` + ``TopdownAffine``;
    * the UDP crop matrix maps the box edges ``center -/+ scale / 2`` onto the first and last crop pixel *centres*
      (0 and W - 1), i.e. ``u = (W - 1) / scale_w * (R (x - center))_x + (W - 1) / 2`` (official
      ``get_udp_warp_matrix``; a positive rotation turns image content clockwise into the crop, as there).
Together with ``opensapiens.codecs.decode_udp_heatmaps`` (crop pixels) and ``crop_to_image`` this reproduces the
official keypoints in image coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a small host tensor to ``device`` without blocking the host.

    A plain ``.to("cuda")`` of pageable memory synchronizes the stream: the host would wait for all queued GPU work
    (the previous batch's model) before queueing more. A pinned copy is asynchronous and ordered on the stream.
    """
    if t.device == device or device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _as_float(x: torch.Tensor | Sequence, name: str, last_dim: int) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not t.is_floating_point():
        t = t.float()
    if t.ndim != 2 or t.shape[-1] != last_dim:
        raise ValueError(f"{name} must have shape (N, {last_dim}), got {tuple(t.shape)}")
    return t


def boxes_to_center_scale(
    boxes_xyxy: torch.Tensor, padding: float = 1.25, aspect: float = 0.75
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 4) x1, y1, x2, y2 boxes -> center (N, 2), scale (N, 2) = padded box (w, h) enlarged to w / h = aspect.

    The box grows along one axis to reach the aspect ratio, never shrinks, so the whole padded box stays in view.
    """
    boxes = _as_float(boxes_xyxy, "boxes_xyxy", 4)
    center = (boxes[:, :2] + boxes[:, 2:]) * 0.5  # (N, 2)
    wh = (boxes[:, 2:] - boxes[:, :2]) * padding  # (N, 2)
    w, h = wh.unbind(dim=1)
    wide = w > h * aspect
    scale = torch.stack([torch.where(wide, w, h * aspect), torch.where(wide, w / aspect, h)], dim=1)
    return center, scale


def udp_affine(
    center: torch.Tensor,
    scale: torch.Tensor,
    output_size: tuple[int, int] = (1024, 768),
    rotation_deg: torch.Tensor | float | None = None,
    inverse: bool = False,
) -> torch.Tensor:
    """UDP affine matrices (N, 2, 3): image -> crop pixels, or crop -> image with ``inverse=True``.

    Args:
        center: (N, 2) box centres (x, y) in image pixels.
        scale: (N, 2) box sizes (w, h) in image pixels.
        output_size: (H, W) of the crop.
        rotation_deg: None, a float or (N,) angles in degrees (official ``bbox_rotation`` sign).
        inverse: return the crop -> image matrices (exact closed-form inverse).
    """
    center = _as_float(center, "center", 2)
    scale = _as_float(scale, "scale", 2).to(center)
    if (bad := int((scale <= 0).any(dim=1).sum())):  # reads the device: inference keeps boxes on the host (free)
        raise ValueError(f"scale must be positive: {bad} of {len(scale)} (w, h) are not (boxes_to_center_scale "
                         "gives that to a box whose width and height are both zero or negative)")
    H, W = output_size
    N = center.shape[0]
    rot = torch.zeros(N, dtype=center.dtype, device=center.device)
    if rotation_deg is not None:
        rot = rot + torch.as_tensor(rotation_deg, dtype=center.dtype, device=center.device)
    cos, sin = torch.cos(rot * (math.pi / 180)), torch.sin(rot * (math.pi / 180))
    s = torch.stack([(W - 1) / scale[:, 0], (H - 1) / scale[:, 1]], dim=1)  # (N, 2) crop px per image px
    half_w, half_h = (W - 1) / 2, (H - 1) / 2  # Python floats: no host -> device copy

    if not inverse:  # u = diag(s) R (x - c) + (out - 1) / 2,  R = [[cos, -sin], [sin, cos]]
        lin = torch.stack([torch.stack([cos, -sin], 1) * s[:, :1], torch.stack([sin, cos], 1) * s[:, 1:]], dim=1)
        lc = (lin @ center[:, :, None])[..., 0]  # (N, 2)
        trans = torch.stack([half_w - lc[:, 0], half_h - lc[:, 1]], dim=1)
    else:  # x = R^T diag(1 / s) (u - (out - 1) / 2) + c
        lin = torch.stack([cos, sin, -sin, cos], dim=1).view(N, 2, 2) / s[:, None, :]
        trans = center - (lin[:, :, 0] * half_w + lin[:, :, 1] * half_h)
    return torch.cat([lin, trans[:, :, None]], dim=2)  # (N, 2, 3)


def _apply(mats: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) matrices applied to (N, ..., 2) points."""
    lin, trans = mats[:, :, :2], mats[:, :, 2]
    shape = points.shape
    p = points.reshape(shape[0], math.prod(shape[1:-1]), 2)  # not -1: N may be 0
    return (p @ lin.transpose(1, 2) + trans[:, None, :]).reshape(shape)


def _warp_points(points: torch.Tensor, center: torch.Tensor, scale: torch.Tensor, output_size: tuple[int, int],
                 rotation_deg: torch.Tensor | float | None, inverse: bool) -> torch.Tensor:
    """(N, K, 2) points through each box's UDP affine (image -> crop), or its inverse."""
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"points must have shape (N, K, 2), got {tuple(points.shape)}")
    mats = udp_affine(center, scale, output_size, rotation_deg, inverse=inverse)
    return _apply(to_device_async(mats, points.device).to(points.dtype), points)


def crop_to_image(points: torch.Tensor, center: torch.Tensor, scale: torch.Tensor,
                  output_size: tuple[int, int] = (1024, 768),
                  rotation_deg: torch.Tensor | float | None = None) -> torch.Tensor:
    """(N, K, 2) crop-pixel points -> image pixels (inverse of the crop made with the same arguments)."""
    return _warp_points(points, center, scale, output_size, rotation_deg, inverse=True)


def image_to_crop(points: torch.Tensor, center: torch.Tensor, scale: torch.Tensor,
                  output_size: tuple[int, int] = (1024, 768),
                  rotation_deg: torch.Tensor | float | None = None) -> torch.Tensor:
    """(N, K, 2) image-pixel points -> crop pixels (e.g. ground-truth keypoints for training targets)."""
    return _warp_points(points, center, scale, output_size, rotation_deg, inverse=False)


def crop_people(
    images: Sequence[torch.Tensor],
    image_index: torch.Tensor | Sequence[int],
    center: torch.Tensor,
    scale: torch.Tensor,
    output_size: tuple[int, int] = (1024, 768),
    rotation_deg: torch.Tensor | float | None = None,
    cubic_enlarging: bool = False,
) -> torch.Tensor:
    """Warp every person box to a UDP crop: bilinear, zeros outside the image (cv2.warpAffine INTER_LINEAR); with
    ``cubic_enlarging`` (Sapiens2's PoseTopdownAffine) bicubic where the crop magnifies (both scale factors >= 1;
    clamped to 0-255 for uint8 images, as OpenCV saturates).

    Args:
        images: B tensors (3, H_b, W_b), uint8 or float, on one device; sizes may differ.
        image_index: (N,) which image each person comes from.
        center, scale: (N, 2) boxes (see ``boxes_to_center_scale``).
        output_size: (H, W) of the crops.
        rotation_deg: optional rotation(s) in degrees.

    Returns:
        (N, 3, H, W) float32 crops in the images' value range (0-255 for uint8), on the images' device.

    One ``grid_sample`` per image covers all of its people (stacked along the grid's height), so an image is
    never copied once per person.
    """
    if len(images) == 0:
        raise ValueError("images is empty")
    device = images[0].device
    for b, img in enumerate(images):
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"images[{b}] must have shape (3, H, W), got {tuple(img.shape)}")
        if img.device != device:
            raise ValueError(f"images[{b}] is on {img.device}, images[0] on {device}; put all images on one device")
    index = torch.as_tensor(image_index, dtype=torch.long).cpu()  # give it on the host: no device round trip
    N = index.shape[0]
    if index.ndim != 1 or (N and (index.min() < 0 or index.max() >= len(images))):
        raise ValueError(f"image_index must be (N,) ids in [0, {len(images)}), got {index.tolist()}")
    H, W = output_size
    inv = to_device_async(udp_affine(center, scale, output_size, rotation_deg, inverse=True).float(), device)
    if inv.shape[0] != N:
        raise ValueError(f"got {N} image indices but {inv.shape[0]} boxes")

    v, u = torch.meshgrid(torch.arange(H, device=device, dtype=torch.float32),
                          torch.arange(W, device=device, dtype=torch.float32), indexing="ij")
    src = _apply(inv, torch.stack([u, v], dim=-1).expand(N, H, W, 2))  # (N, H, W, 2) image pixels

    order = torch.argsort(index, stable=True)  # people grouped by image, on the host
    in_order = torch.equal(order, torch.arange(N))  # the usual case: callers list people image by image
    if not in_order:
        src = src[to_device_async(order, device)]
    cubic = torch.zeros(N, dtype=torch.bool)
    if cubic_enlarging:  # (boxes are on the host in inference: no device round trip)
        cubic = magnifies(udp_affine(center, scale, output_size, rotation_deg).cpu())[order]
    pieces, start = [], 0
    for b, n in enumerate(torch.bincount(index, minlength=len(images)).tolist()):  # one grid_sample per image
        if n == 0:
            continue
        src_b, cubic_b = src[start:start + n], cubic[start:start + n]
        start += n
        img = images[b].float()[None]  # (1, 3, Hb, Wb)
        Hb, Wb = img.shape[-2:]
        # align_corners=False: normalized -1 / +1 are the outer pixel edges, so pixel x sits at (2x + 1) / W - 1.
        grid = torch.stack([(2 * src_b[..., 0] + 1) / Wb - 1, (2 * src_b[..., 1] + 1) / Hb - 1], dim=-1)
        if not cubic_b.any():
            pieces.append(_sample(img, grid, "bilinear"))
            continue
        out = torch.empty(n, 3, H, W, device=device)
        for mode, people in (("bicubic", cubic_b), ("bilinear", ~cubic_b)):
            if people.any():
                rows = to_device_async(torch.nonzero(people)[:, 0], device)
                out[rows] = _sample(img, grid[rows], mode)
        if images[b].dtype == torch.uint8:
            out.clamp_(0, 255)  # (only bicubic overshoots)
        pieces.append(out)
    crops = torch.cat(pieces) if pieces else torch.zeros(0, 3, H, W, device=device)
    if not in_order:  # back to the callers' order
        crops = crops[to_device_async(torch.argsort(order), device)]
    return crops


def magnifies(image_to_crop: torch.Tensor) -> torch.Tensor:
    """(..., 2, 3) image -> crop affines -> (...,) whether the crop magnifies along both axes (each row's scale, the
    norm of its 2 x 2 part, at least 1): where Sapiens2's PoseTopdownAffine warps bicubically."""
    return image_to_crop[..., :2].norm(dim=-1).amin(dim=-1) >= 1


def _sample(img: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """(1, 3, Hb, Wb) image at (n, H, W, 2) normalized points -> (n, 3, H, W), one grid_sample for all n."""
    n, H, W, _ = grid.shape
    out = F.grid_sample(img, grid.reshape(1, n * H, W, 2), mode=mode, padding_mode="zeros", align_corners=False)
    return out.view(3, n, H, W).transpose(0, 1)


def person_inputs(
    images: Sequence[torch.Tensor],
    image_index: torch.Tensor | Sequence[int],
    center: torch.Tensor,
    scale: torch.Tensor,
    input_size: tuple[int, int],
    dtype: torch.dtype,
    cubic_enlarging: bool = False,
) -> torch.Tensor:
    """The pose model's input for each person: the UDP crop (``crop_people``; ``cubic_enlarging`` for Sapiens2),
    normalized with the Sapiens mean and std, in the model's ``dtype``; (N, 3, H, W)."""
    from .transforms import MEAN, STD, normalization_tensors

    crops = crop_people(images, image_index, center, scale, input_size, cubic_enlarging=cubic_enlarging)
    mean, std = normalization_tensors(MEAN, STD, crops.device)
    return ((crops - mean) / std).to(dtype)


def flip_test(
    forward: Callable[[torch.Tensor], torch.Tensor],
    crops: torch.Tensor,
    flip_indices: Sequence[int] | torch.Tensor,
) -> torch.Tensor:
    """Average the heatmaps of the crops and of their mirror images (official flip_mode='heatmap').

    The mirrored pass's heatmaps are flipped back along W and their channels reordered by ``flip_indices``
    (the left wrist of the mirrored person is the right wrist of the original). With UDP, crop pixel u and
    heatmap pixel j mirror to W - 1 - u and w - 1 - j exactly, so no heatmap shift is needed.

    Args:
        forward: crops (N, 3, H, W) -> heatmaps (N, K, h, w).
        crops: (N, 3, H, W) network inputs.
        flip_indices: (K,) channel of each keypoint's mirror partner.
    """
    heatmaps = forward(crops)  # (N, K, h, w)
    flip = torch.as_tensor(flip_indices, dtype=torch.long)
    if flip.shape != (heatmaps.shape[1],):
        raise ValueError(f"flip_indices has {flip.numel()} entries but the model outputs {heatmaps.shape[1]} channels")
    mirrored = forward(crops.flip(-1)).flip(-1)[:, to_device_async(flip, heatmaps.device)]  # (N, K, h, w)
    return (heatmaps + mirrored) * 0.5
