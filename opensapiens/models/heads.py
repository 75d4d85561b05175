"""Sapiens v1 task heads: stride-2 deconvolutions then 1x1 convolutions, each followed by InstanceNorm + SiLU.

    features (B, C, h, w) -> [ConvT 4/2 -> IN -> SiLU] x n_up -> [Conv 1x1 -> IN -> SiLU] x n_conv -> Conv 1x1 -> out

| task   | up-sampling | channels | 1x1 convs | output (input H x W)  |
|--------|-------------|----------|-----------|-----------------------|
| pose   | 2 (x4)      | 768      | 2         | (B, K, H/4, W/4)      |
| seg    | 3 (x8)      | 768      | 3         | (B, N, H/2, W/2)      |
| depth  | 4 (x16)     | 384      | 2         | (B, 1, H, W)          |
| normal | 3 (x8)      | 768      | 3         | (B, 3, H/2, W/2)      |

InstanceNorm has no affine parameters and no running statistics, so ``deconv_layers``/``conv_layers`` Sequential
indices step by 3 (0, 3, 6, ...), exactly as in the official state dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

TASKS = ("pose", "seg", "depth", "normal")
OUTPUTS = {"pose": 308, "seg": 28, "depth": 1, "normal": 3}  # the official models' output channels


@dataclass(frozen=True)
class HeadSpec:
    num_deconv: int
    channels: int
    num_conv: int
    dropout: float  # Dropout2d before the final conv (seg/depth/normal decode heads), identity at eval

    def stride(self) -> int:
        """Output stride relative to the input image (backbone stride 16 over 2**num_deconv)."""
        return 16 // 2**self.num_deconv


HEAD_SPECS: dict[str, HeadSpec] = {
    "pose": HeadSpec(2, 768, 2, 0.0),
    "seg": HeadSpec(3, 768, 3, 0.1),
    "depth": HeadSpec(4, 384, 2, 0.1),
    "normal": HeadSpec(3, 768, 3, 0.1),
}


def norm_act(layer: nn.Module, channels: int) -> list[nn.Module]:
    """``layer`` then InstanceNorm (no affine, no running statistics) and SiLU: one stage of every Sapiens head."""
    return [layer, nn.InstanceNorm2d(channels), nn.SiLU()]


class DeconvHead(nn.Module):
    """Up-sampling head shared by all four tasks; only the numbers in ``HeadSpec`` differ."""

    def __init__(self, in_channels: int, out_channels: int, spec: HeadSpec):
        super().__init__()
        self.spec = spec
        self.out_channels = out_channels
        up: list[nn.Module] = []
        c = in_channels
        for _ in range(spec.num_deconv):
            up += norm_act(nn.ConvTranspose2d(c, spec.channels, 4, stride=2, padding=1, bias=False), spec.channels)
            c = spec.channels
        self.deconv_layers = nn.Sequential(*up)
        convs: list[nn.Module] = []
        for _ in range(spec.num_conv):
            convs += norm_act(nn.Conv2d(c, spec.channels, 1), spec.channels)
        self.conv_layers = nn.Sequential(*convs)
        self.dropout = nn.Dropout2d(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.final = nn.Conv2d(c, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.dropout(self.conv_layers(self.deconv_layers(x))))


def build_head(task: str, in_channels: int, out_channels: int | None = None, channels: int | None = None
               ) -> DeconvHead:
    """The official head for ``task``; ``out_channels`` = keypoints (pose) or classes (seg).

    ``channels`` overrides the head width (768/384 officially) for small models.
    """
    if task not in HEAD_SPECS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    out = out_channels if out_channels is not None else OUTPUTS[task]
    spec = HEAD_SPECS[task] if channels is None else replace(HEAD_SPECS[task], channels=channels)
    head = DeconvHead(in_channels, out, spec)
    init_head(head, task)
    return head


def init_head(head: DeconvHead, task: str) -> None:
    """Official initialisation: pose convs N(0, 0.001); the seg/depth/normal classifier N(0, 0.01)."""
    if head.final.weight.is_meta:  # built to take a checkpoint's weights: the first normal_ on meta costs ~1 s
        return
    if task == "pose":
        for m in head.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    else:
        nn.init.normal_(head.final.weight, std=0.01)
        nn.init.zeros_(head.final.bias)
