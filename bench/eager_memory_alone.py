"""The peak memory of the plain eager bf16 model alone in a fresh process: the reference `opensapiens bench`'s eager
row should give since it counts each variant above what was allocated before it was built (3 December 2026).

    python bench/eager_memory_alone.py --task pose --arch 2b --batch 4
"""

from __future__ import annotations

import argparse
import json

import torch

from opensapiens.benchmark import random_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="pose")
    ap.add_argument("--arch", default="0.3b")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    device = torch.device("cuda")
    before = torch.cuda.memory_allocated(device)
    model = random_model(args.task, args.arch, (1024, 768), device).to(torch.bfloat16)
    x = torch.randn(args.batch, 3, 1024, 768, device=device, dtype=torch.bfloat16)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**30
    print(json.dumps({"task": args.task, "arch": args.arch, "batch": args.batch,
                      "eager_alone_peak_gib": round(peak, 2)}))


if __name__ == "__main__":
    main()
