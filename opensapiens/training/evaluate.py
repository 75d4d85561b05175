"""Periodic evaluation: every rank runs its shard of the validation set, rank 0 merges and computes the metrics."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..data.batch import to_device
from .distributed import broadcast_object, gather_objects


def _select(batch: dict, keep: torch.Tensor) -> dict:
    return {k: v[keep] if isinstance(v, torch.Tensor) and v.shape[:1] == keep.shape else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: nn.Module, loader, evaluator, device: torch.device, autocast_dtype: torch.dtype | None = None,
             is_main: bool = True) -> dict:
    """Metrics of ``model`` over ``loader`` (an ``EvalSampler`` loader), the same dict on every rank.

    ``evaluator`` has ``update(output, batch)``, ``state()``, ``merge(state)`` and ``compute()`` (see
    ``opensapiens.tasks``); padding samples (``valid`` False) are dropped before ``update``, and so are stand-ins
    for unreadable samples (another sample's data), counted in ``metrics["unreadable_samples"]``.
    """
    was_training = model.training
    model.eval()
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else \
        contextlib.nullcontext()
    unreadable = 0
    for host in loader:
        valid = host["valid"].bool()
        stand_in = host["stand_in"].bool() if "stand_in" in host else torch.zeros_like(valid)
        unreadable += int((valid & stand_in).sum())
        batch = to_device(host, device)
        with amp:
            output = model(batch["image"])
        keep = (valid & ~stand_in).to(batch["image"].device)
        if keep.any():  # (pointmap models give a (points, scale) pair)
            kept = tuple(o.float()[keep] for o in output) if isinstance(output, tuple) else output.float()[keep]
            evaluator.update(kept, _select(batch, keep))
    model.train(was_training)
    states = gather_objects((evaluator.state(), unreadable))
    metrics = None
    if is_main:
        for other, _ in states[1:]:
            evaluator.merge(other)
        metrics = evaluator.compute()
        metrics["unreadable_samples"] = sum(n for _, n in states)
    return broadcast_object(metrics)
