"""``opensapiens predict``'s loop over a folder against the model alone, side by side in one process.

Variants, each timed over the same images after a warm-up (the head's background compile finished):
- ``pipelined``: ``run_batch`` as the CLI runs it (batch i + 1 submitted before batch i's results are read back);
- ``one at a time``: the same reader and writers, each batch's results read back before the next is submitted (the
  loop before ``Predictor.submit``);
- ``model only``: the model on a device-resident batch of the same size, no reading, post-processing or writing.
Prints images/s of each, their ratio to the model's, whether the two loops wrote identical files (pictures aside), and
where the main thread's time went (waiting for the readers, submitting, reading results back, waiting for the
writers; one at a time: ``submit`` includes its ``result()``), and one batch's ``submit`` and ``result()`` timed alone.
``--trace T``: one more pipelined pass profiled into T, for ``trace_summary.py`` (GPU idle gaps, kernels by time).
``--switch-intervals MS ...``: instead of the two loops, the pipelined loop at each of Python's thread switch intervals
given (``sys.setswitchinterval``; Python's default 5 ms), in two rounds (A B A B): the thread feeding the GPU waits up
to one interval for the GIL each time it wants it back from a writer running Python.
``--pin-ab``: instead, the pipelined loop with the images pinned on the reader threads (``streams.pin``, the default
on CUDA) and staged on the main thread in ``submit`` (before call 90), A B A B.
Usage: python bench/predict_pipeline.py TASK CHECKPOINT FOLDER [--batch B] [--no-vis] [--input-size H W] [--writers N]
       [--out JSON] [--trace T] [--cuda-graphs] [--switch-intervals MS ... | --pin-ab]
"""
import argparse
import collections
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from opensapiens.inference import batch, predictors
from opensapiens.inference.batch import run_batch
from opensapiens.inference.optimize import optimize_for_inference
from opensapiens.inference.predictors import load_predictor
from opensapiens.inference.streams import Pending


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class MainThreadClock:
    """Seconds the main thread spends in run_batch's stages: the reader, ``submit`` (and within it the images' upload:
    staged through pinned memory and copied), ``result()``, the writers."""

    def __init__(self):
        self.seconds = collections.Counter()
        self._load, self._collect, self._result = batch._load, batch._collect, Pending.result
        self._upload = predictors.upload_images

    @contextlib.contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def install(self) -> None:
        clock = self

        def load(*args, **kwargs):
            batches = clock._load(*args, **kwargs)
            while True:
                with clock.stage("waiting for images"):
                    items = next(batches, None)
                if items is None:
                    return
                yield items

        def collect(*args, **kwargs):
            with clock.stage("waiting for writers"):
                return clock._collect(*args, **kwargs)

        def result(pending):
            with clock.stage("result()"):
                return clock._result(pending)

        def upload(*args, **kwargs):
            with clock.stage("submit: upload"):
                return clock._upload(*args, **kwargs)

        batch._load, batch._collect, Pending.result, predictors.upload_images = load, collect, result, upload

    def uninstall(self) -> None:
        batch._load, batch._collect, Pending.result = self._load, self._collect, self._result
        predictors.upload_images = self._upload


class Timed:
    """A predictor whose ``submit`` is timed by ``clock``."""

    def __init__(self, predictor, clock: MainThreadClock):
        self.predictor, self.task, self.device, self.clock = predictor, predictor.task, predictor.device, clock

    def submit(self, images, **kwargs) -> Pending:
        with self.clock.stage("submit"):
            return self.predictor.submit(images, **kwargs)


class OneAtATime:
    """A predictor whose ``submit`` finishes the batch before returning: ``run_batch`` without the overlap."""

    def __init__(self, predictor):
        self.predictor, self.task, self.device = predictor, predictor.task, predictor.device

    def submit(self, images, **kwargs) -> Pending:
        results = self.predictor.submit(images, **kwargs).result()
        return Pending(None, lambda: results)


