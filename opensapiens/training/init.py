"""Start a fine-tune from existing weights: an official pre-training ``_clean.pth``, an official task checkpoint,
or one of ours.

Pre-training checkpoints carry a cls token and a 64x64 (+1 cls slot) position table for 1024x1024 inputs; the
official fine-tunes drop the cls token and the cls row and resize the table bicubically to the fine-tune grid
(64x48 at 1024x768). A head of the same task loads tensor by tensor, those of other shapes starting fresh (a
308-keypoint head starts a 17-keypoint model with all but its classifier); a Sapiens2 seg head's 29-class classifier
starts a Goliath 28-class one row by row, by class name. The multi-task recipe's ``--init`` loads its backbone the
same way (``fit_backbone``).
"""

from __future__ import annotations

import torch

from ..checkpoints import load_state
from ..checkpoints.loading import multitask_config
from ..models.sapiens import ModelConfig, SapiensModel
from ..models.vit import SapiensViT, resize_pos_embed


def fit_backbone(src_cfg: ModelConfig, sd: dict[str, torch.Tensor], backbone: SapiensViT,
                 source: str) -> dict[str, torch.Tensor]:
    """The ``backbone.*`` tensors of a checkpoint's state dict ``sd``, keyed as in ``backbone`` and made to fit it:
    (v1) cls token and cls row dropped, position table resized to its grid. Raises if width, depth or generation
    differ."""
    v2 = backbone.arch.generation == 2  # Sapiens2: tokens kept as they are, no position table
    if src_cfg.generation != backbone.arch.generation:
        raise ValueError(f"{source}: a {'Sapiens2' if src_cfg.generation == 2 else 'Sapiens v1'} backbone "
                         f"({src_cfg.arch.name}) cannot start a {backbone.arch.name} model")
    weights = {k.removeprefix("backbone."): v for k, v in sd.items()
               if k.startswith("backbone.") and (v2 or k != "backbone.cls_token")}
    pos = weights.get("pos_embed")
    if pos is not None:
        if src_cfg.with_cls_token:
            pos = pos[:, 1:]
        elif pos.shape[1] == src_cfg.pos_grid[0] * src_cfg.pos_grid[1] + 1:
            pos = pos[:, 1:]  # a pre-training table read without its cls token
        weights["pos_embed"] = resize_pos_embed(pos.float(), tuple(src_cfg.pos_grid), backbone.pos_grid)
    ours = backbone.state_dict()
    missing = [k for k in ours if k not in weights]
    wrong = [k for k, v in weights.items() if k in ours and ours[k].shape != v.shape]
    extra = [k for k in weights if k not in ours]  # e.g. a 4K backbone's window tokenizer for a 1K model
    if missing or wrong or extra:
        raise ValueError(f"{source}: its backbone ({src_cfg.arch.name}) does not fit the model "
                         f"({backbone.arch.name}); missing {missing[:3]}, mismatched {wrong[:3]}, not in the model "
                         f"{extra[:3]} (leave --arch out to take the checkpoint's)")
    return weights


def read_init(path_or_name: str, task: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and weights of an ``--init`` checkpoint for a fine-tune of ``task``: a multi-task file (the
    bundled model) gives that task's head with the backbone, or its backbone alone."""
    multitask = multitask_config(path_or_name)
    return load_state(path_or_name, task=None if multitask is None else task if task in multitask.outputs
                      else "features")


def load_initial_weights(model: SapiensModel, path_or_name: str) -> dict:
    """Copy what fits from a checkpoint into ``model``; returns {"backbone": n_tensors, "head": n_tensors,
    "skipped_head": reason or "", "mapped": what was loaded by name or ""}. Raises if the backbone does not fit
    (different width or depth).

    A head of the same task loads tensor by tensor, as the official fine-tunes load (shape mismatches skipped): a
    head for other keypoints or classes keeps its trained layers and starts only its classifier fresh, a pointmap
    head for another input size only the scale branch's first Linear. A head of another task is not loaded."""
    src_cfg, sd = read_init(path_or_name, model.task)
    ours = model.state_dict()
    backbone = {f"backbone.{k}": v for k, v in fit_backbone(src_cfg, sd, model.backbone, path_or_name).items()}
    head = {k: v for k, v in sd.items() if k.startswith("head.")}
    reason = mapped = ""
    if not head:
        reason = "checkpoint has no head"
    elif src_cfg.task != model.task:
        reason = f"checkpoint head is for {src_cfg.task}, not {model.task}"
        head = {}
    else:
        head = {k: v for k, v in head.items() if k in ours and ours[k].shape == v.shape}
        if rows := _goliath_rows_of_sapiens2(src_cfg, model, sd):  # its classifier, by class name
            head.update(rows)
            mapped = "Sapiens2's 29-class classifier, as the 28 Goliath classes by name (Eyeglass left out)"
        fresh = [k for k in ours if k.startswith("head.") and k not in head]
        if fresh:  # (different keypoints / classes, head widths or input size)
            reason = (f"{len(fresh)} of its {sum(k.startswith('head.') for k in ours)} tensors have other shapes in "
                      f"the checkpoint: {', '.join(k.removeprefix('head.') for k in fresh[:4])}"
                      f"{', ...' if len(fresh) > 4 else ''}")
    with torch.no_grad():
        for k, v in {**backbone, **head}.items():
            ours[k].copy_(v.to(ours[k].dtype))
    return {"backbone": len(backbone), "head": len(head), "skipped_head": reason, "mapped": mapped}


def _goliath_rows_of_sapiens2(src_cfg: ModelConfig, model: SapiensModel, sd: dict) -> dict[str, torch.Tensor]:
    """A Sapiens2 seg checkpoint's classifier (29 classes) as the rows a Goliath 28-class seg model needs (the same
    classes by name, Eyeglass left out); {} for any other pair."""
    from ..metadata import seg28_to_29, seg_classes

    w, b = sd.get("head.final.weight"), sd.get("head.final.bias")
    names = tuple(model.config.extra.get("class_names") or ())
    ours_w, ours_b = model.head.final.weight, model.head.final.bias
    if not (model.task == "seg" and src_cfg.generation == 2 and w is not None and w.shape[0] == 29 and
            ours_w.shape[0] == 28 and w.shape[1:] == ours_w.shape[1:] and names == seg_classes("goliath").names and
            (b is None) == (ours_b is None) and
            tuple(src_cfg.extra.get("class_names") or seg_classes("sapiens2").names) == seg_classes("sapiens2").names):
        return {}
    rows = torch.from_numpy(seg28_to_29()[:28].astype("int64"))  # v1 id -> Sapiens2 id
    out = {"head.final.weight": w[rows]}
    if b is not None:
        out["head.final.bias"] = b[rows]
    return out
