"""The Triton attention experiment (``triton_attention.py``, bf16 and FP8) against PyTorch's SDPA backends.

    python bench/attention.py --out bench/results/attention_h200.json          # CUDA: sweeps kernel configs
    TRITON_INTERPRET=1 python bench/attention.py --smoke                       # CPU: one tiny shape, one config

For each shape (the pose models' blocks at 1024x768, the MAE decoder at 1024x1024) it times SDPA's cuDNN and flash
backends on q/k/v sliced from the fused qkv output (as the model does), then ``triton_attention.attention`` for
every config of a small grid, bf16 and FP8 (its quantization pass timed apart), and reports each one's TFLOP/s
(4 N^2 D per head) and its largest difference from SDPA's output.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
import torch.nn.functional as F
from roofline import tflops
from triton_attention import FP8_TILE, attention, quantize_heads

from opensapiens.benchmark import device_name, software_versions, time_ms, write_json

SHAPES = {  # name -> batch, tokens, heads, head dim
    "0.3b": (16, 3072, 16, 64),
    "1b": (8, 3072, 24, 64),
    "2b-pad64": (4, 3072, 32, 64),
    "mae-decoder": (32, 4097, 16, 32),
}
BF16_CONFIGS = [(m, n, w, s) for m, n, w, s in itertools.product((64, 128), (64, 128), (4, 8), (2, 3, 4))
                if not (m == 64 and w == 8)]
FP8_CONFIGS = [(m, FP8_TILE, w, s) for m, w, s in itertools.product((64, 128, 256), (4, 8), (2, 3, 4))
               if not (m == 64 and w == 8)]


def sdpa_rows(qkv: torch.Tensor, scale: float, flop: float, iters: int) -> tuple[dict, torch.Tensor]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # B H N D views
    rows, ref = {}, None
    backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION] if qkv.is_cuda else [SDPBackend.MATH]
    for backend in backends:
        try:
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(q, k, v, scale=scale)
                ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale), qkv.device, iters=iters)
        except RuntimeError as e:
            rows[backend.name.lower()] = {"error": str(e).splitlines()[0][:160]}
            continue
        ref = out.transpose(1, 2) if ref is None else ref  # (B, N, H, D)
        rows[backend.name.lower()] = {"ms": round(ms, 4), "tflops": tflops(flop, ms)}
    return rows, ref


def kernel_rows(qkv: torch.Tensor, scale: float, flop: float, ref: torch.Tensor, fp8: bool, configs: list,
                iters: int) -> list[dict]:
    rows = []
    for config in configs:
        row = {"config": list(config)}
        try:
            out = attention(qkv, scale, fp8=fp8, config=config)
            row["ms"] = round(time_ms(lambda c=config: attention(qkv, scale, fp8=fp8, config=c), qkv.device,
                                      iters=iters), 4)
        except Exception as e:  # a config that does not compile (shared memory) or launch: recorded, not fatal
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            rows.append(row)
            continue
        row["tflops"] = tflops(flop, row["ms"])
        row["max_abs_diff_vs_sdpa"] = float((out.float() - ref.float()).abs().max())
        row["mean_abs_diff_vs_sdpa"] = float((out.float() - ref.float()).abs().mean())
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="one tiny shape and one config per dtype (CPU, interpreter)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float16  # the interpreter has no bf16 dot
    shapes = {"smoke": (1, 130, 2, 64)} if args.smoke else {k: SHAPES[k] for k in args.shapes.split(",")}
    bf16_configs, fp8_configs = ([BF16_CONFIGS[0]], [FP8_CONFIGS[0]]) if args.smoke else (BF16_CONFIGS, FP8_CONFIGS)
    result = {"device": device_name(device), "software": software_versions(), "shapes": {}}
    print(result["device"])
    torch.manual_seed(0)
    with torch.inference_mode():
        for name, (B, N, H, D) in shapes.items():
            qkv = torch.randn(B, N, 3, H, D, device=device, dtype=dtype)
            scale, flop = D**-0.5, 4 * B * H * N * N * D
            sdpa, ref = sdpa_rows(qkv, scale, flop, args.iters)
            row = {"batch": B, "tokens": N, "heads": H, "head_dim": D, "flop": flop, "sdpa": sdpa,
                   "bf16": kernel_rows(qkv, scale, flop, ref, False, bf16_configs, args.iters),
                   "fp8": kernel_rows(qkv, scale, flop, ref, True, fp8_configs, args.iters)}
            q, k, v = qkv.unbind(2)
            row["fp8_quantize_ms"] = round(time_ms(
                lambda q=q, k=k, v=v: (quantize_heads(q), quantize_heads(k), quantize_heads(v, True)), device,
                iters=args.iters), 4)
            result["shapes"][name] = row
            best = {key: max((r for r in row[key] if "tflops" in r), key=lambda r: r["tflops"], default=None)
                    for key in ("bf16", "fp8")}
            print(f"{name}: B{B} N{N} H{H} D{D}: " + ", ".join(
                f"{k} {v.get('tflops', v.get('error'))}" for k, v in sdpa.items()) + "; ours " + ", ".join(
                f"{k} {r['tflops']} TFLOP/s {r['config']} (max diff {r['max_abs_diff_vs_sdpa']:.4f})"
                for k, r in best.items() if r) + f"; fp8 quantize {row['fp8_quantize_ms']} ms", flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
