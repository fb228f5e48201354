"""`python -m metafast demo`: runs end to end, writes its artifacts, and learns."""
from __future__ import annotations

import json

import pytest
import torch

from metafast import demo


def _run(tmp_path, *extra):
    out = tmp_path / "demo"
    code = demo.main(["--device", "cpu", "--out", str(out), "--quiet", *extra])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def test_demo_short_run_writes_artifacts(tmp_path, capsys):
    out, res = _run(tmp_path, "--iterations", "50", "--test-tasks", "60")
    assert (out / "sinusoid.png").stat().st_size > 10_000
    assert (out / "model.pt").exists()
    printed = capsys.readouterr().out
    # the paper's row prints the figures results.json records
    paper_row = next(line for line in printed.splitlines() if line.startswith("MAML, paper (70,000 it)"))
    assert paper_row.split()[-3:] == [f"{res['paper']['maml'][s]:.2f}" for s in ("1", "5", "10")]

    cfg = res["config"]
    assert cfg["iterations"] == 50 and cfg["test_tasks"] == 60 and cfg["test_shots"] == 5
    assert cfg["backend_used"] in ("fused", "torch")
    assert len(res["train"]["loss_curve"]["loss"]) == 50
    for name in ("maml", "untrained", "pretrained"):
        r = res["eval"][name]
        for steps in ("0", "1", "5", "10"):
            assert r[steps]["mse"] > 0 and r[steps]["ci95"] > 0 and r[steps]["median"] > 0
            assert r[steps]["diverged"] == 0 and r[steps]["tasks"] == 60
        # Adaptation is SGD on the support set at alpha=0.01: the support fit improves with every step...
        sup = [r[s]["support_mse_median"] for s in ("0", "1", "5", "10")]
        assert sup == sorted(sup, reverse=True) and sup[-1] < sup[0], (name, sup)
    # ...and one step from the (briefly) meta-trained init already helps on the query points.
    maml = res["eval"]["maml"]
    assert maml["1"]["mse"] < maml["0"]["mse"]


def test_demo_is_deterministic(tmp_path):
    _, a = _run(tmp_path / "a", "--iterations", "20", "--test-tasks", "20", "--no-baseline", "--no-plot")
    _, b = _run(tmp_path / "b", "--iterations", "20", "--test-tasks", "20", "--no-baseline", "--no-plot")
    assert a["eval"]["maml"] == b["eval"]["maml"]
    assert not (tmp_path / "a" / "demo" / "sinusoid.png").exists()


@pytest.mark.slow
def test_demo_meta_learning_makes_more_steps_better(tmp_path):
    # From about 500 meta-iterations on, more test-time steps help (an untrained or barely trained
    # network overfits the 5 support points instead); 1,000 leaves a wide margin (about 2.8 / 1.7 / 1.2).
    _, res = _run(tmp_path, "--iterations", "1000", "--test-tasks", "200", "--no-baseline", "--no-plot")
    m = res["eval"]["maml"]
    assert m["10"]["mse"] < m["1"]["mse"] < m["0"]["mse"], m
    assert m["10"]["mse"] < 0.8 * m["1"]["mse"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_demo_cuda_without_gpu_exits_2(tmp_path, capsys):
    code = demo.main(["--device", "cuda", "--iterations", "5", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err
    assert not (tmp_path / "results.json").exists()


def test_demo_bad_flags_are_argparse_errors(capsys):
    for argv, msg in ((["--iterations", "0"], "--iterations: must be a positive integer, got 0"),
                      (["--device", "tpu"], "--device: invalid choice: 'tpu'"),
                      (["--backend", "nope"], "--backend: invalid choice: 'nope'"),
                      (["--no-such-flag"], "unrecognized arguments: --no-such-flag")):
        with pytest.raises(SystemExit) as exc:
            demo.main(argv)
        assert exc.value.code == 2
        assert msg in capsys.readouterr().err


def test_demo_accepts_leading_subcommand_name(tmp_path):
    out = tmp_path / "x"
    assert demo.main(["demo", "--device", "cpu", "--iterations", "2", "--test-tasks", "4", "--no-baseline",
                      "--no-plot", "--quiet", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["argv"][0] == "--device" and res["config"]["iterations"] == 2 and res["config"]["test_tasks"] == 4


def test_demo_out_that_is_a_file_fails_before_training(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    assert demo.main(["--device", "cpu", "--iterations", "3", "--out", str(taken), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert f"cannot use --out {taken} as the output folder: it is a file" in captured.err
    assert "meta-training" not in captured.out and taken.read_text() == "not a folder"


def test_mse_stats_count_diverged_tasks_and_never_average_nan():
    nan, inf = float("nan"), float("inf")
    query = torch.tensor([1.0, 2.0, 3.0, nan, inf, 1e4, 4.0], dtype=torch.float64)
    r = demo._mse_stats(query, torch.tensor([0.5, 1.0, nan, 0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    assert r["diverged"] == 3 and r["tasks"] == 7
    assert r["mse"] == pytest.approx(2.5) and r["std"] == pytest.approx(torch.tensor([1.0, 2, 3, 4]).std().item())
    assert r["ci95"] == pytest.approx(1.96 * r["std"] / 2)
    assert r["median"] == 4.0  # over all 7: the 3 diverged ones count as +inf
    assert r["support_mse_median"] == 0.4
    worst = demo._mse_stats(torch.tensor([nan, inf, 2.0]), torch.tensor([1.0, 1.0, 1.0]))
    assert worst["median"] is None and worst["mse"] == 2.0 and worst["ci95"] is None
    assert demo._fmt(worst["median"]) == "n/a" and demo._fmt(worst["mse"], worst["ci95"]) == "2.000"


def test_demo_reports_diverging_tasks_instead_of_nan(tmp_path, capsys):
    # At alpha = 0.3 some test tasks diverge within 10 steps: the table says how many and
    # averages the others; no NaN is printed or stored.
    out, res = _run(tmp_path, "--iterations", "5", "--test-tasks", "40", "--inner-lr", "0.3", "--no-baseline",
                    "--no-plot")
    printed = capsys.readouterr().out
    assert "nan" not in printed.lower()
    assert "NaN" not in (out / "results.json").read_text()
    ten = res["eval"]["maml"]["10"]
    assert 0 < ten["diverged"] < 40 and ten["tasks"] == 40
    assert ten["mse"] is not None and ten["mse"] <= demo.DIVERGED_MSE
    row = next(line for line in printed.splitlines() if line.strip().startswith("diverged"))
    assert row.split()[-1] == f"{ten['diverged']}/40"
