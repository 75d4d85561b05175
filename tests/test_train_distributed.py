"""Two gloo processes under torchrun (DDP, then FSDP2) make the same updates as one process with the same global
batch: same losses, same gradient norms, same weights after three AdamW steps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_data_toy import write_toy_dataset

from conftest import subprocess_env

SIZE = (128, 96)


def _env() -> dict[str, str]:
    """One thread per worker; the package under test importable in torchrun's workers, installed or not (the GPU
    image runs the tests from a checkout, and the workers start in a temporary folder)."""
    import opensapiens

    return subprocess_env(Path(opensapiens.__file__).resolve().parents[1], OMP_NUM_THREADS="1")


def _run(cmd: list[str], cwd) -> None:
    """Run in a new session so a hang can be ended with every worker torchrun started."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, err[-3000:]


TORCHRUN_2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _pose_train_args(data, steps: int) -> list[str]:
    """``opensapiens train`` on the toy pose set: nano, 128x96, fp32, gloo on CPU (also on a machine with one GPU)."""
    return ["-m", "opensapiens.cli.main", "train", "--task", "pose", "--data", str(data), "--arch", "nano",
            "--head-channels", "32", "--input-size", "128x96", "--steps", str(steps), "--workers", "0", "--precision",
            "fp32", "--log-interval", "1", "--no-tensorboard", "--keypoints", str(data / "keypoints.json"),
            "--lr", "1e-3", "--ohkm-topk", "0", "--device", "cpu"]


def _trace(run) -> list[tuple[float, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(e["loss"], e["grad_norm"]) for e in map(json.loads, lines) if e["event"] == "train"]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, mode):
    data = write_toy_dataset(tmp_path / "toy", 12, SIZE, seed=0)
    common = _pose_train_args(data, steps=3)
    _run([sys.executable, *common, "--out", str(tmp_path / "one"), "--batch-size", "4"], tmp_path)
    two = [*TORCHRUN_2, *common, "--out", str(tmp_path / "two"), "--batch-size", "2"]
    _run(two + (["--fsdp"] if mode == "fsdp" else []), tmp_path)
    one, two_ = _trace(tmp_path / "one"), _trace(tmp_path / "two")
    assert len(one) == len(two_) == 3
    for (l1, g1), (l2, g2) in zip(one, two_):
        assert l2 == pytest.approx(l1, rel=1e-5) and g2 == pytest.approx(g1, rel=1e-5)
    a, b = load_file(tmp_path / "one" / "final.safetensors"), load_file(tmp_path / "two" / "final.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-2 * 1e-3, worst  # under 1% of one step's AdamW update (lr 1e-3)


def test_a_time_limit_ends_both_ranks_at_one_step_with_the_final_weights(tmp_path):
    """--time-limit 0 under torchrun: each rank is out of time after its first step; the ranks read their summed
    votes one step late, so both end at step 2 together: one checkpoint ("time limit"), the collective export of
    final.safetensors, a clean exit (a rank leaving the loop alone would hang the other in a collective)."""
    data = write_toy_dataset(tmp_path / "toy", 12, SIZE, seed=0)
    run = tmp_path / "run"
    _run([*TORCHRUN_2, *_pose_train_args(data, 5), "--batch-size", "2", "--time-limit", "0", "--out", str(run)],
         tmp_path)
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(e["step"], e["reason"]) for e in events if e["event"] == "checkpoint"] == [(2, "time limit")]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002.pt"]
    assert load_file(run / "final.safetensors")


