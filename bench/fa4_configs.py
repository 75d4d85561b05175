"""FlashAttention-4's Hopper tile choices on the MAE attention shapes: its own heuristic against other feasible tiles.

    python bench/fa4_configs.py --out bench/results/fa4_configs.json     # CUDA (Hopper), flash-attn-4 installed

FA4 picks tiles by head dim from configs benchmarked on an H100 at head dims 64-256; the MAE decoder's head dim 32
takes the head-dim-64 ones. The candidates here are the feasible ones (register and shared-memory budgets) that
FA4's ``sm90_config_search.py`` ranks best for head dims 32 and 64. Forward and backward are timed separately, on
q/k/v sliced from one qkv tensor as in the model; each candidate's output and gradient are checked against the
default's (same math, other tiling: bf16 rounding apart, they agree). The best tiles per head dim go under "best",
in the form ``bench_mae.py --fa4-config`` and ``models/fa4_attention.py``'s tables take.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from roofline import tflops

from opensapiens.benchmark import device_name, software_versions, time_ms_or_error
from opensapiens.models import fa4_attention as fa4

SHAPES = {"mae-decoder": (32, 4097, 16, 32), "mae-encoder": (32, 1025, 16, 64)}  # batch, tokens, heads, head dim
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


def sweep(B: int, N: int, H: int, D: int, device, iters: int) -> dict:
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
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device("cuda")
    result = {"device": device_name(device), "software": software_versions(), "shapes": {}}
    print(result["device"], flush=True)
    torch.manual_seed(0)
    try:
        for name in args.shapes.split(","):
            print(name, SHAPES[name], flush=True)
            result["shapes"][name] = sweep(*SHAPES[name], device, args.iters)
    finally:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
