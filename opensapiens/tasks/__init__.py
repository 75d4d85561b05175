"""Per-task training targets, losses and evaluators (kept apart from the models' ``forward``).

    criterion = build_criterion("seg", generation=2, class_weight=...)   # (output, device batch) -> scalar loss
    evaluator = build_evaluator("seg", num_classes=28)         # update(output, batch) ... compute() -> metrics
"""

from __future__ import annotations

import torch

from .depth import DepthCriterion, DepthEvaluator, relative_depth_target, silog_loss
from .normal import NormalCriterion, NormalEvaluator, normal_loss
from .pointmap import PointmapCriterion, PointmapEvaluator, pointmap_loss
from .pose import PoseCriterion, PoseEvaluator, keypoint_mse_loss, ohkm_mse_loss
from .seg import SegCriterion, SegEvaluator, dice_loss, seg_ce_loss


def build_criterion(task: str, *, generation: int | None = None, sigma: float = 6.0, ohkm_topk: int | None = None,
                    class_weight: tuple[float, ...] | None = None, seg_loss_resolution: str = "labels"):
    """The official loss of ``task`` for a Sapiens (``generation`` 1) or Sapiens2 (2) model (see each module), with
    the given options. Sapiens2: pose MSE x 10, seg cross-entropy + Dice, normals 10 cosine + L1 + 10 gradient (the
    generation is asked for, not assumed: ``model.config.arch.generation``); depth is v1's, pointmaps Sapiens2's."""
    if task in ("pose", "seg", "normal") and generation not in (1, 2):
        raise ValueError(f"build_criterion({task!r}): pass generation=1 (Sapiens) or 2 (Sapiens2), e.g. "
                         "model.config.arch.generation: the two train this task with different losses")
    if task == "pose":
        return PoseCriterion(sigma=sigma, ohkm_topk=ohkm_topk or None, loss_weight=10.0 if generation == 2 else 1.0,
                             inside_only=generation == 2)
    if task == "seg":
        weight = torch.tensor(class_weight, dtype=torch.float32) if class_weight is not None else None
        return SegCriterion(class_weight=weight, resolution=seg_loss_resolution, dice=generation == 2)
    if task == "depth":
        return DepthCriterion()
    if task == "normal":
        return NormalCriterion(generation)
    if task == "pointmap":
        return PointmapCriterion()
    raise ValueError(f"unknown task {task!r}")


def build_evaluator(task: str, *, input_size: tuple[int, int] = (1024, 768), keypoint_gt: dict | None = None,
                    keypoint_set=None, num_classes: int = 28, class_names=None):
    """A fresh metric accumulator for ``task``: pose AP, seg mIoU, depth RMSE/AbsRel/delta, normal angular error,
    pointmap point and normal errors (canonical and metric)."""
    if task == "pose":
        return PoseEvaluator(keypoint_gt, keypoint_set, input_size)
    if task == "seg":
        return SegEvaluator(num_classes, class_names)
    if task == "depth":
        return DepthEvaluator()
    if task == "normal":
        return NormalEvaluator()
    if task == "pointmap":
        return PointmapEvaluator()
    raise ValueError(f"unknown task {task!r}")


__all__ = ["DepthCriterion", "DepthEvaluator", "NormalCriterion", "NormalEvaluator", "PointmapCriterion",
           "PointmapEvaluator", "PoseCriterion", "PoseEvaluator", "SegCriterion", "SegEvaluator", "build_criterion",
           "build_evaluator", "dice_loss", "keypoint_mse_loss", "normal_loss", "ohkm_mse_loss", "pointmap_loss",
           "relative_depth_target", "seg_ce_loss", "silog_loss"]
