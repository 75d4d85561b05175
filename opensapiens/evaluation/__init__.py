"""Evaluation with documented protocols (docs/evaluation.md): OKS AP/AR through pycocotools, streaming mIoU,
aligned relative-depth errors and normal angular errors, and dataset runners for saved predictions or a model."""

from .depth import ALIGN_METHODS, DepthAccumulator, align_depth, depth_metrics, fit_scale_shift
from .normals import NormalAccumulator, angular_error, normal_metrics
from .pose import STAT_NAMES, evaluate_keypoints, evaluation_groups
from .segmentation import SegConfusion

__all__ = [
    "ALIGN_METHODS", "STAT_NAMES", "DepthAccumulator", "NormalAccumulator", "SegConfusion", "align_depth",
    "angular_error", "depth_metrics", "evaluate_keypoints", "evaluation_groups", "fit_scale_shift",
    "normal_metrics"
]
