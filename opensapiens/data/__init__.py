"""Training data: datasets for the four tasks, official augmentations, deterministic samplers, device batches."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from .batch import to_device
from .datasets import DenseDataset, KeypointDataset, list_backgrounds
from .labels import DataError, PoseLayout, load_classes, load_keypoint_layout
from .sampler import EvalSampler, SampleKey, TrainSampler
from .sapiens2_transforms import NORMAL2, POINTMAP2, Fit2Augment, Seg2Augment
from .transforms import DenseAugment, PoseAugment

# Sapiens's training augmentation per task (dense rotation: seg 45, depth 60, normal none; background p 0.8 / 0.5)
AUGMENT = {
    "pose": PoseAugment(),
    "seg": DenseAugment(cat_max_ratio=0.75, rotate_degree=45.0, background_prob=0.8),
    "depth": DenseAugment(rotate_degree=60.0, background_prob=0.5),
    "normal": DenseAugment(rotate_degree=0.0, background_prob=0.5),
}
# Sapiens2's (its configs; pointmaps are a Sapiens2 task only)
AUGMENT2 = {"pose": PoseAugment(photometric_prob=0.8), "seg": Seg2Augment(), "normal": NORMAL2,
            "pointmap": POINTMAP2}


def pose_annotation_file(path: str | Path) -> Path:
    """The COCO JSON of a pose dataset: the file itself, or ``annotations.json`` in the folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset {path} does not exist")
    if path.is_file():
        return path
    for name in ("annotations.json", "keypoints.json"):
        if (path / name).is_file():
            return path / name
    raise DataError(f"{path}: no keypoint annotations (pass the COCO JSON or a folder with annotations.json)")


def build_dataset(task: str, path: str | Path, train: bool, input_size: tuple[int, int] = (1024, 768),
                  keypoints: str = "goliath", classes: str = "goliath", image_root: str | None = None,
                  augment: bool = True, backgrounds: str | None = None, generation: int = 1) -> Dataset:
    """The dataset for ``task`` at ``path``: training with the official augmentation of a Sapiens (``generation``
    1) or Sapiens2 (2) model, or validation with its resize."""
    generation = 2 if task == "pointmap" else generation
    recipes = AUGMENT2 if generation == 2 else AUGMENT
    if task not in recipes:
        family = "Sapiens2" if generation == 2 else "Sapiens"
        raise ValueError(f"no {family} {task} recipe (its tasks: {', '.join(recipes)})")
    recipe = recipes[task]
    aug = recipe if (train and augment) else None
    if backgrounds is not None and aug is not None and getattr(aug, "background_prob", 0) == 0:
        raise ValueError(f"backgrounds {backgrounds}: the {'Sapiens2' if generation == 2 else 'Sapiens'} {task} "
                        "recipe pastes no backgrounds")
    bgs = list_backgrounds(backgrounds) if aug is not None else []
    if task == "pose":
        return KeypointDataset(pose_annotation_file(path), load_keypoint_layout(keypoints), image_root, input_size,
                               aug, backgrounds=bgs, cubic_enlarging=generation == 2)
    return DenseDataset(path, task, input_size, aug, load_classes(classes) if task == "seg" else None, bgs,
                        resize="center" if generation == 2 and task == "normal" else "stretch",
                        interpolation="area-cubic" if generation == 2 and task == "seg" else "bilinear")


__all__ = ["AUGMENT", "AUGMENT2", "DataError", "DenseAugment", "DenseDataset", "EvalSampler", "Fit2Augment",
           "KeypointDataset", "PoseAugment", "PoseLayout", "SampleKey", "Seg2Augment", "TrainSampler",
           "build_dataset", "list_backgrounds", "load_classes", "load_keypoint_layout", "pose_annotation_file",
           "to_device"]
