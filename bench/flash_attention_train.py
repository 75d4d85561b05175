"""Our Triton FlashAttention (``opensapiens.models.flash_attention``) against SDPA's backends, forward and backward.

    python bench/flash_attention_train.py --out bench/results/flash_attention_train.json   # CUDA: sweeps configs
    TRITON_INTERPRET=1 python bench/flash_attention_train.py --smoke                       # CPU: tiny shape

For each shape (the MAE-0.3B decoder at 1024x1024, head dim 32; its encoder, head dim 64; fine-tuning 0.3B at
1024x768) it times SDPA's cuDNN and flash backends (and FlashAttention-4 where ``flash_attn.cute`` imports) forward
and forward + backward, on q/k/v sliced from one qkv tensor as the model does; then our kernels: the forward over a
grid of launch configs; the backward's dK/dV kernel over a grid with the dQ kernel fixed, then the dQ kernel with the
best dK/dV config; the best backward's time by kernel. Accuracy: output and qkv gradient of SDPA's backends, FA4's
and ours against float32 math on two images of the batch. The best configs are written under "best_config" and can
be handed to ``bench_mae.py --flash-config``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from roofline import tflops
from torch.nn.attention import SDPBackend, sdpa_kernel

from opensapiens.benchmark import device_name, software_versions, time_ms_or_error, top_kernels, write_json
from opensapiens.models import fa4_attention as fa4
from opensapiens.models.flash_attention import FlashConfig, flash_attention, flash_attention_backward

SHAPES = {"mae-decoder": (32, 4097, 16, 32), "mae-encoder": (32, 1025, 16, 64),  # batch, tokens, heads, head dim
          "finetune-0.3b": (8, 3072, 16, 64)}  # fine-tuning 0.3B at 1024x768
# (BLOCK_M queries, BLOCK_N keys, warps, stages): near the best of the earlier sweeps (mae-decoder,
# bench/results/flash_attention_mae-decoder_call20.json and flash_attention_pipeline.json)
FORWARD = [(128, 64, 4, 3), (128, 64, 4, 4), (64, 64, 4, 4), (128, 32, 4, 4), (128, 128, 4, 3), (256, 64, 8, 3)]
DKDV = [(128, 64, 4, 2), (32, 128, 4, 1), (64, 64, 4, 1), (64, 128, 4, 1), (64, 128, 4, 2), (128, 64, 4, 3),
        (64, 64, 4, 2), (64, 64, 4, 3), (128, 32, 4, 2), (128, 32, 4, 3), (256, 32, 8, 2)]
DQ = [(128, 32, 4, 2), (64, 64, 4, 2), (128, 32, 4, 1), (64, 128, 4, 2), (128, 64, 8, 1), (128, 32, 4, 3),
      (64, 64, 4, 3), (64, 32, 4, 2), (128, 64, 4, 2)]


def sdpa(qkv: torch.Tensor, scale: float, backend: SDPBackend) -> torch.Tensor:
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # B H N D views
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2)  # B N H D


def fwd_bwd(fn, qkv: torch.Tensor, grad: torch.Tensor):
    def run():
        x = qkv.detach().requires_grad_()
        fn(x).backward(grad)
        return x.grad

    return run


def sweep(rows: list[dict], make, configs, device, iters: int, flop: float) -> dict:
    """Time ``make(config)()`` for every config; returns the fastest row."""
    for config in configs:
        row = {"config": list(config), **time_ms_or_error(make(config), device, iters)}
        rows.append(row)
        if "ms" in row:
            row["tflops"] = tflops(flop, row["ms"])
    timed = [r for r in rows if "ms" in r]
    if not timed:
        raise RuntimeError(f"no config ran: {rows[:3]}")
    return min(timed, key=lambda r: r["ms"])


def errors(out: torch.Tensor, grad_qkv: torch.Tensor, ref_out: torch.Tensor, ref_grad: torch.Tensor) -> dict:
    return {"out_max_abs": float((out.float() - ref_out).abs().max()),
            "out_rel_rms": float((out.float() - ref_out).norm() / ref_out.norm()),
            "grad_max_abs": float((grad_qkv.float() - ref_grad).abs().max()),
            "grad_rel_rms": float((grad_qkv.float() - ref_grad).norm() / ref_grad.norm())}


def measure(row: dict, name: str, B: int, N: int, H: int, D: int, dtype, device, grids, backends,
            iters: int) -> None:
    """Every timing and the accuracy of one shape, into ``row`` as they come (a timeout keeps what was done)."""
    qkv = torch.randn(B, N, 3, H, D, device=device, dtype=dtype)
    grad = torch.randn(B, N, H, D, device=device, dtype=dtype)
    scale, flop = D**-0.5, 4 * B * H * N * N * D  # forward; the backward does 2.5x that
    row.update({"batch": B, "tokens": N, "heads": H, "head_dim": D, "forward_flop": flop, "sdpa": {}})
    for backend in backends:
        fwd = time_ms_or_error(lambda b=backend: sdpa(qkv, scale, b), device, iters)
        both = time_ms_or_error(fwd_bwd(lambda x, b=backend: sdpa(x, scale, b), qkv, grad), device, iters)
        row["sdpa"][backend.name.lower()] = {"forward": fwd, "forward_backward": both}
        if "ms" in both:
            both["tflops"] = tflops(3.5 * flop, both["ms"])
    row["forward"], row["dkdv"], row["dq"] = [], [], []
    fwd = sweep(row["forward"], lambda c: lambda: flash_attention(qkv, scale, FlashConfig(forward=c)), grids[0],
                device, iters, flop)
    out, lse = torch.ops.opensapiens.flash_attention_forward(qkv, scale, fwd["config"], [], [])

    def backward(dkdv_config, dq_config):
        return lambda: flash_attention_backward(grad, qkv, out, lse, scale, list(dkdv_config), list(dq_config))

    # the dK/dV grid with the default dQ config, then the dQ grid with the best dK/dV config
    dkdv = sweep(row["dkdv"], lambda c: backward(c, FlashConfig().dq), grids[1], device, iters, 2.5 * flop)
    dq = sweep(row["dq"], lambda c: backward(dkdv["config"], c), grids[2], device, iters, 2.5 * flop)
    config = FlashConfig(forward=tuple(fwd["config"]), dkdv=tuple(dkdv["config"]), dq=tuple(dq["config"]))
    row["best_config"] = {"forward": list(config.forward), "dkdv": list(config.dkdv), "dq": list(config.dq)}
    kernels = {"ours": lambda x: flash_attention(x, scale, config)}
    if device.type == "cuda" and fa4.available():
        kernels["fa4"] = lambda x: fa4.fa4_attention(x, scale)
    for key, fn in kernels.items():
        r = row[key] = {"forward": time_ms_or_error(lambda fn=fn: fn(qkv), device, iters),
                        "forward_backward": time_ms_or_error(fwd_bwd(fn, qkv, grad), device, iters)}
        if "ms" in r["forward_backward"]:
            r["forward_backward"]["tflops"] = tflops(3.5 * flop, r["forward_backward"]["ms"])
    if device.type == "cuda":
        row["backward_kernels"] = top_kernels(backward(config.dkdv, config.dq), device, rows=8)
    # accuracy on two images against float32 math
    small, g = qkv[:2].float().requires_grad_(), grad[:2].float()
    ref_out = sdpa(small, scale, SDPBackend.MATH)
    ref_out.backward(g)
    ref_grad = small.grad
    row["accuracy"] = {}
    candidates = dict(kernels)
    candidates.update({b.name.lower(): (lambda x, b=b: sdpa(x, scale, b)) for b in backends})
    for key, fn in candidates.items():
        x = qkv[:2].detach().clone().requires_grad_()
        o = fn(x)
        o.backward(grad[:2])
        row["accuracy"][key] = errors(o.detach(), x.grad, ref_out.detach(), ref_grad)
    print(f"{name}: B{B} N{N} H{H} D{D}", flush=True)
    for key, r in {**row["sdpa"], **{k: row[k] for k in kernels}}.items():
        print(f"  {key:<18} forward {r['forward'].get('ms', r['forward'].get('error'))} ms, forward+backward "
              f"{r['forward_backward'].get('ms', r['forward_backward'].get('error'))} ms "
              f"({r['forward_backward'].get('tflops', '-')} TFLOP/s)", flush=True)
    print(f"  best {row['best_config']}", flush=True)
    if "backward_kernels" in row:
        print(row["backward_kernels"], flush=True)
    for key, e in row["accuracy"].items():
        print(f"  vs fp32 {key:<18} " + ", ".join(f"{k} {v:.2e}" for k, v in e.items()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="one tiny shape, one config per kernel (CPU, interpreter)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float16  # the interpreter has no bf16 dot
    shapes = {"smoke": (2, 70, 2, 32)} if args.smoke else {k: SHAPES[k] for k in args.shapes.split(",")}
    grids = ([FORWARD[0]], [DKDV[0]], [DQ[0]]) if args.smoke else (FORWARD, DKDV, DQ)
    backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION] if device.type == "cuda" else []
    result = {"device": device_name(device), "software": software_versions(), "shapes": {}}
    print(result["device"], flush=True)
    torch.manual_seed(0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"stopped by SIGTERM; partial results in {args.out}"))
    try:
        for name, (B, N, H, D) in shapes.items():
            result["shapes"][name] = {}
            measure(result["shapes"][name], name, B, N, H, D, dtype, device, grids, backends, args.iters)
    finally:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
