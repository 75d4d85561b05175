"""Training checkpoints that resume bit-exactly: weights, optimizer, step, data position and every RNG.

A checkpoint is one ``torch.save`` file, ``RUN/checkpoints/step_00001000.pt``, written by rank 0 to a temporary
name and renamed (a crash mid-write never leaves a truncated "latest"). It holds full (unsharded) state dicts keyed
by parameter name, gathered through ``torch.distributed.checkpoint.state_dict``, so a run saved under FSDP on 8
GPUs resumes under DDP on 2 or on one GPU. It loads with ``weights_only=True``: nothing in it executes code.

RNG states (python, numpy, torch CPU, CUDA) are saved per rank. The data position needs no state of its own: the
sample stream is a pure function of (seed, position), see ``opensapiens.data.sampler``.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from .distributed import DistInfo, barrier, gather_objects
from .reproducibility import seed_everything

_NAME = re.compile(r"^step_(\d{8})\.pt$")


def rng_state() -> dict:
    """This process's python, numpy, torch and CUDA generator states (tensors and plain containers only)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "has_gauss": n["has_gauss"], "gauss": n["gauss"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict]:
    """Unsharded model (and optimizer) state dicts on CPU, keyed by parameter name (complete on rank 0)."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if optimizer is None:
        return get_model_state_dict(model, options=opts), {}
    return get_state_dict(model, optimizer, options=opts)


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
                    info: DistInfo) -> Path | None:
    """Collective: every rank calls it; rank 0 writes ``{model, optimizer, rng: [per rank], **meta}`` atomically."""
    model_sd, optim_sd = full_state(model, optimizer)
    rngs = gather_objects(rng_state())
    path = Path(path)
    if info.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"model": model_sd, "optimizer": optim_sd, "rng": rngs, **meta}, tmp)
        with open(tmp, "rb") as f:  # on disk before it takes the name: a power cut leaves the previous checkpoint
            os.fsync(f.fileno())
        os.replace(tmp, path)
    barrier()
    return path if info.is_main else None


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    info: DistInfo) -> dict[str, Any]:
    """Restore weights, optimizer and this rank's RNG; returns the remaining metadata (step, config, ...)."""
    broadcast = info.distributed
    ckpt = torch.load(path, map_location="cpu", weights_only=True) if (info.is_main or not broadcast) else {}
    meta = gather_objects({k: v for k, v in ckpt.items() if k not in ("model", "optimizer")})[0]
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=broadcast)
    # Two calls, not ``set_state_dict``: given the empty model dict that ranks > 0 pass with broadcast_from_rank0, it
    # loads only the optimizer there and skips the model's broadcast that rank 0 waits in (PyTorch 2.11; a hang).
    set_model_state_dict(model, ckpt.get("model", {}), options=opts)
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, ckpt.get("optimizer", {}), options=opts)
    restore_rng(meta.pop("rng"), info.rank)
    return meta


def restore_rng(rngs: list[dict], rank: int) -> None:
    """Set this rank's saved RNG state. A rank the checkpoint has none for (resumed on more ranks than it was saved
    from) takes rank ``rank % n``'s, reseeded by its rank: no two ranks replay one dropout stream."""
    set_rng_state(rngs[rank % len(rngs)])
    if rank >= len(rngs):
        seed_everything(int(torch.randint(0, 2**62, ())) + rank)  # drawn from the restored state: reproducible


def list_checkpoints(folder: str | Path) -> list[Path]:
    """``step_*.pt`` files in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def check_resumed_steps(resume_from: Path | None, steps: int) -> None:
    """A resume asked for fewer steps than its checkpoint holds would train nothing and record the shorter run: an
    error, before the run's config.json is rewritten."""
    if resume_from is not None and (reached := int(_NAME.match(resume_from.name).group(1))) > steps:
        raise ValueError(f"--steps {steps} is below step {reached}, where {resume_from.parent.parent} already is: "
                         "give at least that many to continue it")


def checkpoint_to_resume(run: Path, resume: bool, overwrite: bool, info: DistInfo) -> Path | None:
    """Collective: the newest checkpoint in ``run`` to resume from, or None for a fresh start.

    A fresh start refuses a folder that holds another run's checkpoints: pruning by step number would delete the new
    run's, and a later ``--resume`` would load the old one. ``overwrite`` deletes them, the old ``metrics.jsonl`` and
    ``tensorboard/`` instead.
    """
    found = list_checkpoints(run / "checkpoints")
    barrier()  # every rank has listed before rank 0 may delete: one listing after would find none and go its own way
    if resume or not found:
        return found[-1] if found else None
    if not overwrite:
        raise ValueError(f"{run} already holds the checkpoints of a run (up to {found[-1].name}): continue it with "
                         "--resume, write to another --out, or pass --overwrite to delete them")
    if info.is_main:
        for p in found:
            p.unlink()
        (run / "metrics.jsonl").unlink(missing_ok=True)
        shutil.rmtree(run / "tensorboard", ignore_errors=True)
    barrier()
    return None


def resumed_batch_note(meta: dict[str, Any], batch_size: int, grad_accum: int, world_size: int) -> str | None:
    """What a resume changes in the global batch (images per optimizer step) the run was saved with, or None: another
    number of processes multiplies the same per-process batch by another count."""
    saved_cfg, saved_world = meta.get("config") or {}, meta.get("world_size")
    if saved_world is None or "batch_size" not in saved_cfg:
        return None
    saved = saved_cfg["batch_size"] * saved_cfg.get("grad_accum", 1) * saved_world
    now = batch_size * grad_accum * world_size
    if now == saved:
        return None
    return (f"this run's steps took {saved} images ({saved_world} processes x batch {saved_cfg['batch_size']} x "
            f"accumulation {saved_cfg.get('grad_accum', 1)}); resumed as {world_size} x {batch_size} x {grad_accum} "
            f"they take {now}: the rest of the run trains on another global batch")


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def prune_checkpoints(folder: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (0 keeps everything)."""
    if keep_last > 0:
        for p in list_checkpoints(folder)[:-keep_last]:
            p.unlink(missing_ok=True)
