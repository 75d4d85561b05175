"""Trivial predictions for a dataset in the synthetic layout, to score with ``opensapiens eval --pred/--gt``.

    python bench/trivial_baseline.py --data /tmp/synth-val --out /tmp/baseline

seg: every pixel background; depth: a constant map (after per-image alignment = the mean depth);
normals: every pixel facing the camera (0, 0, 1); pose: every keypoint at its person's box centre, score 1.
These are what a model that learned nothing about people would score; the bundled model's card compares to them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from opensapiens.io import save_json, save_npy, save_png


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    for sub in ("seg", "depths", "normals"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    for img in sorted((args.data / "images").glob("*.png")):
        w, h = Image.open(img).size
        save_png(args.out / "seg" / img.name, np.zeros((h, w), np.uint8))
        save_npy(args.out / "depths" / f"{img.stem}.npy", np.ones((h, w), np.float32))
        normals = np.zeros((h, w, 3), np.float32)
        normals[..., 2] = 1.0
        save_npy(args.out / "normals" / f"{img.stem}.npy", normals)
    ann = json.loads((args.data / "annotations.json").read_text())
    results = []
    for a in ann["annotations"]:
        x, y, bw, bh = a["bbox"]
        k = len(a["keypoints"]) // 3
        kp = np.tile([x + bw / 2, y + bh / 2, 1.0], k)
        results.append({"image_id": a["image_id"], "category_id": 1, "keypoints": kp.tolist(), "score": 1.0})
    save_json(args.out / "pose.json", results)


if __name__ == "__main__":
    main()
