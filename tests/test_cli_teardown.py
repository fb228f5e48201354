"""Leaving the process group in order: a barrier (no rank leaves while another still works or
writes), the groups' holders collected while the interpreter is alive, the group destroyed on every
path; and repeated 2-process torchrun runs that all exit 0 (one in 15 used to abort with SIGABRT,
"terminate called without an active exception", after writing its results)."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from metafast import distributed

from helpers import TINY

WORKER = str(Path(__file__).with_name("test_cli_worker.py"))
RUNS = 4  # torchrun runs in a row; each takes a few seconds on two CPU cores


def _leave_worker(root: str) -> None:
    torch.set_num_threads(1)
    gc.disable()  # DDP sits in reference cycles: only a collection frees it and the group it holds
    with distributed.session("cpu") as ctx:
        ddp = ctx.wrap(nn.Linear(3, 2))
        ddp(torch.randn(4, 3)).sum().backward()
        del ddp
        if ctx.rank == 0:
            time.sleep(1.5)  # rank 0 writing the results
        work_done = time.monotonic()
    left = time.monotonic()
    alive = sum(isinstance(o, nn.parallel.DistributedDataParallel) for o in gc.get_objects())
    gc.enable()
    Path(root, f"rank{ctx.rank}.json").write_text(json.dumps(
        {"work_done": work_done, "left": left, "initialized": dist.is_initialized(), "ddp_alive": alive}))


def test_ranks_leave_together_and_nothing_holds_the_group(tmp_path):
    distributed.spawn(_leave_worker, 2, str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r1["left"] >= r0["work_done"]  # rank 1 waited for rank 0 (the same clock: one machine)
    assert not r0["initialized"] and not r1["initialized"]
    assert r0["ddp_alive"] == r1["ddp_alive"] == 0


@pytest.mark.slow
def test_repeated_two_process_torchrun_runs_all_exit_0(tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER]
    for i in range(RUNS):
        out = tmp_path / f"run{i}"
        p = subprocess.run([*torchrun, *TINY, "--iterations", "2", "--out", str(out)], capture_output=True, text=True,
                           env=env, timeout=120)
        assert p.returncode == 0 and "terminate called" not in p.stderr, f"run {i}: {p.stderr}"
        assert (out / "results.json").is_file() and (out / "curves.png").is_file()
