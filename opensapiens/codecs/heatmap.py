"""UDP Gaussian heatmap codec: keypoints <-> (K, h, w) heatmaps, as the Sapiens pose models are trained and decoded.

Coordinates (x right, y down, pixel centres at integers):
    * input pixels: the network input crop, (H, W) = (1024, 768) for Sapiens;
    * heatmap pixels: the head output, (h, w) = (256, 192).
UDP ("unbiased data processing") maps the first and last pixel centres onto each other, so per axis

    kp_heatmap = kp_input * (h - 1) / (H - 1)        kp_input = kp_heatmap * (H - 1) / (h - 1)

and ``decode_udp_heatmaps`` is the exact inverse of ``encode_udp_heatmaps``. The official decoder instead returns
``kp_heatmap / (h - 1) * H``, a normalized "input space" that its top-down post-processing divides by H again and
maps to the box as ``center - scale / 2 + kp * scale / H``; ours returns true input (crop) pixels, which
``opensapiens.inference.topdown.crop_to_image`` maps with the inverse crop matrix. Both give the same image
coordinates.

Everything is vectorized over instances and keypoints and runs on the tensors' device.

References:
    Huang et al., "The Devil is in the Details: Delving into Unbiased Data Processing for Human Pose Estimation"
    (UDP), CVPR 2020. Zhang et al., "Distribution-Aware Coordinate Representation for Human Pose Estimation"
    (DARK), CVPR 2020.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

_EPS32 = float(torch.finfo(torch.float32).eps)  # regularizes the 2x2 Hessian as the official refinement does
_CHUNK = 2048  # maps blurred at a time off CUDA (2048 x 256 x 192 float32 = 400 MB per temporary)

# OpenCV's getGaussianKernel uses these fixed kernels for small odd sizes when sigma <= 0.
_CV_SMALL_KERNELS = {
    1: (1.0,),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
    9: tuple(v / 256 for v in (4, 13, 30, 51, 60, 51, 30, 13, 4)),
}


def udp_scale(input_size: tuple[int, int], heatmap_size: tuple[int, int]) -> tuple[float, float]:
    """Input pixels per heatmap pixel, (along x, along y) = ((W - 1) / (w - 1), (H - 1) / (h - 1))."""
    (H, W), (h, w) = input_size, heatmap_size
    if min(H, W, h, w) < 2:
        raise ValueError(f"UDP needs sizes >= 2 on both axes, got input_size={input_size}, heatmap_size={heatmap_size}")
    return (W - 1) / (w - 1), (H - 1) / (h - 1)


def encode_udp_heatmaps(
    keypoints: torch.Tensor,
    visible: torch.Tensor | None = None,
    input_size: tuple[int, int] = (1024, 768),
    heatmap_size: tuple[int, int] = (256, 192),
    sigma: float = 6.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training targets: one unnormalized Gaussian (peak 1) per keypoint, centred sub-pixel.

    Args:
        keypoints: (N, K, 2) x, y in input pixels.
        visible: (N, K) visibility; a keypoint counts as labelled when >= 0.5 (None: all labelled).
        input_size: (H, W) of the network input.
        heatmap_size: (h, w) of the heatmaps.
        sigma: Gaussian sigma in heatmap pixels (6 for the 256x192 Sapiens heatmaps).

    Returns:
        heatmaps: (N, K, h, w) float32, one heatmap per instance (top-down: one person per crop).
        weights: (N, K) float32 in {0, 1}.

    Matches the official UDP target exactly for integer 3 * sigma (every Sapiens config): the Gaussian is evaluated
    at the exact keypoint on the (2r + 1)^2 pixel window centred at ``mu = trunc(kp + 0.5)`` (r = 3 sigma) and is
    zero elsewhere. The weight is 0 for unlabelled keypoints and when the window misses the heatmap, with the
    official boundary rule ``mu - r >= w or mu + r + 1 < 0`` (per axis); so a window that ends exactly at pixel -1
    keeps weight 1 with an all-zero target, as in the official code.
    """
    if keypoints.ndim != 3 or keypoints.shape[-1] < 2:
        raise ValueError(f"keypoints must have shape (N, K, 2), got {tuple(keypoints.shape)}")
    N, K = keypoints.shape[:2]
    device = keypoints.device
    if visible is None:
        visible = torch.ones(N, K, device=device)
    if visible.shape != (N, K):
        raise ValueError(f"visible must have shape {(N, K)} to match keypoints, got {tuple(visible.shape)}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    h, w = heatmap_size
    sx, sy = udp_scale(input_size, heatmap_size)

    kp = keypoints[..., :2].float() / torch.tensor([sx, sy], device=device)  # (N, K, 2) heatmap pixels
    radius = 3.0 * sigma
    mu = torch.trunc(kp + 0.5)  # the official integer cast rounds toward zero
    size = torch.tensor([w, h], device=device)
    outside = ((mu - radius >= size) | (mu + radius + 1 < 0)).any(dim=-1)  # (N, K)
    weights = ((visible.to(device).float() >= 0.5) & ~outside).float()  # (N, K)

    def axis_profile(n: int, centre: torch.Tensor, window_centre: torch.Tensor) -> torch.Tensor:
        grid = torch.arange(n, device=device, dtype=torch.float32)  # (n,)
        d = grid - centre[..., None]  # (N, K, n)
        inside = (grid - window_centre[..., None]).abs() <= radius
        return torch.exp(-(d * d) / (2 * sigma * sigma)) * inside

    gx = axis_profile(w, kp[..., 0], mu[..., 0])  # (N, K, w)
    gy = axis_profile(h, kp[..., 1], mu[..., 1]) * weights[..., None]  # (N, K, h)
    heatmaps = gy[..., :, None] * gx[..., None, :]  # (N, K, h, w)
    return heatmaps, weights


def gaussian_kernel1d(ksize: int, sigma: float = 0.0, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """1-D Gaussian kernel with OpenCV ``getGaussianKernel`` semantics (sigma <= 0: derived from ksize)."""
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"Gaussian kernel size must be a positive odd integer, got {ksize}")
    if sigma <= 0 and ksize in _CV_SMALL_KERNELS:
        return torch.tensor(_CV_SMALL_KERNELS[ksize], dtype=dtype, device=device)
    if sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (k / k.sum()).to(dtype=dtype, device=device)


def gaussian_blur(maps: torch.Tensor, ksize: int) -> torch.Tensor:
    """Blur (M, h, w) maps with a ksize x ksize Gaussian, zero outside the map.

    Equals the official DARK modulation: it zero-pads by ksize // 2 before ``cv2.GaussianBlur(k, k, 0)`` and crops,
    so OpenCV's own border handling never reaches the kept pixels.
    """
    k = gaussian_kernel1d(ksize, dtype=torch.float64).tolist()
    r = ksize // 2
    h, w = maps.shape[-2:]
    # Separable, as sums of shifted copies: exact float32 on every device (a cuDNN convolution may run in TF32,
    # whose 1e-3 relative error would move the sub-pixel refinement) and without the unfold a CPU conv makes.
    x = F.pad(maps, (r, r))  # (M, h, w + 2r)
    rows = x[..., 0:w] * k[0]
    for i in range(1, ksize):
        rows.add_(x[..., i:i + w], alpha=k[i])
    y = F.pad(rows, (0, 0, r, r))  # (M, h + 2r, w)
    out = y[..., 0:h, :] * k[0]
    for i in range(1, ksize):
        out.add_(y[..., i:i + h, :], alpha=k[i])
    return out


def _sample_points(x: torch.Tensor, y: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 7 DARK sample points around integer maxima, clamped into the map (= edge padding by one pixel).

    Order: centre, x+1, x-1, y+1, y-1, (x+1, y+1), (x-1, y-1). Returns (M, 7) row and column indices.
    """
    xm, xp = (x - 1).clamp(0, w - 1), (x + 1).clamp(0, w - 1)
    ym, yp = (y - 1).clamp(0, h - 1), (y + 1).clamp(0, h - 1)
    cols = torch.stack([x, xp, xm, x, x, xp, xm], dim=1)
    rows = torch.stack([y, y, y, yp, ym, yp, ym], dim=1)
    return rows, cols


@functools.cache
def _kernel_on(ksize: int, device: torch.device) -> torch.Tensor:
    """The float32 DARK kernel, uploaded once per device (a per-call upload would stall the host on the GPU)."""
    return gaussian_kernel1d(ksize, dtype=torch.float32, device=device)


def _blur_at(maps: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, ksize: int) -> torch.Tensor:
    """The zero-bordered Gaussian blur of (M, h, w) maps evaluated only at (M, P) points: (M, P).

    Gathers a ksize x ksize window per point instead of blurring whole maps: 7 x 121 reads per keypoint rather
    than a pass over 256 x 192 pixels, which is what makes decoding cheap next to the model.
    """
    M, h, w = maps.shape
    k = _kernel_on(ksize, maps.device)  # float32
    r = ksize // 2
    d = torch.arange(-r, r + 1, device=maps.device)
    wy = rows[..., None] + d  # (M, P, k)
    wx = cols[..., None] + d
    inside = ((wy >= 0) & (wy < h))[..., :, None] & ((wx >= 0) & (wx < w))[..., None, :]  # (M, P, k, k)
    flat = (wy.clamp(0, h - 1)[..., :, None] * w + wx.clamp(0, w - 1)[..., None, :]).reshape(M, -1)
    patches = maps.reshape(M, h * w).gather(1, flat).reshape(inside.shape).float() * inside  # exact upcast
    return torch.einsum("mpij,i,j->mp", patches, k, k)


def _newton_offsets(v: torch.Tensor) -> torch.Tensor:
    """One Newton step from 7 log-domain samples (see ``_sample_points``): (M, 7) -> (M, 2) offsets."""
    c, px, mx, py, my, pxpy, mxmy = v.clamp(1e-3, 50.0).log().unbind(dim=1)
    gx, gy = 0.5 * (px - mx), 0.5 * (py - my)
    hxx = px - 2 * c + mx + _EPS32
    hyy = py - 2 * c + my + _EPS32
    hxy = 0.5 * (pxpy - px - py + 2 * c - mx - my + mxmy)
    det = hxx * hyy - hxy * hxy
    step = torch.stack([hyy * gx - hxy * gy, hxx * gy - hxy * gx], dim=1) / det[:, None]  # H^-1 g, (M, 2)
    ok = torch.isfinite(step).all(dim=1, keepdim=True)  # a singular Hessian leaves the argmax as it is
    return torch.where(ok, -step, torch.zeros_like(step))


def _dark_udp_offsets(maps: torch.Tensor, x: torch.Tensor, y: torch.Tensor, peak: torch.Tensor,
                      blur_kernel: int) -> torch.Tensor:
    """Official DARK-UDP refinement at integer maxima (x, y) with values ``peak``: (M, h, w) -> (M, 2) offsets.

    Heatmaps are blurred, rescaled to their original maximum, clipped to [1e-3, 50] and logged; gradient and Hessian
    come from finite differences on the edge-padded map, and the step is -(Hessian + eps I)^-1 gradient.

    The rescale multiplies all samples by one factor, which cancels in every finite difference, so it only matters
    where the clip is active. The blur is therefore evaluated at the 7 sample points alone, and the whole-map blur
    (whose maximum the rescale needs) is computed only for maps with a sample under the clip and a peak over it, or
    a peak over 50, or whose blur may be negative everywhere. Otherwise the blur's maximum is positive and so ratio
    >= 1 (a normalized blur never exceeds the map's positive maximum): samples >= 1e-3 stay unclipped after
    rescaling, none exceeds the map maximum, and a map whose peak is under the clip keeps every sample clipped. A
    negative blur maximum makes the ratio negative and flips the samples' signs, which only the whole map can tell.

    ``maps`` may be bf16/fp16: only the gathered samples are upcast (exactly), never the whole maps.
    """
    M, h, w = maps.shape
    if M == 0:
        return peak.new_zeros(0, 2)
    rows, cols = _sample_points(x, y, h, w)
    v = _blur_at(maps, rows, cols, blur_kernel)  # (M, 7) float32
    # A map whose peak is under the clip has every sample clipped (samples <= blur maximum <= peak, so its step is 0
    # without the whole-map blur) unless that maximum is negative, which needs every sample negative. A peak <= 0
    # gives location -1 anyway.
    weak_negative = (peak > 0) & (peak < 1e-3) & (v < 0).all(dim=1)
    clipped = (((v < 1e-3).any(dim=1) & (peak >= 1e-3)) | (peak > 50) | weak_negative).nonzero().flatten()
    if clipped.numel():  # weak or huge maps need the whole-map maximum of the blur
        ratio = peak[clipped] / (_blurred_maxima(maps, clipped, blur_kernel) + 1e-12)
        v[clipped] = v[clipped] * ratio[:, None]
    return _newton_offsets(v)


def _blurred_maxima(maps: torch.Tensor, ids: torch.Tensor, ksize: int) -> torch.Tensor:
    """max of ``gaussian_blur(maps[ids].float(), ksize)`` per map: (n,) float32.

    On CUDA one Triton pass that writes nothing map-sized (``dark_kernel``); elsewhere the whole-map blur, chunked.
    """
    kernel = _triton_kernel() if maps.is_cuda else None
    if kernel is not None:
        return kernel(maps.contiguous(), ids, _kernel_on(ksize, maps.device))
    return torch.cat([gaussian_blur(maps[chunk].float(), ksize).amax(dim=(1, 2)) for chunk in ids.split(_CHUNK)])


@functools.cache
def _triton_kernel():
    """``dark_kernel.blurred_maxima``, or None where Triton is not installed (the whole-map blur then runs)."""
    try:
        from .dark_kernel import blurred_maxima
    except ImportError:
        return None
    return blurred_maxima


def decode_udp_heatmaps(
    heatmaps: torch.Tensor,
    input_size: tuple[int, int] = (1024, 768),
    blur_kernel: int = 11,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints from heatmaps: argmax, DARK-UDP sub-pixel refinement, then heatmap -> input pixels.

    Args:
        heatmaps: (N, K, h, w) raw head outputs (any float dtype, read in place: maxima and the DARK samples are
            taken in that dtype and upcast exactly, so bf16 maps give the float32 result without a float32 copy).
        input_size: (H, W) of the network input the heatmaps belong to.
        blur_kernel: odd Gaussian kernel size of the DARK modulation (11 in every Sapiens config).

    Returns:
        keypoints: (N, K, 2) float32 x, y in input (crop) pixels, the exact inverse of ``encode_udp_heatmaps``.
        scores: (N, K) float32, the raw heatmap maximum.

    A channel whose maximum is <= 0 gets heatmap location (-1, -1) (as the official) and is not refined.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must have shape (N, K, h, w), got {tuple(heatmaps.shape)}")
    N, K, h, w = heatmaps.shape
    sx, sy = udp_scale(input_size, (h, w))
    maps = heatmaps.detach().reshape(N * K, h, w)

    scores, idx = maps.reshape(N * K, h * w).max(dim=1)  # one pass; first maximum on ties, as numpy's argmax
    scores = scores.float()
    x, y = idx % w, idx // w
    loc = torch.stack([x, y], dim=1).float()  # (M, 2) heatmap pixels
    loc += _dark_udp_offsets(maps, x, y, scores, blur_kernel)
    loc = torch.where((scores > 0)[:, None], loc, torch.full_like(loc, -1.0))

    keypoints = torch.stack([loc[:, 0] * sx, loc[:, 1] * sy], dim=1)  # scalars: no host -> device copy
    return keypoints.reshape(N, K, 2), scores.reshape(N, K)
