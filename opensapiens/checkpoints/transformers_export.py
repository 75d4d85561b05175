"""A Sapiens2 model as a Hugging Face ``transformers`` model folder: ``model.safetensors`` in the official key layout
(which transformers' Sapiens2 classes read, and write) and the ``config.json`` that describes it, so a fine-tune made
here loads with ``Sapiens2For*.from_pretrained(folder)``. Checked against files transformers itself wrote
(tests/test_transformers_parity.py).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..models.sapiens import SapiensModel
from .official import ours_to_official
from .reader import CheckpointError

ARCHITECTURES = {"pose": "Sapiens2ForPoseEstimation", "seg": "Sapiens2ForSemanticSegmentation",
                 "normal": "Sapiens2ForNormalEstimation", "pointmap": "Sapiens2ForPointmapEstimation",
                 "features": "Sapiens2Model"}


def transformers_config(model: SapiensModel, input_size: tuple[int, int] = (1024, 768),
                        labels: Sequence[str] | None = None,
                        flip_pairs: Sequence[tuple[int, int]] | None = None) -> dict:
    """The ``Sapiens2Config`` (as JSON) of ``model``: its backbone's shape, its head's widths, its output labels
    (``labels``: class or keypoint names; default LABEL_i) and a pose model's mirror pairs (for flip tests)."""
    cfg, arch = model.config, model.config.arch
    if getattr(arch, "tokenizer_layers", 0):
        raise CheckpointError(f"{arch.name}: transformers' Sapiens2 has no window tokenizer (the 4K model's); it "
                              "would load without it")
    config = {"architectures": [ARCHITECTURES[cfg.task]], "model_type": "sapiens2", "patch_size": arch.patch_size,
              "hidden_size": arch.embed_dim, "intermediate_size": arch.mlp_hidden,
              "num_hidden_layers": arch.depth, "num_attention_heads": arch.num_heads,
              "num_key_value_heads_per_layer": [arch.kv_heads(i) for i in range(arch.depth)],
              "num_register_tokens": arch.storage_tokens, "image_size": list(input_size), "rms_norm_eps": 1e-6,
              "rope_theta": 100.0, "use_gated_mlp": True, "use_qk_norm": True}
    if cfg.task == "features":
        return config
    spec = cfg.head2_spec
    shuffle = cfg.task in ("normal", "pointmap")  # pixel-shuffle blocks (3x3 convs) instead of 4x4 deconvolutions
    if not shuffle and spec.conv_kernel != 1:  # transformers pads a deconvolution head's convolutions by 0
        raise CheckpointError(f"a {cfg.task} head with {spec.conv_kernel}x{spec.conv_kernel} convolutions: "
                              "transformers' Sapiens2 heads of this kind take 1x1 ones only")
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
    if flip_pairs:
        config["flip_pairs"] = [list(pair) for pair in flip_pairs]
    return config


def processor_config(task: str, input_size: tuple[int, int]) -> dict:
    """``Sapiens2ImageProcessor``'s settings for the model: its input size, the padded resize for normals and
    pointmaps (the official protocol for them), ImageNet mean and std on 0-1 values (the official ones / 255)."""
    return {"image_processor_type": "Sapiens2ImageProcessor", "size": {"height": input_size[0], "width": input_size[1]},
            "do_resize": True, "do_pad": task in ("normal", "pointmap"), "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225]}


def export_transformers(model: SapiensModel, folder: str | os.PathLike, input_size: tuple[int, int] = (1024, 768),
                        labels: Sequence[str] | None = None,
                        flip_pairs: Sequence[tuple[int, int]] | None = None) -> Path:
    """Write ``folder`` (new, or empty) with ``model.safetensors``, ``config.json`` and ``preprocessor_config.json``
    for ``model`` (a Sapiens2 model), whole or not at all: written beside it, then renamed."""
    folder = Path(folder)
    if getattr(model.config, "generation", 1) != 2:  # (a multi-task model's config has none: v1)
        raise CheckpointError("transformers has Sapiens2 classes only; this is a Sapiens v1 "
                              f"{'multi-task ' if not hasattr(model.config, 'generation') else ''}model")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise CheckpointError(f"{folder}: exists and is not an empty folder; name a new one")
    config = transformers_config(model, input_size, labels, flip_pairs)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
          if k != "backbone.rope.periods"}  # (transformers computes its rotary periods)
    sd = ours_to_official(sd, model.task)
    from safetensors.torch import save_file

    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if model.task != "features":
            (tmp / "preprocessor_config.json").write_text(
                json.dumps(processor_config(model.task, input_size), indent=2) + "\n")
        if folder.exists():
            folder.rmdir()  # (empty, checked above)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
