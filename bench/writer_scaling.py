"""How ``run_batch``'s writing scales with writer threads on this host's CPU (call 69: seg-0.3B with pictures ran at
0.44-0.47 of model-only, its main thread waiting for the writers 8.3-8.7 s of 11.5; one seg picture takes ~80 ms on
one core of the development machine, so 8 writers should have kept up with 98 img/s).

Writes the same 1080p inputs' outputs (``write_result``: the label PNG, the overlay side by side with the image as a
JPEG) with 1, 2, 4, 8, 12, 16 threads, then 8 processes for comparison (no GIL shared), and prints images/s each.
Usage: python bench/writer_scaling.py [--task seg|depth|normal] [--n 64] [--cv2-threads N] [--out JSON]
"""
import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from opensapiens.inference.batch import write_result
from opensapiens.inference.results import DepthResult, NormalResult, SegResult
from opensapiens.metadata import seg_classes


def inputs(task: str, n: int) -> list[tuple[np.ndarray, object]]:
    """n (image, result) pairs: textured 1080p images, blocky results like a model's (each array its own copy)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1080 // 8, 1920 // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    labels = rng.integers(0, 28, (1080 // 40, 1920 // 40), dtype=np.uint8).repeat(40, 0).repeat(40, 1)
    out = []
    for k in range(n):
        image, lab = np.roll(base, k, axis=1).copy(), np.roll(labels, k, axis=0).copy()
        if task == "seg":
            result = SegResult(lab, seg_classes("goliath").names)
        elif task == "depth":
            result = DepthResult(lab.astype(np.float32) / 28 + 1, lab > 0)
        else:
            v = np.stack([np.cos(lab / 5.0), np.sin(lab / 5.0), np.ones_like(lab, np.float64)], -1)
            result = NormalResult((v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32), lab > 0)
        out.append((image, result))
    return out


def _write(task: str, folder: str, k: int, image: np.ndarray, result) -> None:
    write_result(task, Path(folder), f"img{k:04d}", image, result, vis=True)


def rate(pool, task: str, pairs) -> float:
    folder = tempfile.mkdtemp(prefix="writers_")
    with pool:
        list(pool.map(_write, [task] * 2, [folder] * 2, range(2), *zip(*pairs[:2])))  # warm the workers
        t0 = time.perf_counter()
        list(pool.map(_write, [task] * len(pairs), [folder] * len(pairs), range(len(pairs)), *zip(*pairs)))
        return len(pairs) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="seg", choices=("seg", "depth", "normal"))
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--cv2-threads", type=int, help="cv2.setNumThreads first (OpenCV's own pool: default the cores)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.cv2_threads is not None:
        import cv2

        cv2.setNumThreads(args.cv2_threads)
    pairs = inputs(args.task, args.n)
    rates = {}
    for threads in (1, 2, 4, 8, 12, 16):
        r = rates[f"{threads} threads"] = rate(ThreadPoolExecutor(threads), args.task, pairs)
        print(f"{args.task} pictures, {threads:2d} writer threads: {r:6.1f} img/s", flush=True)
    rates["8 processes"] = rate(ProcessPoolExecutor(8), args.task, pairs)
    print(f"{args.task} pictures,  8 writer processes: {rates['8 processes']:6.1f} img/s (cores: {os.cpu_count()})")
    if args.out:
        args.out.write_text(json.dumps({"task": args.task, "images": args.n, "images_per_s": rates,
                                        "cores": os.cpu_count(), "cv2_threads": args.cv2_threads}, indent=1))


if __name__ == "__main__":
    main()
