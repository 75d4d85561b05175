"""Diagnostic (call 52): pose-0.3B end to end with random weights, as measured, and with the DARK whole-map blur
(taken only for maps with a sample under the 1e-3 clip: ~40 % of random-weight maps, none of the bundled trained
model's) replaced by the map itself, to measure what that path costs the end-to-end benchmark."""
import sys
import tempfile
from pathlib import Path

import torch

from opensapiens.benchmark import time_ms
from opensapiens.codecs import heatmap
from opensapiens.inference.optimize import optimize_for_inference
from opensapiens.inference.pipeline import benchmark_end_to_end
from opensapiens.models import build_model

torch.backends.cudnn.benchmark = True
folder = Path(sys.argv[1])
model = optimize_for_inference(build_model("pose", "0.3b", out_channels=308).cuda().bfloat16().eval())
x = torch.randn(16, 3, 1024, 768, device="cuda", dtype=torch.bfloat16)
model.warmup(x)
with torch.inference_mode():
    ms = time_ms(lambda: model(x), torch.device("cuda"), warmup=3, iters=10)
print(f"model only: {16 / ms * 1e3:.1f} img/s")
real_blur = heatmap.gaussian_blur
for label, blur in (("as measured", real_blur), ("whole-map blur skipped", lambda maps, k: maps),
                    ("as measured, again", real_blur)):
    heatmap.gaussian_blur = blur
    with tempfile.TemporaryDirectory() as tmp:
        r = benchmark_end_to_end(model, "pose", folder, 16, (1024, 768), out_dir=Path(tmp), decode="cpu")
    print(f"{label}: {r['images_per_s']} img/s = {r['images_per_s'] / (16 / ms * 1e3):.3f} of model-only", flush=True)
