"""What Sapiens2's official resampling costs in inference: the seg input resize (OpenCV's area / bicubic,
``resize_area_cubic``) against the bilinear one, and pose crops bicubic where they magnify against bilinear.

    python bench/bench_resize.py [--device cuda] [--out bench/results/resize_cost.json]

Times ``Preprocessor`` on batches of 8 uint8 pictures at 1080x1920 and 3000x4000 (upload included) into 1024x768,
and ``crop_people`` of 16 boxes per 1080x1920 picture into 1024x768 crops (small boxes: every crop magnifies), one
process, the two variants side by side, median of ``--iters`` runs after two warm-ups.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def timed(fn, device: torch.device, iters: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    from opensapiens.inference.topdown import boxes_to_center_scale, crop_people
    from opensapiens.inference.transforms import MEAN, STD, Preprocessor, cv2_area_cubic

    MEAN, STD = np.array(MEAN), np.array(STD)  # noqa: N806

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    rows = []
    for h, w in ((1080, 1920), (3000, 4000)):
        images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(8)]
        for interpolation in ("bilinear", "area-cubic"):
            pre = Preprocessor((1024, 768), interpolation=interpolation)
            ms = timed(lambda pre=pre, images=images: pre(images, device), device, args.iters) / len(images)
            rows.append({"what": f"seg input resize {h}x{w} -> 1024x768", "variant": interpolation,
                         "ms_per_image": ms})
            if interpolation == "area-cubic":  # its pixels against OpenCV's (the official ones), on this device
                got = pre(images[:1], device)[0][0].permute(1, 2, 0).cpu().double().numpy() * STD + MEAN
                rows[-1]["max_abs_vs_cv2"] = float(np.abs(got - cv2_area_cubic(images[0], (1024, 768))).max())
            print(f"{rows[-1]['what']:42s} {interpolation:10s} {ms:8.3f} ms/img "
                  f"{rows[-1].get('max_abs_vs_cv2', '')}", flush=True)
    image = torch.from_numpy(rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)).permute(2, 0, 1).to(device)
    xy = torch.from_numpy(rng.uniform(100, 900, (16, 2))).float()
    boxes = torch.cat([xy, xy + torch.tensor([120.0, 300.0])], 1)  # 120 x 300 people: every crop magnifies
    center, scale = boxes_to_center_scale(boxes, 1.25, 768 / 1024)
    for cubic in (False, True):
        ms = timed(lambda cubic=cubic: crop_people([image], [0] * 16, center, scale, (1024, 768),
                                                   cubic_enlarging=cubic), device, args.iters) / 16
        rows.append({"what": "pose crop 120x300 box -> 1024x768", "variant": "bicubic" if cubic else "bilinear",
                     "ms_per_image": ms})
        print(f"{rows[-1]['what']:42s} {rows[-1]['variant']:10s} {ms:8.3f} ms/crop", flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    if args.out:
        args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
