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

import importlib

_EXPORTS = {"TrainConfig": "config", "resolve": "config", "train": "finetune", "build_optimizer": "optim",
            "layer_id": "optim", "param_groups": "optim", "set_lr": "optim", "Schedule": "schedule",
            "load_checkpoint": "state", "save_checkpoint": "state", "StepResult": "step", "train_step": "step"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Exports load on first use: inference imports ``training.speed`` (attention backends), which should not pull in
    the loop and its distributed checkpointing (``torch.distributed.checkpoint``: ~0.5 s of a predictor's start)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
