"""Pose with our person detector over a folder (``opensapiens predict --task pose --detector W``'s loop), against
each part alone, side by side in one process.

The detector has random weights (nothing downloads on the GPU host) whose classifier calls every one of its 1000
proposals per image a person (score 0.996: all of them pass the default threshold and NMS), and keeps ``--people``
boxes per image, so every image brings that many crops. Timed A B A B over the same images after a warm-up, every
output written (``run_batch``, no pictures):
- ``pose with the detector``: as ``predict`` runs it (the detection inside each batch's ``submit``);
- the same with the detector's cudnn.benchmark flipped (only around its calls);
- ``pose alone``: ``run_batch`` with the boxes the detector found given, no detection;
- ``detector alone``: ``detect_batch`` on device-resident images, fp32. Before: its BatchNorms not folded into the
  convolutions (until call 85); each batch in one call padded to its largest image (until call 87). Candidates: bf16
  autocast; cudnn.benchmark flipped (the pose model's optimization turns it on for the process); channels_last.
``serial sum`` is the rate if detection and pose took turns on the GPU with no gap: 1 / (1/detector + 1/pose).
``--profile``: the detector alone in batches of 4 and B, and one batch profiled (host ops, GPU kernels), nothing else.
Usage: python bench/pose_detector.py CHECKPOINT FOLDER [--batch B] [--people P] [--detector-arch A] [--out JSON]
       [--profile]
"""
import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch
import torchvision
from safetensors.torch import save_file

from opensapiens.inference import detector as detector_module
from opensapiens.inference import predictors
from opensapiens.inference.batch import run_batch
from opensapiens.inference.detector import PersonDetector
from opensapiens.inference.predictors import load_predictor
from opensapiens.inference.streams import as_tensor, upload_images
from opensapiens.io.images import read_image


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def random_detector(arch: str, people: int, device: torch.device, fold: bool = True) -> PersonDetector:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=91)
    with torch.no_grad():  # "person" (label 1) wins every proposal, so every image has people to crop
        model.roi_heads.box_predictor.cls_score.weight.zero_()
        model.roi_heads.box_predictor.cls_score.bias.zero_()
        model.roi_heads.box_predictor.cls_score.bias[1] = 10.0
    path = Path(tempfile.mkdtemp()) / "detector.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    if fold:
        return PersonDetector(path, arch=arch, device=device, max_people=people)
    with mock.patch.object(detector_module, "fold_batch_norms", lambda model: model):  # as before call 85
        return PersonDetector(path, arch=arch, device=device, max_people=people)


def detector_alone(detector: PersonDetector, images: list, batch: int, autocast: bool, reps: int = 3) -> float:
    """Images/s of ``detect_batch`` on images already on the device."""
    uploaded = upload_images(images, detector.device)
    dtype = torch.bfloat16 if autocast else torch.float32
    with torch.autocast(detector.device.type, dtype=dtype, enabled=autocast):
        detector.detect_batch(uploaded[:batch], batch_size=batch)
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            for k in range(0, len(uploaded), batch):
                detector.detect_batch(uploaded[k : k + batch], batch_size=batch)
        sync()
    return reps * len(uploaded) / (time.perf_counter() - t0)


def profile_detector(detector: PersonDetector, images: list, batch: int) -> None:
    """Where one ``detect_batch`` of ``batch`` device images spends its time: host ops by self time, GPU kernels."""
    from torch.profiler import ProfilerActivity, profile

    uploaded = upload_images(images[:batch], detector.device)
    detector.detect_batch(uploaded, batch_size=batch)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        detector.detect_batch(uploaded, batch_size=batch)
        sync()
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events)
    print(f"detect_batch of {batch}: {1e3 * wall:.1f} ms profiled, GPU kernels {gpu_us / 1e3:.1f} ms")
    print(events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=48))
    if torch.cuda.is_available():
        print(events.table(sort_by="self_cuda_time_total", row_limit=10, max_name_column_width=48))


def padded_detector(detector: PersonDetector) -> SimpleNamespace:
    """``detector`` as it ran before call 87: each chunk of images in one model call, padded to its largest image
    (now images of one size run together)."""
    @torch.inference_mode()
    def detect_batch(images: list, batch_size: int) -> list:
        results = []
        for start in range(0, len(images), batch_size):
            chunk = [as_tensor(im).to(detector.device).permute(2, 0, 1).float() / 255
                     for im in images[start : start + batch_size]]
            results += [detector.select(o["boxes"], o["scores"], o["labels"]) for o in detector.model(chunk)]
        return results
    return SimpleNamespace(device=detector.device, detect_batch=detect_batch)


