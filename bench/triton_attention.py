"""An experiment kept for its measurements: FlashAttention's forward as a Triton kernel, bf16 and FP8.

``bench/attention.py`` times it against SDPA's cuDNN and flash backends (`docs/performance.md`). On an H200 it ran
bf16 attention at 400-418 TFLOP/s against cuDNN's 456-472 on the Sapiens shapes (head dim 64), and FP8 at 363-392
TFLOP/s plus a 0.13-0.18 ms quantization pass; only for the MAE decoder's head dim 32 was it faster than cuDNN
(243 against 203 TFLOP/s, forward only). So no path of the package uses it.

q, k, v are read where the qkv GEMM writes them, (B, N, 3, H, D), and the output is written as (B, N, H, D). In FP8
mode q, k and v are e4m3 with one scale per (batch, head, 64-token tile), made by ``quantize_heads``; the
probabilities (times 256, relative to the running row maximum) are cast to e4m3 for the second GEMM.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_TILE = 64  # tokens per quantization scale; the FP8 kernel's key/value block


@triton.jit
def _attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, q_scale_ptr, k_scale_ptr, v_scale_ptr,
                      stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                      stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_on,
                      H, N, n_tiles, qk_scale,
                      HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FP8: tl.constexpr,
                      EVEN_N: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_base, k_base, v_base = q_ptr + b * stride_qb + h * stride_qh, k_ptr + b * stride_kb + h * stride_kh, \
        v_ptr + b * stride_vb + h * stride_vh
    q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :], mask=offs_m[:, None] < N, other=0.0)
    # scores in log2 units: exp2(s - m) = exp((q.k - max) * scale)
    if FP8:  # one scale per 64-token tile of q: a per-row factor, folded into the one multiply the scores need
        row_scale = tl.load(q_scale_ptr + bh * n_tiles + offs_m // 64, mask=offs_m < N, other=0.0) * qk_scale
    else:
        row_scale = tl.full((BLOCK_M,), qk_scale, tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + offs_n
        if FP8:  # q, k, v quantized into zero-padded (B*H, tiles*64, D) buffers, v transposed: no masks
            k = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None])  # (D, BLOCK_N)
            s = tl.dot(q, k) * (row_scale[:, None] * tl.load(k_scale_ptr + bh * n_tiles + start // BLOCK_N))
        else:
            k = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None], mask=cols[None, :] < N, other=0.0)
            s = tl.dot(q, k) * row_scale[:, None]
        if not EVEN_N:
            s = tl.where(cols[None, :] < N, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        if FP8:  # p * 256 (max 256 < e4m3's 448) keeps small probabilities out of e4m3's subnormals; l scales alike
            p = tl.exp2(s - (m_new[:, None] - 8.0))
            v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd)  # tokens contiguous
            pv = tl.dot(p.to(tl.float8e4nv), v)
            acc = acc * alpha[:, None] + pv * tl.load(v_scale_ptr + bh * n_tiles + start // BLOCK_N)
        else:
            p = tl.exp2(s - m_new[:, None])
            v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=cols[:, None] < N,
                        other=0.0)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    out = acc / l_i[:, None]
    o_base = o_ptr + b * stride_ob + h * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_on + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=offs_m[:, None] < N)


@triton.jit
def _quantize_kernel(x_ptr, y_ptr, scale_ptr, stride_xb, stride_xh, stride_xn, stride_ybh, stride_yn, stride_yd,
                     H, N, n_tiles,
                     HEAD_DIM: tl.constexpr, TILE: tl.constexpr):
    tile, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    rows = tile * TILE + tl.arange(0, TILE)
    offs_d = tl.arange(0, HEAD_DIM)
    x = tl.load(x_ptr + b * stride_xb + h * stride_xh + rows[:, None] * stride_xn + offs_d[None, :],
                mask=rows[:, None] < N, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.max(tl.abs(x), axis=1), axis=0), 1e-30) / 448.0
    y = (x / scale).to(tl.float8e4nv)  # rows past N are zeros: the attention kernel reads whole tiles unmasked
    tl.store(y_ptr + bh * stride_ybh + rows[:, None] * stride_yn + offs_d[None, :] * stride_yd, y)
    tl.store(scale_ptr + bh * n_tiles + tile, scale)


def quantize_heads(x: torch.Tensor, transpose: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, H, D) view (any strides, D contiguous) -> e4m3 (B*H, T*64, D) zero-padded, or (B*H, D, T*64) with
    ``transpose``, and float32 scales (B*H, T): one per 64-token tile of each head, amax / 448."""
    B, N, H, D = x.shape
    n_tiles = triton.cdiv(N, FP8_TILE)
    shape = (B * H, D, n_tiles * FP8_TILE) if transpose else (B * H, n_tiles * FP8_TILE, D)
    y = torch.empty(shape, device=x.device, dtype=torch.float8_e4m3fn)
    scales = torch.empty(B * H, n_tiles, device=x.device, dtype=torch.float32)
    stride_yn, stride_yd = (1, y.stride(1)) if transpose else (y.stride(1), 1)
    _quantize_kernel[(n_tiles, B * H)](x, y, scales, x.stride(0), x.stride(2), x.stride(1), y.stride(0), stride_yn,
                                       stride_yd,
                                       H, N, n_tiles, HEAD_DIM=D, TILE=FP8_TILE, num_warps=4)
    return y, scales


