"""Hand-written Triton kernels for the fused inference path (imported only on CUDA; Triton ships with PyTorch there).

``shifted_layer_norm``: LayerNorm(x + shift) over rows of C <= 8192 channels in one pass, a whole row per program,
held in registers: each row is read once and written once. Inductor's compile of the same function ran 2.5x slower
per byte at the 1B width (1536 channels) than at 0.3B's 1024 (`docs/performance.md`); this kernel replaced it. For
the FP8 blocks it can first add a pending GEMM output into the stream and write e4m3 rows with their scales.

``rows_to_e4m3``: rows (optionally through GELU) to e4m3 with one scale per row, the input of a row-scaled FP8 GEMM.
Both scale by a per-row reciprocal, not a division per element (IEEE division costs many instructions).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _shifted_layer_norm_kernel(x_ptr, delta_ptr, shift_ptr, w_ptr, b_ptr, y_ptr, scale_ptr, M, C, eps,
                               BLOCK: tl.constexpr, ROWS: tl.constexpr, HAS_DELTA: tl.constexpr, FP8: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows[:, None] < M) & (cols[None, :] < C)
    offs = rows[:, None].to(tl.int64) * C + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if HAS_DELTA:  # the stream takes a pending GEMM output first: x~ += delta, stored in x's dtype
        x = (x.to(tl.float32) + tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)).to(x.dtype)
        tl.store(x_ptr + offs, x, mask=mask)
    x = x.to(tl.float32) + tl.load(shift_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
    mean = tl.sum(x, axis=1) / C
    centered = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / C + eps)
    w = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
    y = centered * rstd[:, None] * w[None, :] + b[None, :]
    if FP8:  # e4m3 with one scale per row, amax / 448: the input of the next row-scaled FP8 GEMM
        amax = tl.maximum(tl.max(tl.where(mask, tl.abs(y), 0.0), axis=1), 1e-30)
        y = y * (448.0 / amax)[:, None]
        tl.store(scale_ptr + rows, amax / 448.0, mask=rows < M)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _row_launch(C: int) -> tuple[int, int, int]:
    """Block width, rows per program and warps for a row-wise kernel over C channels. One row a program: two rows
    (4096 elements) made the 1B norms slower (6.3 against 5.1-5.6 ms per pose-1B batch of 8, separate runs)."""
    block = triton.next_power_of_2(C)
    return block, 1, min(max(block // 256, 4), 16)


def shifted_layer_norm(x: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                       delta: torch.Tensor | None = None, fp8: bool = False):
    """LayerNorm(x + shift) over the last dim of a contiguous CUDA tensor, float32 inside, x's dtype out.

    ``delta``: first x += delta in place (x's dtype), then normalize. ``fp8``: return (e4m3 values, float32 row
    scales (rows, 1)) instead, ready for ``torch._scaled_mm``.
    """
    C = x.shape[-1]
    if not x.is_contiguous() or C > 8192 or (delta is not None and (delta.shape != x.shape
                                                                    or not delta.is_contiguous())):
        raise ValueError(f"shifted_layer_norm: needs a contiguous input with at most 8192 channels (and a delta of "
                         f"its shape), got shape {tuple(x.shape)} (contiguous: {x.is_contiguous()})")
    M = x.numel() // C
    y = torch.empty(x.shape, device=x.device, dtype=torch.float8_e4m3fn if fp8 else x.dtype)
    scale = torch.empty(M, 1, device=x.device, dtype=torch.float32) if fp8 else y
    block, rows, warps = _row_launch(C)
    _shifted_layer_norm_kernel[(triton.cdiv(M, rows),)](
        x, x if delta is None else delta, shift, weight, bias, y, scale, M, C, eps, BLOCK=block, ROWS=rows,
        HAS_DELTA=delta is not None, FP8=fp8, num_warps=warps)
    return (y.view(M, C), scale) if fp8 else y


@triton.jit
def _rows_to_e4m3_kernel(x_ptr, y_ptr, scale_ptr, M, C, BLOCK: tl.constexpr, ROWS: tl.constexpr,
                         GELU: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows[:, None] < M) & (cols[None, :] < C)
    offs = rows[:, None].to(tl.int64) * C + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if GELU == "erf":  # exact GELU, as the model's MLP
        x = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    elif GELU == "tanh":  # 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): one exp2
        u2 = -2.302208198 * (x + 0.044715 * x * x * x)  # -2u * log2(e)
        x = tl.fdiv(x, 1.0 + tl.exp2(u2), ieee_rounding=False)
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-30)
    tl.store(y_ptr + offs, (x * (448.0 / amax)[:, None]).to(tl.float8e4nv), mask=mask)
    tl.store(scale_ptr + rows, amax / 448.0, mask=rows < M)


def rows_to_e4m3(x: torch.Tensor, gelu: str | None = None,
                 config: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, C) contiguous -> e4m3 (M, C) and float32 row scales (M, 1), amax / 448; ``gelu`` ("erf" or "tanh"): of
    GELU(x). ``config``: (rows per program, warps) instead of the default."""
    M, C = x.shape
    if not x.is_contiguous() or C > 8192 or gelu not in (None, "erf", "tanh"):
        raise ValueError(f"rows_to_e4m3: needs a contiguous (M, C <= 8192) input and gelu None, 'erf' or 'tanh', "
                         f"got {tuple(x.shape)}, gelu={gelu!r}")
    y = torch.empty(M, C, device=x.device, dtype=torch.float8_e4m3fn)
    scale = torch.empty(M, 1, device=x.device, dtype=torch.float32)
    block, rows, warps = _row_launch(C)
    rows, warps = config or (rows, warps)
    _rows_to_e4m3_kernel[(triton.cdiv(M, rows),)](x, y, scale, M, C, BLOCK=block, ROWS=rows, GELU=gelu or "",
                                                  num_warps=warps)
    return y, scale
