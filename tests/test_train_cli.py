"""metafast.train: the `train` and `eval` commands (main_train / main_eval)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metafast import train
from metafast.train import main_eval, main_train
from metafast.training import checkpoint as checkpoints, evaluation
from helpers import SyntheticSplit

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
needs_data = pytest.mark.skipif(not REAL.is_dir(), reason=f"real Omniglot archives not at {REAL}")

# tiny and fast: few iterations, 2 tasks, 8 channels, one CPU thread
TINY = ["omniglot", "--data-dir", str(REAL), "--device", "cpu", "--hidden", "8", "--meta-batch", "2",
        "--val-every", "2", "--val-tasks", "4", "--test-tasks", "6", "--threads", "1", "--quiet"]


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err


# --------------------------------------------------------------------------- bad input
def test_missing_data_dir(tmp_path, capsys):
    rc = main_train(["omniglot", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"),
                     "--iterations", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "nowhere" in err and "does not exist" in err and "brendenlake/omniglot" in err
    _no_traceback(err)


def test_data_dir_without_archives(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = main_train(["--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "images_background.zip" in err
    _no_traceback(err)


@pytest.mark.parametrize("args,msg", [
    (["--ways", "1"], "--ways"),
    (["--shots", "0"], "--shots"),
    (["--shots", "15", "--queries", "10"], "20 drawings"),
    (["--meta-batch", "0"], "--meta-batch"),
    (["--inner-lr", "-1"], "--inner-lr"),
    (["--device", "tpu"], "--device"),
])
def test_bad_arguments(tmp_path, capsys, args, msg):
    rc = main_train(["--data-dir", str(tmp_path), "--out", str(tmp_path / "out"), "--quiet", *args])
    err = capsys.readouterr().err
    assert rc == 1 and msg in err, err
    _no_traceback(err)


def test_usage_errors_and_help(capsys):
    for run, argv, msg in ((main_train, ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
                           (main_train, ["--ways", "five"], "--ways: invalid int value: 'five'"),
                           (main_train, ["cifar"], "invalid choice: 'cifar'"),
                           (main_eval, [], "the following arguments are required: checkpoint")):
        assert run(argv) == 2
        assert msg in capsys.readouterr().err
    assert main_train(["--help"]) == 0
    assert "--inner-lr" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_unavailable(tmp_path, capsys):
    rc = main_train(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "CUDA is not available" in err


def test_missing_checkpoint(tmp_path, capsys):
    rc = main_eval([str(tmp_path / "nope.pt")])
    err = capsys.readouterr().err
    assert rc == 1 and "nope.pt" in err and "does not exist" in err
    _no_traceback(err)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert main_eval([str(bad)]) == 1
    assert f"cannot read checkpoint {bad}: the file is corrupt, truncated or not a checkpoint" in \
        capsys.readouterr().err
    torch.save({"something": 1}, tmp_path / "other.pt")
    assert main_eval([str(tmp_path / "other.pt")]) == 1
    assert "not a metafast Omniglot checkpoint" in capsys.readouterr().err


# --------------------------------------------------------------------------- runs on the real data
@needs_data
def test_short_run_checkpoint_resume_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert main_train([*TINY, "--iterations", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "MAML paper: 98.7 ± 0.4 %" in text
    for name in ("checkpoint.pt", "curves.png", "results.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["iteration"] == 3 and len(ck["history"]["loss"]) == 3
    assert ck["history"]["val_iteration"] == [2, 3]
    assert {"model", "optimizer", "args", "history", "meta"} <= set(ck)
    res = json.loads((out / "results.json").read_text())
    assert res["test"]["tasks"] == 6 and 0 <= res["test"]["accuracy"] <= 100 and res["test"]["steps"] == 3
    assert res["paper"]["maml"] == [98.7, 0.4]

    # without --resume an existing run is not overwritten
    assert main_train([*TINY, "--iterations", "5", "--out", str(out)]) == 1
    assert "--resume" in capsys.readouterr().err

    # --resume continues from iteration 3 to 5 and equals an uninterrupted 5-iteration run
    assert main_train([*TINY, "--iterations", "5", "--out", str(out), "--resume", "--test-tasks", "0"]) == 0
    assert "from iteration 3" in capsys.readouterr().out
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["iteration"] == 5 and ck["history"]["iteration"] == [1, 2, 3, 4, 5]
    straight = tmp_path / "straight"
    assert main_train([*TINY, "--iterations", "5", "--out", str(straight), "--test-tasks", "0"]) == 0
    ck2 = torch.load(straight / "checkpoint.pt", weights_only=True)
    for k, v in ck2["model"].items():
        torch.testing.assert_close(ck["model"][k], v, rtol=1e-6, atol=1e-7)
    assert ck["history"]["loss"] == pytest.approx(ck2["history"]["loss"], rel=1e-5)
    capsys.readouterr()

    # eval on the checkpoint (file or folder)
    assert main_eval([str(out / "checkpoint.pt"), "--test-tasks", "6", "--device", "cpu", "--quiet",
                      "--json", str(tmp_path / "eval.json")]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "iteration 5" in text
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["tasks"] == 6 and ev["steps"] == 3
    assert main_eval([str(out), "--test-tasks", "4", "--split", "val", "--test-steps", "1", "--quiet"]) == 0
    assert "val accuracy, MAML, 5-way 1-shot, iteration 5, 4 tasks, 1 inner steps" in capsys.readouterr().out


@needs_data
def test_meta_sgd_and_anil_run(tmp_path):
    for flags in (["--meta-sgd"], ["--anil", "--first-order"]):
        out = tmp_path / flags[0].strip("-")
        assert main_train([*TINY, *flags, "--iterations", "2", "--out", str(out), "--test-tasks", "4"]) == 0
        ck = torch.load(out / "checkpoint.pt", weights_only=True)
        assert ck["args"]["meta_sgd"] == (flags[0] == "--meta-sgd")
        assert any(k.startswith("inner_lrs.") for k in ck["meta"]) == (flags[0] == "--meta-sgd")
        results = json.loads((out / "results.json").read_text())
        assert results["test"]["tasks"] == 4 and 0 <= results["test"]["accuracy"] <= 100
        assert main_eval([str(out), "--test-tasks", "4", "--quiet", "--json", str(out / "eval.json")]) == 0
        ev = json.loads((out / "eval.json").read_text())
        assert ev["iteration"] == 2 and ev["tasks"] == 4 and ev["setting"] == results["setting"]
        assert ev["accuracy"] == results["test"]["accuracy"]  # the same 600-task seed: the same tasks


@needs_data
def test_short_cpu_run_learns(tmp_path, capsys):
    """200 iterations of 5-way 1-shot second-order MAML (8 tasks, 32 channels) beat chance (20%) clearly."""
    out = tmp_path / "learn"
    rc = main_train(["omniglot", "--data-dir", str(REAL), "--device", "cpu", "--hidden", "32", "--meta-batch", "8",
                     "--iterations", "200", "--val-every", "100", "--val-tasks", "40", "--test-tasks", "100",
                     "--threads", "1", "--quiet", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    print(capsys.readouterr().out)
    assert res["test"]["accuracy"] > 40, res["test"]
    assert res["validation"][-1]["accuracy"] > 40


# --------------------------------------------------------------------------- synthetic data (no archives needed)
@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(train, "_load_split", lambda data_dir, split, *a, **k: SyntheticSplit(split))


SYN = ["omniglot", "--data-dir", "unused", "--device", "cpu", "--hidden", "4", "--ways", "2", "--meta-batch", "2",
       "--val-every", "2", "--val-tasks", "2", "--test-tasks", "0", "--threads", "1", "--quiet"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_zero_iterations_is_refused(tmp_path, tiny, capsys):
    out = tmp_path / "run"
    assert main_train([*SYN, "--iterations", "0", "--out", str(out)]) == 1
    assert "--iterations must be at least 1, got 0" in _one_line_error(capsys)
    assert "wrote" not in capsys.readouterr().out and not (out / "checkpoint.pt").exists()


def test_out_that_is_a_file_fails_before_training(tmp_path, tiny, capsys):
    taken = tmp_path / "taken"
    taken.write_text("x")
    assert main_train([*SYN, "--iterations", "2", "--out", str(taken)]) == 1
    assert f"--out {taken} is a file, not a folder" in _one_line_error(capsys)
    assert taken.read_text() == "x"


def _states_equal(a: dict, b: dict) -> None:
    assert a["iteration"] == b["iteration"] and a["history"] == b["history"]
    for k, v in b["meta"].items():
        assert torch.equal(a["meta"][k], v), k
    assert torch.equal(a["generator"], b["generator"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sb:
        for k in sb[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)


@pytest.mark.parametrize("where", ["after the episode is drawn", "after opt.step()", "in validation",
                                   "after the checkpoint"])
def test_interrupt_then_resume_is_bit_identical(tmp_path, tiny, monkeypatch, capsys, where):
    run = [*SYN, "--iterations", "6"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main_train([*run, "--out", str(straight)]) == 0

    calls = {"n": 0}

    def on_call(n):  # a KeyboardInterrupt on the n-th call
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        if where == "after the episode is drawn":
            draw = SyntheticSplit.sample
            m.setattr(SyntheticSplit, "sample", lambda self, *a, **k: (
                draw(self, *a, **k), self.split != "train" or on_call(4))[0])
        elif where == "after opt.step()":
            class Adam(torch.optim.Adam):
                def step(self, closure=None):
                    super().step(closure)
                    on_call(3)
            m.setattr(torch.optim, "Adam", Adam)
        elif where == "in validation":
            evaluate = evaluation.evaluate
            m.setattr(evaluation, "evaluate", lambda *a, **k: (evaluate(*a, **k), on_call(2))[0])
        else:
            save = checkpoints.save
            m.setattr(checkpoints, "save", lambda *a: (save(*a), on_call(1)))
        assert main_train([*run, "--out", str(stopped)]) == 130
    assert "continue with --resume" in capsys.readouterr().err
    saved = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] < 6 and saved["history"]["iteration"] == list(range(1, saved["iteration"] + 1))

    assert main_train([*run, "--out", str(stopped), "--resume"]) == 0
    _states_equal(torch.load(stopped / "checkpoint.pt", weights_only=True),
                  torch.load(straight / "checkpoint.pt", weights_only=True))


def test_nan_meta_gradient_with_a_finite_loss_stops_before_the_update(tmp_path, tiny, monkeypatch, capsys):
    # What the fused kernel did with NaN weights: a finite loss over a NaN meta-gradient. The torch
    # backend (Conv-4) gets one here from a gradient hook at iteration 2.
    # The hook poisons the gradients of the second training iteration, whichever backend runs it
    # (the loop backend calls the hook once per task).
    build, draw, draws = train._build, SyntheticSplit.sample, {"train": 0}

    def counted(self, *a, **k):
        draws[self.split] = draws.get(self.split, 0) + 1
        return draw(self, *a, **k)

    def poisoned(a, device):
        model, meta = build(a, device)
        model.head.weight.register_hook(lambda grad: grad * float("nan") if draws["train"] == 2 else grad)
        return model, meta

    monkeypatch.setattr(SyntheticSplit, "sample", counted)
    monkeypatch.setattr(train, "_build", poisoned)
    out = tmp_path / "run"
    assert main_train([*SYN, "--iterations", "4", "--val-every", "1", "--out", str(out)]) == 1
    err = _one_line_error(capsys)
    assert "at iteration 2 the meta-loss" in err and "gradient is not finite" in err
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["iteration"] == 1 and all(v.isfinite().all() for v in ck["meta"].values())


@pytest.fixture
def checkpoint(tmp_path, tiny):
    out = tmp_path / "run"
    assert main_train([*SYN, "--iterations", "2", "--out", str(out)]) == 0
    return out / "checkpoint.pt"


def _edit(path, change) -> None:
    ck = torch.load(path, weights_only=True)
    change(ck)
    torch.save(ck, path)


@pytest.mark.parametrize("change, msg", [
    (lambda ck: ck["args"].update(hidden=8), "does not fit the run its arguments describe (MAML, 2-way 1-shot, 8 "
                                              "channels): Error(s) in loading state_dict"),
    (lambda ck: ck["args"].update(ways=3), "does not fit the run its arguments describe (MAML, 3-way 1-shot"),
    (lambda ck: ck["args"].update(meta_sgd=True), "does not fit the run its arguments describe (Meta-SGD"),
    (lambda ck: ck.pop("meta"), "is incomplete: it lacks meta"),
    (lambda ck: ck["args"].pop("ways"), "is incomplete: it lacks args.ways"),
    (lambda ck: ck.update(args=[1, 2]), "is incomplete: it lacks args.ways"),
])
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_checkpoint_that_disagrees_with_itself_is_one_line_error(checkpoint, capsys, change, msg, command):
    _edit(checkpoint, change)
    capsys.readouterr()
    if command == "eval":
        rc = main_eval([str(checkpoint), "--test-tasks", "2", "--device", "cpu", "--quiet"])
    else:
        rc = main_train([*SYN, "--iterations", "4", "--out", str(checkpoint.parent), "--resume"])
    assert rc == 1
    assert msg in _one_line_error(capsys)


@pytest.mark.parametrize("command", ["eval", "resume"])
def test_truncated_checkpoint_is_one_line_error(checkpoint, capsys, command):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    rc = (main_eval([str(checkpoint), "--quiet"]) if command == "eval"
          else main_train([*SYN, "--iterations", "4", "--out", str(checkpoint.parent), "--resume"]))
    assert rc == 1
    assert "is corrupt, truncated or not a checkpoint" in _one_line_error(capsys)


def test_resume_with_inconsistent_history_or_optimizer(checkpoint, capsys):
    run = [*SYN, "--iterations", "4", "--out", str(checkpoint.parent), "--resume"]
    _edit(checkpoint, lambda ck: ck.update(iteration=1))  # the pre-fix Ctrl-C symptom
    capsys.readouterr()
    assert main_train(run) == 1
    assert "is inconsistent: its history does not end at its iteration 1" in _one_line_error(capsys)
    _edit(checkpoint, lambda ck: ck.update(iteration=2, optimizer={"state": {}, "param_groups": []}))
    assert main_train(run) == 1
    assert "does not fit the run its arguments describe" in _one_line_error(capsys)
    _edit(checkpoint, lambda ck: ck.update(iteration=9))
    assert main_train(run) == 1
    assert "the checkpoint is at iteration 9, beyond --iterations 4" in _one_line_error(capsys)


def test_evaluate_counts_queries_with_nonfinite_logits_as_wrong():
    class AlwaysClassZero:  # logits favour class 0; task 0's are NaN
        def adapt(self, sx, sy, steps):
            return {}

        def predict(self, params, qx):
            logits = torch.zeros(qx.shape[0], qx.shape[1], 2)
            logits[..., 0] = 1.0
            logits[0] = float("nan")  # argmax(NaN) picks index 0, the right class for half the queries
            return logits

    r = evaluation.evaluate(AlwaysClassZero(), SyntheticSplit("test"), tasks=2, ways=2, shots=1, queries=1, steps=1, batch=2)
    assert r["accuracy"] == 25.0 and r["nonfinite_tasks"] == 1  # task 0: 0 of 2, task 1: 1 of 2
    assert "(1 tasks with non-finite logits)" in evaluation.fmt(r)
