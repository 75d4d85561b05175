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


STOPPING = textwrap.dedent("""
    import time

    import torch
    from opensapiens.data.workers import WorkerInit, loader_context
    from opensapiens.training.signals import StopRequest
    from pids import Pids

    if __name__ == "__main__":
        stop = StopRequest()
        loader = torch.utils.data.DataLoader(Pids(), batch_size=None, num_workers=2, worker_init_fn=WorkerInit(),
                                             multiprocessing_context=loader_context(2))
        got = 0
        for pid in loader:
            got += 1
            if got == 4:
                print("ready", flush=True)
                while not stop.requested:  # the group's Ctrl-C and SIGTERM reach the workers too
                    time.sleep(0.01)
                time.sleep(0.5)  # ... and a worker that died of them would be found dead by the next fetch
        print(got, stop.signal_name, flush=True)
""")


@pytest.mark.skipif(sys.platform != "linux", reason="forkserver loader workers: Linux")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # a terminal's Ctrl-C, a scheduler's pre-emption
def test_a_stop_signal_to_the_process_group_leaves_the_workers_serving_the_graceful_stop(tmp_path, signum):
    (tmp_path / "pids.py").write_text(DATASET.replace("1000", "40"))
    (tmp_path / "main.py").write_text(STOPPING)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "main.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.killpg(proc.pid, signum)  # the main process, the fork server and every worker
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert out.split() == ["40", signal.Signals(signum).name], (out, err)


def test_the_fork_server_module_leaves_any_other_process_s_sigterm_alone():
    import importlib

    import opensapiens.data.forkserver_init as init

    before = signal.getsignal(signal.SIGTERM)
    importlib.reload(init)
    assert signal.getsignal(signal.SIGTERM) is before and before is not signal.SIG_IGN
