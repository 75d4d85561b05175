"""Write N test photos (smooth colour fields with texture, JPEG q95) for end-to-end benchmarks.

    python bench/make_images.py --n 256 --size 1080x1920 --out /tmp/e2e
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", default="1080x1920", help="HxW")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for i in range(args.n):
        small = rng.integers(0, 255, (h // 32, w // 32, 3), dtype=np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        img = cv2.add(img, rng.integers(0, 24, (h, w, 3), dtype=np.uint8))  # sensor-like texture
        cv2.imwrite(str(args.out / f"img_{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])


if __name__ == "__main__":
    main()
