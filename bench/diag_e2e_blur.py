"""Diagnostic: what DARK's whole-map blur (taken only for maps with a sample under the 1e-3 clip: ~40 % of
random-weight maps, none of the bundled trained model's) costs pose-0.3B end to end with random weights.

Call 52 compared the PyTorch blur (22 shifted float32 passes) with the blur replaced by the map itself. Since call 53
the CUDA default is one Triton pass (``codecs/dark_kernel.py``): first the maxima alone on one batch's maps (16 x 308
bf16 heatmaps of 256 x 192, 40 % of them), then end to end with the Triton pass / the PyTorch blur / the blur skipped.
Usage: python bench/diag_e2e_blur.py FOLDER_OF_JPEGS
"""
import sys
from pathlib import Path

import torch

from opensapiens.benchmark import end_to_end, time_ms
from opensapiens.codecs import heatmap
from opensapiens.inference.optimize import optimize_for_inference
from opensapiens.inference.predictors import PosePredictor
from opensapiens.models import build_model

cuda = torch.device("cuda")
triton_kernel = heatmap._triton_kernel
variants = {
    "Triton pass (default)": triton_kernel,
    "PyTorch whole-map blur": lambda: None,
    "whole-map blur skipped": lambda: lambda maps, ids, taps: maps[ids].float().amax(dim=(1, 2)),
}


def time_maxima() -> None:
    """The maxima alone: 40 % of one batch's maps (16 x 308 bf16 heatmaps of 256 x 192), Triton against PyTorch."""
    maps = torch.rand(16 * 308, 256, 192, device=cuda).to(torch.bfloat16)
    ids = torch.randperm(maps.shape[0], device=cuda)[: int(0.4 * maps.shape[0])].sort().values
    for label, kernel in list(variants.items())[:2]:
        heatmap._triton_kernel = kernel
        ms = time_ms(lambda: heatmap._blurred_maxima(maps, ids, 11), cuda, warmup=3, iters=20)
        print(f"blurred maxima of {ids.numel()} maps, {label}: {ms:.3f} ms", flush=True)
    heatmap._triton_kernel = triton_kernel
    torch.testing.assert_close(heatmap._blurred_maxima(maps, ids, 11),
                               heatmap.gaussian_blur(maps[ids].float(), 11).amax(dim=(1, 2)))


time_maxima()

torch.backends.cudnn.benchmark = True
folder = Path(sys.argv[1])
model = optimize_for_inference(build_model("pose", "0.3b", out_channels=308).cuda().bfloat16().eval())
x = torch.randn(16, 3, 1024, 768, device=cuda, dtype=torch.bfloat16)
model.warmup(x)
with torch.inference_mode():
    ms = time_ms(lambda: model(x), cuda, warmup=3, iters=10)
print(f"model only: {16 / ms * 1e3:.1f} img/s")
for label, kernel in [*variants.items(), ("Triton pass, again", triton_kernel)]:
    heatmap._triton_kernel = kernel
    r = end_to_end(PosePredictor(model, batch_size=16), folder)
    print(f"{label}: {r['images_per_s']} img/s = {r['images_per_s'] / (16 / ms * 1e3):.3f} of model-only", flush=True)
