"""Multi-task training on synthetic humans rendered on the fly: the recipe of the bundled ``sapiens-nano`` model.

Scenes are rendered in batches on the device (``opensapiens.synth``) into a pool that a fresh batch refreshes every
few steps (rendering costs more than a step of a small model, so each scene serves several steps). Every step cuts
one random person-centred view from each of a random draw of pooled scenes with the UDP affine (scale jitter,
horizontal flip with left/right label, keypoint and normal-X swaps; a share of whole-frame views for the dense
tasks), and trains one backbone with four heads on the sum of the official losses:

    loss = w_pose * heatmap MSE + seg weighted CE + depth SiLog + normal (cosine + L1)

    python -m opensapiens.training.multitask --arch nano --steps 6000 --batch-size 96 --out runs/nano

Writes RUN/metrics.jsonl, RUN/last.safetensors (multi-task, fp32) at intervals and at the end.
``--continue-from CKPT`` starts from a whole multi-task checkpoint (backbone and heads), e.g. to train the bundled
model further; ``--init`` starts the backbone from pretrained weights (an MAE ``backbone.safetensors``, an official
``_clean.pth``) as ``opensapiens train --init`` does.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ..codecs.heatmap import encode_udp_heatmaps
from ..inference.topdown import boxes_to_center_scale, image_to_crop, udp_affine
from ..inference.transforms import MEAN, STD, normalization_tensors
from ..metadata import keypoint_set, seg_classes
from ..models.multitask import SapiensMultiTask, build_multitask
from ..tasks import keypoint_mse_loss, normal_loss, relative_depth_target, seg_ce_loss, silog_loss
from .init import fit_backbone
from .logger import StepWindow
from .optim import build_optimizer, set_lr
from .schedule import Schedule
from .step import train_step


def warp_views(batch, out_size: tuple[int, int], generator: torch.Generator, whole_frame: float = 0.25,
               scale_range: tuple[float, float] = (1.0, 1.6), flip_prob: float = 0.5) -> dict[str, torch.Tensor]:
    """One augmented view per rendered scene, all labels warped with the image (labels/depth/normals nearest).

    Returns image (B, 3, h, w) float 0-255, labels (B, h, w) long, depth (B, h, w), normals (B, 3, h, w),
    mask (B, h, w) bool, keypoints (B, K, 2) crop pixels, visible (B, K) float, pose_weight (B,).
    """
    B, _, H, W = batch.image.shape
    dev = batch.image.device
    h, w = out_size
    # a random valid person per scene
    valid = batch.person_valid.float() + 1e-6
    person = torch.multinomial(valid, 1, generator=generator).squeeze(1)  # (B,)
    idx = torch.arange(B, device=dev)
    box = batch.boxes[idx, person]  # (B, 4) xywh
    xyxy = torch.cat([box[:, :2], box[:, :2] + box[:, 2:]], dim=1)
    center, scale = boxes_to_center_scale(xyxy, padding=1.25, aspect=w / h)
    u = torch.rand(B, 3, generator=generator, device=dev)
    scale = scale * (scale_range[0] + (scale_range[1] - scale_range[0]) * u[:, :1])
    empty = (box[:, 2] < 2) | (box[:, 3] < 2)  # a scene whose people are all out of view
    whole = (u[:, 1] < whole_frame) | empty  # dense tasks also see whole frames, as at inference
    frame_c = torch.tensor([(W - 1) / 2, (H - 1) / 2], device=dev).expand(B, 2)
    frame_s = torch.tensor([max(W, H * w / h), max(H, W * h / w)], device=dev).expand(B, 2)
    center = torch.where(whole[:, None], frame_c, center)
    scale = torch.where(whole[:, None], frame_s, scale.clamp_min(1.0))
    flip = u[:, 2] < flip_prob

    inv = udp_affine(center, scale, out_size, inverse=True)  # (B, 2, 3) crop -> image pixels
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float32),
                            torch.arange(w, device=dev, dtype=torch.float32), indexing="ij")
    xs = torch.where(flip[:, None, None], (w - 1) - xs, xs)  # a flipped view samples mirrored columns
    pix = torch.stack([xs.expand(B, h, w), ys.expand(B, h, w), torch.ones(B, h, w, device=dev)], dim=-1)
    src = torch.einsum("bij,bhwj->bhwi", inv, pix)  # (B, h, w, 2) image pixel coordinates
    grid = torch.stack([src[..., 0] / (W - 1) * 2 - 1, src[..., 1] / (H - 1) * 2 - 1], dim=-1)

    def sample(t: torch.Tensor, mode: str) -> torch.Tensor:
        return F.grid_sample(t, grid, mode=mode, padding_mode="zeros", align_corners=True)

    image = sample(batch.image.float(), "bilinear")
    dense = sample(torch.cat([batch.seg[:, None].float(), batch.depth[:, None], batch.normal], dim=1), "nearest")
    labels, depth, normals = dense[:, 0].long(), dense[:, 1], dense[:, 2:5]
    lut = torch.from_numpy(seg_classes("goliath").flip_lut()).to(dev).long()
    labels = torch.where(flip[:, None, None], lut[labels], labels)
    normals = torch.where(flip[:, None, None, None], normals * torch.tensor([-1.0, 1, 1], device=dev).view(1, 3, 1, 1),
                          normals)

    kps = batch.keypoints[idx, person]  # (B, K, 3)
    crop_kp = image_to_crop(kps[..., :2], center, scale, out_size)
    flip_ids = torch.tensor(keypoint_set("goliath").flip_indices, device=dev)
    mirrored = torch.stack([(w - 1) - crop_kp[..., 0], crop_kp[..., 1]], dim=-1)[:, flip_ids]
    crop_kp = torch.where(flip[:, None, None], mirrored, crop_kp)
    visible = (kps[..., 2] > 0).float()
    visible = torch.where(flip[:, None], visible[:, flip_ids], visible)
    inside = (crop_kp[..., 0] >= 0) & (crop_kp[..., 0] <= w - 1) & (crop_kp[..., 1] >= 0) & (crop_kp[..., 1] <= h - 1)
    return {"image": image, "labels": labels, "depth": depth, "normals": normals, "mask": depth > 0,
            "keypoints": crop_kp, "visible": visible * inside, "pose_weight": (~whole).float()}


class ScenePool:
    """Rendered scenes kept on the device: a fresh batch replaces the oldest every ``render_every`` steps.

    ``sample(n)`` draws ``n`` pooled scenes uniformly, so consecutive steps see different mixtures of scenes and
    each scene is cut into about ``n * render_every / batch`` views over its life instead of ``views``.
    """

    FIELDS = ("image", "seg", "depth", "normal", "keypoints", "boxes", "person_valid")

    def __init__(self, source: Iterable, batches: int):
        self.source = iter(source)
        first = [self._render() for _ in range(batches)]
        self.batch_size = first[0]["image"].shape[0]
        self.data = {k: torch.cat([b[k] for b in first]) for k in self.FIELDS}
        self.oldest = 0  # the slot (of batch_size scenes) the next refresh overwrites

    def _render(self) -> dict[str, torch.Tensor]:
        batch = next(self.source)
        return {k: getattr(batch, k) for k in self.FIELDS}

    def refresh(self) -> None:
        fresh = self._render()
        rows = slice(self.oldest * self.batch_size, (self.oldest + 1) * self.batch_size)
        for k in self.FIELDS:
            self.data[k][rows] = fresh[k]
        self.oldest = (self.oldest + 1) % (len(self) // self.batch_size)

    def sample(self, n: int, generator: torch.Generator) -> SimpleNamespace:
        idx = torch.randint(len(self), (n,), generator=generator, device=generator.device)
        return SimpleNamespace(**{k: v[idx] for k, v in self.data.items()})

    def __len__(self) -> int:
        return self.data["image"].shape[0]


def photometric(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and per-channel gain jitter on (B, 3, h, w) 0-255 images."""
    B = image.shape[0]
    r = torch.rand(B, 5, generator=generator, device=image.device)
    bright = (r[:, 0] - 0.5) * 64
    contrast = 0.6 + 0.8 * r[:, 1]
    gain = 0.85 + 0.3 * r[:, 2:5]
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    out = (image - mean) * contrast.view(B, 1, 1, 1) + mean + bright.view(B, 1, 1, 1)
    return (out * gain.view(B, 3, 1, 1)).clamp(0, 255)


