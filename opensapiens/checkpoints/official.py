"""Map between the official Sapiens key layout and ours, and infer a model's configuration from its tensors.

Official (mmpretrain/mmpose/mmseg)                ours
    backbone.patch_embed.projection.*         ->  backbone.patch_embed.proj.*
    backbone.layers.{i}.ln1 / ln2             ->  backbone.blocks.{i}.norm1 / norm2
    backbone.layers.{i}.attn.{qkv,proj}       ->  backbone.blocks.{i}.attn.{qkv,proj}
    backbone.layers.{i}.ffn.layers.0.0 / .1   ->  backbone.blocks.{i}.mlp.fc1 / fc2
    backbone.ln1                              ->  backbone.norm
    head.final_layer (pose)                   ->  head.final
    decode_head.conv_seg (seg/depth/normal)   ->  head.final
    decode_head.{deconv,conv}_layers.*        ->  head.{deconv,conv}_layers.*

``_clean.pth`` pretrain files hold the backbone keys with no prefix.

Sapiens2 (safetensors; pretrain files flat, task files under ``backbone.`` / ``decode_head.``)
    patch_embed.projection.*                  ->  backbone.patch_embed.proj.*
    rope_embed.periods                        ->  backbone.rope.periods
    blocks.{i}.ln1 / ln2 / ffn                ->  backbone.blocks.{i}.norm1 / norm2 / mlp
    ln1                                       ->  backbone.norm
    decode_head.conv_{pose,seg,normal,pointmap}  ->  head.final
"""

from __future__ import annotations

import re

import torch

from ..models.heads import HEAD_SPECS
from ..models.heads2 import Head2Spec
from ..models.sapiens import ModelConfig, official_patch_padding
from ..models.sapiens2 import ARCHS2, RotaryEmbedding2d, Sapiens2Arch
from ..models.vit import arch_from_width, infer_grid
from .reader import CheckpointError

# Backbone key prefixes, official (mmpretrain) and ours; "{i}" is a block index. Both directions are built from it.
_BACKBONE_PREFIXES = [
    ("patch_embed.projection.", "patch_embed.proj."),
    ("layers.{i}.ln1.", "blocks.{i}.norm1."),
    ("layers.{i}.ln2.", "blocks.{i}.norm2."),
    ("layers.{i}.attn.", "blocks.{i}.attn."),
    ("layers.{i}.ffn.layers.0.0.", "blocks.{i}.mlp.fc1."),
    ("layers.{i}.ffn.layers.1.", "blocks.{i}.mlp.fc2."),
    ("ln1.", "norm."),
]


# Sapiens2's backbone names, official and ours: blocks keep their index and attention names.
_BACKBONE2_PREFIXES = [
    ("patch_embed.projection.", "patch_embed.proj."),
    ("rope_embed.", "rope."),
    ("blocks.{i}.ln1.", "blocks.{i}.norm1."),
    ("blocks.{i}.ln2.", "blocks.{i}.norm2."),
    ("blocks.{i}.ffn.", "blocks.{i}.mlp."),
    ("tokenizer.blocks.{i}.ln1.", "tokenizer.blocks.{i}.norm1."),  # the 4K model's window blocks
    ("tokenizer.blocks.{i}.ln2.", "tokenizer.blocks.{i}.norm2."),
    ("tokenizer.blocks.{i}.ffn.", "tokenizer.blocks.{i}.mlp."),
    ("ln1.", "norm."),
]


def _prefix_rules(to_ours: bool, table: list[tuple[str, str]] = _BACKBONE_PREFIXES) -> list[tuple[re.Pattern, str]]:
    rules = []
    for official, ours in table:
        src, dst = (official, ours) if to_ours else (ours, official)
        rules.append((re.compile("^" + re.escape(src).replace(r"\{i\}", r"(\d+)")), dst.replace("{i}", r"\1")))
    return rules


