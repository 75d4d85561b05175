"""A Sapiens2 model as a Hugging Face ``transformers`` model folder: ``model.safetensors`` in the official key layout
(which transformers' Sapiens2 classes read, and write) and the ``config.json`` that describes it, so a fine-tune made
here loads with ``Sapiens2For*.from_pretrained(folder)``. Checked against files transformers itself wrote
(tests/test_transformers_parity.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..io.writers import atomic_path
from ..models.heads2 import official_head2_spec
from ..models.sapiens import SapiensModel
from .official import ours_to_official
from .reader import CheckpointError

ARCHITECTURES = {"pose": "Sapiens2ForPoseEstimation", "seg": "Sapiens2ForSemanticSegmentation",
                 "normal": "Sapiens2ForNormalEstimation", "pointmap": "Sapiens2ForPointmapEstimation",
                 "features": "Sapiens2Model"}


def transformers_config(model: SapiensModel, input_size: tuple[int, int] = (1024, 768),
                        labels: Sequence[str] | None = None) -> dict:
    """The ``Sapiens2Config`` (as JSON) of ``model``: its backbone's shape, its head's widths and its output labels
    (``labels``: class or keypoint names; default LABEL_i)."""
    cfg, arch = model.config, model.config.arch
    config = {"architectures": [ARCHITECTURES[cfg.task]], "model_type": "sapiens2", "patch_size": arch.patch_size,
              "hidden_size": arch.embed_dim, "intermediate_size": arch.mlp_hidden,
              "num_hidden_layers": arch.depth, "num_attention_heads": arch.num_heads,
              "num_key_value_heads_per_layer": [arch.kv_heads(i) for i in range(arch.depth)],
              "num_register_tokens": arch.storage_tokens, "image_size": list(input_size), "rms_norm_eps": 1e-6,
              "rope_theta": 100.0, "use_gated_mlp": True, "use_qk_norm": True}
    if cfg.task == "features":
        return config
    spec = cfg.head_spec or official_head2_spec(cfg.task, arch.name)
    shuffle = cfg.task in ("normal", "pointmap")  # pixel-shuffle blocks (3x3 convs) instead of 4x4 deconvolutions
    head = {"upsample_out_channels": list(spec.up), "upsample_kernel_sizes": [3 if shuffle else 4] * len(spec.up),
            "use_pixel_shuffle": shuffle or None, "conv_out_channels": list(spec.conv),
            "conv_kernel_sizes": [spec.conv_kernel] * len(spec.conv)}
    if spec.scale_conv:
        head.update(scale_conv_out_channels=list(spec.scale_conv), scale_conv_kernel_sizes=[1] * len(spec.scale_conv),
                    scale_final_hidden_sizes=list(spec.scale_hidden),
                    scale_final_input_size=spec.scale_grid[0] * spec.scale_grid[1] * spec.scale_conv[-1])
    names = list(labels) if labels is not None else [f"LABEL_{i}" for i in range(cfg.out_channels)]
    if len(names) != cfg.out_channels:
        raise CheckpointError(f"{len(names)} labels for a head of {cfg.out_channels} outputs")
    config.update(head_config=head, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    return config


def export_transformers(model: SapiensModel, folder: str | os.PathLike, input_size: tuple[int, int] = (1024, 768),
                        labels: Sequence[str] | None = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` for ``model`` (a Sapiens2 model)."""
    folder = Path(folder)
    if getattr(model.config, "generation", 1) != 2:  # (a multi-task model's config has none: v1)
        raise CheckpointError(f"{folder}: transformers has Sapiens2 classes only; this is a Sapiens v1 model")
    config = transformers_config(model, input_size, labels)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
          if k != "backbone.rope.periods"}  # (transformers computes its rotary periods)
    sd = ours_to_official(sd, model.task)
    folder.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt"})
    with atomic_path(folder / "config.json") as tmp:
        Path(tmp).write_text(json.dumps(config, indent=2) + "\n")
    return folder


