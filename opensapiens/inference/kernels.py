"""Hand-written Triton kernels for the fused inference path (imported only on CUDA; Triton ships with PyTorch there).

``shifted_layer_norm``: LayerNorm(x + shift) over rows of C <= 8192 channels in one pass, a whole row per program,
held in registers: each row is read once and written once. Inductor's compile of the same function ran 2.5x slower
per byte at the 1B width (1536 channels) than at 0.3B's 1024 (`docs/performance.md`); this kernel replaced it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _shifted_layer_norm_kernel(x_ptr, shift_ptr, w_ptr, b_ptr, y_ptr, C, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < C
    x = tl.load(x_ptr + row * C + cols, mask=mask, other=0.0).to(tl.float32)
    x += tl.load(shift_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / C
    centered = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=0) / C + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * C + cols, (centered * rstd * w + b).to(y_ptr.dtype.element_ty), mask=mask)


def shifted_layer_norm(x: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       eps: float) -> torch.Tensor:
    """LayerNorm(x + shift) over the last dim of a contiguous CUDA tensor, float32 inside, x's dtype out."""
    C = x.shape[-1]
    if not x.is_contiguous() or C > 8192:
        raise ValueError(f"shifted_layer_norm: needs a contiguous input with at most 8192 channels, got shape "
                         f"{tuple(x.shape)} (contiguous: {x.is_contiguous()})")
    y = torch.empty_like(x)
    block = triton.next_power_of_2(C)
    _shifted_layer_norm_kernel[(x.numel() // C,)](x, shift, weight, bias, y, C, eps, BLOCK=block,
                                                  num_warps=min(max(block // 256, 4), 16))
    return y
