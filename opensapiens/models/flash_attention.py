"""FlashAttention forward and backward as Triton kernels, for the head dim PyTorch's fused kernels serve worst.

The MAE decoder (512 wide, 16 heads) attends over all 4097 tokens with head dim 32. cuDNN runs head dim 32 on its
64-wide tiles (half its tensor-core work is padding) and the decoder's 8 attention calls took 41 % of an MAE-0.3B
step on an H200 for a quarter of its FLOPs (`docs/performance.md`). These kernels run the head dim natively.

    forward    O = softmax(Q K^T * scale) V, one program per (query block, head), online softmax (FlashAttention-2);
               also writes each row's log-sum-exp (base 2) for the backward
    backward   two-kernel (the default): dK, dV: one program per (key block, head) looping over the query blocks;
               dQ: one program per (query block, head) looping over the key blocks (no atomics); both recompute
               P = exp2(S * scale * log2 e - lse) from the saved log-sum-exp
               one-pass (``FlashConfig(dq=())``): the dK/dV programs also add each tile's dS K into an fp32 dQ with
               atomic adds, so P is computed once, as FlashAttention-2/3/4 do; dQ's sum order then varies run to
               run (under ``torch.use_deterministic_algorithms`` the two-kernel backward runs instead)

At head dim 32 a score costs one exp2 (MUFU: 16 a clock per Hopper SM) against 4 * 32 forward FLOPs (tensor cores:
~4096 a clock), so a share of each score tile's exponentials can run as a polynomial on the FMA units instead
(``_exp2_fma``, FlashAttention-4's idea): the optional last element of each launch config, in quarters of the tile's
columns. Measured on an H200 (Triton 3.6, the decoder's shape, ``bench/flash_attention_train.py``): every share was
slower (the forward 4.22-4.25 ms at a quarter against 3.91-3.94 at none). Triton's loop already issues ~7 instructions
per score (sm_90 SASS from Triton 3.8), near MUFU's 8 cycles per warp-wide exp2, and an emulated exp2 issues ~7 more:
the issue slots bind, not MUFU. The one-pass backward came within 3-5 % of the two-kernel one (11.2 against 10.6-10.9
ms): its dS^T K product and the reduction into dQ cost about what the dQ kernel's recomputation does. Both stay options,
off by default.

q, k, v are read where the qkv projection writes them, a (B, N, 3, H, D) view, and the gradient is written in the
same layout, so neither direction copies or permutes. ``flash_attention`` is a ``torch.library`` custom op with its
autograd formula: ``torch.compile`` keeps it as one opaque call inside compiled blocks.

References: Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning", 2023; Dao et al.,
FlashAttention-4 (github.com/Dao-AILab/flash-attention, ``flash_attn/cute``): the exponential on the FMA units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _exp2_fma(x, DEGREE: tl.constexpr):
    """2^x in fp32 without the MUFU unit: FMA-pipe adds and a polynomial, integer adds and a shift.

    x = j + f with j = round(x) and f in [-1/2, 1/2]; 2^x = 2^j * poly(f), 2^j added to poly(f)'s exponent field.
    Rounding by adding 1.5 * 2^23 keeps j in the low mantissa bits of the sum and needs no float-to-int conversion
    (conversions and floor run at MUFU's 16 a clock per SM); the shift and add compile to one LEA. x is clamped at
    -125, so 2^-125 ~ 2e-38 stands for anything smaller and -inf (a masked score; what it multiplies is 0) and the
    exponent field stays normal; valid up to x = 127. The polynomials are minimax fits of 2^f in relative error on
    [-1/2, 1/2] (Remez exchange in float64): degree 3, 7.5e-5, for 16-bit inputs, whose P is rounded to 8 (bf16) or
    11 (fp16) bits before its GEMMs; degree 5, 7.5e-8 (2.3e-7 evaluated in fp32), for fp32 inputs.
    """
    x = tl.maximum(x, -125.0)
    t = x + 12582912.0  # 1.5 * 2^23: the sum's ulp is 1, so it rounds; its low mantissa bits hold j + 2^22
    f = x - (t - 12582912.0)
    if DEGREE == 3:  # Horner: c3 f^3 + c2 f^2 + c1 f + c0
        p = tl.fma(f, 0.05517166905792616, 0.2426111221932161)
        p = tl.fma(p, f, 0.6932609854606553)
        p = tl.fma(p, f, 0.9999280735394012)
    else:
        p = tl.fma(f, 0.0013276471992704046, 0.009675541334452163)
        p = tl.fma(p, f, 0.055507132734974075)
        p = tl.fma(p, f, 0.24022119723840044)
        p = tl.fma(p, f, 0.6931469670647609)
        p = tl.fma(p, f, 1.0000000716546849)
    # t's bits << 23 keep j's 9 low bits, two's complement: j * 2^23 added to p's exponent field
    return (p.to(tl.int32, bitcast=True) + (t.to(tl.int32, bitcast=True) << 23)).to(tl.float32, bitcast=True)


@triton.jit
def _column_halves(x):
    """(R, C) -> its left and right (R, C / 2) halves. Hopper's MMA accumulator layout holds the top column bits in
    each thread's registers, so splitting there moves no data (an interleaved split would cross lanes)."""
    return tl.split(tl.permute(tl.reshape(x, (x.shape[0], 2, x.shape[1] // 2)), (0, 2, 1)))


@triton.jit
def _column_join(a, b):
    """The inverse of ``_column_halves``."""
    return tl.reshape(tl.permute(tl.join(a, b), (0, 2, 1)), (a.shape[0], 2 * a.shape[1]))


@triton.jit
def _exp2_tile(x, FMA_QUARTERS: tl.constexpr, DEGREE: tl.constexpr):
    """2^x of a (R, C) score tile: FMA_QUARTERS (0-4) quarters of its columns by ``_exp2_fma``, the rest on MUFU.

    Splitting each tile (rather than alternating key blocks) keeps one loop body in which the scheduler can interleave
    both pipes' instructions on independent columns."""
    if FMA_QUARTERS == 0:
        p = tl.exp2(x)
    elif FMA_QUARTERS == 4:
        p = _exp2_fma(x, DEGREE)
    else:
        a, b = _column_halves(x)  # quarters a0 a1 b0 b1 -> FMA: 1: b1; 2: b; 3: a1 b
        if FMA_QUARTERS >= 2:
            b = _exp2_fma(b, DEGREE)
        else:
            b0, b1 = _column_halves(b)
            b = _column_join(tl.exp2(b0), _exp2_fma(b1, DEGREE))
        if FMA_QUARTERS <= 2:
            a = tl.exp2(a)
        else:
            a0, a1 = _column_halves(a)
            a = _column_join(tl.exp2(a0), _exp2_fma(a1, DEGREE))
        p = _column_join(a, b)
    return p


@triton.jit
def _online_softmax_block(s, v, acc, m_i, l_i, qk_scale, FMA_QUARTERS: tl.constexpr, DEGREE: tl.constexpr):
    """Fold one block of raw scores s = q k^T (BLOCK_M, BLOCK_N) into the running max, sum and output."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)  # log2 units
    alpha = tl.exp2(m_i - m_new)
    p = _exp2_tile(s * qk_scale - m_new[:, None], FMA_QUARTERS, DEGREE)  # an FMA and an exp2 per score
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    return acc, m_new, l_i


@triton.jit
def _attention_forward_kernel(qkv_ptr, o_ptr, lse_ptr, s_b, s_n, s_3, s_h, o_b, o_n, o_h, H, N, qk_scale,
                              D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                              FMA_QUARTERS: tl.constexpr, DEGREE: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    base = qkv_ptr + b * s_b + h * s_h
    k_ptrs = base + s_3 + offs_n[None, :] * s_n + offs_d[:, None]  # (D, BLOCK_N): K^T of the first key block
    v_ptrs = base + 2 * s_3 + offs_n[:, None] * s_n + offs_d[None, :]  # (BLOCK_N, D)
    q = tl.load(base + rows[:, None] * s_n + offs_d[None, :], mask=rows[:, None] < N, other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D), tl.float32)
    n_full = N // BLOCK_N * BLOCK_N  # whole key blocks: no masks; the partial last block after the loop
    for start in range(0, n_full, BLOCK_N):
        s = tl.dot(q, tl.load(k_ptrs + start * s_n))
        acc, m_i, l_i = _online_softmax_block(s, tl.load(v_ptrs + start * s_n), acc, m_i, l_i, qk_scale,
                                              FMA_QUARTERS, DEGREE)
    if n_full < N:
        cols = n_full + offs_n
        k_t = tl.load(k_ptrs + n_full * s_n, mask=cols[None, :] < N, other=0.0)
        v = tl.load(v_ptrs + n_full * s_n, mask=cols[:, None] < N, other=0.0)
        s = tl.where(cols[None, :] < N, tl.dot(q, k_t), float("-inf"))
        acc, m_i, l_i = _online_softmax_block(s, v, acc, m_i, l_i, qk_scale, FMA_QUARTERS, DEGREE)
    out = acc / l_i[:, None]
    tl.store(o_ptr + b * o_b + h * o_h + rows[:, None] * o_n + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=rows[:, None] < N)
    tl.store(lse_ptr + bh * N + rows, m_i + tl.log2(l_i), mask=rows < N)


@triton.jit
def _attention_delta_kernel(o_ptr, do_ptr, delta_ptr, o_b, o_n, o_h, do_b, do_n, do_h, H, N,
                            D: tl.constexpr, BLOCK: tl.constexpr):
    """delta_i = sum_d dO_id O_id: the row term of dS = P * (dP - delta)."""
    pid, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D)
    mask = rows[:, None] < N
    o = tl.load(o_ptr + b * o_b + h * o_h + rows[:, None] * o_n + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(do_ptr + b * do_b + h * do_h + rows[:, None] * do_n + offs_d[None, :], mask=mask, other=0.0)
    tl.store(delta_ptr + bh * N + rows, tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1), mask=rows < N)


@triton.jit
def _attention_dkdv_kernel(qkv_ptr, do_ptr, lse_ptr, delta_ptr, dqkv_ptr, dq_ptr, s_b, s_n, s_3, s_h, do_b, do_n,
                           do_h, g_b, g_n, g_3, g_h, H, N, qk_scale, scale,
                           D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           FMA_QUARTERS: tl.constexpr, DEGREE: tl.constexpr, ATOMIC_DQ: tl.constexpr):
    """dK, dV of one key block; with ATOMIC_DQ also each tile's dS K added into dq_ptr's fp32 (B, H, N, D)."""
    pid_n, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # this program's keys
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    base = qkv_ptr + b * s_b + h * s_h
    # keys past N load as 0: their dS K terms in dQ vanish; their dK, dV rows are not stored
    k = tl.load(base + s_3 + cols[:, None] * s_n + offs_d[None, :], mask=cols[:, None] < N, other=0.0)
    v = tl.load(base + 2 * s_3 + cols[:, None] * s_n + offs_d[None, :], mask=cols[:, None] < N, other=0.0)
    dq_ptrs = dq_ptr + bh.to(tl.int64) * N * D + offs_m[:, None] * D + offs_d[None, :]  # (BLOCK_M, D)
    dk = tl.zeros((BLOCK_N, D), tl.float32)
    dv = tl.zeros((BLOCK_N, D), tl.float32)
    for start in range(0, N, BLOCK_M):
        rows = start + offs_m
        q_t = tl.load(base + rows[None, :] * s_n + offs_d[:, None], mask=rows[None, :] < N, other=0.0)  # (D, M)
        do = tl.load(do_ptr + b * do_b + h * do_h + rows[:, None] * do_n + offs_d[None, :], mask=rows[:, None] < N,
                     other=0.0)
        # rows past N: lse = +inf makes their probabilities 0 (their q and dO are 0 as well)
        lse = tl.load(lse_ptr + bh * N + rows, mask=rows < N, other=float("inf"))
        delta = tl.load(delta_ptr + bh * N + rows, mask=rows < N, other=0.0)
        p_t = _exp2_tile(tl.dot(k, q_t) * qk_scale - lse[None, :], FMA_QUARTERS, DEGREE)  # (BLOCK_N, BLOCK_M) = P^T
        dv = tl.dot(p_t.to(do.dtype), do, dv)
        dp_t = tl.dot(v, tl.trans(do))  # (BLOCK_N, BLOCK_M) = (dO V^T)^T
        ds_t = (p_t * (dp_t - delta[None, :])).to(q_t.dtype)
        dk = tl.dot(ds_t, tl.trans(q_t), dk)
        if ATOMIC_DQ:  # this key block's share of dQ (scaled when it is written out)
            tl.atomic_add(dq_ptrs + start * D, tl.dot(tl.trans(ds_t), k), mask=rows[:, None] < N, sem="relaxed")
    g = dqkv_ptr + b * g_b + h * g_h + cols[:, None] * g_n + offs_d[None, :]
    tl.store(g + g_3, (dk * scale).to(dqkv_ptr.dtype.element_ty), mask=cols[:, None] < N)
    tl.store(g + 2 * g_3, dv.to(dqkv_ptr.dtype.element_ty), mask=cols[:, None] < N)


@triton.jit
def _attention_dq_kernel(qkv_ptr, do_ptr, lse_ptr, delta_ptr, dqkv_ptr, s_b, s_n, s_3, s_h, do_b, do_n, do_h,
                         g_b, g_n, g_3, g_h, H, N, qk_scale, scale,
                         D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         FMA_QUARTERS: tl.constexpr, DEGREE: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # this program's queries
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    base = qkv_ptr + b * s_b + h * s_h
    q = tl.load(base + rows[:, None] * s_n + offs_d[None, :], mask=rows[:, None] < N, other=0.0)
    do = tl.load(do_ptr + b * do_b + h * do_h + rows[:, None] * do_n + offs_d[None, :], mask=rows[:, None] < N,
                 other=0.0)
    lse = tl.load(lse_ptr + bh * N + rows, mask=rows < N, other=float("inf"))
    delta = tl.load(delta_ptr + bh * N + rows, mask=rows < N, other=0.0)
    dq = tl.zeros((BLOCK_M, D), tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + offs_n
        # keys past N load as 0: their dS * K terms vanish, no mask on the scores needed
        k_t = tl.load(base + s_3 + cols[None, :] * s_n + offs_d[:, None], mask=cols[None, :] < N, other=0.0)
        v_t = tl.load(base + 2 * s_3 + cols[None, :] * s_n + offs_d[:, None], mask=cols[None, :] < N, other=0.0)
        p = _exp2_tile(tl.dot(q, k_t) * qk_scale - lse[:, None], FMA_QUARTERS, DEGREE)
        ds = p * (tl.dot(do, v_t) - delta[:, None])
        dq = tl.dot(ds.to(k_t.dtype), tl.trans(k_t), dq)
    tl.store(dqkv_ptr + b * g_b + h * g_h + rows[:, None] * g_n + offs_d[None, :],
             (dq * scale).to(dqkv_ptr.dtype.element_ty), mask=rows[:, None] < N)


def _check(qkv: torch.Tensor) -> None:
    if qkv.ndim != 5 or qkv.shape[2] != 3 or qkv.stride(-1) != 1:
        raise ValueError(f"flash_attention: needs a (B, N, 3, H, D) qkv view with D contiguous, got shape "
                         f"{tuple(qkv.shape)} strides {qkv.stride()}")
    D = qkv.shape[-1]
    if D & (D - 1) or not 16 <= D <= 128:
        raise ValueError(f"flash_attention: head dim must be a power of two in 16..128, got {D}")


def _launch(config: list[int], qkv: torch.Tensor) -> dict:
    """A kernel's launch config (BLOCK_M, BLOCK_N, num_warps, num_stages[, FMA quarters]) as its keyword arguments;
    a config without the fifth element (from before the FMA exponentials) runs all of them on MUFU."""
    block_m, block_n, warps, stages, quarters = (*config, 0)[:5]
    if not 0 <= quarters <= 4:
        raise ValueError(f"flash_attention: FMA quarters of the exponentials must be 0..4, got {quarters}")
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": warps, "num_stages": stages,
            "FMA_QUARTERS": quarters, "DEGREE": 3 if qkv.element_size() == 2 else 5}  # see _exp2_fma


@torch.library.custom_op("opensapiens::flash_attention_forward", mutates_args=())
def flash_attention_forward(qkv: torch.Tensor, scale: float, forward_config: list[int], dkdv_config: list[int],
                            dq_config: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, 3, H, D) -> output (B, N, H, D) in qkv's dtype and the rows' log-sum-exp (B, H, N), base 2. (The
    backward's configs ride along for the autograd formula.)"""
    _check(qkv)
    B, N, _, H, D = qkv.shape
    out = torch.empty(B, N, H, D, device=qkv.device, dtype=qkv.dtype)
    lse = torch.empty(B, H, N, device=qkv.device, dtype=torch.float32)
    launch = _launch(forward_config, qkv)
    _attention_forward_kernel[(triton.cdiv(N, launch["BLOCK_M"]), B * H)](
        qkv, out, lse, qkv.stride(0), qkv.stride(1), qkv.stride(2), qkv.stride(3), out.stride(0), out.stride(1),
        out.stride(2), H, N, scale * LOG2E, D=D, **launch)
    return out, lse


@flash_attention_forward.register_fake
def _(qkv, scale, forward_config, dkdv_config, dq_config):
    B, N, _, H, D = qkv.shape
    return qkv.new_empty(B, N, H, D), qkv.new_empty(B, H, N, dtype=torch.float32)


@torch.library.custom_op("opensapiens::flash_attention_backward", mutates_args=())
def flash_attention_backward(grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                             scale: float, dkdv_config: list[int], dq_config: list[int]) -> torch.Tensor:
    """The gradient of ``flash_attention_forward``'s output with respect to qkv, in qkv's (B, N, 3, H, D) layout.
    An empty ``dq_config``: the one-pass backward, ``dkdv_config`` its launch config."""
    B, N, _, H, D = qkv.shape
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    if not dq_config and torch.are_deterministic_algorithms_enabled():  # atomic adds sum in a varying order
        dq_config = list(FlashConfig.dq)
    delta = torch.empty(B, H, N, device=qkv.device, dtype=torch.float32)
    _attention_delta_kernel[(triton.cdiv(N, 128), B * H)](
        out, grad_out, delta, out.stride(0), out.stride(1), out.stride(2), grad_out.stride(0), grad_out.stride(1),
        grad_out.stride(2), H, N, D=D, BLOCK=128, num_warps=4)
    dqkv = torch.empty(B, N, 3, H, D, device=qkv.device, dtype=qkv.dtype)
    # the one-pass backward's dQ accumulator; the two-kernel one passes dqkv in its place, unused
    dq = dqkv if dq_config else torch.zeros(B, H, N, D, device=qkv.device, dtype=torch.float32)
    args = (qkv, grad_out, lse, delta, dqkv)
    strides = (qkv.stride(0), qkv.stride(1), qkv.stride(2), qkv.stride(3), grad_out.stride(0), grad_out.stride(1),
               grad_out.stride(2), dqkv.stride(0), dqkv.stride(1), dqkv.stride(2), dqkv.stride(3), H, N,
               scale * LOG2E, scale)
    launch = _launch(dkdv_config, qkv)
    _attention_dkdv_kernel[(triton.cdiv(N, launch["BLOCK_N"]), B * H)](*args, dq, *strides, D=D,
                                                                        ATOMIC_DQ=not dq_config, **launch)
    if dq_config:
        launch = _launch(dq_config, qkv)
        _attention_dq_kernel[(triton.cdiv(N, launch["BLOCK_M"]), B * H)](*args, *strides, D=D, **launch)
    else:
        torch.mul(dq.transpose(1, 2), scale, out=dqkv[:, :, 0])  # (B, N, H, D) into the q slot, in qkv's dtype
    return dqkv


@flash_attention_backward.register_fake
def _(grad_out, qkv, out, lse, scale, dkdv_config, dq_config):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    qkv, scale, _, dkdv_config, dq_config = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse)
    ctx.mark_non_differentiable(lse)  # an output for the backward, not for the caller to differentiate
    ctx.args = scale, dkdv_config, dq_config


def _backward(ctx, grad_out: torch.Tensor, grad_lse: torch.Tensor | None):
    qkv, out, lse = ctx.saved_tensors
    return flash_attention_backward(grad_out, qkv, out, lse, *ctx.args), None, None, None, None


flash_attention_forward.register_autograd(_backward, setup_context=_setup_context)


@dataclass(frozen=True)
class FlashConfig:
    """Launch configs of each kernel: (BLOCK_M queries, BLOCK_N keys, num_warps, num_stages[, FMA quarters]), the
    optional last element (0 without it) the quarters (0-4) of each score tile's exponentials run on the FMA units.

    ``dq=()``: no dQ kernel; the one-pass backward (dQ by atomic adds) runs with ``dkdv`` as its launch config. This
    keeps every field a list of ints, the form of the custom op's arguments and of the sweep's JSON.
    """

    forward: tuple[int, ...] = (128, 64, 4, 4)
    dkdv: tuple[int, ...] = (128, 64, 4, 2)
    dq: tuple[int, ...] = (64, 64, 4, 2)


# per head dim, swept on an H200 (bench/flash_attention_train.py): the MAE decoder (4097 tokens, head dim 32) and
# encoder (1025 tokens, head dim 64) at 1024x1024; other head dims take the head-dim-32 configs
CONFIGS = {32: FlashConfig(),
           64: FlashConfig((128, 128, 4, 3), (64, 64, 4, 1), (64, 64, 4, 2))}


def flash_attention(qkv: torch.Tensor, scale: float, config: FlashConfig | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v per head of a qkv projection output viewed as (B, N, 3, H, D) -> (B, N, H, D).

    Differentiable (custom backward kernels); CUDA tensors, or any device under ``TRITON_INTERPRET=1``.
    """
    c = config or CONFIGS.get(qkv.shape[-1], CONFIGS[32])
    return flash_attention_forward(qkv, scale, list(c.forward), list(c.dkdv), list(c.dq))[0]
