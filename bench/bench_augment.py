"""CPU cost of one training sample per augmentation recipe (Sapiens's and Sapiens2's), reading included.

    python bench/bench_augment.py --size 1280x960 --out bench/results/augment_cpu.json

Renders a small synthetic dataset (every task's files) at ``--size``, then times ``dataset[key]`` (read, decode,
augment, targets) for each recipe over ``--samples`` seeded keys in one process, one thread: the time a loader
worker spends per sample. Divide by the workers a run has to get the loader's rate; compare with the step's.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def main() -> None:
    from opensapiens.data import SampleKey, build_dataset
    from opensapiens.synth.dataset import write_dataset

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1280x960", help="HxW of the rendered pictures")
    p.add_argument("--input-size", default="1024x768", help="HxW of the network input")
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--out", help="JSON results")
    args = p.parse_args()
    H, W = (int(v) for v in args.size.split("x"))
    inp = tuple(int(v) for v in args.input_size.split("x"))
    cv2.setNumThreads(1)  # a loader worker's own thread
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_dataset(root, 8, H, W, seed=3, progress=False)
        rows = []
        for task, generation in (("pose", 1), ("pose", 2), ("seg", 1), ("seg", 2), ("normal", 1), ("normal", 2),
                                 ("pointmap", 2)):
            ds = build_dataset(task, root, train=True, input_size=inp, classes="goliath", generation=generation)
            ds[SampleKey(0, seed=0)]  # warm: imports, first reads
            times = []
            for i in range(args.samples):
                t0 = time.perf_counter()
                ds[SampleKey(i % len(ds), seed=1000 + i)]
                times.append(time.perf_counter() - t0)
            ms = 1e3 * np.array(times)
            rows.append({"task": task, "recipe": "Sapiens2" if generation == 2 else "Sapiens",
                         "ms_mean": float(ms.mean()), "ms_median": float(np.median(ms)),
                         "ms_p90": float(np.percentile(ms, 90))})
            print(f"{task:9s} {rows[-1]['recipe']:8s} mean {ms.mean():7.1f} ms  median {np.median(ms):7.1f}  "
                  f"p90 {np.percentile(ms, 90):7.1f}", flush=True)
    result = {"picture_size": [H, W], "input_size": list(inp), "samples": args.samples, "threads": 1,
              "cpu": platform.processor() or platform.machine(), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
