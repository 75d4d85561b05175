"""DataLoader worker processes: started from a fork server, one thread each, and ended with the process they serve.

Workers start from a fork server, not a fork of the training process: forking a process whose OpenMP / OpenCV thread
pools are running can deadlock the child. But a fork server's children are not the trainer's: when the trainer is
killed outright (SIGKILL, the OOM killer), PyTorch's worker watchdog, which checks the worker's parent, sees the fork
server alive and the workers live on (~0.5 GB each, seen), and the fork server lives as long as they do. So each
worker also watches the process that created its loader and exits when that one is gone.
"""

from __future__ import annotations

import os
import select
import threading
import time

import torch


def loader_context(workers: int) -> str | None:
    """The DataLoader's ``multiprocessing_context``: a fork server when there are worker processes."""
    return "forkserver" if workers > 0 else None


class WorkerInit:
    """``worker_init_fn``: one thread per worker (the parallelism is the number of workers) and an exit when the
    process that built the loader ends. Picklable (a fork server's workers receive it pickled)."""

    def __init__(self) -> None:
        self.owner = os.getpid()

    def __call__(self, worker_id: int) -> None:
        import cv2

        cv2.setNumThreads(1)
        torch.set_num_threads(1)
        threading.Thread(target=exit_with, args=(self.owner,), name="exit-with-owner", daemon=True).start()


def exit_with(owner: int, poll_s: float = 1.0) -> None:
    """Block until process ``owner`` has ended, then end this process at once (no cleanup: it is a loader worker
    whose consumer is gone). Waits on a pidfd where Linux has them, else polls."""
    try:
        fd = os.pidfd_open(owner)
    except (AttributeError, OSError):  # not Linux >= 5.3, or the owner is gone already
        while _alive(owner):
            time.sleep(poll_s)
    else:
        select.select([fd], [], [])  # readable once the process has exited
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (a recycled pid): treat as gone
        return False
    return True
