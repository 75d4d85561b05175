"""Fine-tune a Sapiens model on pose, seg, depth or normals: the training loop, top to bottom.

    opensapiens train --task seg --data DIR --arch 0.3b --init sapiens-pretrain-0.3b --steps 20000 --out runs/seg
    torchrun --nproc_per_node 8 -m opensapiens.cli.main train ... [--fsdp]        # DDP, or FSDP2 for 1b / 2b
    opensapiens train --out runs/seg --resume                                     # continue after a crash / SIGTERM

A run folder holds ``config.json``, ``checkpoints/step_*.pt`` (the last ``keep_last``, resumable),
``metrics.jsonl``, ``best.safetensors`` / ``final.safetensors`` (portable weights for ``load_predictor``) and
``tensorboard/``. Steps are optimizer steps of ``batch_size x grad_accum x world_size`` images; a step with a
non-finite loss or gradient is skipped (parameters untouched), counted and logged, and still consumes its data.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..checkpoints import save_model, with_weights
from ..checkpoints.loading import config_metadata
from ..data import (
    DataError,
    EvalSampler,
    PoseLayout,
    TrainSampler,
    build_dataset,
    load_classes,
    load_keypoint_layout,
    to_device,
)
from ..data.synth_stream import SynthStream
from ..data.workers import WorkerInit, loader_context
from ..inference.optimize import channels_last_head, channels_last_pays, fast_attention, pad_attention_heads
from ..io.writers import save_json
from ..metadata import SegClasses
from ..models import build_model, get_arch
from ..models.heads2 import Head2Spec
from ..models.sapiens import SapiensModel
from ..tasks import build_criterion, build_evaluator
from . import distributed as D
from .config import TrainConfig, resolve
from .evaluate import evaluate
from .init import load_initial_weights
from .logger import RunLogger, StepWindow
from .optim import build_optimizer, set_lr
from .reproducibility import deterministic_kernels, float32_math, seed_everything
from .schedule import Schedule, checkpoint_reason, due
from .signals import StopRequest
from .speed import checkpoint_blocks, checkpoint_head, compile_blocks, use_fast_attention
from .state import (
    check_resumed_steps,
    checkpoint_path,
    checkpoint_to_resume,
    load_checkpoint,
    prune_checkpoints,
    resumed_batch_note,
    save_checkpoint,
)
from .step import train_step


def _out_channels(cfg: TrainConfig, labels: PoseLayout | SegClasses | None) -> tuple[int, dict]:
    """Output channels of the head and what the saved model should remember about its labels (``_labels``)."""
    if isinstance(labels, PoseLayout):
        kps = labels.keypoints  # a file's set whole: predict draws and flips with it
        return kps.num_keypoints, {"keypoint_set": kps.name, "keypoint_names": list(kps.names),
                                   "flip_indices": list(kps.flip_indices), "sigmas": list(kps.sigmas),
                                   "skeleton": [list(pair) for pair in kps.skeleton]}
    if isinstance(labels, SegClasses):
        return labels.num_classes, {"class_names": list(labels.names)}
    return {"depth": 1, "normal": 3, "pointmap": 3}[cfg.task], {}


def export_weights(model: torch.nn.Module, config, path: Path, info: D.DistInfo, metadata: dict) -> None:
    """Collective: write the (unsharded) weights as a portable safetensors model from rank 0."""
    from .state import full_state

    sd, _ = full_state(model)
    if info.is_main:
        plain = with_weights(lambda: SapiensModel(config), sd)
        save_model(plain, path, metadata={k: json.dumps(v) for k, v in metadata.items()})
    D.barrier()


def _dataset(option: str, task: str, path: str, **kw):
    """``build_dataset``, its errors naming the option that gave the path."""
    try:
        return build_dataset(task, path, **kw)
    except DataError as e:
        raise DataError(f"{option}: {e}") from None


def _labels(cfg: TrainConfig) -> PoseLayout | SegClasses | None:
    """The keypoint set (pose) or class list (seg), read once; a file that cannot be read is named by its option
    (the datasets, which read it too, would name it by --data)."""
    try:
        if cfg.task == "pose":
            return load_keypoint_layout(cfg.keypoints)
        if cfg.task == "seg":
            return load_classes(cfg.classes)
        return None
    except DataError as e:
        raise DataError(f"{'--keypoints' if cfg.task == 'pose' else '--classes'}: {e}") from None


def make_loader(dataset, sampler, batch_size: int, workers: int, pin: bool, drop_last: bool) -> DataLoader:
    """Background loading processes (``data.workers``: from a fork server, ended with this process); a private
    generator so creating the loader never draws from the global RNG."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin,
                      drop_last=drop_last, persistent_workers=False, generator=torch.Generator(),
                      prefetch_factor=4 if workers > 0 else None, worker_init_fn=WorkerInit(),
                      multiprocessing_context=loader_context(workers))


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) a fine-tune; returns a summary (final step, last loss, skipped steps, last/best metrics)."""
    cfg = resolve(cfg)
    info = D.setup(cfg.device)
    stop = StopRequest(time_limit=cfg.time_limit)
    with contextlib.ExitStack() as exits:  # unwound last-in first-out on any exit, an exception's included
        exits.callback(D.cleanup)
        exits.callback(stop.close)
        exits.enter_context(deterministic_kernels(cfg.deterministic))
        exits.enter_context(float32_math(cfg.precision))
        return _train(cfg, info, stop, exits)


def _train(cfg: TrainConfig, info: D.DistInfo, stop: StopRequest, exits: contextlib.ExitStack) -> dict:
    """The fine-tune itself; ``exits`` closes what it opens (the logger: its progress bar ends before a traceback)."""
    run = Path(cfg.out)
    ckpt_dir = run / "checkpoints"
    device = info.device

    # ---- data (checked before the run folder is written, or an old one deleted by --overwrite) ---------------------
    arch = get_arch(cfg.arch)
    data_kw = dict(input_size=cfg.input_size, keypoints=cfg.keypoints, classes=cfg.classes, image_root=cfg.image_root,
                   generation=arch.generation)  # Sapiens's or Sapiens2's augmentation and resize
    labels = _labels(cfg)
    on_the_fly = cfg.data == "synth"  # rendered by opensapiens.synth on this rank's device
    if on_the_fly and cfg.task == "pose" and labels.keypoints.name != "goliath":
        raise ValueError("--data synth renders the 308 Goliath keypoints; use --keypoints goliath")
    if on_the_fly and cfg.task == "seg" and labels.names != load_classes("goliath").names:
        raise ValueError(f"--data synth labels the 28 Goliath classes, not the {labels.num_classes} of --classes "
                         f"{cfg.classes}; use --classes goliath")
    train_set = None if on_the_fly else _dataset("--data", cfg.task, cfg.data, train=True, augment=cfg.augment,
                                                 backgrounds=cfg.backgrounds, **data_kw)
    val_set = _dataset("--val-data", cfg.task, cfg.val_data, train=False, **data_kw) if cfg.val_data else None
    if val_set is not None and cfg.task == "pose":  # what OKS needs, checked now: not after the training steps
        from ..evaluation.pose import check_keypoint_gt

        check_keypoint_gt(val_set.coco, val_set.layout.keypoints.num_keypoints, f"--val-data {cfg.val_data}")
    H, W = cfg.input_size
    stride = arch.stride  # 16; 64 for the 4K model's window tokens
    if H % stride or W % stride:
        raise ValueError(f"input size {cfg.input_size} must be a multiple of {stride} on both sides")
    resume_from = checkpoint_to_resume(run, cfg.resume, cfg.overwrite, info)
    check_resumed_steps(resume_from, cfg.steps)
    if info.is_main:
        run.mkdir(parents=True, exist_ok=True)
        save_json(run / "config.json", cfg.to_dict(), indent=2)

    # ---- model -----------------------------------------------------------------------------------------------------
    seed_everything(cfg.seed)  # identical initial weights on every rank
    out_channels, label_info = _out_channels(cfg, labels)
    head_spec = Head2Spec.from_dict(cfg.head_spec) if cfg.head_spec else None
    if cfg.task == "pointmap" and head_spec is not None:  # its scale branch flattens the input size's grid (the
        head_spec = head_spec.for_input((H, W), stride)  # official widths are sized so by build_model)
    model = build_model(cfg.task, cfg.arch, out_channels=out_channels, head_channels=cfg.head_channels,
                        head_spec=head_spec, pos_grid=(H // stride, W // stride), input_size=[H, W], **label_info)
    model_config = model.config
    init_report = None
    if cfg.init and resume_from is None:
        init_report = load_initial_weights(model, cfg.init)
    model.to(device)
    on_cuda = device.type == "cuda"
    attention_kernel = use_fast_attention(model, device, cfg.attention)  # FA4 where installed (Hopper, Blackwell)
    if on_cuda:
        pad_attention_heads(model)  # 2B head dim 60 -> 64 so fused attention kernels apply (exact)
        if not cfg.deterministic:  # fixed input size: autotune the heads' transposed convolutions
            torch.backends.cudnn.benchmark = True
        if channels_last_pays(model.head):  # v1 NHWC head maps: 0.3B seg step 1.13x faster, 4 GiB less (H200)
            channels_last_head(model.head)
    bf16 = cfg.precision == "bf16"
    if cfg.checkpointing in ("blocks", "blocks+head"):
        checkpoint_blocks(model.backbone.blocks, cfg.checkpoint_blocks, cfg.save_attention, cfg.save_matmuls)
    if cfg.checkpointing in ("head", "blocks+head"):
        checkpoint_head(model.head, cfg.head_chunk)
    if cfg.compile:
        compile_blocks(model.backbone.blocks, model.head)
    if cfg.fsdp:
        model = D.shard_fsdp(model, model.backbone.blocks, info, bf16)
    else:
        model = D.wrap_ddp(model, info)
    autocast_dtype = torch.bfloat16 if (bf16 and not cfg.fsdp) else None
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.layer_decay, cfg.betas,
                                num_layers=model_config.arch.depth, decay_tokens=model_config.arch.generation == 2)
    schedule = Schedule(cfg.steps, cfg.warmup_steps, kind=cfg.schedule, milestones=cfg.milestones)
    criterion = build_criterion(cfg.task, generation=model_config.arch.generation, sigma=cfg.sigma or 6.0,
                                ohkm_topk=cfg.ohkm_topk,
                                class_weight=labels.class_weight if cfg.task == "seg" else None,
                                seg_loss_resolution=cfg.seg_loss_resolution)

    # ---- resume ----------------------------------------------------------------------------------------------------
    step, position, meta = 0, 0, None
    best = {"value": None, "step": None}
    if resume_from is not None:
        meta = load_checkpoint(resume_from, model, optimizer, info)
        step, position = meta["step"], meta["data_position"]
        best = meta.get("best", best)
    else:
        seed_everything(cfg.seed + 1_000_003 * info.rank)  # per-rank dropout streams
    global_batch = cfg.batch_size * cfg.grad_accum * info.world_size
    logger = exits.enter_context(RunLogger(run, info.is_main, cfg.steps, step, cfg.tensorboard))
    logger.write(f"attention kernels: {attention_kernel}")
    if resume_from is not None:
        logger.write(f"resumed from {resume_from} at step {step}")
        if note := resumed_batch_note(meta, cfg.batch_size, cfg.grad_accum, info.world_size):
            logger.write(f"warning: {note} (to keep it, resume with --batch-size and --grad-accum whose product "
                         f"with {info.world_size} processes is the saved one)")
    elif init_report is not None:
        logger.log("init", 0, source=str(cfg.init), **init_report)
        if init_report["skipped_head"]:  # said, not only recorded: a head trained from scratch is a choice to see
            what = "head partly" if init_report["head"] else "head not"
            logger.write(f"--init {cfg.init}: backbone loaded, {what} ({init_report['skipped_head']}): "
                         f"{'those start' if init_report['head'] else 'it starts'} from random weights")
        if init_report["mapped"]:
            logger.write(f"--init {cfg.init}: loaded {init_report['mapped']}")

    if on_the_fly:
        batches = iter(SynthStream(cfg.task, cfg.input_size, cfg.batch_size, cfg.seed, device, cfg.backgrounds,
                                   info.rank, info.world_size, start=position // (cfg.batch_size * info.world_size),
                                   cubic_enlarging=arch.generation == 2))
    else:
        sampler = TrainSampler(len(train_set), cfg.seed, info.rank, info.world_size, start=position)
        batches = iter(make_loader(train_set, sampler, cfg.batch_size, cfg.workers, on_cuda, drop_last=True))

    attention = fast_attention if on_cuda else contextlib.nullcontext

    def compute_loss(host: dict) -> torch.Tensor:
        batch = to_device(host, device)
        with attention():
            output = model(batch["image"])
        return criterion(output, batch)

    def run_eval() -> dict | None:
        if val_set is None:
            return None
        evaluator = build_evaluator(cfg.task, input_size=cfg.input_size, **_evaluator_kw(cfg, val_set, labels))
        val_loader = make_loader(val_set, EvalSampler(len(val_set), info.rank, info.world_size), cfg.batch_size,
                                 cfg.workers, on_cuda, drop_last=False)
        with attention():
            metrics = evaluate(model, val_loader, evaluator, device, autocast_dtype, info.is_main)
        logger.log("eval", step, **metrics)
        if cfg.best_metric not in metrics:
            logger.write(f"warning: --best-metric {cfg.best_metric} is not among this evaluation's metrics "
                         f"({', '.join(k for k, v in metrics.items() if isinstance(v, float))}): no best.safetensors")
        value = metrics.get(cfg.best_metric)
        if value is not None and math.isfinite(value) and (
                best["value"] is None or (value > best["value"] if cfg.best_mode == "max" else value < best["value"])):
            best.update(value=value, step=step)
            export_weights(model, model_config, run / "best.safetensors", info,
                           {"step": step, cfg.best_metric: value})
        return metrics

    def save(reason: str) -> None:
        partial = window.partial()  # reads every pending step, counting its skip
        meta = {"step": step, "data_position": position, "skipped_steps": window.skipped_steps, "window": partial,
                "best": best, "config": cfg.to_dict(), "world_size": info.world_size,
                **config_metadata(model_config)}  # so that the file loads and converts as the model it holds
        path = save_checkpoint(checkpoint_path(ckpt_dir, step), model, optimizer, meta, info)
        if info.is_main:
            prune_checkpoints(ckpt_dir, cfg.keep_last)
            logger.log("checkpoint", step, path=str(path), reason=reason)

    # ---- loop ------------------------------------------------------------------------------------------------------
    model.train()
    last_metrics, result = None, None
    stop_vote = D.StopVote(info, device)  # agreed across ranks one step late, without a sync
    window = StepWindow.resumed(logger, meta)  # reads each step's loss two steps late: the GPU never waits
    while step < cfg.steps:
        lr = cfg.lr * schedule.factor(step)
        set_lr(optimizer, lr)
        micro = [next(batches) for _ in range(cfg.grad_accum)]
        result = train_step(model, optimizer, micro, compute_loss, cfg.clip_grad, autocast_dtype, device.type)
        step += 1
        position += global_batch
        window.add(step, result)
        logger.advance()

        signalled, out_of_time = stop_vote(stop.requested, stop.out_of_time)
        end = step if out_of_time else cfg.steps  # past --time-limit this step is the run's last
        if due(step, cfg.steps, cfg.log_interval):  # (a time-limited end leaves its record's window in the checkpoint,
            # so that a resumed run's records average the same steps as an uninterrupted run's)
            logger.log("train", step, lr=lr, grad_norm=result.grad_norm, **window.record(global_batch, device),
                       **_left_out(criterion, logger, step, device))
        if due(step, end, cfg.eval_interval):  # the last step's too, before the final save (it keeps the best)
            last_metrics = run_eval()
        stop_now = signalled and step < end  # on the last step: finish, export included
        if reason := checkpoint_reason(step, end, cfg.steps, cfg.ckpt_interval, stop_now):
            save(reason)
        if stop_now:
            logger.write(f"stopped by {stop.signal_name or 'a signal on another rank'} at step {step}; "
                         f"resume with --resume")
            return {"step": step, "stopped": True, "out_of_time": False, "skipped_steps": window.skipped_steps,
                    "loss": result.loss if result else None}
        if step == end:
            break

    # every step's loss was read, and the last evaluation run, by the final save (a finished run resumed runs neither)
    export_weights(model, model_config, run / "final.safetensors", info, {"step": step})
    if step < cfg.steps:
        logger.write(stop.time_limit_note(step, cfg.steps))
    return {"step": step, "stopped": False, "out_of_time": step < cfg.steps, "skipped_steps": window.skipped_steps,
            "loss": result.loss if result else None, "metrics": last_metrics, "best": best}


def _left_out(criterion, logger: RunLogger, step: int, device: torch.device) -> dict:
    """A pointmap run's samples that the official sample rule left out since the last record (summed over the
    processes; every rank calls this at the same steps); a note when it was all of them (the loss was 0: masks or
    depths that do not fit the rule)."""
    if not hasattr(criterion, "take_counts"):
        return {}
    seen, left_out = D.all_reduce_sum(torch.tensor(criterion.take_counts(), device=device)).tolist()
    if seen and left_out == seen:
        logger.write(f"step {step}: all {seen} samples since the last record were left out of the loss by the "
                     "official pointmap sample rule (a mask of 16 px to 96 % of the image, nearest point at a "
                     "canonical depth of 0.04 or more): check the masks and depths")
    return {"samples_left_out": left_out}


def _evaluator_kw(cfg: TrainConfig, val_set, labels: SegClasses | None) -> dict:
    if cfg.task == "pose":
        return {"keypoint_gt": val_set.coco, "keypoint_set": val_set.layout.keypoints}
    if cfg.task == "seg":
        return {"num_classes": labels.num_classes, "class_names": labels.names}
    return {}
