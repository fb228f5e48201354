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
    assert "0.67" in printed and "0.38" in printed and "0.35" in printed  # the paper's row
    assert "70,000" in printed

    cfg = res["config"]
    assert cfg["iterations"] == 50 and cfg["test_tasks"] == 60 and cfg["test_shots"] == 5
    assert cfg["backend_used"] in ("fused", "torch")
    assert len(res["train"]["loss_curve"]["loss"]) == 50
    for name in ("maml", "untrained", "pretrained"):
        r = res["eval"][name]
        for steps in ("0", "1", "5", "10"):
            assert r[steps]["mse"] > 0 and r[steps]["ci95"] > 0
        # Adaptation is SGD on the support set at alpha=0.01: the support fit improves with every step...
        sup = [r[s]["support_mse"] for s in ("0", "1", "5", "10")]
        assert sup == sorted(sup, reverse=True) and sup[-1] < sup[0], (name, sup)
    # ...and one step from the (briefly) meta-trained init already helps on the query points.
    maml = res["eval"]["maml"]
    assert maml["1"]["mse"] < maml["0"]["mse"]
    assert res["paper"]["maml"] == {"1": 0.67, "5": 0.38, "10": 0.35}


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
    for argv in (["--iterations", "0"], ["--device", "tpu"], ["--backend", "nope"], ["--no-such-flag"]):
        with pytest.raises(SystemExit) as exc:
            demo.main(argv)
        assert exc.value.code == 2
        assert "error" in capsys.readouterr().err


def test_demo_accepts_leading_subcommand_name(tmp_path):
    out = tmp_path / "x"
    assert demo.main(["demo", "--device", "cpu", "--iterations", "2", "--test-tasks", "4", "--no-baseline",
                      "--no-plot", "--quiet", "--out", str(out)]) == 0
