"""Loader workers end with the process that built their loader, even one killed outright (SIGKILL)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from opensapiens.data.workers import _alive

SCRIPT = textwrap.dedent("""
    import time

    import torch
    from opensapiens.data.workers import WorkerInit, loader_context
    from pids import Pids

    if __name__ == "__main__":  # the fork server imports this file too
        loader = torch.utils.data.DataLoader(Pids(), batch_size=None, num_workers=2, worker_init_fn=WorkerInit(),
                                             multiprocessing_context=loader_context(2))
        pids = set()
        for pid in loader:  # both workers' pids, then wait with the workers alive (their prefetch is pending)
            pids.add(int(pid))
            if len(pids) == 2:
                print(*pids, flush=True)
                time.sleep(600)
""")

DATASET = textwrap.dedent("""
    import os
    import torch

    class Pids(torch.utils.data.Dataset):
        def __len__(self):
            return 1000

        def __getitem__(self, i):
            return os.getpid()
""")


@pytest.mark.skipif(sys.platform != "linux", reason="forkserver loader workers: Linux")
def test_workers_exit_when_their_process_is_killed(tmp_path):
    (tmp_path / "pids.py").write_text(DATASET)
    (tmp_path / "main.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "main.py")], stdout=subprocess.PIPE, text=True, env=env)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for p in left:  # do not leave them behind whatever the outcome
        os.kill(p, signal.SIGKILL)
    assert not left, f"loader workers {left} outlived the killed process"
