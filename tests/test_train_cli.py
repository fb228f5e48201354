"""metafast.train: the `train` and `eval` commands (main_train / main_eval)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metafast.train import PAPER_ACCURACY, main_eval, main_train

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
    assert main_train(["--no-such-flag"]) == 2
    assert main_train(["--ways", "five"]) == 2
    assert main_train(["cifar"]) == 2
    assert main_eval([]) == 2
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
    torch.save({"something": 1}, tmp_path / "other.pt")
    assert main_eval([str(tmp_path / "other.pt")]) == 1
    assert "not a metafast Omniglot checkpoint" in capsys.readouterr().err


def test_paper_figures():
    assert PAPER_ACCURACY[(5, 1)] == (98.7, 0.4) and PAPER_ACCURACY[(20, 5)] == (98.9, 0.2)


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


@needs_data
def test_meta_sgd_and_anil_run(tmp_path):
    for flags in (["--meta-sgd"], ["--anil", "--first-order"]):
        out = tmp_path / flags[0].strip("-")
        assert main_train([*TINY, *flags, "--iterations", "2", "--out", str(out), "--test-tasks", "4"]) == 0
        ck = torch.load(out / "checkpoint.pt", weights_only=True)
        assert ck["args"]["meta_sgd"] == (flags[0] == "--meta-sgd")
        assert main_eval([str(out), "--test-tasks", "4", "--quiet"]) == 0


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
