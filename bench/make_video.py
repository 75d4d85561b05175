"""Write a test video (a smooth colour field with texture, panning a few pixels a frame) for video benchmarks.

    python bench/make_video.py --frames 480 --size 1080x1920 --fps 30 --out /tmp/clip.mp4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from opensapiens.io import VideoWriter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=480)
    ap.add_argument("--size", default="1080x1920", help="HxW")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(args.seed)
    pan = 4  # pixels a frame: motion the encoder has to follow, as in a real clip
    small = rng.integers(0, 255, (h // 32, (w + pan * args.frames) // 32 + 1, 3), dtype=np.uint8)
    field = cv2.resize(small, (small.shape[1] * 32, h), interpolation=cv2.INTER_CUBIC)
    texture = rng.integers(0, 24, (h, w, 3), dtype=np.uint8)
    with VideoWriter(args.out, fps=args.fps) as writer:
        for k in range(args.frames):
            writer.write(cv2.add(np.ascontiguousarray(field[:, k * pan:k * pan + w]), texture))


if __name__ == "__main__":
    main()
