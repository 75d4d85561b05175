"""How far a pose model's keypoints are from the OKS tolerance, by keypoint group (the model card's face analysis).

    python bench/pose_error_ratio.py --checkpoint sapiens-nano --data /tmp/synth-val --images 60

For every ground-truth person (top-down on its box, flip test) and visible keypoint: d / (s * 2 sigma), with d the
error in image pixels, s = sqrt(area) and sigma the keypoint's OKS sigma. A keypoint scores OKS 0.5 at a ratio of
sqrt(2 ln 2) = 1.177; the script prints the median ratio over body (17 COCO points), face (sigma 0.01) and the rest,
each also divided by 1.177 (the error as a multiple of the distance that scores 0.5).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from opensapiens.inference.predictors import load_predictor
from opensapiens.io import read_image
from opensapiens.metadata import keypoint_set


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="sapiens-nano")
    ap.add_argument("--data", type=Path, required=True, help="a dataset in the synthetic layout (annotations.json)")
    ap.add_argument("--images", type=int, default=60, help="the first N images")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    sigmas = np.asarray(keypoint_set("goliath").sigmas)
    coco = json.loads((args.data / "annotations.json").read_text())
    people: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        people.setdefault(a["image_id"], []).append(a)
    predictor = load_predictor("pose", args.checkpoint, device=args.device, flip=True)
    ratios = []
    for image in coco["images"][: args.images]:
        anns = people.get(image["id"], [])
        if not anns:
            continue
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        result = predictor(read_image(args.data / "images" / Path(image["file_name"]).name), boxes=boxes)
        for a, kp in zip(anns, result.keypoints):
            gt = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
            r = np.linalg.norm(kp - gt[:, :2], axis=1) / (math.sqrt(a["area"]) * 2 * sigmas)
            ratios.append(np.where(gt[:, 2] > 0, r, np.nan))
    R = np.asarray(ratios)
    face = sigmas == 0.01
    half = math.sqrt(2 * math.log(2))
    print(f"{len(R)} people in {min(args.images, len(coco['images']))} images")
    for name, cols in (("body (17)", np.arange(17)), ("face", np.flatnonzero(face)),
                       ("other non-face", np.setdiff1d(np.flatnonzero(~face), np.arange(17)))):
        m = float(np.nanmedian(R[:, cols]))
        print(f"{name:<15} median d/(s*2sigma) {m:.2f}  = {m / half:.2f} x the distance that scores OKS 0.5")


if __name__ == "__main__":
    main()
