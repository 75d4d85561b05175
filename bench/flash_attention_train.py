"""Our Triton FlashAttention (``opensapiens.models.flash_attention``) against SDPA's backends, forward and backward.

    python bench/flash_attention_train.py --out bench/results/flash_attention_train.json   # CUDA: sweeps configs
    TRITON_INTERPRET=1 python bench/flash_attention_train.py --smoke                       # CPU: tiny shape

For each shape (the MAE-0.3B decoder at 1024x1024, head dim 32; its encoder, head dim 64; fine-tuning 0.3B at
1024x768) it times SDPA's cuDNN and flash backends (and FlashAttention-4 where ``flash_attn.cute`` imports) forward and
forward + backward, on q/k/v sliced from one qkv tensor as the model does; then our kernels: the forward over a grid
of launch configs; the backward's dK/dV kernel over a grid with the dQ kernel fixed, then the dQ kernel with the best
dK/dV config; the best backward's time by kernel. Accuracy: output and qkv gradient of SDPA's backends and of ours
against float32 math on two images of the batch. The best configs are written under "best_config" (FlashConfig's
fields as lists) and can be handed to ``bench_mae.py --flash-config``.

On the --variants shapes (the decoder's by default) it also times the exponentials partly on the FMA units and the
one-pass backward, from the grids' best (20 more compiles, ~30 s on an H200):
    "forward_exp2"   the two fastest forward configs with 1, 2, 3 of 4 quarters of the exp2 on the FMA units
    "dkdv_exp2"      the two-kernel backward: the best dK/dV config with 1, 2 quarters (the best dQ config), then
    "dq_exp2"        the best dQ config with 1, 2 quarters (the best dK/dV config so far)
    "atomic"         the one-pass backward (dQ by atomic adds) over ATOMIC with all exp2 on MUFU, then
    "atomic_exp2"    its best config with 1, 2, 3 quarters
and "best_config" takes the fastest forward and the faster backward of the two (``"dq": []``: the one-pass one).
Every row's ms is the whole forward or backward call, so rows of one family compare directly.
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
QUARTERS = (1, 2, 3)  # of each score tile's exponentials on the FMA units (the backward's two-kernel rows: 1, 2)
# the one-pass backward: (BLOCK_M queries, BLOCK_N keys, warps, stages), the fastest of two H200 runs (Triton 3.6; one
# stage beat two and three, 8 warps at 128 x 64 took twice as long) and neighbours
ATOMIC = [(64, 128, 4, 1), (64, 128, 4, 2), (64, 64, 4, 1), (64, 256, 8, 1), (32, 128, 4, 2), (128, 64, 4, 1),
          (128, 128, 8, 1)]


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


def fastest(rows: list[dict]) -> dict | None:
    return min((r for r in rows if "ms" in r), key=lambda r: r["ms"], default=None)


def time_rows(rows: list[dict], make, configs, device, iters: int, flop: float) -> dict | None:
    """Time ``make(config)()`` for every config into ``rows``; returns the fastest row of ``rows`` (None: none ran)."""
    for config in configs:
        row = {"config": list(config), **time_ms_or_error(make(config), device, iters)}
        rows.append(row)
        if "ms" in row:
            row["tflops"] = tflops(flop, row["ms"])
    return fastest(rows)


def sweep(rows: list[dict], make, configs, device, iters: int, flop: float) -> dict:
    """``time_rows`` over a grid that must give a config."""
    best = time_rows(rows, make, configs, device, iters, flop)
    if best is None:
        raise RuntimeError(f"no config ran: {rows[:3]}")
    return best


def sweep_variants(row: dict, config: FlashConfig, forward, backward, grids, device, iters: int,
                   flop: float) -> FlashConfig:
    """The exponentials partly on the FMA units and the one-pass backward, from the launch-config sweep's best
    ``config`` (module docstring; ``grids``: the quarters and the one-pass configs); returns the fastest config.
    ``forward(config)`` and ``backward(dkdv_config, dq_config)`` make the calls to time."""
    quarters, one_pass_grid = grids
    top = sorted((r for r in row["forward"] if "ms" in r), key=lambda r: r["ms"])[:2]
    time_rows(row.setdefault("forward_exp2", []), forward, [(*r["config"], q) for r in top for q in quarters],
              device, iters, flop)
    fwd = fastest(row["forward"] + row["forward_exp2"])["config"]
    # the two-kernel backward from the dQ sweep's best row (the best dK/dV and dQ configs)
    best, dkdv, dq = fastest(row["dq"]), config.dkdv, config.dq
    exp2 = time_rows(row.setdefault("dkdv_exp2", []), lambda c: backward(c, dq), [(*dkdv, q) for q in quarters[:2]],
                     device, iters, 2.5 * flop)
    if exp2 and exp2["ms"] < best["ms"]:
        best, dkdv = exp2, exp2["config"]
    exp2 = time_rows(row.setdefault("dq_exp2", []), lambda c: backward(dkdv, c), [(*dq, q) for q in quarters[:2]],
                     device, iters, 2.5 * flop)
    if exp2 and exp2["ms"] < best["ms"]:
        best, dq = exp2, exp2["config"]
    one_pass = time_rows(row.setdefault("atomic", []), lambda c: backward(c, ()), one_pass_grid, device, iters,
                         2.5 * flop)
    if one_pass:
        time_rows(row.setdefault("atomic_exp2", []), lambda c: backward(c, ()),
                  [(*one_pass["config"], q) for q in quarters], device, iters, 2.5 * flop)
        one_pass = fastest(row["atomic"] + row["atomic_exp2"])
    row["backward_ms"] = {"two-kernel": best["ms"], "atomic": one_pass["ms"] if one_pass else None}
    if one_pass and one_pass["ms"] < best["ms"]:
        dkdv, dq = one_pass["config"], ()
    return FlashConfig(tuple(fwd), tuple(dkdv), tuple(dq))


def errors(out: torch.Tensor, grad_qkv: torch.Tensor, ref_out: torch.Tensor, ref_grad: torch.Tensor) -> dict:
    return {"out_max_abs": float((out.float() - ref_out).abs().max()),
            "out_rel_rms": float((out.float() - ref_out).norm() / ref_out.norm()),
            "grad_max_abs": float((grad_qkv.float() - ref_grad).abs().max()),
            "grad_rel_rms": float((grad_qkv.float() - ref_grad).norm() / ref_grad.norm())}


def measure(row: dict, name: str, B: int, N: int, H: int, D: int, dtype, device, grids, variant_grids,
            backends, iters: int) -> None:
    """Every timing and the accuracy of one shape, into ``row`` as they come (a timeout keeps what was done);
    ``variant_grids`` (quarters, one-pass configs), or None: ``sweep_variants`` too."""
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

    def forward(config):
        return lambda: flash_attention(qkv, scale, FlashConfig(forward=config))

    fwd = sweep(row["forward"], forward, grids[0], device, iters, flop)
    out, lse = torch.ops.opensapiens.flash_attention_forward(qkv, scale, fwd["config"], [], [])

    def backward(dkdv_config, dq_config):
        return lambda: flash_attention_backward(grad, qkv, out, lse, scale, list(dkdv_config), list(dq_config))

    # the dK/dV grid with the default dQ config, then the dQ grid with the best dK/dV config
    dkdv = sweep(row["dkdv"], lambda c: backward(c, FlashConfig().dq), grids[1], device, iters, 2.5 * flop)
    dq = sweep(row["dq"], lambda c: backward(dkdv["config"], c), grids[2], device, iters, 2.5 * flop)
    config = FlashConfig(forward=tuple(fwd["config"]), dkdv=tuple(dkdv["config"]), dq=tuple(dq["config"]))
    if variant_grids is not None:
        config = sweep_variants(row, config, forward, backward, variant_grids, device, iters, flop)
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
    # accuracy on two images against float32 math: the best config; where the variants ran, the fastest one-pass
    # config and the best configs with half the exponentials on the FMA units; FA4; SDPA's backends
    small, g = qkv[:2].float().requires_grad_(), grad[:2].float()
    ref_out = sdpa(small, scale, SDPBackend.MATH)
    ref_out.backward(g)
    ref_grad = small.grad
    row["accuracy"] = {}
    candidates = dict(kernels)
    one_pass = fastest(row.get("atomic", []) + row.get("atomic_exp2", []))
    if one_pass:
        one_pass_config = FlashConfig(config.forward, tuple(one_pass["config"]), ())
        half = FlashConfig(*((*c[:4], 2) if c else () for c in (config.forward, config.dkdv, config.dq)))
        candidates["ours-one-pass"] = lambda x: flash_attention(x, scale, one_pass_config)
        candidates["ours-fma-half"] = lambda x: flash_attention(x, scale, half)
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
    for family in ("forward_exp2", "dkdv_exp2", "dq_exp2", "atomic", "atomic_exp2"):
        if family in row:
            print(f"  {family:<12} " + ", ".join(f"{r['config']}: {r.get('ms', r.get('error'))}" for r in row[family]),
                  flush=True)
    if "backward_ms" in row:
        print(f"  fastest backward, ms: {row['backward_ms']}", flush=True)
    print(f"  best {row['best_config']}", flush=True)
    if "backward_kernels" in row:
        print(row["backward_kernels"], flush=True)
    for key, e in row["accuracy"].items():
        print(f"  vs fp32 {key:<18} " + ", ".join(f"{k} {v:.2e}" for k, v in e.items()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--variants", default="mae-decoder",
                    help="shapes that also time the FMA exponentials and the one-pass backward ('' for none)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="one tiny shape, one config per kernel (CPU, interpreter)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float16  # the interpreter has no bf16 dot
    shapes = {"smoke": (2, 70, 2, 32)} if args.smoke else {k: SHAPES[k] for k in args.shapes.split(",")}
    grids = ([FORWARD[0]], [DKDV[0]], [DQ[0]]) if args.smoke else (FORWARD, DKDV, DQ)
    variant_grids = ((2,), ATOMIC[:1]) if args.smoke else (QUARTERS, ATOMIC)
    variants = {"smoke"} if args.smoke else set(args.variants.split(","))
    backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION] if device.type == "cuda" else []
    result = {"device": device_name(device), "software": software_versions(), "shapes": {}}
    print(result["device"], flush=True)
    torch.manual_seed(0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"stopped by SIGTERM; partial results in {args.out}"))
    try:
        for name, (B, N, H, D) in shapes.items():
            result["shapes"][name] = {}
            measure(result["shapes"][name], name, B, N, H, D, dtype, device, grids,
                    variant_grids if name in variants else None, backends, args.iters)
    finally:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