_TO_OURS, _TO_OFFICIAL = _prefix_rules(True), _prefix_rules(False)
_TO_OURS2, _TO_OFFICIAL2 = _prefix_rules(True, _BACKBONE2_PREFIXES), _prefix_rules(False, _BACKBONE2_PREFIXES)
_FINAL2 = {"pose": "conv_pose.", "seg": "conv_seg.", "normal": "conv_normal.", "pointmap": "conv_pointmap."}

# Present in some official files but not part of the inference model (MAE decoder, preprocessor constants, ...).
_IGNORED = re.compile(r"^(neck\.|data_preprocessor\.|mask_token|.*num_batches_tracked$|.*\.loss_decode\.|"
                      r"decode_head\.conv_seg_aux|auxiliary_head\.)")


def _map_backbone_key(k: str, rules: list[tuple[re.Pattern, str]]) -> str:
    for pat, rep in rules:
        if pat.search(k):
            return pat.sub(rep, k)
    return k


def is_official_layout(sd: dict[str, torch.Tensor]) -> bool:
    return any("patch_embed.projection" in k for k in sd)


def is_sapiens2(sd: dict[str, torch.Tensor]) -> bool:
    """Sapiens2 weights, in either key layout: storage tokens and separate q/k/v projections."""
    return any(k.endswith("storage_tokens") or k.endswith(".attn.wq.weight") for k in sd)


