"""Our bias + GELU op (``opensapiens.models.gelu``) against Inductor's and eager GELU, forward and backward.

    python bench/gelu_kernels.py --out bench/results/gelu_kernels.json    # CUDA: both MAE shapes, config sweep
    TRITON_INTERPRET=1 python bench/gelu_kernels.py --smoke               # CPU: a tiny shape, one config

Shapes: the MLP hidden activations of an MAE-0.3B pretraining step at 1024x1024, batch 32: encoder (32 x 1025 rows
x 4096), decoder (32 x 4097 rows x 2048); bf16 activations, fp32 bias (autocast leaves the parameter fp32).

    ours       y = bias_gelu(h, b): the fc1 GEMM output without bias in, one kernel; backward: one kernel writing
               dh and per-program column sums of dh, then a small .sum(0) for db
    compiled   torch.compile of F.gelu(h + b.to(bf16)) (what autocast's addmm + GELU amount to), forward and
               backward (autograd.grad for h and b: Inductor's dh kernel and its bias-gradient reduction)
    eager      the same without compile

Times are medians of CUDA-event-timed calls; GB/s counts the bytes a fused kernel must move at least: forward 4
bytes an element (read h, write y), backward 6 (read dy and h, write dh), bias and partial sums not counted; the same
count for every implementation. Accuracy: max abs error of y, dh and db against float32 math on the same inputs.
Our launch configs are swept (forward, then backward) and the best written under "best_config"; assign it to
``opensapiens.models.gelu.CONFIG`` to use it.
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from opensapiens.benchmark import device_name, software_versions, time_ms_or_error, write_json

SHAPES = {"mae-encoder": (32 * 1025, 4096), "mae-decoder": (32 * 4097, 2048)}  # rows, columns
FORWARD = [(16, 256, 4), (8, 256, 4), (32, 256, 8), (8, 512, 4), (16, 512, 8), (4, 1024, 4), (32, 128, 4),
           (64, 128, 8)]  # (BLOCK_M, BLOCK_C, warps)
BACKWARD = [(16, 256, 4, 8), (8, 256, 4, 8), (32, 256, 8, 4), (16, 128, 4, 8), (16, 512, 8, 4), (16, 256, 4, 4),
            (16, 256, 4, 16), (8, 512, 4, 8), (32, 128, 4, 8), (16, 256, 4, 64),
            (32, 256, 8, 64)]  # (BLOCK_M, BLOCK_C, warps, programs per SM)


def with_rate(r: dict, nbytes: int) -> dict:
    if "ms" in r:
        r["gb_per_s"] = round(nbytes / (r["ms"] * 1e-3) / 1e9, 1)
    return r


def errors(y, dh, db, ref) -> dict:
    """Max abs errors against the float32 ``ref`` = (y, dh, db); db's also relative to its largest entry."""
    db_err = float((db.float() - ref[2]).abs().max())
    return {"y_max_abs": float((y.detach().float() - ref[0]).abs().max()),
            "dh_max_abs": float((dh.float() - ref[1]).abs().max()),
            "db_max_abs": db_err, "db_max_abs_over_max": db_err / float(ref[2].abs().max())}


