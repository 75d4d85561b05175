"""Probe: does Triton's warp specialization (``tl.range(..., warp_specialize=True)``, Hopper pass in Triton 3.6) speed
up our FlashAttention forward on the MAE decoder's shape (32 x 4097 tokens, 16 heads x 32)?

    python bench/ws_probe.py --out bench/results/ws_probe.json          # CUDA

The kernel is ``opensapiens.models.flash_attention``'s forward with the loop made a ``tl.range`` that can carry the
flag (a copy: the package's kernel stays as measured). Each config runs with and without it; errors (a config the
pass refuses) are recorded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from roofline import tflops

from opensapiens.benchmark import device_name, software_versions, time_ms

LOG2E = 1.4426950408889634


@triton.jit
def _forward(qkv_ptr, o_ptr, s_b, s_n, s_3, s_h, o_b, o_n, o_h, H, N, qk_scale,
             D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WS: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    base = qkv_ptr + b * s_b + h * s_h
    q = tl.load(base + rows[:, None] * s_n + offs_d[None, :], mask=rows[:, None] < N, other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D), tl.float32)
    for start in tl.range(0, N, BLOCK_N, warp_specialize=WS):
        cols = start + offs_n
        k_t = tl.load(base + s_3 + cols[None, :] * s_n + offs_d[:, None], mask=cols[None, :] < N, other=0.0)
        v = tl.load(base + 2 * s_3 + cols[:, None] * s_n + offs_d[None, :], mask=cols[:, None] < N, other=0.0)
        s = tl.dot(q, k_t) * qk_scale
        s = tl.where(cols[None, :] < N, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    tl.store(o_ptr + b * o_b + h * o_h + rows[:, None] * o_n + offs_d[None, :],
             (acc / l_i[:, None]).to(o_ptr.dtype.element_ty), mask=rows[:, None] < N)


def forward(qkv: torch.Tensor, scale: float, config: tuple[int, int, int, int], ws: bool) -> torch.Tensor:
    B, N, _, H, D = qkv.shape
    out = torch.empty(B, N, H, D, device=qkv.device, dtype=qkv.dtype)
    block_m, block_n, warps, stages = config
    _forward[(triton.cdiv(N, block_m), B * H)](
        qkv, out, *qkv.stride()[:4], out.stride(0), out.stride(1), out.stride(2), H, N, scale * LOG2E, D=D,
        BLOCK_M=block_m, BLOCK_N=block_n, WS=ws, num_warps=warps, num_stages=stages)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device("cuda")
    B, N, H, D = 32, 4097, 16, 32
    qkv = torch.randn(B, N, 3, H, D, device=device, dtype=torch.bfloat16)
    scale, flop = D**-0.5, 4 * B * H * N * N * D
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    ref = F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2)
    rows = []
    for config in [(128, 64, 4, 3), (128, 64, 4, 4), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3),
                   (256, 64, 8, 3)]:
        for ws in (False, True):
            row = {"config": list(config), "warp_specialize": ws}
            try:
                out = forward(qkv, scale, config, ws)
                row["ms"] = round(time_ms(lambda c=config, w=ws: forward(qkv, scale, c, w), device, iters=10), 4)
                row["tflops"] = tflops(flop, row["ms"])
                row["max_abs_diff_vs_sdpa"] = float((out.float() - ref.float()).abs().max())
            except Exception as e:  # the pass may refuse a config: recorded
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            print(row, flush=True)
            rows.append(row)
    if args.out:
        args.out.write_text(json.dumps({"device": device_name(device), "software": software_versions(),
                                        "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
