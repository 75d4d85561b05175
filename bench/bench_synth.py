"""Synthetic-human generation throughput: scenes sampled and rendered to tensors (the training data path).

    python bench/bench_synth.py --size 256x192 --device cpu --n 64
    python bench/bench_synth.py --size 1024x768 --device cuda --n 512 --batch-size 32    # H100 target: >= 50 images/s
    python bench/bench_synth.py --size 512x384 --device cpu --n 32 --write /tmp/synth   # also time writing files

Reported: images/s of ``render_indices`` (scene sampling on the CPU + geometry, exact ray casting, shading and
keypoint visibility on ``--device``), the CPU time spent sampling scenes, and optionally the end-to-end rate of
``write_dataset`` (PNG/NPY encoding and writing included). One warm-up batch is rendered first and not timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from opensapiens.benchmark import sync
from opensapiens.cli.predict import parse_size
from opensapiens.synth.dataset import MAX_PEOPLE, render_indices, write_dataset
from opensapiens.synth.scene import sample_scenes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=(256, 192), help="HxW (default 256x192)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=64, help="images to time (default 64)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 8 on CPU, 32 on GPU")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--write", type=Path, help="also time write_dataset into this (emptied) folder")
    ap.add_argument("--json", type=Path, help="results file (default bench/results/synth_<device>_<H>x<W>.json)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    H, W = args.size
    bs = args.batch_size or (32 if device.type == "cuda" else 8)

    render_indices(list(range(bs)), args.seed + 1, H, W, device)  # warm-up (allocator, kernels)
    sync(device)
    t0 = time.perf_counter()
    for start in range(0, args.n, bs):
        out = render_indices(list(range(start, min(start + bs, args.n))), args.seed, H, W, device)
    sync(device)
    elapsed = time.perf_counter() - t0
    del out
    t1 = time.perf_counter()
    for start in range(0, args.n, bs):
        sample_scenes([[args.seed, i] for i in range(start, min(start + bs, args.n))], H, W, MAX_PEOPLE)
    sampling = time.perf_counter() - t1

    result = {
        "benchmark": "synth", "size": [H, W], "device": str(device), "batch_size": bs, "n": args.n,
        "images_per_s": args.n / elapsed, "sampling_ms_per_image": 1000 * sampling / args.n,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or
        platform.machine(), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    print(f"render {H}x{W} on {device} (batch {bs}): {result['images_per_s']:.1f} images/s "
          f"(scene sampling {result['sampling_ms_per_image']:.1f} ms/image of CPU)")
    if args.write:
        shutil.rmtree(args.write, ignore_errors=True)
        t2 = time.perf_counter()
        write_dataset(args.write, args.n, H, W, args.seed, device=device, batch_size=bs, progress=False)
        result["write_images_per_s"] = args.n / (time.perf_counter() - t2)
        print(f"write_dataset: {result['write_images_per_s']:.1f} images/s (PNG/NPY files included)")
    path = args.json or Path(__file__).parent / "results" / f"synth_{device.type}_{H}x{W}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