def measure(row: dict, M: int, C: int, dtype, device, grids, iters: int) -> None:
    from opensapiens.models import gelu

    torch.manual_seed(0)
    h = torch.randn(M, C, device=device, dtype=dtype)
    b = torch.randn(C, device=device) * 0.5
    dy = torch.randn(M, C, device=device, dtype=dtype)
    elements = M * C
    fwd_bytes, bwd_bytes = 2 * elements * h.element_size(), 3 * elements * h.element_size()  # see the docstring
    row.update({"rows": M, "columns": C, "dtype": str(dtype), "forward_bytes": fwd_bytes, "backward_bytes": bwd_bytes})

    # float32 reference
    x = (h.float() + b).requires_grad_()
    y_ref = F.gelu(x)
    (dh_ref,) = torch.autograd.grad(y_ref, x, dy.float())
    ref = (y_ref.detach(), dh_ref, dh_ref.sum(0))
    del x

    def plain(h, b):
        return F.gelu(h + b.to(h.dtype))

    baselines = {"eager": plain, "compiled": torch.compile(plain, dynamic=False)}
    row["baselines"], row["accuracy"] = {}, {}
    for name, fn in baselines.items():
        hr, br = h.detach().requires_grad_(), b.detach().requires_grad_()
        y = fn(hr, br)
        grads = torch.autograd.grad(y, (hr, br), dy, retain_graph=True)
        row["accuracy"][name] = errors(y, *grads, ref)
        r = {"forward": with_rate(time_ms_or_error(lambda fn=fn: fn(h, b), device, iters), fwd_bytes),
             "backward": with_rate(time_ms_or_error(lambda y=y, hr=hr, br=br: torch.autograd.grad(
                 y, (hr, br), dy, retain_graph=True), device, iters), bwd_bytes)}
        row["baselines"][name] = r
        del y, grads

    # ours: the forward grid, then the backward grid (the ops called directly)
    row["forward"], row["backward"] = [], []
    for config in grids[0]:
        run = functools.partial(gelu.bias_gelu_forward, h, b, list(config), [])
        row["forward"].append(with_rate({"config": list(config), **time_ms_or_error(run, device, iters)}, fwd_bytes))
    for config in grids[1]:
        run = functools.partial(gelu.bias_gelu_backward, dy, h, b, list(config))
        row["backward"].append(with_rate({"config": list(config), **time_ms_or_error(run, device, iters)}, bwd_bytes))
    best = [min((r for r in rows if "ms" in r), key=lambda r: r["ms"]) for rows in (row["forward"], row["backward"])]
    config = gelu.GeluConfig(tuple(best[0]["config"]), tuple(best[1]["config"]))
    row["best_config"] = {"forward": list(config.forward), "backward": list(config.backward)}
    hr, br = h.detach().requires_grad_(), b.detach().requires_grad_()
    y = gelu.bias_gelu(hr, br, config)
    grads = torch.autograd.grad(y, (hr, br), dy, retain_graph=True)
    row["accuracy"]["ours"] = errors(y, *grads, ref)
    row["ours"] = {"forward": best[0], "backward": with_rate(time_ms_or_error(lambda: torch.autograd.grad(
        y, (hr, br), dy, retain_graph=True), device, iters), bwd_bytes)}  # through autograd, as the baselines

    print(f"{M} x {C} {dtype}: bytes forward {fwd_bytes / 1e9:.2f} GB, backward {bwd_bytes / 1e9:.2f} GB", flush=True)
    for name, r in {**row["baselines"], "ours": row["ours"]}.items():
        f, bw = r["forward"], r["backward"]
        print(f"  {name:<9} forward {f.get('ms', f.get('error'))} ms ({f.get('gb_per_s', '-')} GB/s), backward incl. "
              f"db {bw.get('ms', bw.get('error'))} ms ({bw.get('gb_per_s', '-')} GB/s)", flush=True)
    print(f"  best {row['best_config']}", flush=True)
    for name, e in row["accuracy"].items():
        print(f"  vs fp32 {name:<9} " + ", ".join(f"{k} {v:.2e}" for k, v in e.items()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="a tiny shape, one config each (CPU under the interpreter)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not (args.smoke and os.environ.get("TRITON_INTERPRET") == "1"):
        raise SystemExit("no CUDA: only `TRITON_INTERPRET=1 python bench/gelu_kernels.py --smoke` runs on the CPU")
    shapes = {"smoke": (37, 300)} if args.smoke else {k: SHAPES[k] for k in args.shapes.split(",")}
    grids = ([FORWARD[0]], [BACKWARD[0]]) if args.smoke else (FORWARD, BACKWARD)
    result = {"device": device_name(device), "software": software_versions(), "shapes": {}}
    print(result["device"], flush=True)
    try:
        for name, (M, C) in shapes.items():
            result["shapes"][name] = {}
            measure(result["shapes"][name], M, C, torch.bfloat16, device, grids, args.iters)
    finally:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
