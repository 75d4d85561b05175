"""Run logging on rank 0: ``RUN/metrics.jsonl`` (one JSON object per event), TensorBoard if installed, a progress bar.

Each line has ``event`` ("train", "eval", "skip", "checkpoint", ...), ``step`` and the values by name, e.g.
    {"event": "train", "step": 100, "loss": 0.0123, "lr": 4.9e-4, "grad_norm": 0.8, "images_per_s": 31.2}
    {"event": "eval", "step": 1000, "mIoU": 0.61, "mAcc": 0.72, "aAcc": 0.93}
On resume, lines after the resumed step (written by the interrupted run after its last checkpoint) are dropped, so
the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any


def _scalar(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf: null, as in eval's JSON (a "skip" record says the step was not finite)
    return v


class StepWindow:
    """Loss, skipped steps and throughput over the steps since the last "train" record (shared by every loop).

    Steps come in unread (a ``StepResult`` waits for its step when read). A step is read once ``lag`` later ones are
    queued, which waits for it while the GPU still has those to run, or at ``settle``: at a log, a checkpoint, a stop
    or the end. So the host never idles the GPU between logs, and runs at most ``lag`` steps ahead of it. Reading
    writes a "skip" record for each skipped step and keeps the run's count of them, ``skipped_steps``.

    Checkpoints save the open window (``partial``) and a resumed run starts from it (``resumed``): the first record
    after a resume averages the same steps as in an uninterrupted run.
    """

    def __init__(self, logger: RunLogger, skipped_steps: int = 0, lag: int = 2) -> None:
        self.logger, self.skipped_steps, self.lag = logger, skipped_steps, lag
        self.pending: list[tuple[int, Any]] = []  # (step, StepResult) not read yet, oldest first
        self.reset()

    @classmethod
    def resumed(cls, logger: RunLogger, meta: dict[str, Any] | None) -> StepWindow:
        """The window a checkpoint's metadata (None: a fresh start) left open; the run's skipped-step count with it."""
        meta = meta or {}
        window = cls(logger, meta.get("skipped_steps", 0))
        if "window" in meta:  # checkpoints written before the window was saved start a new one
            w = meta["window"]
            window.loss, window.n, window.skipped, window.steps = w["loss"], w["n"], w["skipped"], w["steps"]
            window.t0 -= w["seconds"]
        return window

    def partial(self) -> dict[str, Any]:
        """The open window's sums, every pending step read, for a checkpoint."""
        self.settle()
        return {"loss": self.loss, "n": self.n, "skipped": self.skipped, "steps": self.steps,
                "seconds": time.perf_counter() - self.t0}

    def reset(self) -> None:
        self.loss, self.n, self.skipped, self.steps, self.t0 = 0.0, 0, 0, 0, time.perf_counter()

    def add(self, step: int, result) -> None:
        """Count optimizer step ``step``; read the steps queued more than ``lag`` steps before it."""
        self.pending.append((step, result))
        self.steps += 1
        self._read(len(self.pending) - self.lag)

    def settle(self) -> None:
        """Read every pending step: waits for the last one queued."""
        self._read(len(self.pending))

    def _read(self, count: int) -> None:
        for step, result in self.pending[:max(count, 0)]:
            if result.skipped:
                self.skipped += 1
                self.skipped_steps += 1
                self.logger.log("skip", step, loss=result.loss, grad_norm=result.grad_norm,
                                skipped_steps=self.skipped_steps)
            else:
                self.loss += result.loss
                self.n += 1
        del self.pending[:max(count, 0)]

    def record(self, global_batch: int, device) -> dict[str, Any]:
        """The window's fields of a "train" record (mean loss, images/s, skipped, peak memory); starts a new one."""
        import torch

        self.settle()
        elapsed = time.perf_counter() - self.t0
        rec: dict[str, Any] = {"loss": self.loss / self.n if self.n else None,
                               "images_per_s": self.steps * global_batch / max(elapsed, 1e-9),
                               "skipped": self.skipped}
        if device.type == "cuda":
            rec["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        self.reset()
        return rec


class RunLogger:
    def __init__(self, run_dir: str | Path, enabled: bool = True, total_steps: int = 0, start_step: int = 0,
                 tensorboard: bool = True, progress: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = self._bar = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step or None)
            except ImportError:  # tensorboard is optional
                self._tb = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:
                continue  # a line cut by a crash
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def log(self, event: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"event": event, "step": step, "time": round(time.time(), 3)}
        record.update({k: _scalar(v) for k, v in values.items() if not isinstance(v, (dict, list))})
        with open(self.path, "a") as f:  # one line per event; nothing buffered is lost on a crash
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("event", "step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{event}/{k}", v, step)
        if self._bar is not None and event == "train":
            self._bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "lr") if isinstance(record.get(k), float)})

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def write(self, message: str) -> None:
        """A human-readable line (through the progress bar when there is one)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        """Flush tensorboard and end the progress bar (idempotent; the loops close it through their ExitStack)."""
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()
        self._tb = self._bar = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
