"""Options and stored arguments are checked up front, each problem one line naming it: every integer
option of train/eval has one range check (seeds and sizes at most 2**63-1), a checkpoint's stored
arguments have the types the run gave them, and results are strict JSON (null for NaN)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from metafast import demo, train
from metafast.rl import cli as rl
from metafast.train import main_eval, main_train

from helpers import TINY, SyntheticSplit

SYN = TINY[1:]
NAV = ["--meta-batch", "2", "--trajectories", "2", "--hidden", "8", "--max-steps", "5", "--dtype", "float64",
       "--eval-tasks", "0", "--quiet"]
HUGE = str(2 ** 70)


def _no_constants(text: str):
    """json.loads that refuses NaN and Infinity, which are not JSON."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))


@pytest.fixture
def synthetic(monkeypatch):
    monkeypatch.setattr(train, "_load_split", lambda data_dir, split, *a, **k: SyntheticSplit(split))


@pytest.fixture
def checkpoint(tmp_path, synthetic):
    out = tmp_path / "run"
    assert main_train([*SYN, "--iterations", "1", "--test-tasks", "0", "--out", str(out)]) == 0
    return out / "checkpoint.pt"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# --------------------------------------------------------------------------- integer options
@pytest.mark.parametrize("flag, value, msg", [
    (f, v, f"{f} must be at least {low}, got {v}") for f, low in
    [("--ways", 2), ("--shots", 1), ("--queries", 1), ("--inner-steps", 1), ("--test-steps", 1), ("--meta-batch", 1),
     ("--iterations", 1), ("--hidden", 1), ("--val-every", 1), ("--val-tasks", 0), ("--test-tasks", 0),
     ("--seed", 0), ("--split-seed", 0), ("--threads", 1)] for v in [str(low - 1)]
] + [(f, HUGE, f"{f} must be at most 2**63-1, got {HUGE}") for f in ("--seed", "--split-seed", "--iterations")])
def test_train_integer_options(tmp_path, synthetic, capsys, flag, value, msg):
    assert main_train([*SYN, "--iterations", "2", "--out", str(tmp_path / "run"), flag, value]) == 1
    assert msg in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, value, msg", [
    ("--meta-batch", "0", "--meta-batch must be at least 1, got 0"),
    ("--test-tasks", "0", "--test-tasks must be at least 1, got 0"),
    ("--test-steps", "0", "--test-steps must be at least 1, got 0"),
    ("--seed", "-1", "--seed must be at least 0, got -1"),
    ("--seed", HUGE, f"--seed must be at most 2**63-1, got {HUGE}"),
    ("--threads", "0", "--threads must be at least 1, got 0"),
])
def test_eval_integer_options(checkpoint, capsys, flag, value, msg):
    capsys.readouterr()
    assert main_eval([str(checkpoint), "--quiet", flag, value]) == 1
    assert msg in _one_line_error(capsys)


@pytest.mark.parametrize("argv, msg", [
    (["train", "--seed", HUGE], f"--seed must be at most 2**63-1, got {HUGE}"),
    (["train", "--max-steps", "0"], "--max-steps must be at least 1, got 0"),
    (["train", "--cg-iters", "0"], "--cg-iters must be at least 1, got 0"),
    (["train", "--eval-tasks", "-1"], "--eval-tasks must be at least 0, got -1"),
    (["train", "--hidden", "8", HUGE], "--hidden widths must be positive"),
    (["eval", "--tasks", "1"], "--tasks must be at least 2, got 1"),
    (["eval", "--steps", "-1"], "--steps must be at least 0, got -1"),
    (["eval", "--trajectories", "0"], "--trajectories must be at least 1, got 0"),
    (["eval", "--seed", HUGE], f"--seed must be at most 2**63-1, got {HUGE}"),
])
def test_rl_integer_options(tmp_path, capsys, argv, msg):
    run = tmp_path / "nav"
    assert rl.main_train(NAV + ["--iterations", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    if argv[0] == "train":
        rc = rl.main_train(NAV + ["--iterations", "1", "--out", str(tmp_path / "other"), *argv[1:]])
    else:
        rc = rl.main_eval([str(run), "--quiet", *argv[1:]])
    assert rc == 1
    assert msg in _one_line_error(capsys)


def test_demo_seed_out_of_range_is_a_usage_error(tmp_path, capsys):
    for seed in (HUGE, "-1"):
        with pytest.raises(SystemExit) as exc:
            demo.main(["--seed", seed, "--iterations", "1", "--test-tasks", "2", "--device", "cpu", "--quiet",
                       "--out", str(tmp_path / "demo")])
        assert exc.value.code == 2
        assert f"argument --seed: must be in [0, 2**63-1], got {seed}" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


# --------------------------------------------------------------------------- stored arguments
@pytest.mark.parametrize("value", [2.5, "5", True, None])
def test_eval_of_a_checkpoint_with_a_mistyped_argument(checkpoint, capsys, value):
    ck = torch.load(checkpoint, weights_only=True)
    ck["args"]["ways"] = value
    torch.save(ck, checkpoint)
    capsys.readouterr()
    assert main_eval([str(checkpoint), "--test-tasks", "2", "--quiet"]) == 1
    assert f"is invalid: its argument ways is {value!r}, not int" in _one_line_error(capsys)


def test_eval_of_a_checkpoint_with_an_out_of_range_argument(checkpoint, capsys):
    ck = torch.load(checkpoint, weights_only=True)
    ck["args"]["shots"] = 0
    torch.save(ck, checkpoint)
    capsys.readouterr()
    assert main_eval([str(checkpoint), "--test-tasks", "2", "--quiet"]) == 1
    assert "is invalid: its arguments fail the check of `train`: --shots must be at least 1, got 0" in \
        _one_line_error(capsys)


# --------------------------------------------------------------------------- strict JSON
def test_eval_json_has_null_for_an_undefined_interval(checkpoint, tmp_path):
    out = tmp_path / "eval.json"
    assert main_eval([str(checkpoint), "--test-tasks", "1", "--quiet", "--json", str(out)]) == 0  # one task: no ci95
    result = _no_constants(out.read_text())
    assert result["tasks"] == 1 and result["ci95"] is None and 0 <= result["accuracy"] <= 100


def test_write_json_writes_null_for_every_non_finite_number(tmp_path):
    from metafast.training import files

    path = tmp_path / "r.json"
    files.write_json(path, {"a": math.nan, "b": [math.inf, 1.5, (-math.inf,)], "c": {"d": float("nan")}, "e": 2})
    assert _no_constants(path.read_text()) == {"a": None, "b": [None, 1.5, [None]], "c": {"d": None}, "e": 2}
