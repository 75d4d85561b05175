"""Where FP8 (e4m3) error comes from on random weights: each block Linear alone, then the whole network.

    python bench/fp8_error_attribution.py --arch sapiens2_0.4b 0.3b sapiens2_1b \\
        --out bench/results/fp8_error_attribution_cpu.json

For each architecture (random init, seed 0, one 256x192 image, CPU): (1) one GEMM of block 5 per Linear kind, bf16
and Fp8Linear (e4m3, per-row activation and per-channel weight scales) against float64, on random inputs; (2) the
backbone's output relative to float64 with the whole model in bf16, with every block Linear in FP8, and with one
kind of Linear in FP8 (the rest bf16). (1) separates the rounding of one GEMM from (2), what the network makes of it.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from opensapiens.benchmark import software_versions, write_json
from opensapiens.inference.fp8 import Fp8Linear, takes_fp8
from opensapiens.models import build_model
from opensapiens.models.sapiens2 import LayerScale


def relative(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


def linear_kinds(model: nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.backbone.blocks[0].named_modules()
                   if isinstance(m, nn.Linear) and takes_fp8(m)})


def one_gemm(block: nn.Module, kind: str, rows: int = 192) -> dict[str, float]:
    name, lin = next((n, m) for n, m in block.named_modules() if n.rsplit(".", 1)[-1] == kind)
    x = torch.randn(rows, lin.in_features)
    bias = lin.bias.double() if lin.bias is not None else None
    ref = F.linear(x.double(), lin.weight.double(), bias)
    with torch.no_grad():
        bf16 = F.linear(x.bfloat16(), lin.weight.bfloat16(), None if bias is None else lin.bias.bfloat16())
        fp8 = Fp8Linear(copy.deepcopy(lin).bfloat16())(x.bfloat16())
    return {"bf16": relative(bf16, ref), "fp8": relative(fp8, ref)}


def network(model: nn.Module, x: torch.Tensor, ref: torch.Tensor, kinds: set[str]) -> float:
    m = copy.deepcopy(model).bfloat16()
    for block in m.backbone.blocks:
        for _, child in list(block.named_modules()):
            for attr, sub in list(child.named_children()):
                if isinstance(sub, nn.Linear) and takes_fp8(sub) and attr in kinds:
                    setattr(child, attr, Fp8Linear(sub))
    with torch.no_grad():
        return relative(m(x.bfloat16()), ref)


def measure(arch: str, size: tuple[int, int], layer_scale: float | None = None) -> dict:
    torch.manual_seed(0)
    model = build_model("features", arch, pos_grid=(size[0] // 16, size[1] // 16)).eval()
    if layer_scale is not None:  # Sapiens2's LayerScale (init 1e-4) set by hand: the attention branches' weight
        for m in model.modules():
            if isinstance(m, LayerScale):
                m.weight.data.fill_(layer_scale)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(x.double())
    kinds = linear_kinds(model)
    out = {"one_gemm": {k: one_gemm(model.backbone.blocks[5], k) for k in kinds},
           "network": {"bf16": network(model, x, ref, set()), "fp8 all": network(model, x, ref, set(kinds)),
                       **{f"fp8 {k} only": network(model, x, ref, {k}) for k in kinds}}}
    print(arch, json.dumps(out, indent=1), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=["sapiens2_0.4b", "0.3b"])
    ap.add_argument("--input-size", default="256x192")
    ap.add_argument("--layer-scale", type=float, default=None, help="Sapiens2: every LayerScale weight set to this")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.input_size.split("x"))
    result = {"benchmark": "fp8_error_attribution", "input_size": size, "device": "cpu", "weights": "random (seed 0)",
              "layer_scale": args.layer_scale,
              "relative_error": {a: measure(a, size, args.layer_scale) for a in args.arch}, **software_versions()}
    write_json(args.out, result)


if __name__ == "__main__":
    main()
