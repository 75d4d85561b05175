"""A tiny procedural dataset in the documented on-disk layout (one folder trains every task), and its checks.

A "person" is a torso (class 1) with a head (class 4) and two arms; the arm on the image's right is the person's
left arm (class 2), the other their right arm (class 3), both painted alike so only the side tells them apart and a
mirrored image is a correctly labelled sample of the swapped classes. Depth is a tilted plane in metres; normals face
the camera on the torso and tilt sideways on the arms. Five keypoints: head, left/right hand, left/right hip.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

CLASSES = {"names": ["background", "torso", "left_arm", "right_arm", "head"], "flip_pairs": [[2, 3]],
           "class_weight": [0.5, 1.0, 1.0, 1.0, 1.0]}
KEYPOINTS = {"names": ["head", "left_hand", "right_hand", "left_hip", "right_hip"], "flip_pairs": [[1, 2], [3, 4]],
             "sigmas": [0.08, 0.06, 0.06, 0.1, 0.1], "upper_body": [0, 1, 2], "lower_body": [3, 4]}


def toy_sample(rng: np.random.Generator, size: tuple[int, int]) -> dict:
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    image = (rng.uniform(40, 120, 3)[None, None] + rng.normal(0, 12, (H, W, 3))).clip(0, 255)
    image += (xx / W * rng.uniform(-40, 40))[..., None]
    labels = np.zeros((H, W), np.uint8)
    s = rng.uniform(0.35, 0.55) * H  # person height in pixels
    cx, top = rng.uniform(0.35 * W, 0.65 * W), rng.uniform(0.05 * H, 0.25 * H)
    head_r = 0.11 * s
    head = (xx - cx) ** 2 + (yy - top - head_r) ** 2 <= head_r ** 2
    t0, t1 = top + 2 * head_r, top + 2 * head_r + 0.55 * s
    torso = (np.abs(xx - cx) <= 0.16 * s) & (yy >= t0) & (yy <= t1)
    arm_y0, arm_y1 = t0, t0 + 0.45 * s
    left = (xx > cx + 0.16 * s) & (xx <= cx + 0.26 * s) & (yy >= arm_y0) & (yy <= arm_y1)
    right = (xx < cx - 0.16 * s) & (xx >= cx - 0.26 * s) & (yy >= arm_y0) & (yy <= arm_y1)
    labels[torso], labels[left], labels[right], labels[head] = 1, 2, 3, 4
    colours = {1: (200, 60, 50), 2: (60, 190, 70), 3: (60, 190, 70), 4: (230, 190, 150)}
    for c, col in colours.items():
        m = labels == c
        image[m] = np.asarray(col, np.float32) + rng.normal(0, 10, (m.sum(), 3))
    image = image.clip(0, 255).astype(np.uint8)
    fg = labels > 0
    depth = np.where(fg, 2.0 + 0.6 * yy / H + 0.3 * xx / W, 0).astype(np.float32)
    normals = np.zeros((H, W, 3), np.float32)
    normals[fg] = (0, 0, 1)
    tilt = np.array([0.6, 0.0, 0.8], np.float32)
    normals[left] = tilt
    normals[right] = tilt * np.array([-1, 1, 1], np.float32)
    kps = np.array([[cx, top + head_r], [cx + 0.21 * s, arm_y1], [cx - 0.21 * s, arm_y1],
                    [cx + 0.1 * s, t1], [cx - 0.1 * s, t1]], np.float32)
    x0, y0 = cx - 0.3 * s, top
    bbox = [float(x0), float(y0), float(0.6 * s), float(t1 - top)]
    return {"image": image, "labels": labels, "mask": fg.astype(np.uint8), "depth": depth, "normals": normals,
            "keypoints": kps, "bbox": bbox}


def write_toy_dataset(root: str | Path, n: int, size: tuple[int, int] = (128, 96), seed: int = 0) -> Path:
    """n samples in images/, seg/, masks/, depths/, normals/ + annotations.json, classes.json, keypoints.json."""
    root = Path(root)
    for d in ("images", "seg", "masks", "depths", "normals"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n):
        s = toy_sample(rng, size)
        name = f"{i:05d}"
        cv2.imwrite(str(root / "images" / f"{name}.png"), s["image"][..., ::-1])
        cv2.imwrite(str(root / "seg" / f"{name}.png"), s["labels"])
        cv2.imwrite(str(root / "masks" / f"{name}.png"), s["mask"])
        np.save(root / "depths" / f"{name}.npy", s["depth"])
        np.save(root / "normals" / f"{name}.npy", s["normals"])
        images.append({"id": i + 1, "file_name": f"{name}.png", "height": size[0], "width": size[1]})
        kp = np.concatenate([s["keypoints"], np.full((5, 1), 2.0, np.float32)], 1)
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "num_keypoints": 5,
                     "keypoints": kp.reshape(-1).tolist(), "bbox": s["bbox"], "area": s["bbox"][2] * s["bbox"][3]})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": KEYPOINTS["names"], "skeleton": []}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    (root / "classes.json").write_text(json.dumps(CLASSES))
    (root / "keypoints.json").write_text(json.dumps(KEYPOINTS))
    return root
