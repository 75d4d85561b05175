"""Diagnostic: how fast the eager calls run while the head compiles in the background, and why.

Call 63 timed one seg-0.3B image at 1.52 s while the head compiled (0.39 s with a warm Inductor cache; ~0.01 s
of GPU work). Suspect: the GIL. Each PyTorch op releases it around its kernel launch; the compiling thread takes
it, and the caller waits up to ``sys.getswitchinterval()`` (5 ms) to get it back, hundreds of times per forward.
This script runs the model on one batch in a loop while the head compiles and prints the per-call times, then
the compiled time; run once per switch interval, each in a fresh process with its own empty compile caches.
Usage: python bench/diag_compile_overlap.py TASK CHECKPOINT [--switch-interval S] [--batch B]
"""
import argparse
import os
import sys
import tempfile
import time

p = argparse.ArgumentParser()
p.add_argument("task")
p.add_argument("checkpoint")
p.add_argument("--switch-interval", type=float, default=None, help="seconds (default: Python's 0.005)")
p.add_argument("--batch", type=int, default=1)
args = p.parse_args()
cache = tempfile.mkdtemp(prefix="overlap_cache_")  # cold compile in every process
os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache, "inductor")
os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
if args.switch_interval is not None:
    sys.setswitchinterval(args.switch_interval)

import torch  # noqa: E402

from opensapiens.inference.predictors import load_predictor  # noqa: E402

predictor = load_predictor(args.task, args.checkpoint)
model = predictor.model
x = torch.randn(args.batch, 3, 1024, 768, device="cuda", dtype=next(model.parameters()).dtype)


def timed() -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        model(x)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


first = timed()  # starts the head's compile
during = []
while not model.background.ready:
    during.append(timed())
    if model.background.error is not None:
        sys.exit(f"compile failed: {model.background.error}")
after = sorted(timed() for _ in range(20))
model.model.head.forward = model.background.fn  # the eager head again, no compile beside it
eager = sorted(timed() for _ in range(20))
during_sorted = sorted(during) or [float("nan")]
print(f"switch interval {sys.getswitchinterval() * 1e3:.2f} ms, batch {args.batch}: first call {first:.2f} s; "
      f"while compiling {len(during)} calls in {sum(during):.2f} s, median {during_sorted[len(during) // 2] * 1e3:.1f}"
      f" ms, max {during_sorted[-1] * 1e3:.0f} ms; compiled median {after[10] * 1e3:.1f} ms, eager alone "
      f"{eager[10] * 1e3:.1f} ms; compile "
      f"{model.background.compile_seconds}")
