"""DataLoader worker processes: started from a fork server, one thread each, and ended with the process they serve.

Workers start from a fork server, not a fork of the training process: forking a process whose OpenMP / OpenCV thread
pools are running can deadlock the child. But a fork server's children are not the trainer's: when the trainer is
killed outright (SIGKILL, the OOM killer), PyTorch's worker watchdog, which checks the worker's parent, sees the fork
server alive and the workers live on (~0.5 GB each, seen), and the fork server lives as long as they do. So each
worker also watches the process that created its loader and exits when that one is gone.

Workers ignore SIGINT and SIGTERM: Ctrl-C (or a scheduler's SIGTERM to the process group) reaches them too, and a
worker that died of it would turn the trainer's graceful stop (finish the step, save, exit) into a "DataLoader worker
exited unexpectedly" crash (so must the fork server: ``forkserver_init``). The loader ends them when it is done, and
the watch above when the trainer is gone.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time

import torch


def loader_context(workers: int) -> multiprocessing.context.BaseContext | None:
    """The DataLoader's ``multiprocessing_context``: a fork server when there are worker processes, one that
    ignores SIGTERM (``forkserver_init``; effective if this process has not started its fork server yet)."""
    if workers == 0:
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", "opensapiens.data.forkserver_init"])  # "__main__": the default
    return context


class WorkerInit:
    """``worker_init_fn``: one thread per worker (the parallelism is the number of workers) and an exit when the
    process that built the loader ends. Picklable (a fork server's workers receive it pickled)."""

    def __init__(self) -> None:
        self.owner = os.getpid()

    def __call__(self, worker_id: int) -> None:
        import cv2

        cv2.setNumThreads(1)
        torch.set_num_threads(1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
