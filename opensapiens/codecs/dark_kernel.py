"""Triton kernel for DARK's rescale: the maximum of each heatmap's zero-bordered Gaussian blur, in one pass.

DARK rescales a blurred map to the raw map's maximum, which needs the whole blurred map's maximum. In PyTorch that
is 2 x ksize shifted float32 passes over each map plus a reduction (22 passes for the 11-tap kernel), which cost
pose-0.3B ~9 % of its end-to-end throughput on random-weight maps (`docs/performance.md`). Here each program blurs
one tile of one map in registers and writes only the tile's maximum: the map is read once (through L1/L2 for the
kernel's overlapping windows, in its own dtype, bf16 included) and nothing map-sized is written.

The sums run in the order of ``heatmap.gaussian_blur`` (taps in order along x, then along y), in float32, so the
result equals it up to fused multiply-adds (~1e-7 relative). Imported only where Triton runs (CUDA, or its CPU
interpreter in the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK_H, _BLOCK_W = 32, 64  # one tile per program; 256 x 192 maps make 8 x 3 tiles


@triton.jit
def _blurred_tile_max_kernel(maps_ptr, ids_ptr, taps_ptr, out_ptr, h, w, tiles_w, tiles,
                             KSIZE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    item, tile = tl.program_id(0), tl.program_id(1)
    base = maps_ptr + tl.load(ids_ptr + item).to(tl.int64) * h * w
    rows = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)
    out = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for dy in tl.static_range(KSIZE):  # out = sum_dy k[dy] * (sum_dx k[dx] * map[y + dy - r, x + dx - r])
        src_rows = rows + (dy - KSIZE // 2)
        row_ok = (src_rows >= 0) & (src_rows < h)  # outside the map reads as 0: the zero border
        line = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
        for dx in tl.static_range(KSIZE):
            src_cols = cols + (dx - KSIZE // 2)
            ok = row_ok[:, None] & ((src_cols >= 0) & (src_cols < w))[None, :]
            pixels = tl.load(base + src_rows[:, None] * w + src_cols[None, :], mask=ok, other=0.0)
            line += tl.load(taps_ptr + dx) * pixels.to(tl.float32)
        out += tl.load(taps_ptr + dy) * line
    inside = (rows < h)[:, None] & (cols < w)[None, :]
    tl.store(out_ptr + item * tiles + tile, tl.max(tl.max(tl.where(inside, out, float("-inf")), axis=1), axis=0))


def blurred_maxima(maps: torch.Tensor, ids: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """max over (y, x) of ``gaussian_blur(maps[ids].float(), len(taps))``, without materializing either.

    Args:
        maps: (M, h, w) contiguous heatmaps, any float dtype.
        ids: (n,) int64 indices of the maps to reduce.
        taps: (k,) float32 1-D Gaussian, on maps' device.

    Returns:
        (n,) float32.
    """
    if not maps.is_contiguous() or maps.ndim != 3:
        raise ValueError(f"blurred_maxima: needs contiguous (M, h, w) maps, got shape {tuple(maps.shape)}")
    n, (h, w) = ids.numel(), maps.shape[1:]
    tiles_w = triton.cdiv(w, _BLOCK_W)
    tiles = triton.cdiv(h, _BLOCK_H) * tiles_w
    out = torch.empty(n, tiles, device=maps.device, dtype=torch.float32)  # (n, tiles) per-tile maxima
    if n:
        _blurred_tile_max_kernel[(n, tiles)](maps, ids, taps, out, h, w, tiles_w, tiles, KSIZE=taps.numel(),
                                             BLOCK_H=_BLOCK_H, BLOCK_W=_BLOCK_W, num_warps=4)
    return out.amax(dim=1)
