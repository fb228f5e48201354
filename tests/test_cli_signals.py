"""SIGTERM (kill, timeout, Slurm, Docker) stops `train` like Ctrl-C: the state after the last completed
iteration is saved, the exit status is 143 (128 + 15), and the run resumes. Real subprocesses."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY, exit_code_file

WORKER = str(Path(__file__).with_name("test_cli_worker.py"))
NAVIGATION = ["train", "navigation", "--meta-batch", "2", "--trajectories", "2", "--hidden", "8", "--max-steps", "5",
              "--checkpoint-every", "1", "--eval-tasks", "0", "--threads", "1", "--quiet"]
ENV = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _wait_for_iterations(proc: subprocess.Popen, ck: Path, n: int, timeout: float = 120) -> None:
    """Until ``ck`` holds at least ``n`` iterations (checkpoints are replaced atomically: always readable)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()
        if ck.exists() and torch.load(ck, weights_only=True)["iteration"] >= n:
            return
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no checkpoint with {n} iterations after {timeout} s: {proc.communicate()}")


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _stopped_and_saved(rc: int, err: str, ck: Path) -> int:
    assert rc == 143, err
    assert "interrupted: saved iteration" in err and "continue with --resume" in err and "Traceback" not in err, err
    saved = torch.load(ck, weights_only=True)
    assert len(saved["history"]["iteration"] if isinstance(saved["history"], dict) else saved["history"]) \
        == saved["iteration"]
    return saved["iteration"]


def _sigterm_once_saved(args: list[str], out: Path, n: int) -> int:
    """Start the worker on ``args`` writing to ``out``, SIGTERM it once its checkpoint holds ``n``
    iterations, check that it stopped and saved: the iteration it saved."""
    proc = _start([sys.executable, WORKER, *args, "--iterations", "100000", "--out", str(out)])
    _wait_for_iterations(proc, out / "checkpoint.pt", n)
    proc.send_signal(signal.SIGTERM)
    return _stopped_and_saved(*_finish(proc)[::2], out / "checkpoint.pt")


def test_sigterm_saves_an_omniglot_run_that_resumes(tmp_path):
    out = tmp_path / "run"
    done = _sigterm_once_saved(TINY, out, 3)
    assert 3 <= done < 100000 and not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    rc, text, err = _finish(_start([sys.executable, WORKER, *TINY, "--iterations", str(done + 2), "--out", str(out),
                                    "--resume"]))
    assert rc == 0 and f"from iteration {done} of {done + 2}" in text, err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == done + 2


def test_sigterm_saves_a_navigation_run_that_resumes(tmp_path):
    out = tmp_path / "nav"
    done = _sigterm_once_saved(NAVIGATION, out, 2)
    rc, _, err = _finish(_start([sys.executable, WORKER, *NAVIGATION, "--iterations", str(done + 1),
                                 "--out", str(out), "--resume"]))
    assert rc == 0, err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == done + 1


def _workers(agent: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes."""
    ranks = {}
    for pid in Path(f"/proc/{agent}/task/{agent}/children").read_text().split():
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        if "RANK" in env:
            ranks[int(env["RANK"])] = int(pid)
    return ranks


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find torchrun's workers")
@pytest.mark.parametrize("target", ["torchrun", "rank 1"])
def test_sigterm_under_torchrun_stops_every_rank_after_the_same_iteration(tmp_path, monkeypatch, target):
    """SIGTERM to torchrun (which passes it to every worker, as Slurm or Docker stop it) or to one
    worker only: every rank stops after the same iteration, rank 0 saves it, and the run resumes
    on 2 processes."""
    out, codes = tmp_path / "run", tmp_path / "codes"
    codes.mkdir()
    monkeypatch.setitem(ENV, "METAFAST_TEST_EXIT_DIR", str(codes))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER]
    proc = _start([*torchrun, *TINY, "--iterations", "100000", "--out", str(out)])
    _wait_for_iterations(proc, out / "checkpoint.pt", 2)
    os.kill(proc.pid if target == "torchrun" else _workers(proc.pid)[1], signal.SIGTERM)
    rc, _, err = _finish(proc)
    assert rc != 0 and "interrupted: saved iteration" in err, err
    if target == "torchrun":  # torchrun waits for its workers after passing the signal on
        assert [exit_code_file(str(codes), r).read_text() for r in "01"] == ["143", "143"], err
    else:  # rank 1 leaves with 143 as soon as rank 0 has saved; then torchrun stops rank 0 itself
        assert exit_code_file(str(codes), "1").read_text() == "143", err
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    done = saved["iteration"]
    assert saved["world_size"] == 2 and saved["history"]["iteration"] == list(range(1, done + 1))
    rc, text, err = _finish(_start([*torchrun, *TINY, "--iterations", str(done + 1), "--out", str(out), "--resume"]))
    assert rc == 0 and f"from iteration {done} of {done + 1}" in text, err
