"""Hand-written Triton kernels for the fused inference path (imported only on CUDA; Triton ships with PyTorch there).

``shifted_layer_norm``: LayerNorm(x + shift) over rows of C <= 8192 channels in one pass, a whole row per program,
held in registers: each row is read once and written once. Inductor's compile of the same function ran 2.5x slower
per byte at the 1B width (1536 channels) than at 0.3B's 1024 (`docs/performance.md`); this kernel replaced it. For
the FP8 blocks it can first add a pending GEMM output into the stream and write e4m3 rows with their scales.

``rows_to_e4m3``: rows (optionally through GELU) to e4m3 with one scale per row, the input of a row-scaled FP8 GEMM.
Both scale by a per-row reciprocal, not a division per element (IEEE division costs many instructions).

For Sapiens2's blocks (``fused2.py``): ``shifted_layer_norm(rms=True)`` is its RMSNorm; ``qk_norm_rope`` normalizes
each query and key head and rotates the patch tokens' in place in the qkv GEMM's output; ``swiglu`` is
silu(gate) * value in one pass (or straight to e4m3 rows).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _shifted_layer_norm_kernel(x_ptr, delta_ptr, shift_ptr, w_ptr, b_ptr, y_ptr, scale_ptr, M, C, eps,
                               BLOCK: tl.constexpr, ROWS: tl.constexpr, HAS_DELTA: tl.constexpr, FP8: tl.constexpr,
                               RMS: tl.constexpr, HAS_BIAS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows[:, None] < M) & (cols[None, :] < C)
    offs = rows[:, None].to(tl.int64) * C + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if HAS_DELTA:  # the stream takes a pending GEMM output first: x~ += delta, stored in x's dtype
        x = (x.to(tl.float32) + tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)).to(x.dtype)
        tl.store(x_ptr + offs, x, mask=mask)
    x = x.to(tl.float32) + tl.load(shift_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
    if RMS:  # RMSNorm: no mean taken out, no bias
        centered = tl.where(mask, x, 0.0)
    else:
        centered = tl.where(mask, x - (tl.sum(x, axis=1) / C)[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / C + eps)
    w = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
    y = centered * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
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


def shifted_layer_norm(x: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       eps: float, delta: torch.Tensor | None = None, fp8: bool = False, rms: bool = False):
    """LayerNorm(x + shift) over the last dim of a contiguous CUDA tensor, float32 inside, x's dtype out; ``rms``:
    RMSNorm(x + shift). ``bias`` None: none added.

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
        x, x if delta is None else delta, shift, weight, weight if bias is None else bias, y, scale, M, C, eps,
        BLOCK=block, ROWS=rows, HAS_DELTA=delta is not None, FP8=fp8, RMS=rms, HAS_BIAS=bias is not None,
        num_warps=warps)
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


@triton.jit
def _qk_norm_rope_kernel(qkv_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, N, prefix, row_stride, eps,
                         Q_HEADS: tl.constexpr, HEADS: tl.constexpr, HD: tl.constexpr, HEAD_BLOCK: tl.constexpr,
                         DIM_BLOCK: tl.constexpr, NORM: tl.constexpr, ROPE: tl.constexpr):
    row = tl.program_id(0)  # one token: its query heads, then its key heads, (HEADS, HD) at the row's start
    heads = tl.arange(0, HEAD_BLOCK)
    d = tl.arange(0, DIM_BLOCK)
    half = HD // 2
    partner = tl.where(d < half, d + half, d - half)  # rotate_half pairs d with d +- HD/2
    mask = (heads[:, None] < HEADS) & (d[None, :] < HD)
    base = qkv_ptr + row.to(tl.int64) * row_stride + heads[:, None] * HD
    x = tl.load(base + d[None, :], mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(base + partner[None, :], mask=mask, other=0.0).to(tl.float32)
    if NORM:  # RMSNorm over each head, with the query or the key weight; rounded as the norm's output is
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / HD + eps)
        is_q = heads[:, None] < Q_HEADS
        w = tl.where(is_q, tl.load(qw_ptr + d, mask=d < HD, other=0.0).to(tl.float32)[None, :],
                     tl.load(kw_ptr + d, mask=d < HD, other=0.0).to(tl.float32)[None, :])
        wp = tl.where(is_q, tl.load(qw_ptr + partner, mask=d < HD, other=0.0).to(tl.float32)[None, :],
                      tl.load(kw_ptr + partner, mask=d < HD, other=0.0).to(tl.float32)[None, :])
        x = (x * rstd[:, None] * w).to(qkv_ptr.dtype.element_ty).to(tl.float32)
        xp = (xp * rstd[:, None] * wp).to(qkv_ptr.dtype.element_ty).to(tl.float32)
    if ROPE:  # every token through the angles' dtype (as the official code), patches turned in float32, rounded
        x = x.to(cos_ptr.dtype.element_ty).to(tl.float32)
        xp = xp.to(cos_ptr.dtype.element_ty).to(tl.float32)
        patch = row % N - prefix
        turns = patch >= 0
        at = tl.maximum(patch, 0).to(tl.int64) * HD + d
        c = tl.load(cos_ptr + at, mask=(d < HD) & turns, other=1.0).to(tl.float32)
        s = tl.load(sin_ptr + at, mask=(d < HD) & turns, other=0.0).to(tl.float32)
        x = x * c[None, :] + tl.where(d < half, -xp, xp) * s[None, :]
        x = x.to(cos_ptr.dtype.element_ty)
    tl.store(base + d[None, :], x.to(qkv_ptr.dtype.element_ty), mask=mask)


