"""metafast.distributed: 2 gloo ranks on the CPU compute what one process computes.

Each fixture starts one group of 2 processes (metafast.distributed.spawn, with the
environment torchrun gives its workers) that runs several cases and writes their
results; the tests check them. Two spawns in all: each costs a few seconds of start-up.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
from pathlib import Path

import pytest
import torch

import metafast
from metafast import distributed
from metafast.train import main_train

# --------------------------------------------------------------------------- meta-gradients, one iteration
TASKS = 5  # shares of 2 and 3 tasks: the weighting is exercised too
CASES = {  # name: (model, BatchedMAML options)
    "MLP fused second-order": ("mlp", dict(backend="fused")),
    "MLP fused first-order": ("mlp", dict(backend="fused", first_order=True)),
    "MLP torch second-order": ("mlp", dict(backend="torch")),
    "MLP torch first-order": ("mlp", dict(backend="torch", first_order=True)),
    "MLP fused Meta-SGD second-order": ("mlp", dict(backend="fused", meta_sgd=True)),
    "Conv-4 torch second-order": ("conv4", dict(backend="torch")),
    "Conv-4 torch Meta-SGD first-order": ("conv4", dict(backend="torch", meta_sgd=True, first_order=True)),
    "Conv-4 ANIL fused second-order": ("conv4", dict(backend="fused", adapt="head")),
    "Conv-4 ANIL torch first-order": ("conv4", dict(backend="torch", adapt="head", first_order=True)),
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _problem(kind: str, tasks: int = TASKS):
    """A float64 model and a meta-batch, the same in every process."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "mlp":
        b = metafast.data.Sinusoid().sample(tasks, shots=6, queries=7, generator=g, dtype=torch.float64)
        return (metafast.nn.MLP([1, 16, 16, 1]).double(), (b.support_x, b.support_y, b.query_x, b.query_y),
                dict(loss="mse", inner_lr=0.05))
    sx = torch.rand(tasks, 3, 1, 8, 8, generator=g, dtype=torch.float64)
    qx = torch.rand(tasks, 6, 1, 8, 8, generator=g, dtype=torch.float64)
    sy = torch.arange(3).expand(tasks, -1).contiguous()
    qy = torch.arange(3).repeat_interleave(2).expand(tasks, -1).contiguous()
    return metafast.nn.Conv4(3, hidden=4).double(), (sx, sy, qx, qy), dict(loss="cross_entropy", inner_lr=0.5)


def _batched_errors(ctx: distributed.Context) -> dict:
    errors = {}
    for name, (kind, options) in CASES.items():
        if options["backend"] == "fused" and not metafast._extension.available():
            errors[name] = None
            continue
        model, batch, problem = _problem(kind)
        meta = metafast.BatchedMAML(model, inner_steps=2, **problem, **options)
        params = list(meta.parameters())
        one_process = torch.autograd.grad(meta(*batch).loss, params)
        ddp, share = ctx.wrap(meta), ctx.share(TASKS)  # DDP's hooks live as long as the wrapper
        for _ in range(2):  # a parameter the meta-loss does not reach would make DDP fail at the second
            meta.zero_grad(set_to_none=True)
            (ddp(*(t[share] for t in batch)).loss * ctx.weight(TASKS)).backward()
        errors[name] = max(_rel(p.grad, g) for p, g in zip(params, one_process))
    return errors


def _task_loss(maml, batch, i: int) -> torch.Tensor:
    sx, sy, qx, qy = batch
    learner = maml.clone()
    learner.adapt(torch.nn.functional.mse_loss(learner(sx[i]), sy[i]))
    return torch.nn.functional.mse_loss(learner(qx[i]), qy[i])


