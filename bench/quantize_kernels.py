"""The FP8 blocks' memory-bound passes on the pose-1B shapes: GB/s per launch configuration.

    python bench/quantize_kernels.py --out bench/results/quantize_kernels_1b.json

Times ``kernels.rows_to_e4m3`` over the fc1 output (GELU in its erf and tanh forms, then e4m3) and over the
attention output (e4m3 only), and ``kernels.shifted_layer_norm`` with a pending delta and e4m3 output, for a grid
of (rows per program, warps); bandwidth counts the bytes each pass must move (reads + writes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from opensapiens.benchmark import device_name, software_versions, time_ms, write_json
from opensapiens.inference.kernels import rows_to_e4m3, shifted_layer_norm

CONFIGS = [(1, 4), (1, 8), (1, 16), (2, 8), (2, 16), (4, 16)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8 * 3072, help="rows: batch x tokens")
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device("cuda")
    M, C = args.tokens, args.width
    result = {"device": device_name(device), "software": software_versions(), "rows": M, "width": C, "passes": {}}
    hidden = torch.randn(M, 4 * C, device=device, dtype=torch.bfloat16)
    attended = torch.randn(M, C, device=device, dtype=torch.bfloat16)
    cases = {f"gelu_{form}_{4 * C}": (hidden, form) for form in ("erf", "tanh")}
    cases[f"plain_{C}"] = (attended, None)
    for name, (x, gelu) in cases.items():
        moved = x.numel() * (2 + 1) + x.shape[0] * 4  # bf16 in, e4m3 + a float32 scale per row out
        rows = []
        for config in CONFIGS:
            ms = time_ms(lambda x=x, gelu=gelu, config=config: rows_to_e4m3(x, gelu, config), device,
                         iters=args.iters)
            rows.append({"rows_warps": list(config), "ms": round(ms, 4), "gbps": round(moved / ms / 1e6, 1)})
        result["passes"][name] = rows
        print(name, " ".join(f"{r['rows_warps']}:{r['ms']:.4f}ms/{r['gbps']}GB/s" for r in rows), flush=True)
    stream = torch.randn(M, C, device=device, dtype=torch.bfloat16)
    shift, w, b = (torch.randn(C, device=device) for _ in range(3))
    moved = M * C * (2 + 2 + 2 + 1) + M * 4  # read stream + delta, write stream + e4m3, scales
    ms = time_ms(lambda: shifted_layer_norm(stream, shift, w, b, 1e-6, delta=attended, fp8=True), device,
                 iters=args.iters)
    result["passes"]["norm_delta_fp8"] = {"ms": round(ms, 4), "gbps": round(moved / ms / 1e6, 1)}
    moved = M * C * 4
    ms = time_ms(lambda: shifted_layer_norm(stream, shift, w, b, 1e-6), device, iters=args.iters)
    result["passes"]["norm_bf16"] = {"ms": round(ms, 4), "gbps": round(moved / ms / 1e6, 1)}
    print("norms:", result["passes"]["norm_delta_fp8"], result["passes"]["norm_bf16"])
    write_json(args.out, result)


if __name__ == "__main__":
    main()
