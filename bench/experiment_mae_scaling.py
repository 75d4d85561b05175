"""The Sapiens pretraining claim in miniature: does MAE pretraining on more human images help few-label fine-tuning?

    python bench/experiment_mae_scaling.py --out runs/mae_scaling            # about an hour on 2 CPU cores
    python bench/experiment_mae_scaling.py --out runs/mae_scaling --quick    # a smoke run (~3 min)

1. Render synthetic humans (``opensapiens synth``): an unlabeled pretraining pool, a small labeled fine-tuning set
   and a held-out validation set, all distinct seeds.
2. MAE-pretrain the same small ViT (``opensapiens pretrain``) for the same number of steps on the first N pool
   images, for each N in --sizes (tar shards written from the pool).
3. Fine-tune body-part segmentation (28 classes) and 17-keypoint pose (COCO subset of the 308 labels) on the small
   labeled set (``opensapiens train``), from random init and from each pretrained backbone, same recipe and steps.
4. Report val mIoU / AP per init in a markdown table (results.md) and results.json; every command is logged.

Runs are resumable: a finished step (its output file exists) is skipped when the script is started again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLI = [sys.executable, "-m", "opensapiens.cli.main"]


def sh(cmd: list[str], log: list[str], logfile: Path) -> None:
    """Run one CLI command (output appended to ``logfile``) and record it in ``log`` as the user would type it."""
    log.append(" ".join(cmd[2:]).replace("opensapiens.cli.main", "opensapiens"))
    print("$", log[-1], flush=True)
    t0 = time.time()
    with open(logfile, "a") as f:
        f.write(f"$ {log[-1]}\n")
        f.flush()
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=f, stderr=f)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def render(out: Path, n: int, size: tuple[int, int], seed: int, log: list[str], logfile: Path) -> Path:
    if not (out / "annotations.json").is_file():
        sh([*CLI, "synth", "--n", str(n), "--size", f"{size[0]}x{size[1]}", "--seed", str(seed), "--out", str(out)],
           log, logfile)
    return out


def pool_shards(pool: Path, n: int, out: Path) -> Path:
    """The first ``n`` pool images as tar shards (the pretraining input format)."""
    from opensapiens.data.shard_writer import ShardWriter

    if not list(out.glob("*.tar")):
        files = sorted((pool / "images").iterdir())[:n]
        if len(files) < n:
            raise SystemExit(f"the pool has {len(files)} images, fewer than {n}")
        with ShardWriter(out, max_count=500) as w:
            for f in files:
                w.write(f.stem, f.read_bytes(), f.suffix)
    return out


def coco17(src: Path, out: Path) -> Path:
    """A 17-keypoint (COCO body) copy of a synth annotation file, images linked, for the pose fine-tune."""
    from opensapiens.metadata import convert_keypoints

    ann = out / "annotations.json"
    if ann.is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "images").exists():
        os.symlink((src / "images").resolve(), out / "images")
    d = json.loads((src / "annotations.json").read_text())
    for a in d["annotations"]:
        kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
        xy, v = convert_keypoints(kp[:, :2], kp[:, 2], "goliath", "coco")
        a["keypoints"] = np.concatenate([xy, v[:, None]], 1).ravel().tolist()
        a["num_keypoints"] = int((v > 0).sum())
    d["annotations"] = [a for a in d["annotations"] if a["num_keypoints"] > 0]
    ann.write_text(json.dumps(d))
    return out


def last_eval(run: Path) -> dict:
    evals = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in s]
    return evals[-1] if evals else {}


def last_loss(run: Path) -> float | None:
    train = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in s]
    return train[-1]["loss"] if train else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arch", default="nano")
    ap.add_argument("--size", default="128x96", help="image and input size HxW")
    ap.add_argument("--sizes", default="250,1000,4000", help="pretraining set sizes")
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--pretrain-batch", type=int, default=32)
    ap.add_argument("--pretrain-lr", type=float, default=1.5e-3)
    ap.add_argument("--labeled", type=int, default=64, help="labeled fine-tuning images")
    ap.add_argument("--val", type=int, default=200, help="validation images")
    ap.add_argument("--finetune-steps", type=int, default=1000)
    ap.add_argument("--finetune-batch", type=int, default=16)
    ap.add_argument("--tasks", default="seg,pose")
    ap.add_argument("--probe", default="seg", help="tasks also fine-tuned with the backbone frozen ('' for none)")
    ap.add_argument("--pose-sigma", type=float, default=2.0, help="heatmap Gaussian sigma in heatmap pixels")
    ap.add_argument("--pose-lr", type=float, default=2e-3, help="pose LR (the engine's 5e-4 is slow for short runs)")
    ap.add_argument("--workers", type=int, default=0, help="loader workers (0 suits a small CPU machine)")
    ap.add_argument("--quick", action="store_true", help="tiny budgets: checks the pipeline, not the claim")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.pretrain_steps, args.labeled, args.val, args.finetune_steps = "40,120", 60, 16, 24, 30
    H, W = (int(v) for v in args.size.split("x"))
    sizes = [int(s) for s in args.sizes.split(",")]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    logfile = out / "log.txt"

    pool = render(out / "data" / "pool", max(sizes), (H, W), 1000, log, logfile)
    labeled = render(out / "data" / "labeled", args.labeled, (H, W), 2000, log, logfile)
    val = render(out / "data" / "val", args.val, (H, W), 3000, log, logfile)

    small = ["--arch", args.arch, "--input-size", f"{H}x{W}", "--no-tensorboard", "--workers", str(args.workers)]
    inits: dict[str, str | None] = {"random init": None}
    pretrain_loss = {}
    for n in sizes:
        run = out / f"pretrain_{n}"
        if not (run / "backbone.safetensors").is_file():
            sh([*CLI, "pretrain", "--data", str(pool_shards(pool, n, out / "data" / f"shards_{n}")), "--out", str(run),
                "--steps", str(args.pretrain_steps), "--batch-size", str(args.pretrain_batch),
                "--lr", str(args.pretrain_lr), "--warmup-steps", str(max(args.pretrain_steps // 20, 1)),
                "--decoder-dim", "128", "--decoder-depth", "2", "--decoder-heads", "4", "--log-interval", "50",
                "--ckpt-interval", str(args.pretrain_steps), *small], log, logfile)
        inits[f"MAE on {n} images"] = str(run / "backbone.safetensors")
        pretrain_loss[n] = last_loss(run)

    # Pose: 17 COCO body keypoints; the official sigma (6 px at 1024 input, scaled with the input) is under one
    # heatmap pixel at this size, so a 2-pixel Gaussian is used.
    pose_extra = ["--keypoints", "coco", "--sigma", str(args.pose_sigma), "--lr", str(args.pose_lr)]
    data = {"seg": (labeled, val, []), "pose": (coco17(labeled, out / "data" / "labeled_coco17"),
                                               coco17(val, out / "data" / "val_coco17"), pose_extra)}
    metric = {"seg": "mIoU", "pose": "AP"}
    results: dict[str, dict[str, float]] = {}
    # "probe": the backbone frozen (layer decay 0 gives it LR 0; the head trains at the full LR), which isolates
    # what the pretrained features alone are worth.
    columns = [(t, False) for t in args.tasks.split(",")] + [(t, True) for t in args.probe.split(",") if t]
    for task, probe in columns:
        train_dir, val_dir, extra = data[task]
        if probe:
            extra = [*extra, "--layer-decay", "0"]
        for name, init in inits.items():
            run = out / f"{task}{'_probe' if probe else ''}_{name.replace(' ', '_')}"
            if not (run / "final.safetensors").is_file():
                cmd = [*CLI, "train", "--task", task, "--data", str(train_dir), "--val-data", str(val_dir),
                       "--out", str(run), "--steps", str(args.finetune_steps), "--batch-size",
                       str(args.finetune_batch), "--head-channels", "64", "--warmup-steps",
                       str(max(args.finetune_steps // 10, 1)), "--ckpt-interval", str(args.finetune_steps),
                       "--log-interval", "50", *extra, *small]
                sh(cmd + (["--init", init] if init else []), log, logfile)
            results.setdefault(name, {})[task + (" probe" if probe else "")] = last_eval(run).get(metric[task])

    keys = [t + (" probe" if p else "") for t, p in columns]
    header = [f"{t} val {metric[t]} (%)" + (", frozen backbone" if p else "") for t, p in columns]
    rows = ["| initialisation | " + " | ".join(header) + " |", "|---|" + "---|" * len(columns)]
    for name, r in results.items():
        rows.append(f"| {name} | " + " | ".join(f"{100 * r[k]:.2f}" if r.get(k) is not None else "n/a"
                                                for k in keys) + " |")
    table = "\n".join(rows)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"results": results, "pretrain_final_loss": pretrain_loss,
                                                  "commands": log, "args": {k: str(v) for k, v in
                                                                           vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
