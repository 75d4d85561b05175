"""Check ``export_transformers`` with transformers itself: a small random Sapiens2 model of each task is exported,
loaded with ``Sapiens2For*.from_pretrained`` and run beside ours in float64 (our rotary periods exact, as
transformers computes them); prints the largest difference relative to the output's largest value.

    pip install "transformers>=5.25"    # an environment with opensapiens and transformers
    python tools/check_transformers_export.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import transformers

from opensapiens.checkpoints import export_transformers
from opensapiens.metadata import seg_classes
from opensapiens.models import build_model
from opensapiens.models.sapiens2 import RotaryEmbedding2d

CLASSES = {"seg": "Sapiens2ForSemanticSegmentation", "pointmap": "Sapiens2ForPointmapEstimation",
           "pose": "Sapiens2ForPoseEstimation", "normal": "Sapiens2ForNormalEstimation"}


def main() -> None:
    if not hasattr(transformers, "Sapiens2Config"):
        raise SystemExit(f"transformers {transformers.__version__} has no Sapiens2; install 5.25 or newer")
    torch.manual_seed(0)
    x = torch.randn(1, 3, 256, 192, dtype=torch.float64)
    for task, name in CLASSES.items():
        ours = build_model(task, "sapiens2_nano", pos_grid=(16, 12), **({"out_channels": 29} if task == "seg" else {}))
        with torch.no_grad():
            for param_name, p in ours.named_parameters():
                if param_name.endswith("gamma.weight"):
                    p.fill_(0.3)  # attention that matters (the init's layer scale hides it)
        with tempfile.TemporaryDirectory() as folder:
            export_transformers(ours, folder, (256, 192), seg_classes("sapiens2").names if task == "seg" else None)
            theirs = getattr(transformers, name).from_pretrained(Path(folder)).double().eval()
        ours = ours.double().eval()
        ours.backbone.rope.dtype = torch.float64
        ours.backbone.rope.periods = RotaryEmbedding2d(ours.config.arch.head_dim, dtype=torch.float64).periods
        with torch.no_grad():
            got = ours(x)
            want = [v for v in theirs(pixel_values=x).values() if isinstance(v, torch.Tensor)]
        for g, w in zip(got if isinstance(got, tuple) else (got,), want):
            print(f"{task}: {float((g - w).abs().max() / w.abs().max()):.1e}")


if __name__ == "__main__":
    main()
