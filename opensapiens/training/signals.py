"""Graceful stop: SIGTERM (cluster pre-emption, ``kill``) or Ctrl-C sets a flag; the loop saves a checkpoint at the
end of the current step (under torchrun: of the next one, which every rank agrees on) and exits. A second Ctrl-C
interrupts immediately."""

from __future__ import annotations

import signal
import threading


class StopRequest:
    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.requested = False
        self.signal_name = ""
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

    def close(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
