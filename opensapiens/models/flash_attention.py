"""FlashAttention forward and backward as Triton kernels, for the head dim PyTorch's fused kernels serve worst.

The MAE decoder (512 wide, 16 heads) attends over all 4097 tokens with head dim 32. cuDNN runs head dim 32 on its
64-wide tiles (half its tensor-core work is padding) and the decoder's 8 attention calls took 41 % of an MAE-0.3B
step on an H200 for a quarter of its FLOPs (`docs/performance.md`). These kernels run the head dim natively.

    forward    O = softmax(Q K^T * scale) V, one program per (query block, head), online softmax (FlashAttention-2);
               also writes each row's log-sum-exp (base 2) for the backward
    backward   dK, dV: one program per (key block, head) looping over the query blocks;
               dQ: one program per (query block, head) looping over the key blocks (no atomics);
               both recompute P = exp2(S * scale * log2 e - lse) from the saved log-sum-exp

q, k, v are read where the qkv projection writes them, a (B, N, 3, H, D) view, and the gradient is written in the
same layout, so neither direction copies or permutes. ``flash_attention`` is a ``torch.library`` custom op with its
autograd formula: ``torch.compile`` keeps it as one opaque call inside compiled blocks.

References: Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning", 2023.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _online_softmax_block(s, v, acc, m_i, l_i, qk_scale):
    """Fold one block of raw scores s = q k^T (BLOCK_M, BLOCK_N) into the running max, sum and output."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)  # log2 units
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s * qk_scale - m_new[:, None])  # one FMA and one exp2 per score
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    return acc, m_new, l_i


@triton.jit
def _attention_forward_kernel(qkv_ptr, o_ptr, lse_ptr, s_b, s_n, s_3, s_h, o_b, o_n, o_h, H, N, qk_scale,
                              D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
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
        acc, m_i, l_i = _online_softmax_block(s, tl.load(v_ptrs + start * s_n), acc, m_i, l_i, qk_scale)
    if n_full < N:
        cols = n_full + offs_n
        k_t = tl.load(k_ptrs + n_full * s_n, mask=cols[None, :] < N, other=0.0)
        v = tl.load(v_ptrs + n_full * s_n, mask=cols[:, None] < N, other=0.0)
        s = tl.where(cols[None, :] < N, tl.dot(q, k_t), float("-inf"))
        acc, m_i, l_i = _online_softmax_block(s, v, acc, m_i, l_i, qk_scale)
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
def _attention_dkdv_kernel(qkv_ptr, do_ptr, lse_ptr, delta_ptr, dqkv_ptr, s_b, s_n, s_3, s_h, do_b, do_n, do_h,
                           g_b, g_n, g_3, g_h, H, N, qk_scale, scale,
                           D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # this program's keys
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    base = qkv_ptr + b * s_b + h * s_h
    k = tl.load(base + s_3 + cols[:, None] * s_n + offs_d[None, :], mask=cols[:, None] < N, other=0.0)
    v = tl.load(base + 2 * s_3 + cols[:, None] * s_n + offs_d[None, :], mask=cols[:, None] < N, other=0.0)
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
        p_t = tl.exp2(tl.dot(k, q_t) * qk_scale - lse[None, :])  # (BLOCK_N, BLOCK_M) = P^T
        dv = tl.dot(p_t.to(do.dtype), do, dv)
        dp_t = tl.dot(v, tl.trans(do))  # (BLOCK_N, BLOCK_M) = (dO V^T)^T
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q_t.dtype), tl.trans(q_t), dk)
    g = dqkv_ptr + b * g_b + h * g_h + cols[:, None] * g_n + offs_d[None, :]
    tl.store(g + g_3, (dk * scale).to(dqkv_ptr.dtype.element_ty), mask=cols[:, None] < N)
    tl.store(g + 2 * g_3, dv.to(dqkv_ptr.dtype.element_ty), mask=cols[:, None] < N)


