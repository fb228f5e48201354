"""`train omniglot --algorithm maml++`: the released Omniglot config as defaults, each
component switchable, the schedules a function of the iteration (resume is
bit-identical), one-line errors for settings that cannot work."""
from __future__ import annotations

import json

import pytest
import torch

from metafast.train import main_train
from metafast.training import args as cli_args
from helpers import OMNIGLOT, needs_omniglot

TINY = ["omniglot", "--data-dir", str(OMNIGLOT), "--device", "cpu", "--hidden", "8", "--meta-batch", "2",
        "--val-every", "2", "--val-tasks", "4", "--threads", "1", "--quiet", "--epoch-iterations", "2",
        "--inner-steps", "2"]


def test_maml_plus_plus_defaults_are_the_released_omniglot_config():
    a = cli_args.resolve_defaults(cli_args.train_parser().parse_args(["omniglot", "--algorithm", "maml++"]))
    assert (a.inner_steps, a.test_steps, a.meta_batch, a.inner_lr, a.iterations, a.pooling) == (5, 5, 8, 0.1, 50_000,
                                                                                                 "max")
    assert a.lslr and a.per_step_bn and a.cosine_lr and a.msl_epochs == 10 and a.first_order_epochs == 0
    plain = cli_args.resolve_defaults(cli_args.train_parser().parse_args(["omniglot"]))
    assert not (plain.lslr or plain.per_step_bn or plain.cosine_lr or plain.msl_epochs) and plain.inner_lr == 2.0


@needs_omniglot
def test_maml_plus_plus_run_resumes_bit_identically(tmp_path, capsys):
    # the cosine schedule's length is part of the run: the same for both
    flags = [*TINY, "--algorithm", "maml++", "--msl-epochs", "1", "--first-order-epochs", "1", "--test-tasks", "0",
             "--cosine-iterations", "10"]
    out, straight = tmp_path / "run", tmp_path / "straight"
    assert main_train([*flags, "--iterations", "2", "--out", str(out)]) == 0
    assert main_train([*flags, "--iterations", "4", "--out", str(out), "--resume"]) == 0
    assert main_train([*flags, "--iterations", "4", "--out", str(straight)]) == 0
    ck, ck2 = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (out, straight))
    assert ck["args"]["lslr"] and ck["args"]["per_step_bn"] and ck["args"]["pooling"] == "max"
    assert any("step_lrs" in k for k in ck["meta"])  # the learned per-step rates are saved
    for k, v in ck2["meta"].items():
        assert torch.equal(ck["meta"][k], v), k
    assert ck["optimizer"]["param_groups"][0]["lr"] == ck2["optimizer"]["param_groups"][0]["lr"] < 1e-3  # cosine
    assert "MAML++" in capsys.readouterr().out


@needs_omniglot
@pytest.mark.parametrize("flags", [["--algorithm", "maml", "--lslr"],
                                   ["--algorithm", "maml", "--per-step-bn", "--test-steps", "2"],
                                   ["--algorithm", "maml++", "--no-lslr", "--no-per-step-bn", "--msl-epochs", "0",
                                    "--no-cosine-lr"]])
def test_each_component_is_switchable(tmp_path, flags):
    out = tmp_path / "run"
    assert main_train([*TINY, *flags, "--iterations", "2", "--test-tasks", "4", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["test"]["tasks"] == 4


@pytest.mark.parametrize("flags, message", [
    (["--algorithm", "maml++", "--test-steps", "3"], "--test-steps \\(3\\) must equal --inner-steps \\(2\\)"),
    (["--lslr", "--meta-sgd", "--test-steps", "2"], "choose one"),
    (["--algorithm", "maml++", "--epoch-iterations", "0"], "--epoch-iterations must be at least 1"),
])
def test_settings_that_cannot_work_are_one_line(tmp_path, capsys, flags, message):
    assert main_train([*TINY, *flags, "--iterations", "2", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    import re
    assert re.search(message, err), err
