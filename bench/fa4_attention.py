"""FlashAttention-4 (the optional flash-attn-4 package) against cuDNN and our Triton kernels, on our shapes.

    python bench/fa4_attention.py --out bench/results/fa4_attention.json     # CUDA, flash-attn-4 installed
    python bench/fa4_attention.py --tiles --shapes mae-decoder,mae-encoder --out bench/results/fa4_configs.json

Training shapes (forward and forward + backward): the MAE-0.3B decoder (4097 tokens, head dim 32) and encoder (1025
tokens, head dim 64) at 1024x1024, fine-tuning 0.3B at 1024x768. Inference shapes (forward only) at 1024x768: the
0.3B, 1B and 2B (head dim 60 padded to 64) backbones at the batches `opensapiens bench` uses. Every kernel reads
q/k/v sliced from one qkv tensor, as the model does. Also FA4's first call per shape (its CuTe DSL kernels are
compiled then) and the accuracy of each kernel's output and qkv gradient against float32 math on two images.

--tiles: FA4's Hopper tile choice against other tilings instead. FA4 picks tiles by head dim from configs
benchmarked on an H100 at head dims 64-256; the MAE decoder's head dim 32 takes the head-dim-64 ones. The candidates
are the feasible ones (register and shared-memory budgets) that FA4's ``sm90_config_search.py`` ranks best for head
dims 32 and 64. Forward and backward are timed separately; each candidate's output and gradient are checked against
FA4's own (same math, other tiling). The best tiles per head dim go under "best", in the form ``bench_mae.py
--fa4-config`` and ``models/fa4_attention.py``'s tables take. (Until commit cddd4ff this sweep was
``bench/fa4_configs.py``; ``fa4_configs.json`` came from it.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from flash_attention_train import errors, fwd_bwd, sdpa
from roofline import tflops
from torch.nn.attention import SDPBackend

from opensapiens.benchmark import device_name, software_versions, time_ms_or_error, write_json
from opensapiens.models import fa4_attention as fa4
from opensapiens.models.fa4_attention import fa4_attention
from opensapiens.models.flash_attention import flash_attention

# name -> (batch, tokens, heads, head dim, with backward)
SHAPES = {"mae-decoder": (32, 4097, 16, 32, True), "mae-encoder": (32, 1025, 16, 64, True),
          "finetune-0.3b": (8, 3072, 16, 64, True), "infer-0.3b": (16, 3072, 16, 64, False),
          "infer-1b": (8, 3072, 24, 64, False), "infer-2b": (4, 3072, 32, 64, False)}

# (tile_m, tile_n, P V from registers, intra-warpgroup overlap); None: FA4's own choice (192 x 128, True, True)
FORWARD = {32: [None, (128, 256, True, True), (128, 256, True, False), (128, 192, True, True), (192, 192, True, False),
                (192, 128, True, False), (128, 128, True, True)],
           64: [None, (128, 256, True, False), (128, 192, True, True), (192, 192, True, False), (128, 128, True, True)]}


def _bwd(m, n, sdp_swap, dkv_swap, dq_swap, a_sdp, a_dkv, a_dq, stages_pds=2) -> dict:
    return {"m_block_size": m, "n_block_size": n, "num_stages_Q": 2, "num_stages_dO": 2, "num_stages_PdS": stages_pds,
            "SdP_swapAB": sdp_swap, "dKV_swapAB": dkv_swap, "dQ_swapAB": dq_swap, "AtomLayoutMSdP": a_sdp,
            "AtomLayoutNdKV": a_dkv, "AtomLayoutMdQ": a_dq}


# FA4's own for head dims <= 64: 128 x 128, SdP swapped, atom layouts (1, 2, 2)
BACKWARD = {32: [None, _bwd(64, 256, True, False, False, 1, 2, 1), _bwd(128, 128, True, False, False, 1, 2, 1),
                 _bwd(64, 128, True, False, False, 1, 2, 1), _bwd(64, 192, False, False, False, 1, 1, 1),
                 _bwd(128, 128, False, False, False, 2, 2, 2), _bwd(128, 128, True, False, False, 1, 2, 2, 1)],
            64: [None, _bwd(64, 192, False, True, False, 1, 2, 1), _bwd(64, 192, False, True, True, 1, 2, 2),
                 _bwd(128, 128, True, False, True, 1, 2, 2), _bwd(64, 128, True, False, False, 1, 2, 1)]}


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


def sweep_tiles(B: int, N: int, H: int, D: int, backward: bool, device, iters: int) -> dict:
    """FA4's own Hopper tiles (None) against the feasible alternatives, forward and backward timed apart."""
    qkv = torch.randn(B, N, 3, H, D, device=device, dtype=torch.bfloat16)
    grad = torch.randn(B, N, H, D, device=device, dtype=torch.bfloat16)
    scale, flop = D**-0.5, 4 * B * H * N * N * D
    fa4.FORWARD_TILES.pop(D, None)
    fa4.BACKWARD_TILES.pop(D, None)
    ref_out, lse = fa4.fa4_attention_forward(qkv, scale)
    ref_grad = fa4.fa4_attention_backward(grad, qkv, ref_out, lse, scale, False)

    def diff(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.float() - b.float()).norm() / b.float().norm())

    row: dict = {"batch": B, "tokens": N, "heads": H, "head_dim": D, "forward": [], "backward": []}
    for tiles in FORWARD[D]:
        fa4.FORWARD_TILES.pop(D, None)
        if tiles is not None:
            fa4.FORWARD_TILES[D] = tiles
        r = {"tiles": tiles, **time_ms_or_error(lambda: fa4.fa4_attention_forward(qkv, scale), device, iters)}
        if "ms" in r:
            r["tflops"] = tflops(flop, r["ms"])
            r["rel_diff_vs_default"] = diff(fa4.fa4_attention_forward(qkv, scale)[0], ref_out)
        row["forward"].append(r)
        print(f"  forward  {tiles}: {r.get('ms', r.get('error'))} ms  {r.get('tflops', '')}", flush=True)
    fa4.FORWARD_TILES.pop(D, None)
    for fields in BACKWARD[D]:
        fa4.BACKWARD_TILES.pop(D, None)
        if fields is not None:
            fa4.BACKWARD_TILES[D] = fields
        run = lambda: fa4.fa4_attention_backward(grad, qkv, ref_out, lse, scale, False)  # noqa: E731
        r = {"tiles": fields, **time_ms_or_error(run, device, iters)}
        if "ms" in r:
            r["tflops"] = tflops(2.5 * flop, r["ms"])
            r["rel_diff_vs_default"] = diff(run(), ref_grad)
        row["backward"].append(r)
        short = None if fields is None else tuple(fields.values())
        print(f"  backward {short}: {r.get('ms', r.get('error'))} ms  {r.get('tflops', '')}", flush=True)
    fa4.BACKWARD_TILES.pop(D, None)
    best = {}
    for part in ("forward", "backward"):
        ok = [r for r in row[part] if "ms" in r and r["rel_diff_vs_default"] < 1e-2]
        if ok:
            best[part] = min(ok, key=lambda r: r["ms"])["tiles"]
    row["best"] = best
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--tiles", action="store_true", help="sweep FA4's Hopper tiles instead (head dims 32 and 64)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device("cuda")
    result = {"device": device_name(device), "software": software_versions(), "shapes": {}}
    print(result["device"], flush=True)
    torch.manual_seed(0)
    try:
        for name in args.shapes.split(","):
            if args.tiles:
                print(name, SHAPES[name][:4], flush=True)
                result["shapes"][name] = sweep_tiles(*SHAPES[name], device, args.iters)
                continue
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
        write_json(args.out, result)


if __name__ == "__main__":
    main()
