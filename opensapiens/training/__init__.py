"""Training machinery: a readable fine-tuning loop (``finetune.train``) built from small reusable pieces.

    optim        AdamW param groups with layer-wise LR decay (``param_groups``, ``build_optimizer``, ``set_lr``)
    schedule     warm-up x step/poly/cosine LR as a pure function of the step (``Schedule``)
    step         accumulation, clipping, non-finite skip (``train_step``)
    state        atomic, resumable checkpoints with RNG states (``save_checkpoint``, ``load_checkpoint``)
    distributed  torchrun setup, DDP / FSDP2 wrapping, collectives
    speed        activation checkpointing (blocks, head), torch.compile and our Triton kernels, in place
    reproducibility  seeds; deterministic kernels for a bit-identical resume on GPUs (``deterministic_kernels``)
    logger       metrics.jsonl, TensorBoard, progress bar;   signals   SIGTERM / Ctrl-C -> save and exit
"""

from .config import TrainConfig, resolve
from .finetune import train
from .optim import build_optimizer, layer_id, param_groups, set_lr
from .schedule import Schedule
from .state import load_checkpoint, save_checkpoint
from .step import StepResult, train_step

__all__ = ["Schedule", "StepResult", "TrainConfig", "build_optimizer", "layer_id", "load_checkpoint",
           "param_groups", "resolve", "save_checkpoint", "set_lr", "train", "train_step"]
