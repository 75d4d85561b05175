"""``opensapiens predict``'s loop over a folder against the model alone, side by side in one process.

Variants, each timed over the same images after a warm-up (the head's background compile finished):
- ``pipelined``: ``run_batch`` as the CLI runs it (batch i + 1 submitted before batch i's results are read back);
- ``one at a time``: the same reader and writers, each batch's results read back before the next is submitted (the
  loop before ``Predictor.submit``);
- ``model only``: the model on a device-resident batch of the same size, no reading, post-processing or writing.
Prints images/s of each, their ratio to the model's, and whether the two loops wrote identical files (pictures aside).
Usage: python bench/predict_pipeline.py TASK CHECKPOINT FOLDER [--batch B] [--no-vis] [--repeat N] [--input-size H W]
       [--out JSON]
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from opensapiens.inference.batch import run_batch
from opensapiens.inference.predictors import load_predictor
from opensapiens.inference.streams import Pending


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class OneAtATime:
    """A predictor whose ``submit`` finishes the batch before returning: ``run_batch`` without the overlap."""

    def __init__(self, predictor):
        self.predictor, self.task = predictor, predictor.task

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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("task")
    p.add_argument("checkpoint")
    p.add_argument("folder", type=Path)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--no-vis", action="store_true")
    p.add_argument("--repeat", type=int, default=1, help="passes over the folder per variant")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="default: the checkpoint's")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    paths = sorted(q for q in args.folder.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png")) * args.repeat
    predictor = load_predictor(args.task, args.checkpoint, batch_size=args.batch, input_size=args.input_size)
    run_batch(predictor, paths[: 2 * args.batch], Path(tempfile.mkdtemp()), batch_size=args.batch, progress=False)
    background = getattr(predictor.model, "background", None)
    if background is not None:
        background.wait()
    rates, outs = {}, {}
    for name in ("pipelined", "one at a time", "pipelined again", "one at a time again"):
        out = outs[name] = Path(tempfile.mkdtemp(prefix="pipeline_"))
        runner = OneAtATime(predictor) if name.startswith("one") else predictor
        sync()
        t0 = time.perf_counter()
        report = run_batch(runner, paths, out, batch_size=args.batch, vis=not args.no_vis, progress=False)
        rates[name] = len(report.done) / (time.perf_counter() - t0)
        assert not report.failed, report.failed[:3]
    rates["model only"] = model_only(predictor, args.batch)
    for name, rate in rates.items():
        print(f"{args.task} {'no pictures' if args.no_vis else 'pictures':<11} {name:<20} {rate:7.1f} img/s  "
              f"{rate / rates['model only']:.3f} of model-only", flush=True)
    ref = outs["pipelined"]
    files = sorted(f.name for f in ref.iterdir() if f.suffix != ".jpg")
    other = outs["one at a time"]
    same = files == sorted(f.name for f in other.iterdir() if f.suffix != ".jpg") and all(
        (ref / f).read_bytes() == (other / f).read_bytes() for f in files)
    print(f"pipelined and one-at-a-time outputs identical (pictures aside, {len(files)} files): {same}")
    if args.out:
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        args.out.write_text(json.dumps({"task": args.task, "batch": args.batch, "pictures": not args.no_vis,
                                        "images": len(paths), "images_per_s": rates, "identical": same, "gpu": gpu},
                                       indent=1))


if __name__ == "__main__":
    main()
