"""Experiment: cuDNN's FP8 attention (through the cudnn frontend's Python graph API) on Sapiens' shapes.

    python bench/cudnn_fp8_attention.py --out bench/results/cudnn_fp8_attention.json   # needs nvidia-cudnn-frontend

PyTorch's SDPA runs cuDNN attention in bf16 only (~470 TFLOP/s on an H200 at head dim 64). cuDNN also has an FP8
forward (e4m3 q/k/v with per-tensor descales) that PyTorch does not expose. This script builds it as a cudnn
frontend graph reading q/k/v straight from a (B, N, 3, H, D) e4m3 tensor (the fused qkv layout) and times it beside
PyTorch's bf16 cuDNN attention, with the output in bf16 and in e4m3, and reports the largest difference from the
bf16 result. It is a measurement, not a code path of the package.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from roofline import tflops

from opensapiens.benchmark import device_name, software_versions, time_ms, write_json

SHAPES = {"0.3b": (16, 3072, 16, 64), "1b": (8, 3072, 24, 64)}


def fp8_graph(cudnn, handle, B: int, N: int, H: int, D: int, out_dtype):
    """A cuDNN graph: O = softmax(q k^T * scale) v with e4m3 q/k/v sliced from a (B, N, 3, H, D) tensor."""
    g = cudnn.pygraph(io_data_type=cudnn.data_type.FP8_E4M3, intermediate_data_type=cudnn.data_type.FLOAT,
                      compute_data_type=cudnn.data_type.FLOAT, handle=handle)
    dims, strides = [B, H, N, D], [N * 3 * H * D, D, 3 * H * D, 1]
    q, k, v = (g.tensor(name=n, dim=dims, stride=strides, data_type=cudnn.data_type.FP8_E4M3) for n in "qkv")
    scalars = {n: g.tensor(name=n, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=cudnn.data_type.FLOAT)
               for n in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")}
    o, _stats, amax_s, amax_o = g.sdpa_fp8(q, k, v, *scalars.values(), is_inference=True, attn_scale=D**-0.5,
                                           use_causal_mask=False, name="sdpa_fp8")
    o.set_output(True).set_dim(dims).set_stride([N * H * D, D, H * D, 1]).set_data_type(out_dtype)
    for amax in (amax_s, amax_o):
        amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(cudnn.data_type.FLOAT)
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    return g, (q, k, v), scalars, (o, amax_s, amax_o)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device("cuda")
    result = {"device": device_name(device), "software": software_versions(), "shapes": {}}
    try:
        import cudnn
    except Exception as e:  # the frontend is an optional package
        result["error"] = f"import cudnn: {type(e).__name__}: {e}"
        print(result["error"])
        cudnn = None
    if cudnn is not None:
        result["cudnn_frontend"] = getattr(cudnn, "__version__", "?")
        result["cudnn_backend"] = cudnn.backend_version() if hasattr(cudnn, "backend_version") else None
        handle = cudnn.create_handle()
        cudnn.set_stream(handle, torch.cuda.current_stream().cuda_stream)
    torch.manual_seed(0)
    for name, (B, N, H, D) in SHAPES.items():
        flop = 4 * B * H * N * N * D
        qkv = torch.randn(B, N, 3, H, D, device=device, dtype=torch.bfloat16)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        ref = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # (B, N, H, D)
        row = {"flop": flop}
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            ms = time_ms(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), device, iters=args.iters)
        row["torch_cudnn_bf16"] = {"ms": round(ms, 4), "tflops": tflops(flop, ms)}

        amax = qkv.abs().amax().float()
        scale = (448.0 / amax).reshape(1, 1, 1, 1)  # per-tensor: one scale for q, k and v
        qkv8 = (qkv.float() * scale).to(torch.float8_e4m3fn)
        row["quantize_torch_ms"] = round(time_ms(
            lambda qkv=qkv: (qkv.float() * (448.0 / qkv.abs().amax().float())).to(torch.float8_e4m3fn), device,
            iters=args.iters), 4)
        if cudnn is not None:
            for label, out_dtype, torch_out in (("fp8_out_bf16", cudnn.data_type.BFLOAT16, torch.bfloat16),
                                                ("fp8_out_fp8", cudnn.data_type.FP8_E4M3, torch.float8_e4m3fn)):
                try:
                    g, (tq, tk, tv), scalars, (to, tamax_s, tamax_o) = fp8_graph(cudnn, handle, B, N, H, D,
                                                                                 out_dtype)
                    out = torch.empty(B, N, H, D, device=device, dtype=torch_out)
                    ones = torch.ones(1, 1, 1, 1, device=device)
                    descale = (1.0 / scale).to(device).float()
                    # s = q k^T is in (448/amax)^2 units: descale both; P in [0, 1] scaled to e4m3 range and back
                    p_scale = torch.full((1, 1, 1, 1), 448.0, device=device)
                    o_scale = scale.float() if torch_out is torch.float8_e4m3fn else ones
                    binds = {tq: qkv8[:, :, 0], tk: qkv8[:, :, 1], tv: qkv8[:, :, 2],
                             scalars["descale_q"]: descale, scalars["descale_k"]: descale,
                             scalars["descale_v"]: descale, scalars["descale_s"]: 1.0 / p_scale,
                             scalars["scale_s"]: p_scale, scalars["scale_o"]: o_scale,
                             to: out, tamax_s: torch.empty_like(ones), tamax_o: torch.empty_like(ones)}
                    workspace = torch.empty(max(g.get_workspace_size(), 1), device=device, dtype=torch.uint8)
                    g.execute(binds, workspace, handle=handle)
                    torch.cuda.synchronize()
                    ms = time_ms(lambda g=g, binds=binds, workspace=workspace: g.execute(binds, workspace,
                                                                                         handle=handle),
                                 device, iters=args.iters)
                    got = out.float() / (o_scale if torch_out is torch.float8_e4m3fn else 1.0)
                    row[label] = {"ms": round(ms, 4), "tflops": tflops(flop, ms),
                                  "max_abs_diff_vs_bf16": float((got - ref.float()).abs().max()),
                                  "mean_abs_diff_vs_bf16": float((got - ref.float()).abs().mean()),
                                  "mean_abs_bf16": float(ref.float().abs().mean())}
                except Exception as e:
                    row[label] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
        result["shapes"][name] = row
        print(name, json.dumps(row), flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
