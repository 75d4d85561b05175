"""How fast this host decodes a folder of images on N threads: the ceiling of ``predict``'s default host decode.

    python bench/host_decode.py /tmp/e2e --threads 8 --n 128

Times three readers over the same files (page cache warmed first): Pillow alone, ``read_image`` (what the predictors,
data loaders and ``predict`` use: OpenCV for JPEGs), and ``read_image`` copied into pinned memory as ``upload_images``
stages it (every result is kept here, so each image gets fresh pinned memory, which the predictors instead reuse).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from opensapiens.io import list_inputs, read_image


def into_pinned(path: Path, pin: bool) -> torch.Tensor:
    rgb = read_image(path)
    pixels = torch.empty(rgb.shape, dtype=torch.uint8, pin_memory=pin)
    pixels.numpy()[...] = rgb
    return pixels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--n", type=int, default=128, help="images to decode")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    paths = list_inputs(args.folder)[: args.n]
    for p in paths:
        p.read_bytes()  # page cache
    pin = torch.cuda.is_available()
    readers = {"pillow": lambda path: np.asarray(Image.open(path).convert("RGB")), "read_image": read_image,
               f"read_image into {'pinned' if pin else 'pageable'} memory": partial(into_pinned, pin=pin)}
    result = {"images": len(paths), "threads": args.threads}
    with ThreadPoolExecutor(args.threads) as pool:
        for name, read in readers.items():
            list(pool.map(read, paths[: args.threads]))  # warm-up (pinned blocks, thread start)
            t0 = time.perf_counter()
            list(pool.map(read, paths))
            result[name] = round(len(paths) / (time.perf_counter() - t0), 1)
            print(f"  host decode, {name:<36} {result[name]:8.1f} img/s on {args.threads} threads", flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
