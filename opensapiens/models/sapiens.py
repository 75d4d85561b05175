"""A task model is a backbone plus a head; ``forward`` returns the raw head output and never post-processes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .heads import TASKS, DeconvHead, build_head
from .vit import SapiensViT, ViTArch, get_arch

#: Official patch-embed padding per task (pose/normal: 2; seg/depth/pretrain: 0; CIHP/LIP 20-class seg: 2).
OFFICIAL_PATCH_PADDING = {"pose": 2, "normal": 2, "seg": 0, "depth": 0, "features": 0}


def official_patch_padding(task: str, out_channels: int | None = None) -> int:
    if task == "seg" and out_channels == 20:  # CIHP / LIP configs set padding=2
        return 2
    return OFFICIAL_PATCH_PADDING[task]


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in our safetensors metadata."""

    task: str  # pose | seg | depth | normal | features
    arch: ViTArch
    out_channels: int | None = None  # keypoints (pose) / classes (seg); None for features
    patch_padding: int = 0
    pos_grid: tuple[int, int] = (64, 48)
    with_cls_token: bool = False
    head_channels: int | None = None  # None = official width (768, depth 384)
    extra: dict = field(default_factory=dict)  # e.g. keypoint set or class names

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pos_grid"] = list(self.pos_grid)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["arch"] = ViTArch(**d["arch"]) if isinstance(d["arch"], dict) else get_arch(d["arch"])
        d["pos_grid"] = tuple(d["pos_grid"])
        return cls(**d)


class SapiensModel(nn.Module):
    """backbone + head. (B, 3, H, W) normalized RGB -> raw output:

    pose (B, K, H/4, W/4) heatmaps · seg (B, N, H/2, W/2) logits · depth (B, 1, H, W) ·
    normal (B, 3, H/2, W/2) un-normalized vectors · features (B, C, H/16, W/16).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.task not in (*TASKS, "features"):
            raise ValueError(f"unknown task {config.task!r}")
        self.config = config
        self.backbone = SapiensViT(config.arch, config.pos_grid, config.patch_padding, config.with_cls_token)
        self.head: DeconvHead | None = None
        if config.task != "features":
            self.head = build_head(config.task, config.arch.embed_dim, config.out_channels,
                                   config.head_channels)

    @property
    def task(self) -> str:
        return self.config.task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        return feats if self.head is None else self.head(feats)


def build_model(task: str, arch: str | ViTArch = "tiny", out_channels: int | None = None,
                patch_padding: int | None = None, pos_grid: tuple[int, int] = (64, 48),
                head_channels: int | None = None, **extra) -> SapiensModel:
    """A freshly initialised model (official head shapes, official padding unless given)."""
    if patch_padding is None:
        patch_padding = official_patch_padding(task, out_channels)
    if task != "features" and out_channels is None:
        out_channels = {"pose": 308, "seg": 28, "depth": 1, "normal": 3}[task]
    cfg = ModelConfig(task=task, arch=get_arch(arch), out_channels=out_channels, patch_padding=patch_padding,
                      pos_grid=tuple(pos_grid), head_channels=head_channels, extra=extra)
    return SapiensModel(cfg)
