"""The files the commands write: atomic under fresh names (planted links are never followed), one
folder never holds two runs (--overwrite removes the previous run's outputs), and a write error
(disk full) is one line that keeps the previous checkpoint and leaves no temporary file."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from metafast import train
from metafast.rl import cli as rl
from metafast.train import main_train
from metafast.training import checkpoint as checkpoints

from helpers import TINY, SyntheticSplit

SYN = TINY[1:]  # without the leading "train"
NAV = ["--meta-batch", "2", "--trajectories", "2", "--hidden", "8", "--max-steps", "5", "--dtype", "float64",
       "--quiet"]


@pytest.fixture
def synthetic(monkeypatch):
    monkeypatch.setattr(train, "_load_split", lambda data_dir, split, *a, **k: SyntheticSplit(split))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _victims(tmp_path: Path, out: Path, names) -> dict[Path, Path]:
    """A link planted in ``out`` under each name, to a file of someone else's: {link: target}."""
    planted = {}
    for name in names:
        target = tmp_path / f"precious-{name}"
        target.write_text("precious")
        (out / name).unlink(missing_ok=True)
        (out / name).symlink_to(target)
        planted[out / name] = target
    return planted


# --------------------------------------------------------------------------- planted links
def test_save_never_follows_a_planted_temporary_link(tmp_path):
    target = tmp_path / "precious"
    target.write_text("precious")
    (tmp_path / "checkpoint.pt.tmp").symlink_to(target)
    checkpoints.save(tmp_path / "checkpoint.pt", {"x": torch.ones(2)})
    assert target.read_text() == "precious"
    assert not (tmp_path / "checkpoint.pt").is_symlink()
    assert torch.equal(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["x"], torch.ones(2))


def test_resumed_omniglot_run_replaces_planted_links_without_following_them(tmp_path, synthetic):
    out = tmp_path / "run"
    assert main_train([*SYN, "--iterations", "2", "--out", str(out)]) == 0
    planted = _victims(tmp_path, out, ["checkpoint.pt.tmp", "results.json", "curves.png"])
    assert main_train([*SYN, "--iterations", "4", "--out", str(out), "--resume"]) == 0
    assert all(t.read_text() == "precious" for t in planted.values())
    for name in ("checkpoint.pt", "results.json", "curves.png"):
        assert (out / name).is_file() and not (out / name).is_symlink()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 4


def test_resumed_navigation_run_replaces_planted_links_without_following_them(tmp_path):
    out = tmp_path / "nav"
    assert rl.main_train(NAV + ["--iterations", "1", "--eval-tasks", "2", "--eval-steps", "1", "--out", str(out)]) == 0
    planted = _victims(tmp_path, out, ["checkpoint.tmp", "results.tmp", "results.json", "returns.png",
                                       "trajectories.png"])
    assert rl.main_train(NAV + ["--iterations", "2", "--eval-tasks", "2", "--eval-steps", "1", "--out", str(out),
                                "--resume"]) == 0
    assert all(t.read_text() == "precious" for t in planted.values())
    for name in ("checkpoint.pt", "results.json", "returns.png", "trajectories.png"):
        assert (out / name).is_file() and not (out / name).is_symlink()
    assert json.loads((out / "results.json").read_text())["iterations"] == 2


# --------------------------------------------------------------------------- one run per folder
def test_overwrite_removes_the_previous_omniglot_run_first(tmp_path, synthetic, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main_train([*SYN, "--iterations", "2", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")  # not ours: stays
    target = tmp_path / "precious"
    target.write_text("precious")
    (out / "curves.png").unlink()
    (out / "curves.png").symlink_to(target)  # removed as a link, never followed
    seen, save = [], checkpoints.save
    monkeypatch.setattr(checkpoints, "save", lambda path, state: (seen.append(sorted(os.listdir(out))),
                                                                  save(path, state)))
    assert main_train([*SYN, "--iterations", "3", "--test-tasks", "0", "--out", str(out), "--overwrite"]) == 0
    assert seen[0] == ["notes.txt"]  # the new run's first checkpoint stands alone
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "curves.png", "notes.txt", "results.json"]
    assert target.read_text() == "precious" and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "results.json").read_text())["test"] is None  # this run's, not the first one's


def test_new_run_beside_another_runs_outputs_needs_overwrite(tmp_path, synthetic, capsys):
    out = tmp_path / "run"
    assert main_train([*SYN, "--iterations", "2", "--out", str(out)]) == 0
    (out / "checkpoint.pt").unlink()  # results.json and curves.png of that run remain
    capsys.readouterr()
    assert main_train([*SYN, "--iterations", "2", "--out", str(out)]) == 1
    assert "holds the outputs of another run (results.json, curves.png): pass --overwrite" in \
        _one_line_error(capsys)
    assert not (out / "checkpoint.pt").exists()


def test_overwrite_removes_the_previous_navigation_run_and_its_evaluation(tmp_path):
    out = tmp_path / "nav"
    assert rl.main_train(NAV + ["--iterations", "1", "--eval-tasks", "2", "--eval-steps", "1", "--out", str(out)]) == 0
    assert rl.main_eval([str(out), "--tasks", "2", "--steps", "1", "--trajectories", "2", "--quiet"]) == 0
    assert {"eval.json", "eval_trajectories_maml.png", "trajectories.png"} <= set(os.listdir(out))
    assert rl.main_train(NAV + ["--iterations", "1", "--eval-tasks", "0", "--out", str(out), "--overwrite"]) == 0
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "results.json", "returns.png"]


# --------------------------------------------------------------------------- write errors
def _full_disk(obj, f, *args, **kwargs):
    """torch.save on a full disk: some bytes reach the file, then ENOSPC."""
    if isinstance(f, (str, os.PathLike)):
        f = open(f, "wb")  # noqa: SIM115 - left open, as a crashed writer leaves it
    f.write(b"partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_saving_an_omniglot_checkpoint(tmp_path, synthetic, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main_train([*SYN, "--iterations", "2", "--test-tasks", "0", "--out", str(out)]) == 0
    before = sorted(os.listdir(out))
    capsys.readouterr()
    monkeypatch.setattr(torch, "save", _full_disk)
    assert main_train([*SYN, "--iterations", "4", "--out", str(out), "--resume"]) == 1
    assert f"cannot write {out / 'checkpoint.pt'}: No space left on device" in _one_line_error(capsys)
    assert sorted(os.listdir(out)) == before  # no temporary file left
    monkeypatch.undo()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 2  # the previous one, intact


def test_disk_full_while_saving_a_navigation_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "nav"
    assert rl.main_train(NAV + ["--iterations", "1", "--eval-tasks", "0", "--out", str(out)]) == 0
    before = sorted(os.listdir(out))
    capsys.readouterr()
    monkeypatch.setattr(torch, "save", _full_disk)
    assert rl.main_train(NAV + ["--iterations", "2", "--out", str(out), "--resume", "--checkpoint-every", "1"]) == 1
    assert f"cannot write {out / 'checkpoint.pt'}: No space left on device" in _one_line_error(capsys)
    assert sorted(os.listdir(out)) == before
    monkeypatch.undo()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 1


def test_disk_full_while_writing_the_file_leaves_the_old_one(tmp_path, monkeypatch):
    from metafast.training import files
    from metafast.training.args import CLIError

    path = tmp_path / "results.json"
    files.write_json(path, {"run": 1})

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CLIError, match=f"cannot write {path}: No space left on device"):
        files.write_json(path, {"run": 2})
    assert os.listdir(tmp_path) == ["results.json"] and json.loads(path.read_text()) == {"run": 1}