def qk_norm_rope(qkv: torch.Tensor, q_heads: int, k_heads: int, q_weight: torch.Tensor | None,
                 k_weight: torch.Tensor | None, eps: float, rope: tuple[torch.Tensor, torch.Tensor] | None,
                 tokens: int, prefix: int) -> None:
    """In place on a contiguous (B*N, (q_heads + 2 k_heads) * hd) qkv GEMM output: RMSNorm each query and key head
    (weights ``q_weight`` / ``k_weight``; None: no norm), then rotate every sequence's tokens after its first
    ``prefix`` (``rope``: cos, sin (N - prefix, hd); None: no rotation). ``tokens``: N, the sequence length."""
    M, width = qkv.shape
    hd = width // (q_heads + 2 * k_heads)
    heads = q_heads + k_heads
    if not qkv.is_contiguous() or hd * (q_heads + 2 * k_heads) != width or M % tokens or hd % 2:
        raise ValueError(f"qk_norm_rope: needs a contiguous (B*N, (q + 2 k heads) * even head dim) input, got "
                         f"{tuple(qkv.shape)} for {q_heads} + 2 x {k_heads} heads of {tokens}-token sequences")
    if rope is not None and (rope[0].shape != (tokens - prefix, hd) or rope[1].shape != rope[0].shape
                             or rope[1].dtype != rope[0].dtype or not rope[0].is_contiguous()
                             or not rope[1].is_contiguous()):
        raise ValueError(f"qk_norm_rope: rope tables must be contiguous ({tokens - prefix}, {hd}), got "
                         f"{tuple(rope[0].shape)}")
    norm = q_weight is not None
    if norm != (k_weight is not None) or (norm and (q_weight.shape != (hd,) or k_weight.shape != (hd,)
                                                      or not q_weight.is_contiguous() or not k_weight.is_contiguous())):
        raise ValueError(f"qk_norm_rope: q and k norm weights must both be given, contiguous ({hd},), or both None")
    if not 0 <= prefix <= tokens:
        raise ValueError(f"qk_norm_rope: prefix {prefix} outside a {tokens}-token sequence")
    cos, sin = rope if rope is not None else (qkv, qkv)
    head_block, dim_block = triton.next_power_of_2(heads), triton.next_power_of_2(hd)
    warps = min(max(head_block * dim_block // 512, 1), 8)
    _qk_norm_rope_kernel[(M,)](qkv, q_weight if norm else qkv, k_weight if norm else qkv, cos, sin, tokens, prefix,
                               width, eps, Q_HEADS=q_heads, HEADS=heads, HD=hd, HEAD_BLOCK=head_block,
                               DIM_BLOCK=dim_block, NORM=norm, ROPE=rope is not None, num_warps=warps)


@triton.jit
def _swiglu_kernel(g_ptr, y_ptr, scale_ptr, H, BLOCK: tl.constexpr, FP8: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    gate = tl.load(g_ptr + row * 2 * H + cols, mask=mask, other=0.0).to(tl.float32)
    value = tl.load(g_ptr + row * 2 * H + H + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.fdiv(gate, 1.0 + tl.exp2(-1.4426950408889634 * gate), ieee_rounding=False) * value  # silu(gate) * value
    if FP8:
        amax = tl.maximum(tl.max(tl.abs(y), axis=0), 1e-30)
        y = y * (448.0 / amax)
        tl.store(scale_ptr + row, amax / 448.0)
    tl.store(y_ptr + row * H + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def swiglu(gated: torch.Tensor, fp8: bool = False):
    """silu(gate) * value of a contiguous (M, 2H) [gate | value] GEMM output, one row a program: (M, H) in its dtype,
    or with ``fp8`` e4m3 rows and float32 (M, 1) scales."""
    M, two_h = gated.shape
    H = two_h // 2
    if not gated.is_contiguous() or two_h % 2 or H > 16384:
        raise ValueError(f"swiglu: needs a contiguous (M, 2H) input with H <= 16384, got {tuple(gated.shape)}")
    y = torch.empty(M, H, device=gated.device, dtype=torch.float8_e4m3fn if fp8 else gated.dtype)
    scale = torch.empty(M, 1, device=gated.device, dtype=torch.float32) if fp8 else y
    block, _, warps = _row_launch(H)
    _swiglu_kernel[(M,)](gated, y, scale, H, BLOCK=block, FP8=fp8, num_warps=warps)
    return (y, scale) if fp8 else y
