"""Synthetic datasets on disk (resumable, atomic, byte-reproducible) and an endless on-the-fly training source.

Image ``i`` of a dataset with seed ``S`` is rendered from its own random stream ``default_rng([S, i])``, so it is
the same whatever batch it is rendered in, and a dataset can be extended or resumed at any point. Layout::

    OUT/images/NAME.png    RGB
    OUT/seg/NAME.png       uint8 Goliath body-part class ids (0 = background)
    OUT/masks/NAME.png     uint8 instance ids (0 = background; annotation "instance_id")
    OUT/depths/NAME.npy    float32 H x W, camera z in metres, 0 = background
    OUT/normals/NAME.npy   float32 H x W x 3, unit normals (X right, Y up, Z toward the camera), 0 = background
    OUT/meta/NAME.json     the image's COCO entries (written last: marks the image as finished)
    OUT/annotations.json   COCO keypoints file merged from meta/ (308 keypoints [x, y, v], bbox, area, ...)
    OUT/synth.json         the generator settings; a resumed run must match them

NAME is the zero-padded image index.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from ..io import save_json, save_npy, save_png
from ..metadata import keypoint_set
from .render import SynthBatch, render_scenes
from .scene import sample_scenes

FORMAT_VERSION = 1
MAX_PEOPLE = 4


@dataclass(frozen=True)
class Preset:
    """A fixed dataset: ``n`` images of ``height`` x ``width`` from ``seed``."""

    name: str
    n: int
    height: int
    width: int
    seed: int


# The validation split used by every benchmark of this project (a few minutes on a laptop CPU).
SYNTH_VAL = Preset("synth-val", n=200, height=512, width=384, seed=20240)
PRESETS = {p.name: p for p in (SYNTH_VAL,)}


def background_files(folder: str | Path | None) -> list[Path]:
    """Readable images of a background folder (sorted); unreadable files are skipped with a warning.

    Each file is decoded in full: ``Image.verify`` passes truncated JPEGs, which would fail later, mid-dataset."""
    from ..data.datasets import list_backgrounds

    good, bad = [], []
    for path in list_backgrounds(folder):
        try:
            with Image.open(path) as im:
                im.load()
            good.append(path)
        except Exception as e:  # noqa: BLE001 - any decoding failure means: skip this file
            bad.append(f"{path}: {e}")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable background image(s):\n" + "\n".join(bad), stacklevel=2)
    if folder is not None and not good:
        raise ValueError(f"background folder {folder}: no readable images")
    return good


def render_indices(indices: list[int], seed: int, height: int, width: int, device: torch.device | str = "cpu",
                   backgrounds: list[Path] | None = None) -> SynthBatch:
    """Render images ``indices`` of the dataset with ``seed``."""
    backgrounds = backgrounds or []
    scenes = sample_scenes([[seed, i] for i in indices], height, width, MAX_PEOPLE, len(backgrounds))
    return render_scenes(scenes, height, width, device, MAX_PEOPLE, backgrounds)


class SyntheticHumans:
    """Endless batches rendered on ``device`` for training; batch ``k`` holds images ``k*B .. k*B + B - 1``.

    >>> source = SyntheticHumans(1024, 768, batch_size=16, device="cuda", seed=1)
    >>> for batch in source:  # SynthBatch of tensors on the GPU
    ...     ...
    """

    def __init__(self, height: int = 1024, width: int = 768, batch_size: int = 8, seed: int = 0,
                 device: torch.device | str = "cpu", backgrounds: str | Path | None = None, start: int = 0) -> None:
        if seed == SYNTH_VAL.seed:
            raise ValueError(f"seed {seed} is the synth-val seed; training on it would leak the validation split")
        self.height, self.width, self.batch_size, self.seed = height, width, batch_size, seed
        self.device, self.start = device, start
        self.backgrounds = background_files(backgrounds)

    def batch(self, k: int) -> SynthBatch:
        ids = list(range(k * self.batch_size, (k + 1) * self.batch_size))
        return render_indices(ids, self.seed, self.height, self.width, self.device, self.backgrounds)

    def __iter__(self) -> Iterator[SynthBatch]:
        k = self.start
        while True:
            yield self.batch(k)
            k += 1


# ---------------------------------------------------------------------------------------------------------------
# Writing datasets

def image_entries(batch: SynthBatch, b: int, index: int, name: str) -> dict:
    """COCO image and annotation entries of image ``b`` of a batch (image id = index + 1)."""
    fx, fy, cx, cy = (float(v) for v in batch.intrinsics[b].cpu())
    H, W = batch.seg.shape[1:]
    image = {"id": index + 1, "file_name": f"{name}.png", "height": int(H), "width": int(W),
             "fx": fx, "fy": fy, "cx": cx, "cy": cy}
    inst = batch.instance[b].cpu().numpy()
    anns = []
    for slot in range(batch.person_valid.shape[1]):
        if not batch.person_valid[b, slot] or batch.areas[b, slot] <= 0:
            continue  # not in the picture at all
        kp = batch.keypoints[b, slot].cpu().numpy()
        rle = mask_utils.encode(np.asfortranarray(inst == slot + 1))
        anns.append({
            "id": index * 16 + slot + 1, "image_id": index + 1, "category_id": 1, "instance_id": slot + 1,
            "iscrowd": 0, "area": float(batch.areas[b, slot]),
            "bbox": [round(float(v), 2) for v in batch.boxes[b, slot].cpu()],
            "num_keypoints": int((kp[:, 2] > 0).sum()),
            "keypoints": [v for x, y, s in kp.tolist() for v in (round(x, 2), round(y, 2), int(s))],
            "keypoints_3d": [round(v, 4) for v in batch.keypoints_3d[b, slot].cpu().flatten().tolist()],
            "segmentation": {"size": [int(H), int(W)], "counts": rle["counts"].decode("ascii")},
        })
    return {"image": image, "annotations": anns}


def _write_image(out: Path, name: str, arrays: dict[str, np.ndarray], entries: dict) -> None:
    save_png(out / "images" / f"{name}.png", arrays["image"])
    save_png(out / "seg" / f"{name}.png", arrays["seg"])
    save_png(out / "masks" / f"{name}.png", arrays["instance"])
    save_npy(out / "depths" / f"{name}.npy", arrays["depth"])
    save_npy(out / "normals" / f"{name}.npy", arrays["normal"])
    save_json(out / "meta" / f"{name}.json", entries)  # last: marks the image as finished


def _finished(out: Path, name: str) -> bool:
    files = [f"images/{name}.png", f"seg/{name}.png", f"masks/{name}.png", f"depths/{name}.npy",
             f"normals/{name}.npy", f"meta/{name}.json"]
    return all((out / f).is_file() for f in files)


def coco_categories() -> list[dict]:
    ks = keypoint_set("goliath")
    return [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(ks.names),
             "skeleton": [[a + 1, b + 1] for a, b in ks.skeleton]}]


def write_dataset(out: str | Path, n: int, height: int, width: int, seed: int, device: torch.device | str = "cpu",
                  backgrounds: str | Path | None = None, batch_size: int = 8, workers: int = 4,
                  progress: bool = True) -> Path:
    """Render images 0..n-1 into ``out`` (skipping finished ones) and write ``annotations.json``; return its path."""
    from tqdm import tqdm

    if n < 1 or height < 16 or width < 16:
        raise ValueError(f"need n >= 1 and a size of at least 16x16, got n={n}, size={height}x{width}")
    out = Path(out)
    for sub in ("images", "seg", "masks", "depths", "normals", "meta"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    files = background_files(backgrounds)
    settings = {"format": FORMAT_VERSION, "seed": seed, "height": height, "width": width,
                "backgrounds": [str(p) for p in files]}
    cfg = out / "synth.json"
    if cfg.exists():
        old = json.loads(cfg.read_text())
        if old != settings:
            raise ValueError(f"{out} holds a synthetic dataset made with other settings ({old}); "
                             f"use another --out or the same --seed/--size/--backgrounds")
    else:
        save_json(cfg, settings, indent=1)
    digits = max(6, len(str(n - 1)))
    names = [f"{i:0{digits}d}" for i in range(n)]
    todo = [i for i in range(n) if not _finished(out, names[i])]
    bar = tqdm(total=n, initial=n - len(todo), unit="img", desc=f"synth {out}", disable=not progress)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending = []
        for start in range(0, len(todo), batch_size):
            ids = todo[start:start + batch_size]
            batch = render_indices(ids, seed, height, width, device, files).to("cpu")
            for f in pending:  # bound the queue to one batch: writing overlaps the next render only
                f.result()
            pending = []
            for b, i in enumerate(ids):
                arrays = {"image": batch.image[b].permute(1, 2, 0).numpy(), "seg": batch.seg[b].numpy(),
                          "instance": batch.instance[b].numpy(), "depth": batch.depth[b].numpy(),
                          "normal": batch.normal[b].permute(1, 2, 0).contiguous().numpy()}
                entries = image_entries(batch, b, i, names[i])
                job = pool.submit(_write_image, out, names[i], arrays, entries)
                job.add_done_callback(lambda _: bar.update(1))
                pending.append(job)
        for f in pending:
            f.result()
    bar.close()
    return merge_annotations(out, names, settings)


def merge_annotations(out: Path, names: list[str], settings: dict) -> Path:
    """Assemble annotations.json from the per-image meta files (atomically)."""
    images, anns = [], []
    for name in names:
        entry = json.loads((out / "meta" / f"{name}.json").read_text())
        images.append(entry["image"])
        anns.extend(entry["annotations"])
    coco = {"info": {"description": "OpenSapiens procedural humans", **settings, "n": len(names)},
            "images": images, "annotations": anns, "categories": coco_categories()}
    return save_json(out / "annotations.json", coco)


def preset_settings(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


__all__ = ["MAX_PEOPLE", "PRESETS", "SYNTH_VAL", "Preset", "SyntheticHumans", "background_files",
           "coco_categories", "image_entries", "merge_annotations", "preset_settings", "render_indices",
           "write_dataset"]
