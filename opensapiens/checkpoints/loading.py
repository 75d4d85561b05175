"""``load_model``: any supported checkpoint file or official name -> a ready ``SapiensModel``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from ..io.writers import atomic_path
from ..models.mae import MAE_CONFIG_KEY, MAEConfig
from ..models.multitask import MultiTaskConfig, SapiensMultiTask
from ..models.sapiens import ModelConfig, SapiensModel, official_patch_padding
from ..models.vit import grid_inferable
from .hub import resolve_checkpoint
from .official import infer_config, is_official_layout, official_to_ours, ours_to_official, prepare_for_config
from .reader import CheckpointError, checkpoint_file, read_state_dict, safetensors_metadata

CONFIG_KEY = "opensapiens_config"
MULTITASK_KEY = "opensapiens_multitask"
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
M = TypeVar("M", bound=nn.Module)


def as_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of fp32, bf16, fp16")
    return DTYPES[dtype]


def load_state(path_or_name: str | os.PathLike, task: str | None = None, patch_padding: int | None = None,
               num_heads: int | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a checkpoint and return (config, state dict in our key layout, ready for ``load_state_dict``)."""
    path = resolve_checkpoint(path_or_name)
    sd, meta = read_state_dict(path)
    if MULTITASK_KEY in meta:  # one task (or the bare backbone) of a multi-task checkpoint
        mt = MultiTaskConfig.from_dict(json.loads(meta[MULTITASK_KEY]))
        if task is None:
            raise CheckpointError(f"{path}: a multi-task checkpoint ({', '.join(mt.outputs)}); name a task, or load "
                                  "it whole with load_model(path)")
        if task != "features" and task not in mt.outputs:
            raise CheckpointError(f"{path}: has no {task} head (it has {', '.join(mt.outputs)})")
        cfg = mt.task_config(task) if task != "features" else ModelConfig(
            task="features", arch=mt.arch, patch_padding=mt.patch_padding, pos_grid=mt.pos_grid)
        if patch_padding is not None:
            cfg.patch_padding = patch_padding
        prefix = f"heads.{task}."
        sd = {("head." + k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()
              if k.startswith(("backbone.", prefix))}
        return cfg, sd
    if MAE_CONFIG_KEY in meta:  # an MAE (mae.safetensors, a pretrain checkpoint): its encoder, as features
        if task not in (None, "features"):
            raise CheckpointError(f"{path}: holds an MAE-pretrained backbone (features), not a {task} model; "
                                  f"fine-tune one from it with opensapiens train --init {path}")
        cfg = MAEConfig.from_dict(json.loads(meta[MAE_CONFIG_KEY])).features_config()
        if patch_padding is not None:
            cfg.patch_padding = patch_padding
        return cfg, {k: v for k, v in sd.items() if k.startswith("backbone.")}  # (the decoder left out)
    if CONFIG_KEY in meta:
        cfg = ModelConfig.from_dict(json.loads(meta[CONFIG_KEY]))
        if task is not None and task != cfg.task:
            if task != "features":
                raise CheckpointError(f"{path}: holds a {cfg.task} model, not {task}")
            cfg = ModelConfig(task="features", arch=cfg.arch, patch_padding=cfg.patch_padding, pos_grid=cfg.pos_grid,
                              with_cls_token=cfg.with_cls_token)
        if patch_padding is not None:
            cfg.patch_padding = patch_padding
    else:
        sd = strip_wrapper_prefixes(sd)
        if is_official_layout(sd):
            sd = official_to_ours(sd)
        cfg = infer_config(sd, task=task, patch_padding=patch_padding, num_heads=num_heads, source=str(path))
    return cfg, prepare_for_config(sd, cfg)


WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")  # DDP / FSDP, torch.compile, Lightning-style containers


def strip_wrapper_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict saved from a wrapped model (every key under ``module.``, ``_orig_mod.``, ...), unwrapped."""
    while sd:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None)
        if prefix is None:
            return sd
        sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_model(path_or_name: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: str | torch.dtype | None = None, task: str | None = None, patch_padding: int | None = None,
               num_heads: int | None = None) -> SapiensModel:
    """Load a Sapiens model in eval mode.

    Args:
        path_or_name: an official ``.pth`` (mmengine container or flat ``_clean.pth``), a TorchScript or bf16 lite
            ``.pt2``, our ``.safetensors``, or an official name such as ``sapiens-pose-1b`` (see ``hub``).
        device, dtype: where and in which precision the weights live ("fp32", "bf16", "fp16").
        task: force a task; "features" loads only the backbone of any checkpoint.
        patch_padding: override the per-task official patch-embed padding (0 or 2).
        num_heads: override the head count for non-official widths.

    Returns a ``SapiensModel`` whose ``forward`` maps a normalized (B, 3, H, W) batch to the raw head output.
    """
    if task is None and is_multitask(path_or_name):
        return load_multitask(path_or_name, device=device, dtype=dtype)
    cfg, sd = load_state(path_or_name, task=task, patch_padding=patch_padding, num_heads=num_heads)
    try:
        model = with_weights(lambda: SapiensModel(cfg), sd)
    except RuntimeError as e:
        raise CheckpointError(f"{path_or_name}: weights do not fit the inferred {cfg.task} model "
                              f"({cfg.arch.name}): {e}") from e
    return model.to(device=device, dtype=as_dtype(dtype)).eval()


def multitask_config(path_or_name: str | os.PathLike) -> MultiTaskConfig | None:
    """A multi-task checkpoint's config, read from its header alone (None for other checkpoints)."""
    path = checkpoint_file(resolve_checkpoint(path_or_name))  # (a save_pretrained folder: the file in it)
    if path.suffix != ".safetensors":
        return None
    meta = safetensors_metadata(path)
    return MultiTaskConfig.from_dict(json.loads(meta[MULTITASK_KEY])) if MULTITASK_KEY in meta else None


def is_multitask(path_or_name: str | os.PathLike) -> bool:
    return multitask_config(path_or_name) is not None


def native_input_size(path_or_name: str | os.PathLike) -> tuple[int, int] | None:
    """The input size a multi-task checkpoint was trained at (None for other checkpoints)."""
    config = multitask_config(path_or_name)
    return None if config is None else tuple(config.input_size)


def load_multitask(path_or_name: str | os.PathLike, device: str | torch.device = "cpu",
                   dtype: str | torch.dtype | None = None) -> SapiensMultiTask:
    """Load a whole multi-task checkpoint (one backbone, several heads) in eval mode."""
    path = resolve_checkpoint(path_or_name)
    sd, meta = read_state_dict(path)
    if MULTITASK_KEY not in meta:
        raise CheckpointError(f"{path}: not a multi-task checkpoint")
    cfg = MultiTaskConfig.from_dict(json.loads(meta[MULTITASK_KEY]))
    model = with_weights(lambda: SapiensMultiTask(cfg), sd)
    return model.to(device=device, dtype=as_dtype(dtype)).eval()


def with_weights(build: Callable[[], M], state_dict: dict[str, torch.Tensor]) -> M:
    """``build()`` on the meta device, its parameters then taken from ``state_dict`` (strict).

    Skips the random initialization that loading overwrites: building a 1B model initializes ~1.2e9 values on
    the CPU (10-30 s on two cores), and draws them from the global RNG, which loading a checkpoint should not touch.
    """
    with torch.device("meta"):
        model = build()
    model.load_state_dict({k: v.contiguous() for k, v in state_dict.items()}, strict=True, assign=True)
    return model


def config_metadata(config: ModelConfig | MultiTaskConfig) -> dict[str, str]:
    """The metadata entry that makes a file load as this model (safetensors header; our training checkpoints)."""
    return {MULTITASK_KEY if isinstance(config, MultiTaskConfig) else CONFIG_KEY: json.dumps(config.to_dict())}


def save_model(model: SapiensModel | SapiensMultiTask, path: str | os.PathLike,
               metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write a portable safetensors checkpoint (our key layout + the model config as metadata), atomically.

    ``dtype`` stores floating-point weights in another precision (e.g. fp16 for a small shipped file).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    meta = {**config_metadata(model.config), "format": "pt", **(metadata or {})}
    with atomic_path(path) as tmp:  # (the permissions a plain open() would give, as every output)
        save_file(sd, str(tmp), metadata=meta)
    return path


def export_official(model: SapiensModel, path: str | os.PathLike) -> Path:
    """Write the weights in the official key layout (``{'state_dict': ...}`` .pth, or flat for a backbone).

    The official layout records neither the patch padding nor the position grid: a reader infers them (the task's
    official padding; a square or 4:3 portrait grid; normals for a 3-channel seg-shaped head), so a model that a
    reader would rebuild otherwise is refused.
    """
    path = Path(path)
    if isinstance(model, SapiensMultiTask):
        raise CheckpointError(f"{path}: the official layout holds one task; load one of this multi-task model's "
                              f"tasks ({', '.join(model.config.outputs)}) with task=..., or save it with save_model")
    cfg = model.config
    if cfg.generation == 2:  # the official Sapiens2 layout records no padding or grid, and tells heads apart
        return _write_official(model, path)
    if cfg.task == "seg" and cfg.out_channels == 3:
        raise CheckpointError(f"{path}: a 3-class seg head has the shape of a normal head, and the official layout "
                              "does not record the task: a reader would load it as normals; keep it in our format "
                              "(save_model), which records it")
    official = official_patch_padding(cfg.task, cfg.out_channels)
    if cfg.patch_padding != official:
        raise CheckpointError(f"{path}: this {cfg.task} model has patch padding {cfg.patch_padding}, the official "
                              f"layout implies {official}; keep it in our format (save_model), which records it")
    grid = tuple(cfg.pos_grid)
    if not grid_inferable(grid):
        raise CheckpointError(f"{path}: a reader of the official layout cannot recover the position grid {grid} "
                              "(it takes square or 4:3 portrait grids); keep it in our format (save_model)")
    return _write_official(model, path)


def _write_official(model: SapiensModel, path: Path) -> Path:
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if "backbone.rope.periods" in sd:  # Sapiens2 stores its rotary periods in bfloat16, whatever the model's dtype
        sd["backbone.rope.periods"] = sd["backbone.rope.periods"].to(torch.bfloat16)
    sd = ours_to_official(sd, model.task)
    obj = sd if model.task == "features" else {"state_dict": sd, "meta": {"source": "opensapiens"}}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp))
        else:
            torch.save(obj, tmp)
    return path


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, task: str | None = None,
                       patch_padding: int | None = None, num_heads: int | None = None) -> Path:
    """Any supported checkpoint -> our portable safetensors (for ``opensapiens convert``)."""
    model = load_model(src, task=task, patch_padding=patch_padding, num_heads=num_heads)
    return save_model(model, dst, metadata={"converted_from": Path(str(src)).name})
