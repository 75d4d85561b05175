"""Where a transformer block's inference time goes, part by part, against the matmul peak.

    python bench/roofline.py --arch 1b --batch 8 --out bench/results/roofline_1b.json
    python bench/roofline.py --arch nano --batch 2 --input-size 64x48      # CPU smoke run

Times, on the shapes of one Sapiens block at 1024x768 (M = batch x tokens rows):

* every Linear as a cuBLAS GEMM (bf16, bias epilogue), the fc1 GEMM with cuBLASLt's fused bias + tanh-GELU
  epilogue, and the FP8 e4m3 GEMM with row-wise and with tensor-wise scales;
* attention per SDPA backend, on q/k/v sliced from the fused qkv output (as the model does) and contiguous;
* the memory-bound passes (LayerNorm, erf GELU, residual add) eager and compiled;
* one whole block, eager and compiled, against the sum of its parts; with --profile its top kernels.

The sum of the parts at their measured speeds is what the block could take if nothing else cost anything; the
gap between that and the measured block is what fusing or removing passes can still win.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from opensapiens.benchmark import device_name, matmul_peak_tflops, software_versions, time_ms, top_kernels, write_json
from opensapiens.inference.optimize import fast_attention, pad_attention_weights
from opensapiens.models.vit import Block, get_arch


def tflops(flop: float, ms: float) -> float:
    return round(flop / (ms * 1e-3) / 1e12, 1)


def gemm_row(name: str, M: int, k: int, n: int, device, dtype, iters: int) -> dict:
    """One Linear of the block, (M, k) @ (k, n) + bias: bf16, fused GELU epilogue (fc1), FP8 row-/tensor-wise."""
    x = torch.randn(M, k, device=device, dtype=dtype)
    w = torch.randn(n, k, device=device, dtype=dtype) / k**0.5
    b = torch.randn(n, device=device, dtype=dtype)
    flop = 2 * M * k * n
    row = {"flop": flop, "bf16_ms": time_ms(lambda: F.linear(x, w, b), device, iters=iters)}
    row["bf16_tflops"] = tflops(flop, row["bf16_ms"])
    if name == "fc1":
        row["gelu_epilogue_ms"] = time_ms(lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True), device,
                                          iters=iters)
        y = F.linear(x, w, b)
        row["gelu_pass_ms"] = time_ms(lambda: F.gelu(y), device, iters=iters)
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9):
        xq, wq = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
        scales = {"rowwise": (torch.ones(M, 1, device=device), torch.ones(1, n, device=device)),
                  "tensorwise": (torch.ones((), device=device), torch.ones((), device=device))}
        for mode, (sa, sb) in scales.items():
            try:
                ms = time_ms(lambda sa=sa, sb=sb: torch._scaled_mm(xq, wq.t(), scale_a=sa, scale_b=sb, bias=b,
                                                                   out_dtype=dtype), device, iters=iters)
                row[f"fp8_{mode}_ms"], row[f"fp8_{mode}_tflops"] = ms, tflops(flop, ms)
            except RuntimeError as e:
                row[f"fp8_{mode}_error"] = str(e).splitlines()[0][:160]
    print(f"  {name:>5} ({M}x{k} @ {k}x{n}): " + ", ".join(
        f"{key}={v:.3f}" if isinstance(v, float) else f"{key}={v}" for key, v in row.items() if key != "flop"),
        flush=True)
    return row


def gemm_rows(M: int, C: int, device, dtype, iters: int) -> dict:
    shapes = {"qkv": (C, 3 * C), "proj": (C, C), "fc1": (C, 4 * C), "fc2": (4 * C, C)}
    return {name: gemm_row(name, M, k, n, device, dtype, iters) for name, (k, n) in shapes.items()}


def attention_rows(B: int, N: int, C: int, heads: int, device, dtype, iters: int) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    hd = C // heads
    qkv = torch.randn(B, N, 3, heads, hd, device=device, dtype=dtype)
    strided = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # B nh N hd views, as Attention.forward makes them
    contiguous = [t.contiguous() for t in strided]
    flop = 4 * B * heads * N * N * hd
    rows = {"flop": flop}
    backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    if device.type != "cuda":
        backends = [SDPBackend.MATH]
    for backend in backends:
        for layout, (q, k, v) in (("strided", strided), ("contiguous", contiguous)):
            key = f"{backend.name.lower()}_{layout}"
            try:
                with sdpa_kernel([backend]):
                    ms = time_ms(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), device, iters=iters)
                rows[f"{key}_ms"], rows[f"{key}_tflops"] = ms, tflops(flop, ms)
            except RuntimeError as e:
                rows[f"{key}_error"] = str(e).splitlines()[0][:160]
    print("  attention: " + ", ".join(f"{k}={v}" for k, v in rows.items() if k.endswith(("tflops", "error"))),
          flush=True)
    return rows


def elementwise_rows(M: int, C: int, device, dtype, iters: int) -> dict:
    x = torch.randn(M, C, device=device, dtype=dtype)
    r = torch.randn(M, C, device=device, dtype=dtype)
    h = torch.randn(M, 4 * C, device=device, dtype=dtype)
    ln = torch.nn.LayerNorm(C, eps=1e-6, device=device, dtype=dtype)

    def add_norm(x, r):  # the residual add and the next LayerNorm, as compile fuses them
        y = x + r
        return y, ln(y)

    rows = {
        "layernorm_ms": time_ms(lambda: ln(x), device, iters=iters),
        "gelu_ms": time_ms(lambda: F.gelu(h), device, iters=iters),
        "residual_add_ms": time_ms(lambda: x + r, device, iters=iters),
    }
    if device.type == "cuda":
        fused = torch.compile(add_norm)
        rows["add_norm_compiled_ms"] = time_ms(lambda: fused(x, r), device, iters=iters)
        # bytes the fused add + norm must move at least: read x, r; write y, norm(y)
        rows["add_norm_compiled_gbps"] = round(4 * M * C * x.element_size() / (rows["add_norm_compiled_ms"] * 1e-3)
                                               / 1e9, 1)
    print("  elementwise: " + ", ".join(f"{k}={v:.3f}" for k, v in rows.items()), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="1b")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--input-size", default="1024x768")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--profile", action="store_true", help="print the top kernels of the compiled block")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    arch = get_arch(args.arch)
    H, W = (int(v) for v in args.input_size.split("x"))
    N = (H // 16) * (W // 16)
    B, C = args.batch, arch.embed_dim
    M = B * N
    print(f"{device_name(device)}: {arch.name} block, batch {B}, {N} tokens, width {C}, {arch.num_heads} heads")
    result = {"arch": arch.name, "batch": B, "tokens": N, "device": device_name(device),
              "software": software_versions(), "matmul_peak_tflops": round(matmul_peak_tflops(device), 1)}
    print(f"  matmul peak {result['matmul_peak_tflops']} TFLOP/s")
    with torch.inference_mode():
        result["gemm"] = gemm_rows(M, C, device, dtype, args.iters)
        result["attention"] = attention_rows(B, N, C, arch.num_heads, device, dtype, args.iters)
        result["elementwise"] = elementwise_rows(M, C, device, dtype, args.iters)

        block = Block(C, arch.num_heads, arch.mlp_ratio).to(device, dtype).eval()
        pad_attention_weights(block)
        x = torch.randn(B, N, C, device=device, dtype=dtype)
        with fast_attention():
            result["block_eager_ms"] = time_ms(lambda: block(x), device, iters=args.iters)
            if device.type == "cuda":
                compiled = torch.compile(block)
                result["block_compiled_ms"] = time_ms(lambda: compiled(x), device, iters=args.iters)
                if args.profile:
                    print(top_kernels(lambda: compiled(x), device, calls=4, rows=20))

    gemm_ms = sum(r["bf16_ms"] for r in result["gemm"].values())
    att = result["attention"]
    att_ms = min(v for k, v in att.items() if k.endswith("_strided_ms"))
    flop = sum(r["flop"] for r in result["gemm"].values()) + att["flop"]
    parts = {"gemm_ms": gemm_ms, "attention_ms": att_ms, "gemm_plus_attention_ms": gemm_ms + att_ms}
    peak = result["matmul_peak_tflops"]
    for key in ("block_eager_ms", "block_compiled_ms"):
        if key in result:
            parts[key.replace("_ms", "_mfu")] = round(tflops(flop, result[key]) / peak, 3)
    parts["bound_mfu_gemm_plus_attention"] = round(tflops(flop, gemm_ms + att_ms) / peak, 3)
    result["summary"] = parts
    print("  summary: " + ", ".join(f"{k}={v:.3f}" for k, v in parts.items())
          + f"; block eager {result['block_eager_ms']:.3f} ms"
          + (f", compiled {result['block_compiled_ms']:.3f} ms" if "block_compiled_ms" in result else ""), flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