def normalize(image: torch.Tensor) -> torch.Tensor:
    mean, std = normalization_tensors(MEAN, STD, image.device)
    return (image - mean) / std


def multitask_loss(model: SapiensMultiTask, views: dict[str, torch.Tensor], pose_weight: float, sigma: float,
                   class_weight: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The summed loss and its four parts (detached, still on the device: read them when logging)."""
    out = model(normalize(views["image"]))
    hm_size = tuple(out["pose"].shape[-2:])
    target, weight = encode_udp_heatmaps(views["keypoints"], views["visible"], tuple(views["image"].shape[-2:]),
                                         hm_size, sigma)
    weight = weight * views["pose_weight"][:, None]
    parts = {
        "pose": pose_weight * keypoint_mse_loss(out["pose"], target, weight),
        "seg": seg_ce_loss(out["seg"], views["labels"], class_weight),
        "depth": silog_loss(out["depth"], relative_depth_target(views["depth"], views["mask"])),
        "normal": normal_loss(out["normal"], views["normals"], views["mask"]),
    }
    total = sum(parts.values())
    return total, {k: v.detach() for k, v in parts.items()}


class _PrintSkips:
    """``StepWindow``'s logger here: the recipe writes its own records; a skipped step is printed."""

    def log(self, event: str, step: int, **values) -> None:
        print(f"step {step}: non-finite loss or gradient ({values}), skipped", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="nano")
    ap.add_argument("--input-size", default="256x192")
    ap.add_argument("--render-size", default="384x288", help="scenes are rendered at this size, then cropped")
    ap.add_argument("--head-channels", type=int, default=96)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=96)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--pose-weight", type=float, default=1000.0)
    ap.add_argument("--sigma", type=float, default=2.0, help="heatmap Gaussian sigma in heatmap pixels")
    ap.add_argument("--views", type=int, default=2, help="views per step = batch-size x views")
    ap.add_argument("--pool", type=int, default=1, help="rendered batches kept on the device (1: no reuse)")
    ap.add_argument("--render-every", type=int, default=1, help="steps between two rendered batches")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--init", default=None, help="backbone weights (e.g. an MAE checkpoint) to start from")
    ap.add_argument("--continue-from", default=None, help="a whole multi-task checkpoint (backbone and heads)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="train for this many seconds: the LR schedule then runs on elapsed time, not steps")
    ap.add_argument("--save-dtype", choices=["fp32", "fp16"], default="fp32", help="precision of the saved weights")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    from ..checkpoints import load_multitask, load_state, save_model
    from ..synth import SyntheticHumans

    size = tuple(int(v) for v in args.input_size.split("x"))
    render = tuple(int(v) for v in args.render_size.split("x"))
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if args.continue_from:
        model = load_multitask(args.continue_from).float().to(device).train()
        if tuple(model.config.input_size) != size:
            ap.error(f"--continue-from {args.continue_from}: trained at {model.config.input_size}, not --input-size "
                     f"{args.input_size}")
        print(f"continuing from {args.continue_from}")
    else:
        model = build_multitask(args.arch, size, args.head_channels).to(device)
    if args.init:  # as a fine-tune's --init: cls token and row dropped, position table resized to the input's grid
        src_cfg, sd = load_state(args.init, task="features")
        weights = fit_backbone(src_cfg, sd, model.backbone, args.init)
        with torch.no_grad():
            for k, v in model.backbone.state_dict().items():
                v.copy_(weights[k])
        print(f"init from {args.init}: {len(weights)} backbone tensors")
    optimizer = build_optimizer(model, args.lr, args.weight_decay, betas=(0.9, 0.999))
    schedule = Schedule(args.steps, warmup_steps=args.warmup, kind="cosine", min_factor=0.01)
    class_weight = torch.tensor(seg_classes("goliath").class_weight, device=device)
    t0 = time.time()  # the time limit counts the initial rendering of the pool
    source = SyntheticHumans(render[0], render[1], batch_size=args.batch_size, seed=args.seed, device=device)
    pool = ScenePool(source, args.pool)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "metrics.jsonl").open("a")
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    parts: dict[str, torch.Tensor] = {}  # the last step's loss parts, on the device

    def compute_loss(views: dict[str, torch.Tensor]) -> torch.Tensor:
        loss, found = multitask_loss(model, views, args.pose_weight, args.sigma, class_weight)
        parts.update(found)
        return loss

    skips = StepWindow(_PrintSkips())
    for step in itertools.count():
        elapsed = time.time() - t0
        if args.time_limit:  # a fixed time budget: progress through the schedule by the clock
            if elapsed > args.time_limit:
                break
            progress = int(args.steps * elapsed / args.time_limit)
        elif step >= args.steps:
            break
        else:
            progress = step
        if step and step % args.render_every == 0:
            pool.refresh()
        views = warp_views(pool.sample(args.batch_size * args.views, generator), size, generator)
        views["image"] = photometric(views["image"], generator)
        lr = args.lr * schedule.factor(progress)
        set_lr(optimizer, lr)
        # the fine-tuning engine's step: clipping at 1.0, a non-finite loss or gradient skips the update
        result = train_step(model, optimizer, [views], compute_loss, clip_grad=1.0, autocast_dtype=amp_dtype,
                            device_type=device.type)
        skips.add(step, result)  # read two steps late: the host does not wait for the GPU between steps
        if step % 50 == 0:
            rec = {"step": step, "loss": result.loss, **{k: v.item() for k, v in parts.items()},
                   "grad_norm": result.grad_norm, "lr": lr, "seconds": round(time.time() - t0, 1),
                   "scenes": (args.pool + step // args.render_every) * args.batch_size}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
        if step and step % 1000 == 0:
            save_model(model, args.out / "last.safetensors", dtype=torch.float16 if args.save_dtype == "fp16" else None)
    save_model(model, args.out / "last.safetensors", dtype=torch.float16 if args.save_dtype == "fp16" else None)
    skips.settle()
    print(f"done: {step} steps ({skips.skipped_steps} skipped), {time.time() - t0:.0f} s -> "
          f"{args.out / 'last.safetensors'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