def test_sigterm_to_one_rank_stops_both_at_one_step_and_resume_matches(tmp_path):
    """SIGTERM reaches one worker only (as when a scheduler signals one process): both ranks agree on the step, save
    one checkpoint and exit cleanly; the resumed run ends with the weights of an uninterrupted one."""
    import time

    data = write_toy_dataset(tmp_path / "toy", 12, SIZE, seed=0)
    steps = 200
    cmd = [*TORCHRUN_2, *_pose_train_args(data, steps), "--batch-size", "2", "--ckpt-interval", "1000"]
    _run(cmd + ["--out", str(tmp_path / "straight")], tmp_path)

    part = tmp_path / "part"
    agent = subprocess.Popen(cmd + ["--out", str(part)], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        log = part / "metrics.jsonl"
        while not log.exists() or log.read_text().count('"event": "train"') < 3:  # a few steps in
            assert time.monotonic() < deadline and agent.poll() is None, "the run ended before the signal"
            time.sleep(0.05)
        workers = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
        assert len(workers) == 2
        os.kill(int(workers[1]), signal.SIGTERM)
        _, err = agent.communicate(timeout=120)
    except BaseException:
        os.killpg(agent.pid, signal.SIGKILL)
        raise
    assert agent.returncode == 0, err[-3000:]
    saved = sorted(p.name for p in (part / "checkpoints").iterdir())
    assert len(saved) == 1 and saved[0] != f"step_{steps:08d}.pt", saved  # one stop step, before the end
    _run(cmd + ["--out", str(part), "--resume"], tmp_path)
    assert _trace(part) == _trace(tmp_path / "straight")  # every step's loss and gradient norm
    a, b = load_file(tmp_path / "straight" / "final.safetensors"), load_file(part / "final.safetensors")
    assert all(a[k].equal(b[k]) for k in a)


def test_pretraining_on_two_ranks_resumes_exactly(tmp_path):
    """MAE pretraining under torchrun (2 gloo ranks x 2 loader workers): a run that lost everything after its step-4
    checkpoint resumes to the uninterrupted run's losses and weights (data stream, masking RNG and optimizer)."""
    import numpy as np
    from test_mae_pretrain import SMALL, jpeg, losses, smooth_image

    from opensapiens.data.shard_writer import ShardWriter

    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path / "shards", max_count=5) as w:
        for i in range(20):
            w.write(f"img{i:03d}", jpeg(smooth_image(rng)), ".jpg")
    cmd = [*TORCHRUN_2, "-m", "opensapiens.cli.main", "pretrain", "--data", str(tmp_path / "shards"), "--steps", "8",
           "--batch-size", "2", "--workers", "2", "--shuffle-buffer", "4", "--ckpt-interval", "4", "--keep-last", "0",
           "--device", "cpu", "--deterministic", *SMALL]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    _run(cmd + ["--out", str(straight)], tmp_path)
    shutil.copytree(straight, crashed)
    for p in [crashed / "checkpoints" / "step_00000008.pt", crashed / "mae.safetensors"]:
        p.unlink()
    _run(cmd + ["--out", str(crashed), "--resume"], tmp_path)
    assert len(losses(straight)) == 8 and losses(crashed) == losses(straight)
    a, b = load_file(straight / "mae.safetensors"), load_file(crashed / "mae.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_a_rank_without_a_gpu_gets_a_clear_error(monkeypatch):
    from opensapiens.training import distributed as D

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(D.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(D.torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="LOCAL_RANK 1 has no GPU: this machine has 1"):
        D.setup()


OVERWRITE_SKEW = """
import datetime, os, sys, time
from pathlib import Path
import torch.distributed as dist
from opensapiens.training.distributed import DistInfo
from opensapiens.training.state import checkpoint_to_resume

dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=20))
rank = dist.get_rank()
run = Path(sys.argv[1])
if rank == 1:
    time.sleep(2)  # starts late, as ranks do: rank 0 has long listed the old checkpoints
found = checkpoint_to_resume(run, resume=False, overwrite=True, info=DistInfo(rank, 2))
dist.barrier()  # the ranks still take their collectives in step
print(rank, found, sorted(p.name for p in (run / "checkpoints").iterdir()))
dist.destroy_process_group()
"""


def test_overwrite_with_ranks_that_start_apart_deletes_the_old_run_and_hangs_no_rank(tmp_path):
    """Each rank listed the old checkpoints on its own and rank 0 deleted them: a rank that listed after the deletion
    found none, skipped the barrier rank 0 waited in, and every later collective was out of step (a hang)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_00000002.pt").write_bytes(b"old")
    (run / "metrics.jsonl").write_text("{}\n")
    script = tmp_path / "skew.py"
    script.write_text(OVERWRITE_SKEW)
    _run([*TORCHRUN_2, str(script), str(run)], tmp_path)
    assert not (run / "metrics.jsonl").exists() and not list((run / "checkpoints").iterdir())
