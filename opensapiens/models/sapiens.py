"""A task model is a backbone plus a head; ``forward`` returns the raw head output and never post-processes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .heads import OUTPUTS, TASKS, build_head
from .heads2 import OUTPUTS2, TASKS2, Head2Spec, build_head2, official_head2_spec
from .sapiens2 import Sapiens2Arch, Sapiens2ViT
from .vit import SapiensViT, ViTArch, get_arch

#: Official patch-embed padding per task (pose/normal: 2; seg/depth/pretrain: 0; CIHP/LIP 20-class seg: 2). Sapiens2
#: has none.
OFFICIAL_PATCH_PADDING = {"pose": 2, "normal": 2, "seg": 0, "depth": 0, "features": 0}


def official_patch_padding(task: str, out_channels: int | None = None) -> int:
    if task == "seg" and out_channels == 20:  # CIHP / LIP configs set padding=2
        return 2
    return OFFICIAL_PATCH_PADDING[task]


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in our safetensors metadata."""

    task: str  # pose | seg | depth (v1) | normal | pointmap (Sapiens2) | features
    arch: ViTArch | Sapiens2Arch
    out_channels: int | None = None  # keypoints (pose) / classes (seg); None for features
    patch_padding: int = 0
    pos_grid: tuple[int, int] = (64, 48)
    with_cls_token: bool = False
    head_channels: int | None = None  # None = official width (768, depth 384)
    extra: dict = field(default_factory=dict)  # e.g. keypoint set or class names
    head_spec: Head2Spec | None = None  # Sapiens2 heads' widths (None: the official ones for the arch)

    @property
    def generation(self) -> int:
        return self.arch.generation

    @property
    def task_input_size(self) -> tuple[int, int]:
        """The official task models' input, a 64 x 48 token grid: 1024x768 (the 4K backbone's 4096x3072)."""
        return 64 * self.arch.stride, 48 * self.arch.stride

    @property
    def head2_spec(self) -> Head2Spec:
        """A Sapiens2 head's widths: the recorded ones, else the released models' for the arch."""
        return self.head_spec or official_head2_spec(self.task, self.arch.name)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pos_grid"] = list(self.pos_grid)
        if self.head_spec is None:  # (v1 configs as before: readers from before Sapiens2 take them)
            d.pop("head_spec")
        else:
            d["head_spec"] = self.head_spec.to_dict()
        if not d["arch"].get("tokenizer_layers", 1):  # (1K Sapiens2 configs as before the 4K model: older readers)
            del d["arch"]["tokenizer_layers"], d["arch"]["window"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        arch = d["arch"]
        if isinstance(arch, dict):
            arch = Sapiens2Arch(**arch) if arch.get("generation", 1) == 2 else ViTArch(**arch)
        d["arch"] = arch if isinstance(arch, (ViTArch, Sapiens2Arch)) else get_arch(arch)
        d["pos_grid"] = tuple(d["pos_grid"])
        if d.get("head_spec") is not None:
            d["head_spec"] = Head2Spec.from_dict(d["head_spec"])
        return cls(**d)


class SapiensModel(nn.Module):
    """backbone + head. (B, 3, H, W) normalized RGB -> raw output:

    Sapiens v1: pose (B, K, H/4, W/4) heatmaps · seg (B, N, H/2, W/2) logits · depth (B, 1, H, W) ·
    normal (B, 3, H/2, W/2) un-normalized vectors · features (B, C, H/16, W/16).
    Sapiens2: pose (B, K, H/4, W/4) · seg (B, N, H, W) · normal (B, 3, H, W) · pointmap ((B, 3, H, W) points in the
    canonical camera, (B, 1) scale; metric points = points / scale) · features (B, C, H/16, W/16).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.head: nn.Module | None = None
        if config.generation == 2:
            if config.task not in (*TASKS2, "features"):
                raise ValueError(f"unknown Sapiens2 task {config.task!r}; expected one of {', '.join(TASKS2)} or "
                                 "features (Sapiens2 has no depth model: its pointmap gives depth)")
            self.backbone = Sapiens2ViT(config.arch, config.with_cls_token)
            if config.task != "features":
                self.head = build_head2(config.task, config.arch.embed_dim, config.out_channels, config.head2_spec)
            return
        if config.task not in (*TASKS, "features"):
            raise ValueError(f"unknown task {config.task!r}")
        self.backbone = SapiensViT(config.arch, config.pos_grid, config.patch_padding, config.with_cls_token)
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
                head_channels: int | None = None, head_spec: Head2Spec | None = None, **extra) -> SapiensModel:
    """A freshly initialised model (official head shapes, official padding unless given). A Sapiens2 arch
    ("sapiens2_1b", ...) builds a Sapiens2 model, its head's widths ``head_spec`` (default: the official ones, a
    pointmap scale branch sized for the ``pos_grid`` tokens); ``head_channels`` and ``patch_padding`` are v1's."""
    arch = get_arch(arch)
    if isinstance(arch, Sapiens2Arch):
        if head_channels is not None or patch_padding:
            raise ValueError("Sapiens2 models take neither head_channels nor a patch padding (see head_spec)")
        if task != "features" and out_channels is None:
            out_channels = OUTPUTS2.get(task)
        if task == "pointmap" and head_spec is None:  # its scale branch flattens the grid of the input size
            head_spec = official_head2_spec(task, arch.name).for_input((16 * pos_grid[0], 16 * pos_grid[1]))
        return SapiensModel(ModelConfig(task=task, arch=arch, out_channels=out_channels, with_cls_token=True,
                                        extra=extra, head_spec=head_spec))
    if head_spec is not None:
        raise ValueError("head_spec sets a Sapiens2 head's widths; a v1 head takes head_channels")
    if task not in (*TASKS, "features"):
        raise ValueError(f"{task!r} is not a Sapiens v1 task ({', '.join(TASKS)}, features); arch {arch.name} is v1"
                         f"{' (pointmaps are Sapiens2 models: sapiens2_0.4b ...)' if task in TASKS2 else ''}")
    if patch_padding is None:
        patch_padding = official_patch_padding(task, out_channels)
    if task != "features" and out_channels is None:
        out_channels = OUTPUTS.get(task)
    cfg = ModelConfig(task=task, arch=arch, out_channels=out_channels, patch_padding=patch_padding,
                      pos_grid=tuple(pos_grid), head_channels=head_channels, extra=extra)
    return SapiensModel(cfg)
