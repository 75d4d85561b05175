"""Learning-rate schedule as a pure function of the step: linear warm-up times a main decay.

Official recipes (mmengine): ``LinearLR(start_factor=1e-3)`` over the first 500 (pose) or 400 (dense) iterations,
multiplied with ``MultiStepLR`` at 170/210 and 200/210 of training (pose) or ``PolyLR(power=1, eta_min=0)`` (seg,
depth, normal). Both are active from step 0, so the factors multiply during warm-up. Official schedules step the
main decay per epoch; ours steps it per iteration (the difference is below one epoch's worth of LR).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("constant", "step", "poly", "cosine")


@dataclass(frozen=True)
class Schedule:
    """LR factor in [min_factor, 1] (times the base LR) for each step in [0, total_steps)."""

    total_steps: int
    warmup_steps: int = 0
    warmup_start: float = 1e-3  # factor at step 0 of the warm-up
    kind: str = "poly"  # constant | step | poly | cosine
    milestones: tuple[float, ...] = (170 / 210, 200 / 210)  # "step": fractions of total_steps
    gamma: float = 0.1  # "step": factor per milestone passed
    power: float = 1.0  # "poly": exponent
    min_factor: float = 0.0  # "poly"/"cosine": floor, as a fraction of the base LR

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown LR schedule {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {self.total_steps}")

    def factor(self, step: int) -> float:
        warm = 1.0
        if step < self.warmup_steps:
            warm = self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
        t = min(step, self.total_steps) / self.total_steps  # progress in [0, 1]
        if self.kind == "constant":
            main = 1.0
        elif self.kind == "step":
            main = self.gamma ** sum(t >= m for m in self.milestones)
        elif self.kind == "poly":
            main = self.min_factor + (1.0 - self.min_factor) * (1.0 - t) ** self.power
        else:
            main = self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
        return warm * main


def due(step: int, total: int, interval: int) -> bool:
    """Whether a periodic event (a log record, an evaluation, a checkpoint) falls on ``step`` of ``total``: every
    ``interval`` steps (0: never) and at the last step."""
    return step == total or (interval > 0 and step % interval == 0)


def checkpoint_reason(step: int, end: int, steps: int, interval: int, stopping: bool) -> str | None:
    """Why the loop saves a checkpoint after ``step`` (None: it does not): a stop signal, the ``interval``, or the
    run's last step ``end``, which is ``steps`` ("final") or the step a time limit cut the run at ("time limit")."""
    if stopping:
        return "signal"
    if step == end:
        return "final" if end == steps else "time limit"
    return "interval" if due(step, end, interval) else None
