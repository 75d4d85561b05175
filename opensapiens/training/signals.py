"""Graceful stop: SIGTERM (cluster pre-emption, ``kill``) or Ctrl-C sets a flag; the loop saves a checkpoint at the
end of the current step (under torchrun: of the next one, which every rank agrees on) and exits. A second Ctrl-C
interrupts immediately. A time limit (``--time-limit``) instead ends the run: the step that finishes past it is the
last, with its final weights written, and ``--resume`` continues the schedule from there."""

from __future__ import annotations

import signal
import threading
import time


class StopRequest:
    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT), time_limit: float | None = None):
        self.requested = False
        self.signal_name = ""
        if time_limit is not None and not time_limit >= 0:
            raise ValueError(f"time_limit (--time-limit) must be a number of seconds >= 0, got {time_limit}")
        self.time_limit = time_limit  # seconds from now
        self._deadline = None if time_limit is None else time.monotonic() + time_limit
        self._previous: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be installed from the main thread
        for s in signals:
            self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    @property
    def out_of_time(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def time_limit_note(self, step: int, steps: int) -> str:
        return (f"time limit ({self.time_limit:g} s) reached at step {step} of {steps}: its weights are written; "
                "--resume continues the schedule")

    def close(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
