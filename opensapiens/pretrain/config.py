"""MAE pretraining configuration; the defaults are the official Sapiens ``humans_300m`` recipe.

Official (reference/sapiens_v1_backbone_pretrain_lite.md §2): 1024x1024 inputs, mask ratio 0.75, decoder 512 x 8
blocks x 16 heads, norm_pix loss, AdamW (0.9, 0.95) with weight decay 0.05 (none on norms, biases, position and
cls/mask tokens), LR = 1.5e-4 x global batch / 256, linear warm-up from x1e-4 over 40/1600 of the run then cosine
to 0, gradient clipping 1.0, RandomResizedCrop(scale 0.2-1.0, bicubic) + horizontal flip.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from ..models.vit import grid_inferable
from ..training.config import PRECISIONS, check_counts


@dataclass
class PretrainConfig:
    data: str  # tar shards / image folder / glob / list (see opensapiens.data.shards.find_source)
    out: str  # run folder
    arch: str = "0.3b"
    init: str | None = None  # continue from a pretrain checkpoint (official raw/clean .pth or ours)
    resume: bool = False
    overwrite: bool = False  # a fresh start deletes the checkpoints and metrics an earlier run left in ``out``
    steps: int = 1000
    batch_size: int = 32  # per GPU per micro-batch
    grad_accum: int = 1
    input_size: tuple[int, int] = (1024, 1024)  # (H, W)
    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix: bool = True
    # optimization
    blr: float = 1.5e-4  # base LR per 256 images; LR = blr x global batch / 256 unless lr is given
    lr: float | None = None
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float = 1.0
    warmup_steps: int | None = None  # default: 40/1600 of the run, as the official schedule (fixed at the start)
    warmup_start: float = 1e-4
    # data
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip_prob: float = 0.5
    shuffle_buffer: int = 256
    gpu_jpeg: bool | None = None  # None: on when training on CUDA
    workers: int = 4
    # speed / memory
    precision: str = "bf16"  # bf16 (autocast, or bf16 params under FSDP) | tf32 | fp32 (training.float32_math)
    checkpointing: str = "none"  # none | blocks (activation checkpointing of encoder and decoder blocks)
    compile: str = "none"  # none | auto (model, or blocks with FSDP or checkpointing) | blocks | model
    fsdp: bool = False
    device: str | None = None
    deterministic: bool = False  # deterministic kernels: a bit-identical resume on GPUs too (slower)
    attention: str = "auto"  # auto | sdpa | triton | fa4 (training.speed.use_fast_attention)
    # run management
    seed: int = 0
    log_interval: int = 10  # 0: one record, at the end
    ckpt_interval: int = 1000  # 0: checkpoint only at the end (and on a stop signal)
    time_limit: float | None = None  # seconds: the step that ends past it is the last (weights written)
    keep_last: int = 3
    vis_interval: int = 0  # 0: reconstructions only at the end
    export_official: bool = False  # also write backbone_clean.pth in the official key layout
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if isinstance(self.compile, bool):  # configs written before the compile scopes: True compiled the blocks
            self.compile = "auto" if self.compile else "none"
        if self.compile not in ("none", "auto", "blocks", "model"):
            raise ValueError(f"compile must be none, auto, blocks or model, got {self.compile!r}")
        if self.compile == "model" and self.fsdp:
            raise ValueError("compile=model (the whole model in one graph) is not combined with FSDP here: use "
                             "compile=blocks (or auto)")
        if self.checkpointing not in ("none", "blocks"):
            raise ValueError(f"checkpointing must be none or blocks, got {self.checkpointing!r}")
        from ..training.speed import check_attention_choice

        check_attention_choice(self.attention)
        H, W = self.input_size
        if H % 16 or W % 16:
            raise ValueError(f"input size {H}x{W} must be a multiple of 16 on both sides")
        patches = H // 16 * (W // 16)
        kept = int(patches * (1 - self.mask_ratio)) if 0 < self.mask_ratio < 1 else None
        if kept is None or not 1 <= kept < patches:  # nothing masked: no loss (0/0); nothing kept: no encoder input
            raise ValueError(f"mask_ratio {self.mask_ratio} must mask at least one of the {patches} patches of a "
                             f"{H}x{W} input and keep at least one")
        check_counts(self, positive=("steps", "batch_size", "grad_accum", "decoder_dim", "decoder_depth",
                                     "decoder_heads"),
                     non_negative=("log_interval", "ckpt_interval", "keep_last", "vis_interval", "shuffle_buffer"))
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be at least 0, got {self.warmup_steps}")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_dim {self.decoder_dim} must be a multiple of decoder_heads "
                             f"{self.decoder_heads} (each head takes an equal share of the width)")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale {low},{high} must be two area fractions with 0 < low <= high <= 1")
        if self.export_official and not grid_inferable((H // 16, W // 16)):
            raise ValueError(f"export_official: the official key layout records no position grid, and a reader "
                             f"cannot recover {H // 16}x{W // 16} (input {H}x{W}) from its token count; it takes "
                             "square or 4:3 portrait grids. Pretrain at such a size, or keep backbone.safetensors")

    def global_lr(self, world_size: int) -> float:
        if self.lr is not None:
            return self.lr
        return self.blr * self.batch_size * self.grad_accum * world_size / 256

    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else round(self.steps * 40 / 1600)

    @property
    def compile_scope(self) -> str:
        """What ``torch.compile`` wraps: "none", "blocks" (each transformer block) or "model" (forward + loss as one
        graph: on an H200 the MAE-0.3B step 296 -> 290 ms, ``docs/performance.md``). ``auto`` takes the whole model
        where that was measured, blocks under FSDP or block checkpointing."""
        if self.compile == "auto":
            return "blocks" if self.fsdp or self.checkpointing == "blocks" else "model"
        return self.compile

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for k in ("input_size", "betas", "crop_scale"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)
