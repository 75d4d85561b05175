"""AdamW parameter groups with the official layer-wise learning-rate decay, and the optimizer built from them.

Layer ids (Sapiens / BEiT rule, ``L`` = number of blocks):
    0       embeddings: ``pos_embed``, ``cls_token``, ``mask_token``, ``storage_tokens`` (Sapiens2), ``patch_embed.*``
    i + 1   ``blocks.i.*``
    L + 1   everything after the blocks: the final norm and the whole head
lr_scale = layer_decay ** (L + 1 - id), so the head trains at the base LR and the patch embedding at decay^(L+1).
No weight decay for 1-D tensors (norms, biases), ``*.bias`` and the position/cls/mask tokens; Sapiens2's
configs decay its cls and storage tokens (``decay_tokens``), sparing only 1-D tensors, biases and ``pos_embed``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_checkpoint_wrapped_module.")
_EMBEDDINGS = ("pos_embed", "cls_token", "mask_token", "storage_tokens")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def clean_name(name: str) -> str:
    """Strip DDP / torch.compile wrapper prefixes so names read as in the bare model."""
    return ".".join(p for p in name.split(".") if p + "." not in _WRAPPER_PREFIXES)


def layer_id(name: str, num_layers: int, prefix: str = "backbone.") -> int:
    """Layer id of parameter ``name`` (see module docstring); parameters outside ``prefix`` belong to the top."""
    name = clean_name(name)
    if not name.startswith(prefix):
        return num_layers + 1
    rest = name[len(prefix):]
    if rest.split(".")[0] in _EMBEDDINGS or rest.startswith(("patch_embed.", "tokenizer.")):  # (4K: its windows)
        return 0
    m = _BLOCK.match(rest)
    if m:
        return int(m.group(1)) + 1
    return num_layers + 1


def uses_weight_decay(name: str, param: torch.Tensor, decay_tokens: bool = False) -> bool:
    """False for 1-D tensors, biases and the position embedding, and unless ``decay_tokens`` the cls/mask/storage
    tokens."""
    name = clean_name(name)
    last = name.split(".")[-1]  # (any position table, the 4K tokenizer's local_pos_embed too, as the official rule)
    return not (param.ndim <= 1 or name.endswith(".bias") or "pos_embed" in last or
                (not decay_tokens and last in _EMBEDDINGS))


def param_groups(named_params: Iterable[tuple[str, torch.Tensor]], weight_decay: float, layer_decay: float = 1.0,
                 num_layers: int | None = None, prefix: str = "backbone.", decay_tokens: bool = False) -> list[dict]:
    """Group trainable parameters by (layer id, weight decay on/off).

    Each group carries ``lr_scale`` (multiplied into the scheduled LR by ``set_lr``), ``weight_decay``, ``layer_id``
    and the parameter ``names`` (for inspection and logs). With ``layer_decay == 1`` all layers share a scale and
    only two groups remain (decay / no decay), which is what MAE pre-training uses.
    """
    named = [(n, p) for n, p in named_params if p.requires_grad]
    if layer_decay != 1.0 and num_layers is None:
        raise ValueError("param_groups: layer_decay != 1 needs num_layers (the number of transformer blocks)")
    L = num_layers or 0
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named:
        lid = layer_id(name, L, prefix) if layer_decay != 1.0 else L + 1
        decay = uses_weight_decay(name, p, decay_tokens)
        g = groups.setdefault((lid, decay), {
            "params": [], "names": [], "layer_id": lid, "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (L + 1 - lid),
        })
        g["params"].append(p)
        g["names"].append(clean_name(name))
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1, layer_decay: float = 1.0,
                    betas: tuple[float, float] = (0.9, 0.999), num_layers: int | None = None,
                    prefix: str = "backbone.", fused: bool | None = None,
                    decay_tokens: bool = False) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model)``; fused kernels when the parameters live on CUDA (unless ``fused=False``)."""
    groups = param_groups(model.named_parameters(), weight_decay, layer_decay, num_layers, prefix, decay_tokens)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    use_fused = on_cuda if fused is None else fused
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=use_fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Apply the scheduled base LR to every group, times the group's layer-decay scale."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
