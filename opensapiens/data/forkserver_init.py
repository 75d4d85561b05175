"""Preloaded by the loader workers' fork server (``loader_context``): makes that process ignore SIGTERM.

A scheduler's SIGTERM to the process group (pre-emption) reaches the fork server too; it ignores Ctrl-C already but
dies of SIGTERM, and PyTorch's workers, seeing their parent gone, quit: the trainer's graceful stop would end in
"DataLoader worker exited unexpectedly". The fork server still ends with its owner (it watches a pipe from it), and
the workers it forks inherit the setting. Imported anywhere else, this module does nothing.
"""

import multiprocessing.forkserver
import signal
import sys


def _in_fork_server() -> bool:
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code is multiprocessing.forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


if _in_fork_server():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
