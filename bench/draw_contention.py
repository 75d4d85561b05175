"""What drawing pose pictures on writer threads costs the thread that feeds the GPU (the GIL they share).

``predict`` with pictures ran pose-0.3B at 0.65-0.81 of the model's speed (calls 76-81), its main thread mostly in
``submit`` while eight writers drew. Each OpenCV call takes and drops the GIL; ``draw_pose`` used to make one call per
link and point (~370 for a Goliath skeleton) and now one per colour (~20), the same pixels where elements of different
colours do not overlap (tests/test_visualize.py).

Side by side in one process: a main thread queues small torch ops in "batches" of 300 (standing in for a forward's
launches) while W writer threads draw 1080p Goliath pictures at a fixed total rate, with ``draw_pose`` and with the
one-call-per-element baseline written below. Prints the main thread's batches/s alone and beside each (A B A B...).
Usage: python bench/draw_contention.py [--writers 2] [--pictures-per-s 120] [--seconds 3] [--rounds 3] [--out JSON]
"""
import argparse
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from opensapiens.metadata import keypoint_set
from opensapiens.visualize import draw_pose


def draw_each(image: np.ndarray, kp: np.ndarray, sc: np.ndarray, colors: dict, radius: int, thickness: int):
    """The baseline: one cv2.line per link and one cv2.circle per point (one person), as draw_pose drew before."""
    out = image.copy()
    ks, shown = colors["set"], sc > 0.3
    fixed = [(int(round(x * 16)), int(round(y * 16))) for x, y in kp]
    for a, b in ks.skeleton:
        if shown[a] and shown[b]:
            cv2.line(out, fixed[a], fixed[b], colors["link"], thickness, cv2.LINE_AA, 4)
    for k in np.flatnonzero(shown):
        cv2.circle(out, fixed[k], colors["radius"][k] << 4, colors["point"], -1, cv2.LINE_AA, 4)
    return out


def main_thread_rate(seconds: float) -> float:
    x = torch.zeros(8)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(300):
            x.add_(1)
        n += 1
    return n / seconds


def beside_writers(draw, writers: int, hz: float, seconds: float) -> tuple[float, float]:
    """(main thread batches/s, pictures/s drawn) with ``writers`` threads drawing ``hz`` pictures/s in all."""
    stop, drawn = threading.Event(), [0]

    def write() -> None:
        period, due = writers / hz, time.perf_counter()
        while not stop.is_set():
            draw()
            drawn[0] += 1
            due += period
            time.sleep(max(0.0, due - time.perf_counter()))

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for t in threads:
        t.start()
    rate = main_thread_rate(seconds)
    stop.set()
    for t in threads:
        t.join()
    return rate, drawn[0] / seconds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--writers", type=int, default=2)
    p.add_argument("--pictures-per-s", type=float, default=120)
    p.add_argument("--seconds", type=float, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    kp, sc = rng.uniform([600, 100], [1300, 1000], (308, 2)), rng.uniform(0.2, 1, 308)
    ks = keypoint_set("goliath")
    face = set(ks.groups["face"])
    colors = {"set": ks, "link": (0, 210, 0), "point": (255, 255, 255),
              "radius": [4 if k in face else 8 for k in range(ks.num_keypoints)]}
    variants = {"one call per element": lambda: draw_each(image, kp, sc, colors, 8, 4),
                "draw_pose": lambda: draw_pose(image, kp[None], sc[None], ks)}
    rows: dict[str, list] = {"alone": [round(main_thread_rate(args.seconds), 1)]}
    print(f"main thread alone: {rows['alone'][0]} batches/s")
    for _ in range(args.rounds):
        for name, draw in variants.items():
            rate, drawn = beside_writers(draw, args.writers, args.pictures_per_s, args.seconds)
            rows.setdefault(name, []).append(round(rate, 1))
            print(f"{name:<22} main thread {rate:7.1f} batches/s ({rate / rows['alone'][0]:.3f} of alone), "
                  f"{drawn:.1f} pictures/s drawn", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"writers": args.writers, "pictures_per_s": args.pictures_per_s,
                                        "main_thread_batches_per_s": rows}, indent=1))


if __name__ == "__main__":
    main()
