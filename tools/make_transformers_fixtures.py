"""Write tests/data/transformers_sapiens2/: tiny Sapiens2 models saved by Hugging Face ``transformers`` (one per task,
random weights, ``save_pretrained``: ``model.safetensors`` + ``config.json``), what ``transformers`` computes with them
for one input, and its pose post-processing of given heatmaps, so the tests compare our Sapiens2 with that
independent implementation without installing it.

    pip install "transformers>=5.25"    # in a separate environment
    python tools/make_transformers_fixtures.py [--sharded]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (
    Sapiens2Config,
    Sapiens2ForNormalEstimation,
    Sapiens2ForPointmapEstimation,
    Sapiens2ForPoseEstimation,
    Sapiens2ForSemanticSegmentation,
    Sapiens2Model,
)

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "transformers_sapiens2"
SIZE = [256, 192]  # (H, W): the pointmap scale branch needs a 16 x 12 token grid to keep 2 x 2 values
# Sapiens2's block layout in miniature: grouped-query attention (half the key/value heads) in the middle blocks
# (4 query heads to 2 key/value ones: which query heads share a key/value head matters, as it would not with 1)
BACKBONE = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_attention_heads=2, num_first_full_attention_layers=1, num_last_full_attention_layers=1,
                num_register_tokens=8, image_size=SIZE, layerscale_value=0.3)
PIXEL_SHUFFLE = dict(upsample_out_channels=[16, 16, 8, 8], upsample_kernel_sizes=[3] * 4, use_pixel_shuffle=True)
MODELS = {
    "pose": (Sapiens2ForPoseEstimation, dict(num_labels=5, head_config=dict(
        upsample_out_channels=[16, 16], conv_out_channels=[16, 8], conv_kernel_sizes=[1, 1]))),
    "seg": (Sapiens2ForSemanticSegmentation, dict(num_labels=6, head_config=dict(
        upsample_out_channels=[16, 8, 8, 8], conv_out_channels=[8], conv_kernel_sizes=[1]))),
    "normal": (Sapiens2ForNormalEstimation, dict(num_labels=3, head_config=dict(
        **PIXEL_SHUFFLE, conv_out_channels=[8, 8], conv_kernel_sizes=[3, 3]))),
    "pointmap": (Sapiens2ForPointmapEstimation, dict(num_labels=3, head_config=dict(
        **PIXEL_SHUFFLE, conv_out_channels=[8], conv_kernel_sizes=[3], scale_conv_out_channels=[16, 16, 8],
        scale_final_hidden_sizes=[16, 8]))),
    "features": (Sapiens2Model, {}),
}


def main() -> None:
    torch.manual_seed(0)
    image = torch.randn(1, 3, *SIZE).half().float()  # stored in float16: values that float16 holds exactly
    outputs = {"image": image.half().numpy()}
    for task, (cls, extra) in MODELS.items():
        model = cls(Sapiens2Config(**BACKBONE, **extra)).eval()
        with torch.no_grad():
            for p in model.parameters():  # away from the init's zero biases and unit norms; float16 values
                p.copy_((p + 0.05 * torch.randn_like(p)).half().float())
            out = model.double()(pixel_values=image.double())  # float64: what the weights compute, exactly
        model.half().save_pretrained(OUT / task)  # float16 files: the same weights in half the bytes
        for name in ("heatmaps", "logits", "normals", "pointmaps", "scales", "last_hidden_state"):
            value = getattr(out, name, None)
            if value is not None:  # full-resolution maps every 4th pixel each way (any pixel sees every weight)
                outputs[f"{task}.{name}"] = (value[..., ::4, ::4] if value.shape[-1] > 48 else value).numpy()
    np.savez(OUT / "outputs.npz", **outputs)
    pose_decoding()
    sharded()
    (OUT / "README.txt").write_text(f"Written by tools/make_transformers_fixtures.py with transformers "
                                    f"{transformers.__version__}; outputs.npz: {json.dumps(sorted(outputs))}; "
                                    "pose_decoding.npz: heatmaps, boxes_xywh, keypoints, scores; seg_sharded: seg "
                                    "saved again in shards of at most 60 kB\n")


def sharded() -> None:
    """The seg model saved again by transformers in shards (``model-0000N-of-0000M.safetensors`` plus
    ``model.safetensors.index.json``), as it saves a model over ``max_shard_size`` (a 5B one in float32)."""
    Sapiens2ForSemanticSegmentation.from_pretrained(OUT / "seg").save_pretrained(OUT / "seg_sharded",
                                                                                max_shard_size="60KB")


def pose_decoding() -> None:
    """Heatmaps with one sub-pixel peak per keypoint, person boxes, and the image keypoints and scores that
    ``Sapiens2ImageProcessor.post_process_pose_estimation`` (DARK-UDP refinement, box mapping) decodes."""
    from types import SimpleNamespace

    from transformers import Sapiens2ImageProcessor

    g = torch.Generator().manual_seed(1)
    persons, keypoints, (h, w) = 3, 8, (64, 48)
    peaks = torch.rand(persons, keypoints, 2, generator=g) * torch.tensor([w - 5.0, h - 5.0]) + 2  # (x, y)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    d2 = (xs - peaks[..., :1, None]) ** 2 + (ys - peaks[..., 1:, None]) ** 2  # (P, K, h, w)
    heatmaps = torch.exp(-d2 / (2 * 2.0**2)) * (0.5 + 0.5 * torch.rand(persons, keypoints, 1, 1, generator=g))
    heatmaps = heatmaps.half().float()  # values float16 holds exactly
    boxes = [[[100.0, 50.0, 300.0, 500.0], [400.5, 20.25, 120.0, 90.0]], [[10.0, 30.0, 60.0, 200.0]]]
    decoded = Sapiens2ImageProcessor().post_process_pose_estimation(SimpleNamespace(heatmaps=heatmaps), boxes)
    people = [p for image in decoded for p in image]
    np.savez(OUT / "pose_decoding.npz", heatmaps=heatmaps.half().numpy(),
             boxes_xywh=np.array([b for image in boxes for b in image], dtype=np.float32),
             keypoints=torch.stack([p["keypoints"] for p in people]).numpy(),
             scores=torch.stack([p["scores"] for p in people]).numpy())


if __name__ == "__main__":
    import sys

    sharded() if sys.argv[1:] == ["--sharded"] else main()  # --sharded: that fixture alone, from the seg one