@triton.jit
def _attention_dq_kernel(qkv_ptr, do_ptr, lse_ptr, delta_ptr, dqkv_ptr, s_b, s_n, s_3, s_h, do_b, do_n, do_h,
                         g_b, g_n, g_3, g_h, H, N, qk_scale, scale,
                         D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
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
        p = tl.exp2(tl.dot(q, k_t) * qk_scale - lse[:, None])
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


@torch.library.custom_op("opensapiens::flash_attention_forward", mutates_args=())
def flash_attention_forward(qkv: torch.Tensor, scale: float, forward_config: list[int], dkdv_config: list[int],
                            dq_config: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, 3, H, D) -> output (B, N, H, D) in qkv's dtype and the rows' log-sum-exp (B, H, N), base 2. (The
    backward's configs ride along for the autograd formula.)"""
    _check(qkv)
    B, N, _, H, D = qkv.shape
    out = torch.empty(B, N, H, D, device=qkv.device, dtype=qkv.dtype)
    lse = torch.empty(B, H, N, device=qkv.device, dtype=torch.float32)
    block_m, block_n, warps, stages = forward_config
    _attention_forward_kernel[(triton.cdiv(N, block_m), B * H)](
        qkv, out, lse, qkv.stride(0), qkv.stride(1), qkv.stride(2), qkv.stride(3), out.stride(0), out.stride(1),
        out.stride(2), H, N, scale * LOG2E, D=D, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
        num_stages=stages)
    return out, lse


@flash_attention_forward.register_fake
def _(qkv, scale, forward_config, dkdv_config, dq_config):
    B, N, _, H, D = qkv.shape
    return qkv.new_empty(B, N, H, D), qkv.new_empty(B, H, N, dtype=torch.float32)


@torch.library.custom_op("opensapiens::flash_attention_backward", mutates_args=())
def flash_attention_backward(grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                             scale: float, dkdv_config: list[int], dq_config: list[int]) -> torch.Tensor:
    """The gradient of ``flash_attention_forward``'s output with respect to qkv, in qkv's (B, N, 3, H, D) layout."""
    B, N, _, H, D = qkv.shape
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    delta = torch.empty(B, H, N, device=qkv.device, dtype=torch.float32)
    _attention_delta_kernel[(triton.cdiv(N, 128), B * H)](
        out, grad_out, delta, out.stride(0), out.stride(1), out.stride(2), grad_out.stride(0), grad_out.stride(1),
        grad_out.stride(2), H, N, D=D, BLOCK=128, num_warps=4)
    dqkv = torch.empty(B, N, 3, H, D, device=qkv.device, dtype=qkv.dtype)
    args = (qkv, grad_out, lse, delta, dqkv, qkv.stride(0), qkv.stride(1), qkv.stride(2), qkv.stride(3),
            grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), dqkv.stride(0), dqkv.stride(1),
            dqkv.stride(2), dqkv.stride(3), H, N, scale * LOG2E, scale)
    block_m, block_n, warps, stages = dkdv_config
    _attention_dkdv_kernel[(triton.cdiv(N, block_n), B * H)](*args, D=D, BLOCK_M=block_m, BLOCK_N=block_n,
                                                             num_warps=warps, num_stages=stages)
    block_m, block_n, warps, stages = dq_config
    _attention_dq_kernel[(triton.cdiv(N, block_m), B * H)](*args, D=D, BLOCK_M=block_m, BLOCK_N=block_n,
                                                           num_warps=warps, num_stages=stages)
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
    """Launch configs of each kernel: (BLOCK_M queries, BLOCK_N keys, num_warps, num_stages)."""

    forward: tuple[int, int, int, int] = (64, 64, 4, 4)
    dkdv: tuple[int, int, int, int] = (64, 64, 4, 1)
    dq: tuple[int, int, int, int] = (128, 32, 4, 3)


# per head dim, swept on an H200 (bench/flash_attention_train.py): the MAE decoder (4097 tokens, head dim 32; the
# sweep of call 118, bench/results/flash_attention_exp2.json) and encoder (1025 tokens, head dim 64) at 1024x1024;
# other head dims take the head-dim-32 configs
CONFIGS = {32: FlashConfig(),
           64: FlashConfig((128, 128, 4, 3), (64, 64, 4, 1), (64, 64, 4, 2))}


def flash_attention(qkv: torch.Tensor, scale: float, config: FlashConfig | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v per head of a qkv projection output viewed as (B, N, 3, H, D) -> (B, N, H, D).

    Differentiable (custom backward kernels); CUDA tensors, or any device under ``TRITON_INTERPRET=1``.
    """
    c = config or CONFIGS.get(qkv.shape[-1], CONFIGS[32])
    return flash_attention_forward(qkv, scale, list(c.forward), list(c.dkdv), list(c.dq))[0]
