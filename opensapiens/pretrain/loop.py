"""MAE pretraining of a Sapiens backbone, from a folder of images or tar shards to a backbone checkpoint.

    opensapiens pretrain --data shards/ --arch 0.3b --steps 100000 --batch-size 32 --out runs/mae
    torchrun --nproc_per_node 8 -m opensapiens.cli.main pretrain ... [--fsdp]     # DDP, or FSDP2 for 1b / 2b
    opensapiens pretrain --out runs/mae --resume                                  # after a crash / SIGTERM

The run folder is laid out as a fine-tune's (``opensapiens.training``, whose step, checkpoint, logging, signal and
distributed machinery this loop shares): ``config.json``, ``checkpoints/step_*.pt`` (resumable: weights, optimizer,
every rank's RNG and the data stream position of every loader worker), ``metrics.jsonl``, ``vis/step_*.png``
reconstructions, and at the end ``backbone.safetensors`` (a "features" model for ``opensapiens train --init``),
``mae.safetensors`` (encoder + decoder, for ``--init`` of a later pretraining) and, on request,
``backbone_clean.pth`` in the official ``_clean.pth`` key layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..checkpoints import export_official, read_state_dict, resolve_checkpoint, save_model
from ..data.labels import DataError
from ..data.shards import LoaderState, StreamingImages, find_source
from ..data.workers import WorkerInit, loader_context
from ..inference.optimize import fast_attention, pad_attention_heads
from ..io.writers import save_json, save_png
from ..models.mae import MAE, MAEConfig
from ..models.vit import get_arch
from ..training import distributed as D
from ..training import state as ckpt
from ..training.logger import RunLogger, StepWindow
from ..training.optim import build_optimizer, set_lr
from ..training.reproducibility import deterministic_kernels, float32_math, seed_everything
from ..training.schedule import Schedule, checkpoint_reason, due
from ..training.signals import StopRequest
from ..training.speed import checkpoint_blocks, compile_blocks, use_fast_attention, use_fused_gelu
from ..training.step import train_step
from .config import PretrainConfig
from .prefetch import DevicePrefetcher
from .visualize import reconstruction_grid


def lr_factor(step: int, total: int, warmup: int, warmup_start: float = 1e-4) -> float:
    """Official MAE schedule: linear warm-up from ``warmup_start`` to 1 over ``warmup`` steps, THEN a cosine from 1
    to 0 over the remaining steps (sequential, as mmengine's LinearLR followed by CosineAnnealingLR)."""
    if step < warmup:
        return Schedule(warmup, warmup, warmup_start, kind="constant").factor(step)
    return Schedule(max(total - warmup, 1), kind="cosine").factor(step - warmup)


def masked_loss(forward: Callable[..., tuple], images: torch.Tensor, mask_ratio: float,
                grid: tuple[int, int]) -> torch.Tensor:
    """The MAE loss of ``images`` (B, 3, H, W) through ``forward`` (an ``MAE``, wrapped or compiled).

    The masking noise is drawn here, eagerly, from the global RNG that checkpoints save, not inside a compiled graph
    (Inductor has its own generator): compiled and eager runs mask the same patches, and a resume is exact either way.
    """
    noise = torch.rand(images.shape[0], grid[0] * grid[1], device=images.device)  # (B, N)
    return forward(images, mask_ratio, noise)[0]


def mae_config(cfg: PretrainConfig) -> MAEConfig:
    return MAEConfig(get_arch(cfg.arch), tuple(cfg.input_size), cfg.decoder_dim, cfg.decoder_depth,
                     cfg.decoder_heads, cfg.norm_pix)


def pretrain(cfg: PretrainConfig) -> dict:
    """Run (or resume) MAE pretraining; returns a summary (step, last loss, skipped steps and samples, outputs)."""
    info = D.setup(cfg.device)
    stop = StopRequest(time_limit=cfg.time_limit)
    with contextlib.ExitStack() as exits:  # unwound last-in first-out on any exit, an exception's included
        exits.callback(D.cleanup)
        exits.callback(stop.close)
        exits.enter_context(deterministic_kernels(cfg.deterministic))
        exits.enter_context(float32_math(cfg.precision))
        return _pretrain(cfg, info, stop, exits)


def _loader_state(meta: dict | None, num_slots: int, logger: RunLogger) -> LoaderState | None:
    if meta is None:
        return None
    state = LoaderState.from_dict(meta)
    if state.num_slots == num_slots:
        return state
    epoch = max((e for e, _ in state.cursors.values()), default=0)
    logger.write(f"warning: the run was saved with {state.num_slots} data slots (ranks x workers), this one has "
                 f"{num_slots}: the data stream restarts epoch {epoch} (not an exact resume)")
    return LoaderState(num_slots, 0, {s: (epoch, 0) for s in range(num_slots)})


def _pretrain(cfg: PretrainConfig, info: D.DistInfo, stop: StopRequest, exits: contextlib.ExitStack) -> dict:
    """MAE pretraining itself; ``exits`` closes what it opens (the logger: its progress bar ends before a traceback)."""
    run = Path(cfg.out)
    ckpt_dir = run / "checkpoints"
    device = info.device
    source = find_source(cfg.data)  # checked before the run folder is written, or an old one deleted (--overwrite)
    num_slots = info.world_size * max(cfg.workers, 1)  # data slots: ranks x loader workers (data.shards)
    if source.kind == "files" and len(source) < num_slots:  # some slots would get no image, found before the model
        raise DataError(f"{cfg.data}: {len(source)} images for {num_slots} data slots ({info.world_size} ranks x "
                        f"{max(cfg.workers, 1)} loader workers); every slot needs one: use fewer --workers, or more "
                        "images")
    resume_from = ckpt.checkpoint_to_resume(run, cfg.resume, cfg.overwrite, info)
    ckpt.check_resumed_steps(resume_from, cfg.steps)
    if resume_from is None:  # config.json keeps the warm-up: a resume with more --steps lengthens only the cosine
        cfg = dataclasses.replace(cfg, warmup_steps=cfg.warmup())
    if info.is_main:
        run.mkdir(parents=True, exist_ok=True)
        save_json(run / "config.json", cfg.to_dict(), indent=2)

    # ---- model -----------------------------------------------------------------------------------------------------
    seed_everything(cfg.seed)  # identical initial weights on every rank
    mcfg = mae_config(cfg)
    model = MAE(mcfg)
    init_report = None
    if cfg.init and resume_from is None:
        sd, _ = read_state_dict(resolve_checkpoint(cfg.init))
        loaded = model.load_pretrained(sd)
        init_report = {"tensors": len(loaded), "decoder": any(k.startswith("decoder.") for k in loaded)}
    model.to(device)
    attention_kernel = use_fast_attention(model, device, cfg.attention)  # FA4, or ours at head dim 32; CPU: SDPA
    if device.type == "cuda":
        pad_attention_heads(model)  # head dim 60 (2B) -> 64 so fused attention kernels apply; exact
        use_fused_gelu(model)  # fc1 bias + GELU: one memory-bound Triton kernel each way
    bf16 = cfg.precision == "bf16"
    block_lists = [model.backbone.blocks, model.decoder.blocks]
    for blocks in block_lists:
        if cfg.checkpointing == "blocks":
            checkpoint_blocks(blocks)
        if cfg.compile_scope == "blocks":
            compile_blocks(blocks)
    if cfg.fsdp:
        model = D.shard_fsdp(model, [b for blocks in block_lists for b in blocks], info, bf16)
    else:
        model = D.wrap_ddp(model, info)
    bare: MAE = D.unwrap(model)
    autocast_dtype = torch.bfloat16 if (bf16 and not cfg.fsdp) else None
    lr = cfg.global_lr(info.world_size)
    optimizer = build_optimizer(model, lr, cfg.weight_decay, 1.0, cfg.betas)
    warmup = cfg.warmup()

    # ---- resume ----------------------------------------------------------------------------------------------------
    step, skipped_samples, meta = 0, 0, None
    loader_meta = None
    if resume_from is not None:
        meta = ckpt.load_checkpoint(resume_from, model, optimizer, info)
        step = meta["step"]
        per_rank = meta.get("skipped_samples_per_rank", [])
        skipped_samples = per_rank[info.rank] if info.rank < len(per_rank) else 0
        loader_meta = meta["loader"]
    else:
        seed_everything(cfg.seed + 1_000_003 * info.rank)  # per-rank masking streams
    logger = exits.enter_context(RunLogger(run, info.is_main, cfg.steps, step, cfg.tensorboard))
    logger.write(f"attention kernels: {attention_kernel}")
    if resume_from is not None:
        logger.write(f"resumed from {resume_from} at step {step}")
        if note := ckpt.resumed_batch_note(meta, cfg.batch_size, cfg.grad_accum, info.world_size):
            scaled = f", at a learning rate of {lr:.3g} (--blr x global batch / 256)" if cfg.lr is None else ""
            logger.write(f"warning: {note}{scaled}")
    elif init_report is not None:
        logger.log("init", 0, source=str(cfg.init), **init_report)

    # ---- data ------------------------------------------------------------------------------------------------------
    gpu_jpeg = device.type == "cuda" if cfg.gpu_jpeg is None else cfg.gpu_jpeg
    workers = max(cfg.workers, 0)
    state = _loader_state(loader_meta, num_slots, logger) or LoaderState(num_slots)
    dataset = StreamingImages(source, cfg.input_size, cfg.batch_size, cfg.seed, info.rank, info.world_size, workers,
                              cfg.crop_scale, cfg.flip_prob, cfg.shuffle_buffer, gpu_jpeg, state)
    # Its own generator: creating the loader must not draw from the global RNG (masking noise), or a resumed run
    # would diverge from an uninterrupted one. Workers: data.workers (from a fork server, ended with this process).
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None, generator=torch.Generator(),
                        worker_init_fn=WorkerInit(), multiprocessing_context=loader_context(workers))
    batches = DevicePrefetcher(iter(loader), device, cfg.input_size)
    global_batch = cfg.batch_size * cfg.grad_accum * info.world_size

    def next_images() -> torch.Tensor:
        nonlocal skipped_samples
        b = next(batches)
        state.update(b)
        skipped_samples += b.skipped
        return b.images

    forward = torch.compile(model) if cfg.compile_scope == "model" else model  # forward + loss as one graph

    def compute_loss(images: torch.Tensor) -> torch.Tensor:
        return masked_loss(forward, images, cfg.mask_ratio, mcfg.grid)

    # On CUDA: cuDNN > flash > memory-efficient attention (the same fast path ``bench/bench_mae.py`` measures).
    attention = fast_attention if device.type == "cuda" else contextlib.nullcontext

    def total_skipped_samples() -> int:
        """Collective: unreadable samples skipped so far on all ranks."""
        return int(D.all_reduce_sum(torch.tensor([float(skipped_samples)], device=device)).item())

    def save(reason: str) -> None:
        partial = window.partial()  # reads every pending step, counting its skip
        ranks = D.gather_objects((state.to_dict(), skipped_samples))
        cursors = {s: c for d, _ in ranks for s, c in LoaderState.from_dict(d).cursors.items()}
        meta = {"step": step, "loader": LoaderState(num_slots, state.batches, cursors).to_dict(),
                "skipped_steps": window.skipped_steps, "window": partial,
                "skipped_samples_per_rank": [n for _, n in ranks], "config": cfg.to_dict(),
                "world_size": info.world_size, **mcfg.metadata()}  # loads as its encoder
        path = ckpt.save_checkpoint(ckpt.checkpoint_path(ckpt_dir, step), model, optimizer, meta, info)
        if info.is_main:
            ckpt.prune_checkpoints(ckpt_dir, cfg.keep_last)
            logger.log("checkpoint", step, path=str(path), reason=reason)

    def visualize(images: torch.Tensor) -> None:
        """Collective (every rank runs the forward, as FSDP needs); rank 0 writes ``vis/step_N.png``."""
        imgs = images[:4]
        g = torch.Generator(device=imgs.device).manual_seed(cfg.seed * 1_000_003 + step)  # not the training RNG
        noise = torch.rand(imgs.shape[0], mcfg.grid[0] * mcfg.grid[1], device=imgs.device, generator=g)
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_dtype is not None):
            loss, pred, mask = model(imgs, cfg.mask_ratio, noise)
        model.train()
        if info.is_main:
            save_png(run / "vis" / f"step_{step:08d}.png",
                     reconstruction_grid(imgs, *bare.reconstruct(imgs, pred, mask)))

    # ---- loop ------------------------------------------------------------------------------------------------------
    model.train()
    result = None
    images = None
    stop_vote = D.StopVote(info, device)  # agreed across ranks one step late, without a sync
    window = StepWindow.resumed(logger, meta)  # reads each step's loss two steps late: the GPU never waits
    try:
        while step < cfg.steps:
            cur_lr = lr * lr_factor(step, cfg.steps, warmup, cfg.warmup_start)
            set_lr(optimizer, cur_lr)
            micro = [next_images() for _ in range(cfg.grad_accum)]
            images = micro[-1]
            with attention():
                result = train_step(model, optimizer, micro, compute_loss, cfg.clip_grad, autocast_dtype,
                                    device.type)
            step += 1
            window.add(step, result)
            logger.advance()
            signalled, out_of_time = stop_vote(stop.requested, stop.out_of_time)
            end = step if out_of_time else cfg.steps  # past --time-limit this step is the run's last
            if due(step, cfg.steps, cfg.log_interval):  # (a time-limited end's open window goes into the checkpoint)
                logger.log("train", step, lr=cur_lr, grad_norm=result.grad_norm,
                           skipped_samples=total_skipped_samples(), **window.record(global_batch, device))
            if cfg.vis_interval and step % cfg.vis_interval == 0 and step < end:
                visualize(images)
            stop_now = signalled and step < end  # on the last step: finish, export included
            if reason := checkpoint_reason(step, end, cfg.steps, cfg.ckpt_interval, stop_now):
                save(reason)
            if stop_now:
                logger.write(f"stopped by {stop.signal_name or 'a signal on another rank'} at step {step}; "
                             "resume with --resume")
                return {"step": step, "stopped": True, "out_of_time": False, "skipped_steps": window.skipped_steps,
                        "loss": result.loss if result else None}
            if step == end:
                break
    finally:
        batches.close()

    # every step's loss was read by the final save
    if images is not None:
        visualize(images)
    outputs = export_backbone(model, mcfg, run, info, cfg.export_official, {"step": step, "pretrain": "mae"})
    if step < cfg.steps:
        logger.write(stop.time_limit_note(step, cfg.steps))
    return {"step": step, "stopped": False, "out_of_time": step < cfg.steps, "skipped_steps": window.skipped_steps,
            "skipped_samples": total_skipped_samples(), "loss": result.loss if result else None, "outputs": outputs}


def export_backbone(model: torch.nn.Module, mcfg: MAEConfig, run: Path, info: D.DistInfo, official: bool,
                    metadata: dict) -> list[str]:
    """Collective: rank 0 writes ``backbone.safetensors``, ``mae.safetensors`` and optionally
    ``backbone_clean.pth`` (official layout) from the unsharded weights."""
    sd, _ = ckpt.full_state(model)
    written: list[str] = []
    if info.is_main:
        plain = MAE.from_state_dict(mcfg, sd)
        meta = {k: json.dumps(v) for k, v in metadata.items()}
        written.append(str(save_model(plain.backbone_model(), run / "backbone.safetensors", metadata=meta)))
        written.append(str(plain.save(run / "mae.safetensors", metadata=meta)))
        if official:
            written.append(str(export_official(plain.backbone_model(), run / "backbone_clean.pth")))
    D.barrier()
    return written
