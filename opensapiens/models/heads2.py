"""Sapiens2 task heads, each block a layer then InstanceNorm (no affine) + SiLU, as the official ones.

    pose, seg:        features -> [ConvT 4/2] x n -> [Conv k] x m -> Conv 1x1 -> (B, K, H/4, W/4) | (B, 29, H, W)
    normal, pointmap: features -> Conv 3x3 -> [Conv 3x3 to 4c -> PixelShuffle 2] x 4 -> [Conv 3x3] x m -> Conv 1x1
                      -> (B, 3, H, W)
    pointmap's scale: features -> [Conv 1x1 stride 2] x 3 -> flatten -> Linear -> SiLU -> Linear -> SiLU -> Linear
                      -> (B, 1)

The widths differ by size and task (``official_head2_spec``); a checkpoint's are read from its tensors
(``checkpoints.official``). Module names follow the official state dicts (``deconv_layers.{0,3}``,
``conv_layers.{0,3,6}``, ``input_conv.0``, ``upsample_blocks.{i}.0``, ``scale_conv_layers``,
``scale_final_layer.{1,3,5}``); the last conv is ``final`` (officially ``conv_pose`` / ``conv_seg`` /
``conv_normal`` / ``conv_pointmap``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from .heads import norm_act

TASKS2 = ("pose", "seg", "normal", "pointmap")
OUTPUTS2 = {"pose": 308, "seg": 29, "normal": 3, "pointmap": 3}


@dataclass(frozen=True)
class Head2Spec:
    """One Sapiens2 head's layer widths."""

    up: tuple[int, ...]  # deconvolutions (pose, seg) or pixel-shuffle blocks (normal, pointmap), each x2
    conv: tuple[int, ...]  # then these convolutions
    conv_kernel: int  # 1 (pose, seg) or 3 (normal, pointmap)
    scale_conv: tuple[int, ...] = ()  # pointmap's scale branch: 1x1 stride-2 convs ...
    scale_hidden: tuple[int, ...] = ()  # ... then Linears of these widths, then one to a single value
    scale_grid: tuple[int, int] = (8, 6)  # the grid the scale branch flattens: the 64x48 tokens of 1024x768, / 8

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Head2Spec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def for_input(self, input_size: tuple[int, int], patch_size: int = 16) -> Head2Spec:
        """The same widths, the scale branch flattening the grid that an (H, W) input gives (each stride-2 1x1
        conv keeps ceil(n / 2) of n)."""
        if not self.scale_conv:
            return self
        grid = [side // patch_size for side in input_size]
        for _ in self.scale_conv:
            grid = [(n + 1) // 2 for n in grid]
        return replace(self, scale_grid=(grid[0], grid[1]))


def official_head2_spec(task: str, arch_name: str) -> Head2Spec:
    """The released models' widths (their configs) for ``task`` on backbone size ``arch_name``; sizes without a
    released task model (0.1b, test sizes) take the 0.4b/0.8b ones."""
    size = arch_name.lower().removeprefix("sapiens2_").removesuffix("_4k")  # (no 4K task model: the 1b's widths)
    if task == "pose":
        return (Head2Spec((1536, 1024), (768, 512, 256), 1) if size == "1b" else
                Head2Spec((1024, 768), (512, 512, 256), 1))
    if task == "seg":
        return Head2Spec((512, 256, 128, 64), (64, 64), 1)
    if task == "normal":
        return (Head2Spec((1536, 768, 512, 256), (128, 64, 32), 3) if size == "5b" else
                Head2Spec((768, 512, 256, 128), (64, 32, 16), 3))
    if task == "pointmap":
        up, conv = ((1536, 768, 768, 768), (128, 64, 32)) if size == "5b" else ((1536, 768, 512, 256), (64, 32, 16))
        return Head2Spec(up, conv, 3, scale_conv=(1536, 512, 128), scale_hidden=(512, 128))
    raise ValueError(f"unknown Sapiens2 task {task!r}; expected one of {', '.join(TASKS2)}")


def _convs(c: int, widths: tuple[int, ...], kernel: int) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for w in widths:
        layers += norm_act(nn.Conv2d(c, w, kernel, padding=(kernel - 1) // 2), w)
        c = w
    return nn.Sequential(*layers), c


class DeconvHead2(nn.Module):
    """Pose and segmentation: transposed convolutions (4/2, no bias), convolutions, a 1x1 classifier."""

    def __init__(self, in_channels: int, out_channels: int, spec: Head2Spec):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in spec.up:
            layers += norm_act(nn.ConvTranspose2d(c, w, 4, stride=2, padding=1, bias=False), w)
            c = w
        self.deconv_layers = nn.Sequential(*layers)
        self.conv_layers, c = _convs(c, spec.conv, spec.conv_kernel)
        self.final = nn.Conv2d(c, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.conv_layers(self.deconv_layers(x)))


class ShuffleHead2(nn.Module):
    """Normals (and pointmap's dense branch): a 3x3 conv, then per x2 step a 3x3 conv to 4x the width folded into
    space by PixelShuffle, 3x3 convs, a 1x1 output conv. With ``spec.scale_conv``, also pointmap's per-image scale
    from the backbone features; ``forward`` then returns (map, scale)."""

    def __init__(self, in_channels: int, out_channels: int, spec: Head2Spec):
        super().__init__()
        self.input_conv = nn.Sequential(*norm_act(nn.Conv2d(in_channels, in_channels, 3, padding=1), in_channels))
        c = in_channels
        blocks = []
        for w in spec.up:
            blocks.append(nn.Sequential(nn.Conv2d(c, 4 * w, 3, padding=1), nn.PixelShuffle(2), nn.InstanceNorm2d(w),
                                        nn.SiLU()))
            c = w
        self.upsample_blocks = nn.ModuleList(blocks)
        self.conv_layers, c = _convs(c, spec.conv, spec.conv_kernel)
        self.final = nn.Conv2d(c, out_channels, 1)
        self.out_channels = out_channels
        self.scale_conv_layers = self.scale_final_layer = None
        if spec.scale_conv:
            layers: list[nn.Module] = []
            c = in_channels
            for w in spec.scale_conv:
                layers += norm_act(nn.Conv2d(c, w, 1, stride=2), w)
                c = w
            self.scale_conv_layers = nn.Sequential(*layers)
            mlp: list[nn.Module] = [nn.Flatten()]
            c = c * spec.scale_grid[0] * spec.scale_grid[1]
            for w in spec.scale_hidden:
                mlp += [nn.Linear(c, w), nn.SiLU()]
                c = w
            self.scale_final_layer = nn.Sequential(*mlp, nn.Linear(c, 1))
            self.scale_grid = spec.scale_grid

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        y = self.input_conv(x)
        for block in self.upsample_blocks:
            y = block(y)
        y = self.final(self.conv_layers(y))
        return y if self.scale_conv_layers is None else (y, self.scale(x))  # (B, 3, H, W), (B, 1)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Pointmap's (B, 1) canonical scale from the backbone features."""
        s = self.scale_conv_layers(x)
        if tuple(s.shape[-2:]) != self.scale_grid:
            raise ValueError(f"the pointmap scale branch flattens the {self.scale_grid[0]}x{self.scale_grid[1]} grid "
                             f"of the input size it was trained at (1024x768 for the released models); this input "
                             f"gave {s.shape[-2]}x{s.shape[-1]}: run it at its trained size")
        return self.scale_final_layer(s)


def build_head2(task: str, in_channels: int, out_channels: int | None, spec: Head2Spec) -> nn.Module:
    out = OUTPUTS2[task] if out_channels is None else out_channels
    head = (DeconvHead2 if task in ("pose", "seg") else ShuffleHead2)(in_channels, out, spec)
    if not head.final.weight.is_meta:  # official init: Kaiming normal (fan out) for the convolutions
        for m in head.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return head