def model_only(predictor, batch: int, iters: int = 20) -> float:
    """Images/s of the model alone on a device-resident batch (what ``bench`` measures)."""
    x = torch.randn(batch, 3, *predictor.input_size, device=predictor.device).to(predictor.dtype)
    with torch.inference_mode():
        for _ in range(3):
            predictor.model(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            predictor.model(x)
        sync()
    return batch * iters / (time.perf_counter() - t0)


def isolated(predictor, paths: list[Path], batch: int, reps: int = 5) -> dict:
    """Milliseconds per batch of ``submit`` (upload and model, waited for) and of ``result()`` on a quiet GPU."""
    from opensapiens.io.images import read_image

    images = [read_image(q) for q in paths[:batch]]
    ms = collections.defaultdict(list)
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        pending = predictor.submit(images)
        sync()
        t1 = time.perf_counter()
        pending.result()
        ms["submit"].append(1e3 * (t1 - t0))
        ms["result()"].append(1e3 * (time.perf_counter() - t1))
    return {k: round(sorted(v)[len(v) // 2], 2) for k, v in ms.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("task")
    p.add_argument("checkpoint")
    p.add_argument("folder", type=Path)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--no-vis", action="store_true")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="default: the checkpoint's")
    p.add_argument("--writers", type=int, default=None, help="default: run_batch's (default_writers)")
    p.add_argument("--out", type=Path)
    p.add_argument("--trace", type=Path)
    p.add_argument("--cuda-graphs", action="store_true",
                   help="the fused path replayed as CUDA graphs (one launch per batch instead of hundreds)")
    p.add_argument("--switch-intervals", type=float, nargs="+", metavar="MS",
                   help="time the pipelined loop at each of these switch intervals (ms), A B A B")
    p.add_argument("--pin-ab", action="store_true",
                   help="time the pipelined loop with the images pinned on the readers and on the main thread")
    args = p.parse_args()
    args.writers = args.writers or batch.default_writers(args.task, not args.no_vis)
    paths = sorted(q for q in args.folder.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png"))
    predictor = load_predictor(args.task, args.checkpoint, batch_size=args.batch, input_size=args.input_size,
                               optimize=not args.cuda_graphs)
    if args.cuda_graphs:
        graphed = optimize_for_inference(predictor.model, fused=True, cuda_graphs=True)
        predictor = type(predictor)(graphed, input_size=predictor.input_size, batch_size=args.batch)
    run_batch(predictor, paths[: 2 * args.batch], Path(tempfile.mkdtemp()), batch_size=args.batch, progress=False)
    background = getattr(predictor.model, "background", None)
    if background is not None:
        background.wait()
    rates, outs, stages = {}, {}, {}
    # name -> (switch interval in ms or None for Python's, whether the reader threads pin the images)
    variants = {name: (None, True) for name in ("pipelined", "one at a time", "pipelined again", "one at a time again")}
    if args.switch_intervals:
        variants = {f"pipelined, switch {ms:g} ms{' again' * r}": (ms, True)
                    for r in range(2) for ms in args.switch_intervals}
    elif args.pin_ab:
        variants = {f"pipelined, {where}{' again' * r}": (None, where == "pinned on readers")
                    for r in range(2) for where in ("pinned on readers", "staged in submit")}
    default_interval, pin = sys.getswitchinterval(), batch.pin
    for name, (ms, pinned) in variants.items():
        out = outs[name] = Path(tempfile.mkdtemp(prefix="pipeline_"))
        clock = MainThreadClock()
        runner = Timed(OneAtATime(predictor) if name.startswith("one") else predictor, clock)
        sync()
        clock.install()
        sys.setswitchinterval(default_interval if ms is None else ms / 1e3)
        batch.pin = pin if pinned else (lambda image: image)
        t0 = time.perf_counter()
        report = run_batch(runner, paths, out, batch_size=args.batch, vis=not args.no_vis, progress=False,
                           writers=args.writers)
        seconds = time.perf_counter() - t0
        sys.setswitchinterval(default_interval)
        batch.pin = pin
        clock.uninstall()
        rates[name] = len(report.done) / seconds
        stages[name] = {k: round(v, 2) for k, v in clock.seconds.items()} | {"total": round(seconds, 2)}
        assert not report.failed, report.failed[:3]
    rates["model only"] = model_only(predictor, args.batch)
    alone = isolated(predictor, paths, args.batch)
    label = f"{args.task}{' (CUDA graphs)' if args.cuda_graphs else ''}"
    print(f"{label}: one batch of {args.batch} on a quiet GPU, median ms: {alone}; the model alone "
          f"{1e3 * args.batch / rates['model only']:.2f}")
    for name, rate in rates.items():
        what = f"{args.task} {'no pictures' if args.no_vis else 'pictures':<11} {args.writers:2d} writers"
        print(f"{what} {name:<26} {rate:7.1f} img/s  "
              f"{rate / rates['model only']:.3f} of model-only  {stages.get(name, '')}", flush=True)
    ref, other = (outs[name] for name in list(variants)[:2])
    files = sorted(f.name for f in ref.iterdir() if f.suffix != ".jpg")
    same = files == sorted(f.name for f in other.iterdir() if f.suffix != ".jpg") and all(
        (ref / f).read_bytes() == (other / f).read_bytes() for f in files)
    print(f"{' and '.join(list(variants)[:2])}: outputs identical (pictures aside, {len(files)} files): {same}")
    if args.out:
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        args.out.write_text(json.dumps({"task": args.task, "batch": args.batch, "pictures": not args.no_vis,
                                        "images": len(paths), "images_per_s": rates, "main_thread_s": stages,
                                        "isolated_ms": alone, "identical": same, "gpu": gpu,
                                        "writers": args.writers, "cuda_graphs": args.cuda_graphs,
                                        "switch_intervals_ms": args.switch_intervals, "pin_ab": args.pin_ab},
                                       indent=1))
    if args.trace:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=activities) as prof:
            run_batch(predictor, paths[: 16 * args.batch], Path(tempfile.mkdtemp()), batch_size=args.batch,
                      vis=not args.no_vis, progress=False)
            sync()
        args.trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(args.trace))


if __name__ == "__main__":
    main()