def _learn2learn_errors(ctx: distributed.Context) -> dict:
    """The documented pattern: each rank loops over its share of the tasks, then all_reduce_gradients."""
    errors = {}
    for cls in (metafast.MAML, metafast.MetaSGD):
        for average in (False, True):
            tasks = 4 if average else TASKS  # averaging the ranks' means needs equal shares
            model, batch, _ = _problem("mlp", tasks)
            maml = cls(model, lr=0.05)
            params = list(maml.parameters())
            one_process = torch.autograd.grad(sum(_task_loss(maml, batch, i) for i in range(tasks)) / tasks, params)
            mine = range(tasks)[ctx.share(tasks)]
            loss = sum(_task_loss(maml, batch, i) for i in mine)
            (loss / len(mine) if average else loss / tasks).backward()
            distributed.all_reduce_gradients(maml, average=average)
            errors[f"{cls.__name__} average={average}"] = max(_rel(p.grad, g) for p, g in zip(params, one_process))
    # gradients present on some ranks only count as zeros elsewhere; absent on all ranks stay None
    a, b = torch.ones(2, dtype=torch.float64, requires_grad=True), torch.ones(1, requires_grad=True)
    a.grad = torch.full_like(a, 2.0) if ctx.rank == 0 else None
    distributed.all_reduce_gradients([a, b])
    errors["partial gradients"] = 0.0 if torch.equal(a.grad, torch.ones(2, dtype=torch.float64)) and b.grad is None \
        else float("inf")
    layer = torch.nn.Linear(2, 2)
    torch.nn.init.constant_(layer.weight, float(ctx.rank))
    distributed.broadcast_parameters(layer)  # rank 0's start everywhere
    errors["broadcast parameters"] = layer.weight.abs().max().item()
    return errors


def _gradient_worker(out: str) -> None:
    torch.set_num_threads(1)
    with distributed.session("cpu") as ctx:
        results = {"batched": _batched_errors(ctx), "learn2learn": _learn2learn_errors(ctx),
                   "world_size": ctx.world_size, "backend": ctx.backend}
    if ctx.is_main:
        Path(out).write_text(json.dumps(results))


@pytest.fixture(scope="module")
def gradient_errors(tmp_path_factory):
    out = tmp_path_factory.mktemp("grad") / "errors.json"
    distributed.spawn(_gradient_worker, 2, str(out))
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", list(CASES))
def test_two_rank_meta_gradient_equals_one_process(gradient_errors, case):
    assert gradient_errors["world_size"] == 2 and gradient_errors["backend"] == "gloo"
    err = gradient_errors["batched"][case]
    if err is None:
        pytest.skip("metafast._C not built")
    assert err < 1e-12, err


@pytest.mark.parametrize("case", ["MAML average=False", "MAML average=True", "MetaSGD average=False",
                                  "MetaSGD average=True", "partial gradients", "broadcast parameters"])
def test_learn2learn_pattern_on_two_ranks_equals_one_process(gradient_errors, case):
    assert gradient_errors["learn2learn"][case] < 1e-12, gradient_errors["learn2learn"][case]


# --------------------------------------------------------------------------- the train command on 2 ranks
class SyntheticSplit:
    """Stands in for an Omniglot split: random 8x8 images drawn from the generator. Optionally
    sends this process SIGINT (Ctrl-C) at its n-th training draw."""

    num_classes = 40
    interrupt_at = None

    def __init__(self, split: str):
        self.split, self.draws = split, 0

    def sample(self, tasks, ways, shots, queries, generator=None):
        x = torch.rand(tasks, ways * (shots + queries), 1, 8, 8, generator=generator)
        labels = torch.arange(ways)
        if self.split == "train":
            self.draws += 1
            if self.draws == SyntheticSplit.interrupt_at:
                os.kill(os.getpid(), signal.SIGINT)
        return (x[:, :ways * shots], labels.repeat_interleave(shots).expand(tasks, -1),
                x[:, ways * shots:], labels.repeat_interleave(queries).expand(tasks, -1))


def _synthetic_split(data_dir, split, *args, **kwargs):
    if data_dir == "missing":
        raise FileNotFoundError(f"Omniglot data folder {data_dir} does not exist")
    return SyntheticSplit(split)


# meta-batch 5: shares of 2 and 3 tasks, weighted
RUN = ["omniglot", "--data-dir", "synthetic", "--device", "cpu", "--hidden", "4", "--ways", "2", "--meta-batch", "5",
       "--iterations", "6", "--val-every", "2", "--val-tasks", "3", "--test-tasks", "5", "--threads", "1", "--quiet"]


def _train(argv: list[str]) -> dict:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main_train(argv)
    return {"rc": rc, "out": out.getvalue(), "err": err.getvalue()}


