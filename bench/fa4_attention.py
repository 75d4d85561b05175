"""FlashAttention-4 (the optional flash-attn-4 package) against cuDNN and our Triton kernels, on our shapes.

    python bench/fa4_attention.py --out bench/results/fa4_attention.json     # CUDA, flash-attn-4 installed

Training shapes (forward and forward + backward): the MAE-0.3B decoder (4097 tokens, head dim 32) and encoder (1025
tokens, head dim 64) at 1024x1024, fine-tuning 0.3B at 1024x768. Inference shapes (forward only) at 1024x768: the
0.3B, 1B and 2B (head dim 60 padded to 64) backbones at the batches `opensapiens bench` uses. Every kernel reads
q/k/v sliced from one qkv tensor, as the model does. Also FA4's first call per shape (its CuTe DSL kernels are
compiled then) and the accuracy of each kernel's output and qkv gradient against float32 math on two images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from flash_attention_train import errors, fwd_bwd, sdpa
from roofline import tflops
from torch.nn.attention import SDPBackend

from opensapiens.benchmark import device_name, software_versions, time_ms_or_error
from opensapiens.models.fa4_attention import fa4_attention
from opensapiens.models.flash_attention import flash_attention

# name -> (batch, tokens, heads, head dim, with backward)
SHAPES = {"mae-decoder": (32, 4097, 16, 32, True), "mae-encoder": (32, 1025, 16, 64, True),
          "finetune-0.3b": (8, 3072, 16, 64, True), "infer-0.3b": (16, 3072, 16, 64, False),
          "infer-1b": (8, 3072, 24, 64, False), "infer-2b": (4, 3072, 32, 64, False)}


def measure(B: int, N: int, H: int, D: int, backward: bool, device, iters: int) -> dict:
    qkv = torch.randn(B, N, 3, H, D, device=device, dtype=torch.bfloat16)
    grad = torch.randn(B, N, H, D, device=device, dtype=torch.bfloat16)
    scale, flop = D**-0.5, 4 * B * H * N * N * D  # forward; the backward does 2.5x that
    row: dict = {"batch": B, "tokens": N, "heads": H, "head_dim": D, "forward_flop": flop}
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    try:
        fa4_attention(qkv, scale)
        if backward:
            fwd_bwd(lambda x: fa4_attention(x, scale), qkv, grad)()
        torch.cuda.synchronize()
        row["fa4_first_call_s"] = round(time.perf_counter() - t0, 2)
    except Exception as e:  # noqa: BLE001 - reported, the other kernels still run
        row["fa4_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    kernels = {"cudnn": lambda x: sdpa(x, scale, SDPBackend.CUDNN_ATTENTION),
               "fa4": lambda x: fa4_attention(x, scale)}
    if D in (32, 64):
        kernels["ours"] = lambda x: flash_attention(x, scale)
    for name, fn in kernels.items():
        r = row[name] = {"forward": time_ms_or_error(lambda fn=fn: fn(qkv), device, iters)}
        if "ms" in r["forward"]:
            r["forward"]["tflops"] = tflops(flop, r["forward"]["ms"])
        if backward:
            r["forward_backward"] = time_ms_or_error(fwd_bwd(fn, qkv, grad), device, iters)
            if "ms" in r["forward_backward"]:
                r["forward_backward"]["tflops"] = tflops(3.5 * flop, r["forward_backward"]["ms"])
    small, g = qkv[:2].float().requires_grad_(), grad[:2].float()
    ref_out = sdpa(small, scale, SDPBackend.MATH)
    ref_out.backward(g)
    row["accuracy"] = {}
    for name, fn in kernels.items():
        x = qkv[:2].detach().clone().requires_grad_()
        try:
            o = fn(x)
            o.backward(grad[:2])
            row["accuracy"][name] = errors(o.detach(), x.grad, ref_out.detach(), small.grad)
        except Exception as e:  # noqa: BLE001
            row["accuracy"][name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device("cuda")
    result = {"device": device_name(device), "software": software_versions(), "shapes": {}}
    print(result["device"], flush=True)
    torch.manual_seed(0)
    try:
        for name in args.shapes.split(","):
            row = result["shapes"][name] = measure(*SHAPES[name], device, args.iters)
            print(f"{name}: B{row['batch']} N{row['tokens']} H{row['heads']} D{row['head_dim']}  FA4 first call "
                  f"{row.get('fa4_first_call_s', row.get('fa4_error'))}", flush=True)
            for kernel in ("cudnn", "ours", "fa4"):
                if kernel in row:
                    line = ", ".join(f"{part} {r.get('ms', r.get('error'))} ms ({r.get('tflops', '-')} TFLOP/s)"
                                     for part, r in row[kernel].items())
                    print(f"  {kernel:<6} {line}", flush=True)
            for kernel, e in row["accuracy"].items():
                print(f"  vs fp32 {kernel:<6} " + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}"
                                                          for k, v in e.items()), flush=True)
    finally:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
