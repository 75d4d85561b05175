"""Does what the model sees change its speed? On a card at its power cap, the clock depends on the power the GEMMs
draw, and that depends on how many bits flip in their operands: random noise flips the most.

    python bench/input_power.py --task pose --arch 1b --batch 8 [--rounds 2] [--seconds 3] --out result.json
    python bench/input_power.py --arch nano --batch 2 --input-size 64x48 --seconds 0.2   # CPU smoke run

Inputs, each normalized as the predictors do: ``noise`` (N(0, 1) after normalization, what ``opensapiens bench``
feeds), ``humans`` (our synthetic humans, rendered at the input size: smooth surfaces and backgrounds, as photos
are), ``flat`` (one grey image). The fused path on each in turn (A B C A B C): run back to back for ``--seconds``
so the clock settles, then timed, with the SM clock and board power while timed. Weights stay random either way.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from opensapiens.benchmark import (
    GpuClocks,
    device_name,
    keep_busy,
    random_model,
    software_versions,
    sync,
    time_ms,
    write_json,
)
from opensapiens.cli.predict import parse_size
from opensapiens.inference.optimize import optimize_for_inference
from opensapiens.inference.transforms import MEAN, STD
from opensapiens.synth.dataset import render_indices


def inputs(batch: int, height: int, width: int, device: torch.device) -> dict[str, torch.Tensor]:
    """name -> (batch, 3, H, W) normalized model input."""
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    humans = render_indices(list(range(batch)), seed=0, height=height, width=width, device=device).image
    grey = torch.full((batch, 3, height, width), 128.0, device=device)
    return {"noise": torch.randn(batch, 3, height, width, device=device),
            "humans": (humans.float() - mean) / std,
            "flat": (grey - mean) / std}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="pose", choices=["pose", "seg", "depth", "normal"])
    p.add_argument("--arch", default="1b")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input-size", type=parse_size, default=(1024, 768))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0, help="back-to-back calls before each timing")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    H, W = args.input_size
    torch.manual_seed(0)
    model = random_model(args.task, args.arch, (H, W), device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = optimize_for_inference(model.to(dtype))
    batches = {name: x.to(dtype) for name, x in inputs(args.batch, H, W, device).items()}
    result = {"task": args.task, "arch": args.arch, "batch": args.batch, "input_size": [H, W],
              "device": device_name(device), "software": software_versions(), "rows": []}
    with torch.inference_mode():
        if hasattr(model, "warmup"):
            model.warmup(batches["noise"])
        for r in range(args.rounds):
            for name, x in batches.items():
                keep_busy(lambda x=x: model(x), device, args.seconds)
                with GpuClocks(device) as clocks:
                    ms = time_ms(lambda x=x: model(x), device, warmup=0, iters=args.iters)
                sync(device)
                row = {"round": r, "input": name, "ms_per_image": round(ms / args.batch, 3), "clocks": clocks.summary(),
                       "input_std": round(statistics.pstdev(x.float().flatten()[::997].tolist()), 3)}
                result["rows"].append(row)
                c = row["clocks"]
                at = f" at {c['sm_mhz']:.0f} MHz, {c['watts']:.0f} W" if c else ""
                print(f"{args.task} {args.arch} b{args.batch} round {r} {name:>6}: {row['ms_per_image']:.3f} ms/img"
                      f"{at}", flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