def _cli_worker(root: str) -> None:
    from metafast import train

    torch.set_num_threads(1)
    train._load_split = _synthetic_split
    runs = {}
    with distributed.session("cpu") as ctx:
        runs["two"] = _train([*RUN, "--out", f"{root}/two"])
        SyntheticSplit.interrupt_at = 4 if ctx.rank == 1 else None  # Ctrl-C reaches rank 1 only, mid-iteration 4
        runs["stopped"] = _train([*RUN, "--out", f"{root}/stopped"])
        SyntheticSplit.interrupt_at = None
        runs["resumed"] = _train([*RUN, "--out", f"{root}/stopped", "--resume"])
        runs["meta-batch 1"] = _train([*RUN, "--out", f"{root}/small", "--meta-batch", "1"])
        runs["mismatch"] = _train([*RUN, "--out", f"{root}/mismatch", "--meta-lr", "0.01" if ctx.rank else "0.001"])
        runs["one-process checkpoint"] = _train([*RUN, "--out", f"{root}/one", "--resume", "--iterations", "8"])
        runs["data missing on rank 1"] = _train([*RUN, "--out", f"{root}/missing", "--data-dir",
                                                 "missing" if ctx.rank else "synthetic"])
        Path(root, f"rank{ctx.rank}.json").write_text(json.dumps(runs))


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    from metafast import train

    root = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train, "_load_split", _synthetic_split)
        assert _train([*RUN, "--out", str(root / "one")])["rc"] == 0  # the 1-process reference
    distributed.spawn(_cli_worker, 2, str(root))
    return root, [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]


def _checkpoint(path: Path) -> dict:
    return torch.load(path / "checkpoint.pt", weights_only=True)


def test_two_rank_run_ends_where_one_process_does(cli_runs):
    root, ranks = cli_runs
    assert [r["two"]["rc"] for r in ranks] == [0, 0], ranks[0]["two"]["err"]
    two, one = _checkpoint(root / "two"), _checkpoint(root / "one")
    assert two["world_size"] == 2 and one["world_size"] == 1 and two["iteration"] == 6
    for k, v in one["meta"].items():
        torch.testing.assert_close(two["meta"][k], v, rtol=1e-5, atol=1e-6)
    assert two["history"]["loss"] == pytest.approx(one["history"]["loss"], rel=1e-5)
    assert two["history"]["val_accuracy"] == pytest.approx(one["history"]["val_accuracy"])
    results = json.loads((root / "two" / "results.json").read_text())
    assert results["processes"] == 2 and results["process_group_backend"] == "gloo" and results["test"]["tasks"] == 5
    # rank 0 alone reports
    assert "split over 2 processes (gloo) as 2 or 3 tasks each" in ranks[0]["two"]["out"]
    assert "test accuracy" in ranks[0]["two"]["out"] and ranks[1]["two"]["out"] == ""


def test_interrupted_two_rank_run_resumes_bit_identically(cli_runs):
    root, ranks = cli_runs
    assert [r["stopped"]["rc"] for r in ranks] == [130, 130]
    assert "interrupted: saved iteration 4" in ranks[0]["stopped"]["err"] and ranks[1]["stopped"]["err"] == ""
    assert [r["resumed"]["rc"] for r in ranks] == [0, 0], ranks[0]["resumed"]["err"]
    assert "from iteration 4 of 6" in ranks[0]["resumed"]["out"]
    a, b = _checkpoint(root / "stopped"), _checkpoint(root / "two")
    assert a["iteration"] == b["iteration"] == 6 and a["history"] == b["history"]
    for k, v in b["meta"].items():
        assert torch.equal(a["meta"][k], v), k
    assert torch.equal(a["generator"], b["generator"])
    for i, state in b["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(a["optimizer"]["state"][i][k], v), (i, k)


@pytest.mark.parametrize("case, message", [
    ("meta-batch 1", "--meta-batch 1 is smaller than the 2 processes"),
    ("mismatch", "the ranks were started with different arguments (--meta-lr is 0.001 on rank 0 but 0.01 on rank 1)"),
    ("one-process checkpoint", "was written by a run on 1 process(es) but this one has 2: resume with 1"),
    ("data missing on rank 1", "rank 1: Omniglot data folder missing does not exist"),
])
def test_bad_setups_fail_on_every_rank_with_one_message(cli_runs, case, message):
    _, ranks = cli_runs
    assert [r[case]["rc"] for r in ranks] == [1, 1]
    errors = [line for line in ranks[0][case]["err"].splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], ranks[0][case]["err"]
    assert "Traceback" not in ranks[0][case]["err"] and ranks[1][case]["err"] == ""  # rank 0 reports
