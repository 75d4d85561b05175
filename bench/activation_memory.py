"""Activation memory of a training forward per image, by block checkpointing mode: what autograd keeps for backward.

    python bench/activation_memory.py --arch sapiens2_0.4b 0.3b --out bench/results/activation_memory_cpu.json

Counts the bytes of every tensor storage made during a bf16-autocast backbone forward (1024x768 by default) that is
still alive after it (``opensapiens.benchmark.held_bytes``), at batch 2 less batch 1, for: no checkpointing,
``--checkpointing blocks`` (block inputs only), ``--save-attention`` and ``--save-matmuls``. The count is by storage,
not by allocator block, so it is the same on any device for the same ops; but ops differ by device: on the CPU
RMSNorm is composite (it keeps float32 intermediates that CUDA's fused kernel does not), so Sapiens2's
no-checkpointing row here is an upper bound for a GPU's. The head is left out (``--checkpointing head`` is its own
option). No timing: what each mode's reruns cost is for the training benchmark (bench/bench_train.py) on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from opensapiens.benchmark import held_bytes, software_versions, write_json
from opensapiens.models import build_model
from opensapiens.training.speed import checkpoint_blocks

MODES = {"none": {}, "blocks": {"save_attention": False}, "blocks + save_attention": {"save_attention": True},
         "blocks + save_matmuls": {"save_matmuls": True}}


def measure(arch: str, size: tuple[int, int], device: torch.device) -> dict[str, float]:
    """GiB per image: held at batch 2 less held at batch 1, so that what a step keeps once whatever the batch (the
    bf16 copies of the weights autocast caches) is not counted."""
    torch.manual_seed(0)
    base = build_model("seg", arch, pos_grid=(size[0] // 16, size[1] // 16)).to(device).train()
    gib = {}
    for mode, options in MODES.items():
        model = copy.deepcopy(base)
        if mode != "none":
            checkpoint_blocks(model.backbone.blocks, **options)
        held = []
        for batch in (1, 2):
            x = torch.randn(batch, 3, *size, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out, n = held_bytes(lambda: model.backbone(x))  # noqa: B023 (called at once)
            del out
            held.append(n)
        gib[mode] = (held[1] - held[0]) / 2**30
        print(f"{arch:>16} {mode:<24} {gib[mode]:7.3f} GiB per image", flush=True)
    return gib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=["sapiens2_0.4b", "0.3b"])
    ap.add_argument("--input-size", default="1024x768")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.input_size.split("x"))
    device = torch.device(args.device)
    result = {"benchmark": "activation_memory", "input_size": size, "device": str(device), "batches": [1, 2],
              "gib_per_image": {a: measure(a, size, device) for a in args.arch}, **software_versions()}
    write_json(args.out, result)
    print(json.dumps(result["gib_per_image"], indent=1))


if __name__ == "__main__":
    main()
