"""The RL commands (`train navigation`, `train half-cheetah-*`, `eval` of their checkpoints) report
bad checkpoints and arguments as one line, with the toolkit of the Omniglot commands."""
from __future__ import annotations

import pytest
import torch

from metafast.__main__ import main
from metafast.rl import cli as rl
from metafast.training import args as toolkit

NAV = ["--meta-batch", "2", "--trajectories", "2", "--hidden", "8", "--max-steps", "5", "--dtype", "float64",
       "--eval-tasks", "0", "--quiet"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture
def run(tmp_path, capsys):
    out = tmp_path / "nav"
    assert rl.main_train(NAV + ["--iterations", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def _edit(path, change) -> None:
    ck = torch.load(path, weights_only=True)
    change(ck)
    torch.save(ck, path)


def test_one_toolkit():
    assert rl.CLIError is toolkit.CLIError and rl.TEST_SEED == toolkit.TEST_SEED


def test_resume_from_a_corrupt_checkpoint(run, capsys):
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert rl.main_train(NAV + ["--iterations", "2", "--out", str(run), "--resume"]) == 1
    assert "is corrupt, truncated or not a checkpoint" in _one_line_error(capsys)


@pytest.mark.parametrize("change, msg", [
    (lambda ck: ck["args"].pop("max_steps"), "is incomplete: it lacks args.max_steps"),
    (lambda ck: ck.pop("policy"), "is incomplete: it lacks policy"),
    (lambda ck: ck["args"].update(max_steps="100"), "is invalid: its argument max_steps is '100', not int"),
    (lambda ck: ck["args"].update(hidden=[8, 8]), "its arguments describe: Error(s) in loading state_dict"),
    (lambda ck: ck["args"].update(dtype="float16"), "is invalid: its argument dtype is 'float16'"),
    (lambda ck: ck["args"].update(trajectories=0), "fail the check of `train`: --trajectories must be at least 1"),
])
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_checkpoint_lacking_or_mangling_an_argument(run, capsys, change, msg, command):
    _edit(run / "checkpoint.pt", change)
    if command == "eval":  # through `python -m metafast eval`, which must still see an RL checkpoint
        rc = main(["eval", str(run), "--tasks", "2", "--steps", "1", "--quiet"])
    else:
        rc = rl.main_train(NAV + ["--iterations", "2", "--out", str(run), "--resume"])
    assert rc == 1
    assert msg in _one_line_error(capsys)


def test_out_that_is_a_file(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("x")
    assert rl.main_train(NAV + ["--iterations", "1", "--out", str(taken)]) == 1
    assert f"--out {taken} is a file, not a folder" in _one_line_error(capsys)
    assert taken.read_text() == "x"


def test_threads_are_set_for_the_command_and_restored(run, capsys, monkeypatch):
    threads, seen = torch.get_num_threads(), []
    step = rl.MetaRL.step
    monkeypatch.setattr(rl.MetaRL, "step", lambda self, gen: (seen.append(torch.get_num_threads()), step(self, gen))[1])
    assert rl.main_train(NAV + ["--iterations", "2", "--out", str(run), "--resume", "--threads", "1"]) == 0
    assert seen == [1] and torch.get_num_threads() == threads
    assert rl.main_train(NAV + ["--iterations", "3", "--out", str(run), "--resume", "--threads", "0"]) == 1
    assert "--threads must be at least 1, got 0" in _one_line_error(capsys)