ATTENTION_CONFIGS = {  # (fp8) -> BLOCK_M, BLOCK_N, num_warps, num_stages
    False: (128, 64, 4, 3),
    True: (128, FP8_TILE, 4, 3),
}


def attention(qkv: torch.Tensor, scale: float, fp8: bool = False,
              config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v per head for a qkv GEMM output viewed as (B, N, 3, H, D); returns (B, N, H, D).

    D must be a power of two (16..256). ``fp8``: q, k, v and the probabilities in e4m3 (``quantize_heads``), for
    Hopper's FP8 tensor cores; output in qkv's dtype.
    """
    B, N, three, H, D = qkv.shape
    if three != 3 or qkv.stride(-1) != 1 or D & (D - 1) or not 16 <= D <= 256:
        raise ValueError(f"attention: needs a (B, N, 3, H, D) qkv view with D a power of two in 16..256 and "
                         f"contiguous, got shape {tuple(qkv.shape)} strides {qkv.stride()}")
    q, k, v = qkv.unbind(2)  # (B, N, H, D) views
    out = torch.empty(B, N, H, D, device=qkv.device, dtype=qkv.dtype)
    block_m, block_n, warps, stages = config or ATTENTION_CONFIGS[fp8]
    n_tiles = triton.cdiv(N, FP8_TILE)
    if fp8:
        if block_n != FP8_TILE or block_m % FP8_TILE:
            raise ValueError(f"attention: FP8 needs BLOCK_N == {FP8_TILE} and BLOCK_M a multiple of it, got {config}")
        (q, q_scale), (k, k_scale), (v, v_scale) = quantize_heads(q), quantize_heads(k), quantize_heads(v, True)
        tile_rows = n_tiles * FP8_TILE * D  # stride between heads of the padded buffers; (b, h) = (0, b*H + h)
        q_strides, k_strides = (H * tile_rows, tile_rows, D), (H * tile_rows, tile_rows, D)
        v_strides = (H * tile_rows, tile_rows, 1, n_tiles * FP8_TILE)
    else:
        q_scale = k_scale = v_scale = q  # unused
        q_strides, k_strides = (q.stride(0), q.stride(2), q.stride(1)), (k.stride(0), k.stride(2), k.stride(1))
        v_strides = (v.stride(0), v.stride(2), v.stride(1), 1)
    grid = (triton.cdiv(N, block_m), B * H)
    _attention_kernel[grid](q, k, v, out, q_scale, k_scale, v_scale, *q_strides, *k_strides, *v_strides,
                            out.stride(0), out.stride(2), out.stride(1), H, N, n_tiles, scale * 1.4426950408889634,
                            HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, FP8=fp8, EVEN_N=N % block_n == 0,
                            num_warps=warps, num_stages=stages)
    return out
