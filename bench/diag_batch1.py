"""Diagnostic (calls 43-44): why the default fused path at batch 1 ran slower with the head compiled in the
background than with ``head.compile()`` (call 43: 8.74 against 7.14 ms per call, eager head 7.53)."""
import copy
import sys
import time

import torch

from opensapiens.inference.background_compile import BackgroundCompile
from opensapiens.inference.optimize import optimize_for_inference
from opensapiens.models import build_model


def timeit(f, x, n=50):
    with torch.inference_mode():
        for _ in range(5):
            f(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            f(x)
        torch.cuda.synchronize()
        return round((time.perf_counter() - t) / n * 1e3, 2)


def variant(m, how):
    fast = optimize_for_inference(copy.deepcopy(m), compile=False)
    head = fast.model.head
    if how == "head.compile()":
        head.compile()
    elif how == "forward compiled in main thread":
        head.forward = torch.compile(head.forward)
    elif how == "module compiled in main thread":
        fast.model.head = torch.compile(head)
    elif how == "background (worker thread)":
        bg = head.forward = BackgroundCompile(head.forward)
        fast.background = bg
    return fast


torch.backends.cudnn.benchmark = True
how = sys.argv[1]  # one variant per process: they would share DeconvHead.forward's compiled code otherwise
m = build_model("pose", "0.3b", out_channels=308).cuda().bfloat16().eval()
x = torch.randn(1, 3, 1024, 768, device="cuda", dtype=torch.bfloat16)
fast = variant(m, how)
with torch.inference_mode():
    fast(x)
    if fast.background is not None:
        fast.background.wait()
print(f"{how:40s}", timeit(fast, x), timeit(fast, x), "ms per call", flush=True)