def with_benchmark_flipped(detect_batch):
    """``detect_batch`` run with cudnn.benchmark the other way than the process has it (the pose model's convolutions
    keep theirs): a folder of many image sizes autotunes the detector's convolutions for each new size."""
    def run(*args, **kwargs):
        cudnn = torch.backends.cudnn
        with cudnn.flags(enabled=cudnn.enabled, benchmark=not cudnn.benchmark, deterministic=cudnn.deterministic,
                         allow_tf32=cudnn.allow_tf32):
            return detect_batch(*args, **kwargs)
    return run


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("folder", type=Path)
    p.add_argument("--batch", type=int, default=16, help="images per batch (the pose model's batch too)")
    p.add_argument("--people", type=int, default=3, help="boxes kept per image")
    p.add_argument("--detector-arch", default="fasterrcnn_resnet50_fpn_v2")
    p.add_argument("--out", type=Path)
    p.add_argument("--profile", action="store_true", help="profile the detector on one batch, then stop")
    args = p.parse_args()
    paths = sorted(q for q in args.folder.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png"))
    device = predictors.default_device()
    detector = random_detector(args.detector_arch, args.people, device)
    if args.profile:
        images = [read_image(q) for q in paths[: args.batch]]
        for k in (4, args.batch):
            print(f"detector alone, batches of {k}: {detector_alone(detector, images, k, autocast=False):.1f} img/s")
        profile_detector(detector, images, args.batch)
        return
    predictor = load_predictor("pose", args.checkpoint, batch_size=args.batch, detector=detector)
    plain = load_predictor("pose", args.checkpoint, batch_size=args.batch)  # the same weights, boxes given
    run_batch(predictor, paths[: 2 * args.batch], Path(tempfile.mkdtemp()), batch_size=args.batch, vis=False,
              progress=False)
    for model in (predictor.model, plain.model):
        background = getattr(model, "background", None)
        if background is not None:
            background.wait()

    images = [read_image(q) for q in paths[: 4 * args.batch]]
    unfolded = random_detector(args.detector_arch, args.people, device, fold=False)
    rates: dict = {"detector alone": [], "detector alone, BatchNorm not folded": []}
    rates["detector alone, one padded call per batch (before call 87)"] = []
    for _ in range(2):  # A B A B: call 86 measured the folded one first only, and the light detector slower folded
        rates["detector alone"].append(detector_alone(detector, images, args.batch, autocast=False))
        rates["detector alone, BatchNorm not folded"].append(detector_alone(unfolded, images, args.batch, False))
        rates["detector alone, one padded call per batch (before call 87)"].append(
            detector_alone(padded_detector(detector), images, args.batch, False))
    del unfolded
    if device.type == "cuda":  # candidates for the next step, timed after the default
        rates["detector alone, bf16 autocast"] = detector_alone(detector, images, args.batch, autocast=True)
        # "detector alone" ran with cudnn.benchmark as the pose model's optimize_for_inference left it: on, for the
        # whole process (every image of this folder is one size: one autotune per shape)
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = not benchmark
        rates[f"detector alone, cudnn.benchmark {'off' if benchmark else 'on'}"] = detector_alone(
            detector, images, args.batch, autocast=False)
        torch.backends.cudnn.benchmark = benchmark
        nhwc = copy.deepcopy(detector)
        nhwc.model.to(memory_format=torch.channels_last)
        rates["detector alone, channels_last"] = detector_alone(nhwc, images, args.batch, autocast=False)
        del nhwc
    boxes = {}
    for k in range(0, len(paths), args.batch):
        chunk = paths[k : k + args.batch]
        found = detector.detect_batch([read_image(q) for q in chunk], batch_size=args.batch)
        boxes.update({q: b for q, (b, _) in zip(chunk, found)})
    crops = sum(len(b) for b in boxes.values())

    def given_boxes(batch_paths, batch_images):
        return {"boxes": [boxes[q] for q in batch_paths]}

    flipped = f"pose with the detector, its cudnn.benchmark {'off' if torch.backends.cudnn.benchmark else 'on'}"
    detect_flipped = with_benchmark_flipped(detector.detect_batch)
    for name in ("pose with the detector", flipped, "pose alone (boxes given)") * 2:
        runner, kwargs = (plain, given_boxes) if name.startswith("pose alone") else (predictor, None)
        if name == flipped:
            detector.detect_batch = detect_flipped  # the instance attribute shadows the method for this run
        else:
            vars(detector).pop("detect_batch", None)
        sync()
        t0 = time.perf_counter()
        report = run_batch(runner, paths, Path(tempfile.mkdtemp()), batch_size=args.batch, vis=False,
                           predict_kwargs=kwargs, progress=False)
        rate = len(report.done) / (time.perf_counter() - t0)
        assert not report.failed, report.failed[:3]
        rates[name] = rates.get(name, []) + [rate]

    pose_alone = max(rates["pose alone (boxes given)"])
    rates["serial sum"] = 1 / (1 / max(rates["detector alone"]) + 1 / pose_alone)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{len(paths)} images, {crops} person crops ({crops / len(paths):.2f} per image), batch {args.batch}, "
          f"detector {args.detector_arch} (random weights), {gpu}")
    for name, rate in rates.items():
        shown = " / ".join(f"{r:6.1f}" for r in (rate if isinstance(rate, list) else [rate]))
        print(f"{name:<52} {shown} img/s")
    if args.out:
        args.out.write_text(json.dumps({"images": len(paths), "crops": crops, "batch": args.batch,
                                        "people": args.people, "detector_arch": args.detector_arch,
                                        "images_per_s": rates, "gpu": gpu}, indent=1))


if __name__ == "__main__":
    main()
