"""Top-down pose: UDP Gaussian heatmap targets and the official heatmap losses.

    KeypointMSELoss        mean over all B*K*h*w of (pred - target)^2 * w_k     (w_k = 1 if labelled, else 0)
    KeypointOHKMMSELoss    per (sample, keypoint): mean over h*w of ((pred - target) * w_k)^2, then the mean of each
                           sample's top-k keypoint losses, averaged over the batch (Goliath 0.3b/1b: k = 128)

Keypoint weights are the visibility (0/1); optional per-keypoint weights multiply in (the official configs do not
apply the dataset ``joint_weights``). Sapiens2 trains with the plain MSE times 10 (``loss_weight``), which matters
against its gradient clipping, and gives weight 0 to keypoints outside the crop (``inside_only``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..codecs.heatmap import decode_udp_heatmaps, encode_udp_heatmaps
from ..inference.topdown import crop_to_image


def keypoint_mse_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """pred, target (B, K, h, w); weights (B, K). Mean over every element, masked ones included."""
    return ((pred.float() - target) ** 2 * weights[..., None, None]).mean()


def ohkm_mse_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, topk: int) -> torch.Tensor:
    """Online hard keypoint mining: each sample's ``topk`` largest per-keypoint MSEs, averaged (k <= K)."""
    w = weights[..., None, None]
    per_kp = ((pred.float() * w - target * w) ** 2).mean(dim=(2, 3))  # (B, K)
    k = min(topk, per_kp.shape[1])
    return per_kp.topk(k, dim=1, sorted=False).values.sum(dim=1).div(k).mean()


@dataclass
class PoseCriterion:
    """Makes the heatmap targets on the batch's device and returns the loss for the head output."""

    sigma: float = 6.0  # heatmap pixels (official: 6 for 256x192 heatmaps)
    ohkm_topk: int | None = None  # None: plain weighted MSE
    loss_weight: float = 1.0  # Sapiens2: 10
    keypoint_weights: torch.Tensor | None = None  # (K,) extra per-keypoint weights
    inside_only: bool = False  # Sapiens2: weight 0 for a keypoint outside the crop (v1: only once its Gaussian is)

    def targets(self, batch: dict, heatmap_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, h, w) Gaussian heatmaps and (B, K) weights from the crop keypoints and visibility."""
        input_size = tuple(batch["image"].shape[-2:])
        heatmaps, weights = encode_udp_heatmaps(batch["keypoints"], batch["visible"], input_size, heatmap_size,
                                                self.sigma)
        if self.inside_only:
            x, y = batch["keypoints"].to(weights.device).unbind(-1)  # (B, K) crop pixels
            weights = weights * ((x >= 0) & (x < input_size[1]) & (y >= 0) & (y < input_size[0]))
        if self.keypoint_weights is not None:
            weights = weights * self.keypoint_weights.to(weights.device)
        return heatmaps, weights

    def __call__(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        target, weights = self.targets(batch, tuple(output.shape[-2:]))
        if self.ohkm_topk:
            return self.loss_weight * ohkm_mse_loss(output, target, weights, self.ohkm_topk)
        return self.loss_weight * keypoint_mse_loss(output, target, weights)


class PoseEvaluator:
    """Decodes heatmaps to image coordinates and scores them with COCO OKS AP against the ground-truth JSON."""

    def __init__(self, gt: dict, keypoint_set, input_size: tuple[int, int]):
        from ..evaluation.pose import person_category  # (pycocotools: imported when evaluating)

        self.gt, self.keypoint_set, self.input_size = gt, keypoint_set, input_size
        self.category = person_category(gt)  # the GT's person category, which a result must carry to be matched
        self.results: list[dict] = []

    def update(self, output: torch.Tensor, batch: dict) -> None:
        kp, scores = decode_udp_heatmaps(output, self.input_size)  # bf16 maps read in place, float32 out
        kp = crop_to_image(kp, batch["center"].to(kp), batch["scale"].to(kp), self.input_size)
        for i in range(len(kp)):
            s = scores[i].clamp(min=0)
            above = s > 0.2  # official score: mean keypoint score above 0.2, times the box score (1 for GT boxes)
            flat = torch.cat([kp[i], s[:, None]], dim=1).flatten().tolist()
            self.results.append({"image_id": int(batch["image_id"][i]), "category_id": self.category,
                                 "keypoints": flat, "score": float(s[above].mean()) if above.any() else 0.0})

    def state(self) -> list[dict]:
        return self.results

    def merge(self, other: list[dict]) -> None:
        self.results.extend(other)

    def compute(self) -> dict:
        from ..evaluation import evaluate_keypoints

        return evaluate_keypoints(self.gt, self.results, self.keypoint_set)
