"""Diagnostic: where one image's `opensapiens predict` spends its process time (call 46 timed 28.8-31.6 s from the
shell, not broken down). The predictor's steps in order, each timed from the last, in one process; the shell times
the whole process around it (Python start and exit included: a process that ends while the head's background
compile runs waits for that compile); exit handlers are timed too.
Usage: python bench/diag_predict_one.py TASK CHECKPOINT IMAGE
"""
import atexit
import sys
import time

t_start = time.perf_counter()
last = t_start


def mark(label: str) -> None:
    global last
    now = time.perf_counter()
    print(f"{label:<34} {now - last:7.2f} s   (at {now - t_start:6.2f} s)", flush=True)
    last = now


atexit.register(lambda: mark("other exit handlers (LIFO: runs last)"))  # the rest: teardown, seen from the shell
import torch  # noqa: E402

mark("import torch")
from opensapiens.inference.predictors import load_predictor  # noqa: E402
from opensapiens.io.images import read_image  # noqa: E402

mark("import opensapiens")
torch.zeros(1, device="cuda")
torch.cuda.synchronize()
mark("CUDA context")
task, checkpoint, path = sys.argv[1:4]
predictor = load_predictor(task, checkpoint)
mark("load_predictor (read, build, optimize)")
image = read_image(path)
mark("read the image")
for label in ("first result", "second result"):
    predictor(image)
    torch.cuda.synchronize()
    mark(label)
background = getattr(predictor.model, "background", None)
if background is not None:
    background.wait()
    mark("head's background compile done")
    predictor(image)
    torch.cuda.synchronize()
    mark("result with the compiled head")
atexit.register(lambda: mark("script end to exit handlers (threads joined)"))  # runs first
mark("script end")
