"""Training data: datasets for the four tasks, official augmentations, deterministic samplers, device batches."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from .batch import to_device
from .datasets import DenseDataset, KeypointDataset, list_backgrounds
from .labels import DataError, PoseLayout, load_classes, load_keypoint_layout
from .sampler import EvalSampler, SampleKey, TrainSampler
from .transforms import DenseAugment, PoseAugment

# Official augmentation strength per dense task (rotation: seg 45, depth 60, normal none; background p 0.8 / 0.5).
DENSE_AUGMENT = {
    "seg": DenseAugment(cat_max_ratio=0.75, rotate_degree=45.0, background_prob=0.8),
    "depth": DenseAugment(rotate_degree=60.0, background_prob=0.5),
    "normal": DenseAugment(rotate_degree=0.0, background_prob=0.5),
    "pointmap": DenseAugment(ratio_range=(0.5, 2.0), rotate_degree=0.0, background_prob=0.5),  # ours (see docs)
}


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
                  augment: bool = True, backgrounds: str | None = None) -> Dataset:
    """The dataset for ``task`` at ``path`` (training with the official augmentation, or validation)."""
    bgs = list_backgrounds(backgrounds) if (train and augment) else []
    if task == "pose":
        return KeypointDataset(pose_annotation_file(path), load_keypoint_layout(keypoints), image_root, input_size,
                               PoseAugment() if (train and augment) else None, backgrounds=bgs)
    aug = DENSE_AUGMENT[task] if (train and augment) else None
    return DenseDataset(path, task, input_size, aug, load_classes(classes) if task == "seg" else None, bgs)


__all__ = ["DENSE_AUGMENT", "DataError", "DenseAugment", "DenseDataset", "EvalSampler", "KeypointDataset",
           "PoseAugment", "PoseLayout", "SampleKey", "TrainSampler", "build_dataset", "list_backgrounds",
           "load_classes", "load_keypoint_layout", "pose_annotation_file", "to_device"]
