"""One backbone, one head per task: a single backbone pass serves pose, segmentation, depth and normals.

The official models spend a whole 0.3B-2B backbone per task; the bundled ``sapiens-nano`` shares one small backbone.
``task_model(task)`` returns an ordinary ``SapiensModel`` that shares this model's parameters, so every predictor,
the evaluator and the exporters work on one task of a multi-task checkpoint unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .heads import build_head
from .sapiens import ModelConfig, SapiensModel
from .vit import SapiensViT, ViTArch, get_arch

DEFAULT_OUTPUTS = {"pose": 308, "seg": 28, "depth": 1, "normal": 3}


@dataclass
class MultiTaskConfig:
    arch: ViTArch
    outputs: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_OUTPUTS))  # task -> output channels
    head_channels: int | None = None
    patch_padding: int = 0
    pos_grid: tuple[int, int] = (16, 12)
    input_size: tuple[int, int] = (256, 192)  # the resolution the model was trained at

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pos_grid"], d["input_size"] = list(self.pos_grid), list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MultiTaskConfig:
        d = dict(d)
        d["arch"] = ViTArch(**d["arch"]) if isinstance(d["arch"], dict) else get_arch(d["arch"])
        d["pos_grid"], d["input_size"] = tuple(d["pos_grid"]), tuple(d["input_size"])
        return cls(**d)

    def task_config(self, task: str) -> ModelConfig:
        return ModelConfig(task=task, arch=self.arch, out_channels=self.outputs[task], patch_padding=self.patch_padding,
                           pos_grid=self.pos_grid, head_channels=self.head_channels)


class SapiensMultiTask(nn.Module):
    """(B, 3, H, W) normalized RGB -> {task: raw output}, same shapes as the single-task models."""

    def __init__(self, config: MultiTaskConfig):
        super().__init__()
        self.config = config
        self.backbone = SapiensViT(config.arch, config.pos_grid, config.patch_padding)
        self.heads = nn.ModuleDict({t: build_head(t, config.arch.embed_dim, n, config.head_channels)
                                    for t, n in config.outputs.items()})

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.heads)

    def forward(self, x: torch.Tensor, tasks: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)  # (B, C, H/16, W/16), computed once
        return {t: self.heads[t](feats) for t in (tasks or self.tasks)}

    def task_model(self, task: str) -> SapiensModel:
        """A single-task view sharing this model's backbone and ``task`` head (no copy of any weight)."""
        if task not in self.heads:
            raise ValueError(f"this model has no {task!r} head; it has {', '.join(self.heads)}")
        view = SapiensModel.__new__(SapiensModel)
        nn.Module.__init__(view)
        view.config = self.config.task_config(task)
        view.backbone = self.backbone
        view.head = self.heads[task]
        return view


def build_multitask(arch: str | ViTArch = "nano", input_size: tuple[int, int] = (256, 192),
                    head_channels: int | None = 96, outputs: dict[str, int] | None = None) -> SapiensMultiTask:
    cfg = MultiTaskConfig(arch=get_arch(arch), outputs=dict(outputs or DEFAULT_OUTPUTS), head_channels=head_channels,
                          pos_grid=(input_size[0] // 16, input_size[1] // 16), input_size=tuple(input_size))
    return SapiensMultiTask(cfg)
