"""Triton kernel for DARK's rescale: the maximum of each heatmap's zero-bordered Gaussian blur, in one pass.

DARK rescales a blurred map to the raw map's maximum, which needs the whole blurred map's maximum. In PyTorch that
is 2 x ksize shifted float32 passes over each map plus a reduction (22 passes for the 11-tap kernel), which cost
pose-0.3B ~9 % of its end-to-end throughput on random-weight maps (`docs/performance.md`). Here each program walks
down a strip of one map, blurring each row along x and a ring of the last rows along y in registers, and writes
only the strip's maximum: the map is read once from memory, in its own dtype (bf16 included), and nothing map-sized
is written. (A first version summed the 11 x 11 window of every output pixel straight from memory: 121 loads per
pixel made it 4.6x slower than the PyTorch passes.)

The sums are float32 like ``heatmap.gaussian_blur``'s, along x in the same order, along y in a tree: the results
agree to ~1e-7 relative. Imported only where Triton runs (CUDA, or its CPU interpreter in the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_ROWS = 64  # output rows per program: each reads KSIZE - 1 more (a 16 % halo for the 11-tap kernel)


@triton.jit
def _blurred_max_kernel(maps_ptr, ids_ptr, taps_ptr, out_ptr, h, w, tiles_w, tiles,
                        KSIZE: tl.constexpr, RING: tl.constexpr, ROWS: tl.constexpr, BLOCK_W: tl.constexpr):
    """One program: rows [y0, y0 + ROWS) x BLOCK_W columns of one map. It walks down the input rows, blurs each along
    x (KSIZE shifted loads, L1 hits) into a ring of the last RING rows held in registers, and blurs the ring along y
    with the taps rotated to the ring's position, so each input row is loaded KSIZE times rather than KSIZE^2."""
    item, tile = tl.program_id(0), tl.program_id(1)
    base = maps_ptr + tl.load(ids_ptr + item).to(tl.int64) * h * w
    y0 = (tile // tiles_w) * ROWS
    cols = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)
    slots = tl.arange(0, RING)
    ring = tl.zeros((RING, BLOCK_W), dtype=tl.float32)  # input row r blurred along x sits in slot r % RING
    best = tl.full((BLOCK_W,), float("-inf"), dtype=tl.float32)
    for r in range(y0 - KSIZE // 2, tl.minimum(y0 + ROWS, h) + KSIZE // 2):
        line = tl.zeros((BLOCK_W,), dtype=tl.float32)
        for dx in tl.static_range(KSIZE):  # outside the map reads as 0: the zero border
            src = cols + (dx - KSIZE // 2)
            ok = (r >= 0) & (r < h) & (src >= 0) & (src < w)
            line += tl.load(taps_ptr + dx) * tl.load(base + r * w + src, mask=ok, other=0.0).to(tl.float32)
        ring = tl.where((slots == (r & (RING - 1)))[:, None], line[None, :], ring)
        top = r - (KSIZE - 1)  # the output row y = r - KSIZE // 2 blurs input rows top .. r
        tap = (slots - top) & (RING - 1)  # the tap of each slot's row; slots beyond the window weigh 0
        out = tl.sum(ring * tl.load(taps_ptr + tap, mask=tap < KSIZE, other=0.0)[:, None], axis=0)
        valid = (r - KSIZE // 2 >= y0) & (cols < w)  # rows before y0 only fill the ring
        best = tl.maximum(best, tl.where(valid, out, float("-inf")))
    tl.store(out_ptr + item * tiles + tile, tl.max(best, axis=0))


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
    block_w = min(triton.next_power_of_2(w), 256)
    tiles_w = triton.cdiv(w, block_w)
    tiles = triton.cdiv(h, _ROWS) * tiles_w
    out = torch.empty(n, tiles, device=maps.device, dtype=torch.float32)  # (n, tiles) per-tile maxima
    if n:
        _blurred_max_kernel[(n, tiles)](maps, ids, taps, out, h, w, tiles_w, tiles, KSIZE=taps.numel(),
                                        RING=triton.next_power_of_2(taps.numel()), ROWS=_ROWS, BLOCK_W=block_w,
                                        num_warps=2)
    return out.amax(dim=1)
