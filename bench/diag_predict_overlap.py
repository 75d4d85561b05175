"""Experiment: does ``predict`` over a folder keep the GPU busier with two inference threads on two CUDA streams?

``run_batch`` runs each batch's ``predict_batch`` to its host results before the next batch starts, so the GPU idles
while the host uploads the next images (pageable copies), launches, converts results and queues writes. Two threads,
each with its own stream, let one batch's host work overlap the other's GPU work without restructuring the
predictors. Side by side in one process after a warm-up (the head's compile finished): ``run_batch`` itself, then the
same reader and writers with 1 and 2 inference threads; images/s of each and whether their outputs are identical.
Usage: python bench/diag_predict_overlap.py TASK CHECKPOINT FOLDER [--batch B] [--no-vis] [--repeat N]
       [--input-size H W]
"""
import argparse
import contextlib
import queue
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from opensapiens.inference.batch import _load, run_batch, unique_stems, write_result
from opensapiens.inference.predictors import load_predictor


def threaded(predictor, paths: list[Path], out_dir: Path, batch_size: int, threads: int, vis: bool) -> int:
    """``run_batch``'s reading and writing around ``threads`` inference threads, each on its own CUDA stream."""
    stems = unique_stems(paths)
    batches: queue.Queue = queue.Queue(maxsize=2 * threads)
    futures, lock = [], threading.Lock()

    def read() -> None:
        for items in _load(paths, batch_size, 4):
            batches.put(items)
        for _ in range(threads):
            batches.put(None)

    def infer(writer: ThreadPoolExecutor) -> None:
        cuda = predictor.device.type == "cuda"
        with torch.cuda.stream(torch.cuda.Stream(predictor.device)) if cuda else contextlib.nullcontext():
            while (items := batches.get()) is not None:
                good = [(i, im) for i, im, err in items if err is None]
                results = predictor.predict_batch([im for _, im in good])
                with lock:
                    futures.extend(writer.submit(write_result, predictor.task, out_dir, stems[i], im, res, vis)
                                   for (i, im), res in zip(good, results))

    with ThreadPoolExecutor(8) as writer:
        workers = [threading.Thread(target=read)] + [threading.Thread(target=infer, args=(writer,))
                                                     for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        for f in futures:
            f.result()
    return len(futures)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("task")
    p.add_argument("checkpoint")
    p.add_argument("folder", type=Path)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--no-vis", action="store_true")
    p.add_argument("--repeat", type=int, default=1, help="passes over the folder per variant")
    p.add_argument("--input-size", type=int, nargs=2, default=(1024, 768), metavar=("H", "W"))
    args = p.parse_args()
    paths = sorted(q for q in args.folder.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png")) * args.repeat
    predictor = load_predictor(args.task, args.checkpoint, batch_size=args.batch, input_size=tuple(args.input_size))
    warm = paths[: args.batch]
    run_batch(predictor, warm, Path(tempfile.mkdtemp()), batch_size=args.batch, progress=False)
    background = getattr(predictor.model, "background", None)
    if background is not None:
        background.wait()
    vis = not args.no_vis
    outs = {}
    variants = [("run_batch", None), ("1 thread", 1), ("2 threads", 2), ("run_batch again", None)]
    for name, threads in variants:
        out = outs[name] = Path(tempfile.mkdtemp(prefix="overlap_"))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if threads is None:
            n = len(run_batch(predictor, paths, out, batch_size=args.batch, vis=vis, progress=False).done)
        else:
            n = threaded(predictor, paths, out, args.batch, threads, vis)
        seconds = time.perf_counter() - t0
        print(f"{name:<16} {n} images in {seconds:6.2f} s: {n / seconds:7.1f} img/s", flush=True)
    reference = outs["run_batch"]
    for name, out in outs.items():
        files = sorted(f.name for f in reference.iterdir() if f.suffix != ".jpg")
        same = files == sorted(f.name for f in out.iterdir() if f.suffix != ".jpg") and all(
            (reference / f).read_bytes() == (out / f).read_bytes() for f in files)
        print(f"{name:<16} outputs identical to run_batch's (pictures aside): {same}")


if __name__ == "__main__":
    main()