def official_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official state dict (any of the container flavours, either generation) to our module names; drop
    unused keys."""
    out: dict[str, torch.Tensor] = {}
    flat = not any(k.startswith(("backbone.", "module.backbone.")) for k in sd)
    rules = _TO_OURS2 if is_sapiens2(sd) else _TO_OURS
    for k, v in sd.items():
        k = k.removeprefix("module.")
        if flat:
            k = "backbone." + k
        if _IGNORED.match(k) or _IGNORED.match(k.split(".", 1)[-1]):
            continue
        if k.startswith("backbone."):
            out["backbone." + _map_backbone_key(k[len("backbone."):], rules)] = v
        elif k.startswith(("head.", "decode_head.")):
            rest = k.split(".", 1)[1]
            rest = re.sub(r"^(final_layer|conv_seg|conv_pose|conv_normal|conv_pointmap)\.", "final.", rest)
            out["head." + rest] = v
        # anything else (preprocessor constants, auxiliary modules) is not part of the model: strict loading of
        # the model's own parameters still catches a missing or misnamed tensor.
    return out


def ours_to_official(sd: dict[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    """Inverse of ``official_to_ours``: the key layout the official code (and other ports) load.

    Task models get ``backbone.`` + ``head.`` (pose) or ``decode_head.`` (seg/depth/normal) prefixes; a bare backbone
    (task "features") is written flat, like the official ``_clean.pth`` files.
    """
    v2 = is_sapiens2(sd)
    head_prefix, final_name = ("head.", "final_layer.") if task == "pose" else ("decode_head.", "conv_seg.")
    if v2:  # every Sapiens2 head under decode_head., its last conv named by its task
        head_prefix, final_name = "decode_head.", _FINAL2.get(task, "")
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith("backbone."):
            rest = _map_backbone_key(k[len("backbone."):], _TO_OFFICIAL2 if v2 else _TO_OFFICIAL)
            out[rest if task == "features" else "backbone." + rest] = v
        elif k.startswith("head."):
            rest = re.sub(r"^final\.", final_name, k[len("head."):])
            out[head_prefix + rest] = v
        else:
            raise KeyError(f"unexpected key {k!r} in an OpenSapiens state dict")
    return out


def infer_config(sd: dict[str, torch.Tensor], task: str | None = None, patch_padding: int | None = None,
                 num_heads: int | None = None, source: str = "checkpoint") -> ModelConfig:
    """Build the ``ModelConfig`` of a state dict in our key layout (after ``official_to_ours``).

    Task: no head -> "features"; 2 up-sampling layers -> pose; 4 -> depth; 3 -> normal if 3 outputs else seg.
    Architecture: width and depth from the tensors (heads from the official table). Patch padding: the official
    per-task value (pose/normal 2, seg/depth/features 0) unless given; a task file's backbone loaded as features
    keeps its task's padding (it was fine-tuned with it).
    """
    if "backbone.patch_embed.proj.weight" not in sd:
        raise CheckpointError(f"{source}: no Sapiens backbone found (missing patch_embed.projection.weight)")
    if is_sapiens2(sd):
        return _infer_config2(sd, task, source)
    if task is not None and task not in (*HEAD_SPECS, "features"):
        raise CheckpointError(f"{source}: a Sapiens v1 file; {task} is a Sapiens2 task (e.g. sapiens2-{task}-1b)")
    C = sd["backbone.patch_embed.proj.weight"].shape[0]
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"backbone\.blocks\.(\d+)\.", k))})
    arch = arch_from_width(C, depth, num_heads)
    has_head = "head.final.weight" in sd
    n_up = len([k for k in sd if re.match(r"head\.deconv_layers\.\d+\.weight$", k)])
    out_channels = sd["head.final.weight"].shape[0] if has_head else None
    head_task = {2: "pose", 4: "depth"}.get(n_up, "normal" if out_channels == 3 else "seg") if has_head else "features"
    task = head_task if task is None else task
    if task != "features":
        if not has_head:
            raise CheckpointError(f"{source}: task {task!r} requested but the checkpoint has no head")
        if n_up != HEAD_SPECS[task].num_deconv:
            raise CheckpointError(f"{source}: holds a {head_task} head ({n_up} up-sampling layers), not {task} (a "
                                  f"{task} head has {HEAD_SPECS[task].num_deconv})")
    with_cls = task == "features" and "backbone.cls_token" in sd
    n_pos = sd["backbone.pos_embed"].shape[1] - int(with_cls)
    if not with_cls and "backbone.cls_token" in sd and n_pos % 2 == 1:
        n_pos -= 1  # a pretrain table (cls slot + square grid) used without its cls token
    head_channels = sd["head.deconv_layers.0.weight"].shape[1] if has_head and task != "features" else None
    if head_channels is not None and head_channels == HEAD_SPECS[task].channels:
        head_channels = None
    return ModelConfig(
        task=task,
        arch=arch,
        out_channels=out_channels if task != "features" else None,
        patch_padding=(official_patch_padding(head_task if task == "features" else task, out_channels)
                       if patch_padding is None else patch_padding),
        pos_grid=infer_grid(n_pos),
        with_cls_token=with_cls,
        head_channels=None if head_channels is None else int(head_channels),
    )


def _indexed(sd: dict[str, torch.Tensor], pattern: str) -> list[torch.Tensor]:
    """The tensors whose keys match ``pattern`` (one ``(\\d+)`` group), ordered by that index."""
    found = {int(m.group(1)): v for k, v in sd.items() if (m := re.fullmatch(pattern, k))}
    return [found[i] for i in sorted(found)]


def _infer_config2(sd: dict[str, torch.Tensor], task: str | None, source: str) -> ModelConfig:
    """``infer_config`` for Sapiens2 weights (our key layout): the size from the tensors (head dim from the q norm,
    the grouped-query blocks from the k projections), the task and head widths from the head's layers."""
    C = sd["backbone.patch_embed.proj.weight"].shape[0]
    tokenizer_layers = len(_indexed(sd, r"backbone\.tokenizer\.blocks\.(\d+)\.attn\.wq\.weight"))
    kv_rows = [w.shape[0] for w in _indexed(sd, r"backbone\.blocks\.(\d+)\.attn\.wk\.weight")]
    depth = len(kv_rows)
    if depth == 0 or "backbone.blocks.0.attn.q_norm.weight" not in sd:
        raise CheckpointError(f"{source}: a Sapiens2 backbone without its attention layers (blocks.N.attn.wk / q_norm)")
    head_dim = sd["backbone.blocks.0.attn.q_norm.weight"].shape[0]
    heads = C // head_dim
    dense = next((i for i, rows in enumerate(kv_rows) if rows != C), depth)
    storage = sd["backbone.storage_tokens"].shape[1] if "backbone.storage_tokens" in sd else 0
    arch = next((a for a in ARCHS2.values() if (a.embed_dim, a.depth, a.num_heads, a.storage_tokens,
                                                 a.tokenizer_layers) == (C, depth, heads, storage, tokenizer_layers)
                 and (a.dense_blocks == dense or 2 * a.dense_blocks >= depth)), None)
    if arch is None:
        arch = Sapiens2Arch(f"sapiens2_custom-{C}x{depth}", C, depth, heads, dense_blocks=dense,
                            storage_tokens=storage, tokenizer_layers=tokenizer_layers)
    expected = [arch.kv_heads(i) * head_dim for i in range(depth)]
    if kv_rows != expected:
        raise CheckpointError(f"{source}: key/value widths per block {kv_rows} do not follow Sapiens2's layout (all "
                              f"heads in the first and last {arch.dense_blocks} blocks, half between): {expected}")
    has_head = "head.final.weight" in sd
    if not has_head:
        head_task = "features"
    elif "head.upsample_blocks.0.0.weight" in sd:
        head_task = "pointmap" if "head.scale_conv_layers.0.weight" in sd else "normal"
    else:
        head_task = "pose" if len(_indexed(sd, r"head\.deconv_layers\.(\d+)\.weight")) == 2 else "seg"
    task = head_task if task is None else task
    if task not in (head_task, "features"):
        if task == "depth":
            raise CheckpointError(f"{source}: a Sapiens2 {head_task} model; Sapiens2 has no depth head (its pointmap "
                                  "models give depth)")
        raise CheckpointError(f"{source}: holds a Sapiens2 {head_task} {'backbone' if not has_head else 'model'}, "
                              f"not {task}")
    spec = None
    if task != "features":
        convs = _indexed(sd, r"head\.conv_layers\.(\d+)\.weight")
        if task in ("pose", "seg"):
            up = tuple(w.shape[1] for w in _indexed(sd, r"head\.deconv_layers\.(\d+)\.weight"))
        else:
            up = tuple(w.shape[0] // 4 for w in _indexed(sd, r"head\.upsample_blocks\.(\d+)\.0\.weight"))
        scale_conv = tuple(w.shape[0] for w in _indexed(sd, r"head\.scale_conv_layers\.(\d+)\.weight"))
        linears = _indexed(sd, r"head\.scale_final_layer\.(\d+)\.weight")
        scale_grid = (8, 6)
        if scale_conv:
            scale_grid = infer_grid(linears[0].shape[1] // scale_conv[-1])
        spec = Head2Spec(up, tuple(w.shape[0] for w in convs), convs[0].shape[-1] if convs else 1, scale_conv,
                         tuple(w.shape[0] for w in linears[:-1]), scale_grid)
    return ModelConfig(task=task, arch=arch, out_channels=sd["head.final.weight"].shape[0] if spec else None,
                       with_cls_token="backbone.cls_token" in sd, head_spec=spec)


def prepare_for_config(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Drop what the configured model does not use (head of a task file loaded as features, pretrain cls slot);
    give a Sapiens2 file without its rotary periods (a buffer the official loader does not require) the
    formula's."""
    sd = dict(sd)
    if cfg.generation == 2 and "backbone.rope.periods" not in sd:
        sd["backbone.rope.periods"] = RotaryEmbedding2d(cfg.arch.head_dim).periods
    if cfg.task == "features":
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    if not cfg.with_cls_token and "backbone.cls_token" in sd:
        sd.pop("backbone.cls_token")
        pos = sd["backbone.pos_embed"]
        if pos.shape[1] == cfg.pos_grid[0] * cfg.pos_grid[1] + 1:
            sd["backbone.pos_embed"] = pos[:, 1:]
    return sd
