"""Fine-tuning configuration: one dataclass, with the official Sapiens recipe filled in for whatever is left unset.

Official recipe (reference/sapiens_v1_tasks.md; Sapiens2's in ``resolve``): AdamW betas (0.9, 0.999), weight
decay 0.1, gradient clipping 1.0, layer-wise LR decay;
    pose    LR 5e-4 (COCO, COCO-WholeBody) / 5e-5 (Goliath 308); decay 0.85, except Goliath 1b 0.95 and
            WholeBody 0.3b/0.6b 0.75; warm-up 500 iterations; steps x0.1 at 170/210 and 200/210 of training;
            Goliath 0.3b/1b train with OHKM top-128, everything else with plain heatmap MSE; 4 images per GPU.
    seg / depth / normal
            LR 5e-4, decay 0.85, warm-up 400 iterations, poly decay (power 1) to 0; 2 images per GPU.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..models.heads import TASKS
from ..models.heads2 import Head2Spec, official_head2_spec
from ..models.sapiens2 import ARCHS2, Sapiens2Arch
from ..models.vit import ARCHS, ViTArch, get_arch
from .speed import check_saved_outputs

TRAIN_TASKS = (*TASKS, "pointmap")  # pointmap: Sapiens2 only
BEST_METRICS = {"pose": "AP", "seg": "mIoU", "depth": "rmse", "normal": "mean", "pointmap": "metric_l2_mean"}
PRECISIONS = ("bf16", "tf32", "fp32")
ERROR_METRICS = ("rmse", "absrel", "rmse_norm", "mean", "median", "mae", "abs_rel", "l2_mean")


def lower_is_better(metric: str) -> bool:
    """Whether ``metric`` is an error (its best value the least): depth's rmse / absrel, normals' mean / median
    angle, pointmaps' (metric_) l2_mean / rmse / x_mae ... / normal_mean / focal_abs_rel; the others (AP, mIoU,
    delta1, within_*) go up."""
    return any(metric == e or metric.endswith("_" + e) for e in ERROR_METRICS)


@dataclass
class TrainConfig:
    """Everything a fine-tuning run needs; ``None`` fields take the official value from ``resolve``."""

    task: str
    data: str  # training data folder / annotation file, or "synth" for the on-the-fly generator
    out: str  # run folder: checkpoints, metrics.jsonl, best/final .safetensors
    arch: str | None = None  # 0.3b / 0.6b / 1b / 2b / small / tiny / nano, sapiens2_*; default: --init's, else 0.3b
    val_data: str | None = None
    image_root: str | None = None  # pose: image folder when it is not images/ beside the annotation file
    init: str | None = None  # pretrain / official task / our checkpoint to start from
    resume: bool = False
    overwrite: bool = False  # a fresh start deletes the checkpoints and metrics an earlier run left in ``out``
    steps: int = 1000
    batch_size: int | None = None  # per GPU; official 4 (pose) / 2 (dense)
    grad_accum: int = 1
    input_size: tuple[int, int] = (1024, 768)  # (H, W)
    head_channels: int | None = None  # narrower heads for small models (official 768, depth 384)
    head_spec: dict | None = None  # Sapiens2: the head's widths (Head2Spec.to_dict); default --init's, else official
    # labels: the data's (an --init head of other labels loads all but its classifier)
    keypoints: str = "goliath"  # pose: goliath/308, wholebody/133, coco/17 or a keypoint-set JSON
    classes: str = "goliath"  # seg: goliath/28, sapiens2/29, face/19 or a class-list JSON
    # optimization
    lr: float | None = None
    layer_decay: float | None = None
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = None  # 0 disables clipping (the norm is still logged); v1 1.0, Sapiens2 2 or 4
    warmup_steps: int | None = None
    schedule: str | None = None  # step | poly | cosine | constant
    milestones: tuple[float, ...] = (170 / 210, 200 / 210)  # "step": fractions of the run
    # losses
    ohkm_topk: int | None = None  # pose: None = official choice (128 for Goliath 0.3b/1b, else plain MSE); 0 = MSE
    sigma: float | None = None  # pose heatmap sigma; official 6 at 1024x768 (scaled with the input height)
    seg_loss_resolution: str = "labels"  # "labels" (official) or "logits" (4x cheaper, not exact)
    # augmentation
    augment: bool = True
    backgrounds: str | None = None  # folder of pictures without people for the random-background augmentation
    # speed / memory
    precision: str | None = None  # bf16 (autocast, or bf16 params under FSDP) | tf32 | fp32; bf16, pointmap tf32
    checkpointing: str = "none"  # none | blocks | head | blocks+head
    checkpoint_blocks: int | None = None  # checkpoint only the first N blocks (None: all)
    head_chunk: int | None = None  # with head checkpointing: run the head on slices of N images, keeping only inputs
    save_attention: bool = False  # checkpointed blocks keep their attention output: fused attention runs once
    save_matmuls: bool = False  # checkpointed blocks keep GEMM and attention outputs: only elementwise ops rerun
    compile: bool = False
    fsdp: bool = False
    workers: int = 4
    device: str | None = None  # default: cuda:LOCAL_RANK if available, else cpu
    deterministic: bool = False  # deterministic kernels: a bit-identical resume on GPUs too (slower)
    attention: str = "auto"  # auto | sdpa | triton | fa4 (speed.use_fast_attention)
    # run management
    seed: int = 0
    log_interval: int = 10  # 0: one record, at the end
    eval_interval: int = 0  # 0: evaluate only at the end (when val_data is given)
    ckpt_interval: int = 1000  # 0: checkpoint only at the end (and on a stop signal)
    time_limit: float | None = None  # seconds: the step that ends past it is the last (final weights written)
    keep_last: int = 3
    best_metric: str | None = None  # default per task: AP / mIoU / rmse / mean (angular error)
    best_mode: str | None = None  # max | min
    tensorboard: bool = True
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for k in ("input_size", "betas", "milestones"):
            if k in d and d[k] is not None:
                d[k] = tuple(d[k])
        return cls(**d)


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the unset (None) fields with the official recipe for the task, architecture (default: the ``init``
    checkpoint's, else 0.3b) and keypoint set."""
    if cfg.task not in TRAIN_TASKS:
        raise ValueError(f"unknown task {cfg.task!r}; expected one of {', '.join(TRAIN_TASKS)}")
    d = asdict(cfg)
    if (saved := _resumed_shape(cfg)) is not None:  # the run resumed: its shape, as resolved when it started (its
        d["arch"] = cfg.arch or saved["arch"]  # --init need not be there any more)
        d["head_channels"] = cfg.head_channels if cfg.head_channels is not None else saved.get("head_channels")
        d["head_spec"] = cfg.head_spec or saved.get("head_spec")
    elif cfg.init:  # the architecture, and the head's width(s) where it has this task's head, of the --init file
        init_arch, head_channels, head_spec = init_shape(cfg.init, cfg.task)
        d["arch"] = cfg.arch or init_arch.name
        asked = get_arch(d["arch"])
        if asked.generation != init_arch.generation:
            raise ValueError(f"--init {cfg.init} holds a {'Sapiens2' if init_arch.generation == 2 else 'Sapiens v1'} "
                             f"backbone ({init_arch.name}); --arch {d['arch']} is the other generation")
        same = asked.name == init_arch.name  # the head's widths only fit the size they came with
        d["head_channels"] = cfg.head_channels or (head_channels if same else None)
        d["head_spec"] = cfg.head_spec or (head_spec if same else None)
    d["arch"] = d["arch"] or "0.3b"
    chosen = get_arch(d["arch"])  # an unknown name, refused before a run folder is written
    if chosen.generation == 2 and d["head_channels"] is not None:
        raise ValueError("--head-channels narrows a Sapiens v1 head; a Sapiens2 head's widths come from --init (or "
                         "are the official ones)")
    arch = chosen.name
    kp = str(cfg.keypoints).lower()
    goliath = kp in ("goliath", "308")
    wholebody = kp in ("wholebody", "133", "coco_wholebody", "coco-wholebody")
    sigma = 6.0 * (4 * cfg.input_size[0] / chosen.stride) / 256  # 6 on a 256-row heatmap (4x the token grid)
    if chosen.generation == 2:  # Sapiens2's configs: AdamW 5e-4 (5b: 1e-4), layer decay and clipping by size, 500
        # steps of linear warm-up, then a linear decay to 0; its own losses (tasks.build_criterion)
        size = arch.removeprefix("sapiens2_").removesuffix("_4k")  # (the 4K backbone: the 1b's recipe)
        defaults = dict(lr=1e-4 if size == "5b" else 5e-4, warmup_steps=500, schedule="poly",
                        layer_decay={"0.4b": 0.8, "0.8b": 0.85, "1b": 0.9, "5b": 0.94}.get(size, 0.85),
                        clip_grad=2.0 if size == "0.4b" or (size == "0.8b" and cfg.task == "pointmap") else 4.0,
                        batch_size=4 if cfg.task == "pose" else 2, ohkm_topk=0, sigma=sigma)
        if cfg.task == "depth":
            raise ValueError("Sapiens2 has no depth model (its pointmap gives depth); fine-tune depth from a v1 "
                             "architecture, or pointmaps / normals / seg / pose from a Sapiens2 one")
        if cfg.task == "pointmap":
            spec = Head2Spec.from_dict(d["head_spec"]) if d["head_spec"] else official_head2_spec("pointmap", arch)
            grid = spec.for_input(cfg.input_size, chosen.stride).scale_grid
            if grid[0] * grid[1] < 2:  # its InstanceNorms need two values
                raise ValueError(f"input size {cfg.input_size}: the pointmap scale branch reduces the "
                                 f"{cfg.input_size[0] // chosen.stride}x{cfg.input_size[1] // chosen.stride} token "
                                 f"grid 8x, to a single value; train at more than {8 * chosen.stride} px on a side")
    elif cfg.task == "pointmap":
        raise ValueError(f"pointmaps are a Sapiens2 task; --arch {arch} is a v1 architecture (use e.g. "
                         "--arch sapiens2_0.4b, or --init a Sapiens2 checkpoint)")
    elif cfg.task == "pose":
        lr = 5e-5 if goliath else 5e-4
        decay = 0.95 if (goliath and arch == "1b") else 0.75 if (wholebody and arch in ("0.3b", "0.6b")) else 0.85
        defaults = dict(lr=lr, layer_decay=decay, warmup_steps=500, schedule="step", batch_size=4,
                        ohkm_topk=128 if (goliath and arch in ("0.3b", "1b")) else 0, sigma=sigma)
    else:
        defaults = dict(lr=5e-4, layer_decay=0.85, warmup_steps=400, schedule="poly", batch_size=2)
    defaults.setdefault("clip_grad", 1.0)
    # the official pointmap configs train without autocast, under the TF32 matmuls their train.py sets
    defaults["precision"] = "tf32" if cfg.task == "pointmap" else "bf16"
    metric = cfg.best_metric or BEST_METRICS[cfg.task]  # the direction follows the metric, not the task
    defaults.update(best_metric=metric, best_mode="min" if lower_is_better(metric) else "max")
    for k, v in defaults.items():
        if d.get(k) is None:
            d[k] = v
    if cfg.warmup_steps is None:  # a short run warms up for at most a tenth of its steps
        d["warmup_steps"] = min(d["warmup_steps"], max(cfg.steps // 10, 1))
    out = TrainConfig(**d)
    if out.head_channels is not None and out.head_channels < 1:
        raise ValueError(f"head_channels (--head-channels) must be at least 1, got {out.head_channels}")
    if not 0 <= out.layer_decay <= 1:
        raise ValueError(f"layer_decay (--layer-decay) must be in [0, 1] (1: every layer at the full rate, 0: the "
                         f"backbone frozen), got {out.layer_decay}")
    if out.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {out.precision!r}")
    if out.checkpointing not in ("none", "blocks", "head", "blocks+head"):
        raise ValueError(f"checkpointing must be none, blocks, head or blocks+head, got {out.checkpointing!r}")
    from .speed import check_attention_choice

    check_attention_choice(out.attention)
    if out.data == "synth":
        from ..synth.dataset import SYNTH_VAL

        if out.seed == SYNTH_VAL.seed:  # refused before the run starts, not by the generator once it has
            raise ValueError(f"seed {out.seed} is the synth-val seed; training on it would leak the validation split")
    check_counts(out, positive=("steps", "batch_size", "grad_accum"),
                 non_negative=("warmup_steps", "log_interval", "eval_interval", "ckpt_interval", "keep_last"))
    if out.head_chunk is not None and "head" not in out.checkpointing:
        raise ValueError(f"head_chunk={out.head_chunk} slices the checkpointed head: it needs checkpointing head or "
                         f"blocks+head, got {out.checkpointing!r}")
    check_saved_outputs(out.checkpointing, out.save_attention, out.save_matmuls)
    return out


def _resumed_shape(cfg: TrainConfig) -> dict | None:
    """The config.json of the run that ``cfg`` resumes (its arch and head widths as resolved when it started); None for
    a fresh run."""
    saved = Path(cfg.out) / "config.json"
    if not (cfg.resume and saved.is_file()):
        return None
    try:
        d = json.loads(saved.read_text())
    except (OSError, ValueError):
        return None  # resolved from the options; the resume itself says what is wrong with the run folder
    if not (isinstance(d, dict) and d.get("arch") and d.get("task") == cfg.task):
        return None
    return d


def init_shape(init: str, task: str) -> tuple[ViTArch | Sapiens2Arch, int | None, dict | None]:
    """The architecture of the ``--init`` checkpoint (from the config our files carry, else from its width and depth)
    and the width of its head where it has one for ``task`` (Sapiens2: its widths, ``Head2Spec.to_dict``; else None:
    the recipe's). Reads the file once more, before the model exists."""
    from .init import read_init

    src = read_init(init, task)[0]
    if src.arch.name not in ARCHS and src.arch.name not in ARCHS2:
        raise ValueError(f"--init {init}: its backbone ({src.arch.embed_dim} wide, {src.arch.depth} blocks) is not one "
                         f"of the architectures {', '.join([*ARCHS, *ARCHS2])}")
    same = src.task == task
    return (src.arch, src.head_channels if same else None,
            src.head_spec.to_dict() if same and src.head_spec is not None else None)


def check_counts(cfg, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (), flags: bool = True) -> None:
    """A ValueError naming the first of ``cfg``'s counts below its least value: 1 for ``positive`` (a batch, an
    accumulation), 0 for ``non_negative`` (intervals and kept checkpoints, where 0 means "at the end" or "all").
    ``flags``: the field is also named as its command-line option (``batch_size`` as ``--batch-size``)."""
    for names, least in ((positive, 1), (non_negative, 0)):
        for name in names:
            if getattr(cfg, name) < least:
                option = f" (--{name.replace('_', '-')})" if flags else ""
                raise ValueError(f"{name}{option} must be at least {least}, got {getattr(cfg, name)}")
