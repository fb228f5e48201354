"""`train mini-imagenet | tiered-imagenet | cifar-fs | fc100` and `eval` end to end on tiny synthetic sets
written in each real on-disk format (tests/helpers.py): checkpoint, results beside the published figures,
resume, eval, ResNet-12; the published setups as defaults; one-line errors for missing data, small splits
and settings that do not fit."""
from __future__ import annotations

import json

import pytest
import torch

from metafast.train import main_eval, main_train
from metafast.training import args as cli_args, evaluation

from helpers import write_cifar100, write_mini_imagenet, write_tiered_imagenet

# format -> (data set, writer of a tiny set in it: 3 classes of 4 images per split; CIFAR: 3 per class)
FORMATS = {
    "mini-imagenet-pickle": ("mini-imagenet", lambda root: write_mini_imagenet(root, "pickle")),
    "mini-imagenet-images": ("mini-imagenet", lambda root: write_mini_imagenet(root, "images")),
    "tiered-imagenet": ("tiered-imagenet", write_tiered_imagenet),
    "cifar-fs": ("cifar-fs", write_cifar100),
    "fc100": ("fc100", write_cifar100),
}
# where to get each data set, as its missing-file error says
SOURCE = {"mini-imagenet": "meta-learning-lstm", "tiered-imagenet": "few-shot-ssl-public",
          "cifar-fs": "cs.toronto.edu/~kriz/cifar.html", "fc100": "cs.toronto.edu/~kriz/cifar.html"}
FIRST_FILE = {"mini-imagenet": "mini-imagenet-cache-train.pkl", "tiered-imagenet": "train_images_png.pkl",
              "cifar-fs": "cifar-100-python.tar.gz", "fc100": "cifar-100-python.tar.gz"}


def _tiny(dataset: str, data, out, *extra: str) -> list[str]:
    """A run of a few tenths of a second: 2-way 1-shot, 1 query, 1 step, 4 channels, 2 tasks."""
    return [dataset, "--data-dir", str(data), "--cache-dir", str(data.parent / "cache"), "--allow-small-splits",
            "--device", "cpu", "--hidden", "4", "--ways", "2", "--queries", "1", "--inner-steps", "1",
            "--test-steps", "1", "--meta-batch", "2", "--val-every", "1", "--val-tasks", "2", "--test-tasks", "2",
            "--threads", "1", "--quiet", "--out", str(out), *extra]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _load(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_train_resume_eval_on_each_format(tmp_path, capsys, fmt):
    dataset, write = FORMATS[fmt]
    data = write(tmp_path / "data")
    out, straight = tmp_path / "run", tmp_path / "straight"
    assert main_train(_tiny(dataset, data, out, "--iterations", "1")) == 0
    text = capsys.readouterr().out
    assert "test accuracy, MAML, 2-way 1-shot, 2 tasks, 1 inner steps" in text
    assert f"meta-training MAML, 2-way 1-shot on {cli_args.DATASETS[dataset][0]} (cpu)" in text
    assert "Conv-4 with 4 channels" in text and "no figure for this setting" in text  # published: 5-way only
    for name in ("checkpoint.pt", "curves.png", "results.json"):
        assert (out / name).stat().st_size > 0
    res = json.loads((out / "results.json").read_text())
    assert res["dataset"] == dataset and res["model"] == "conv4" and res["test"]["tasks"] == 2
    assert 0 <= res["test"]["accuracy"] <= 100 and res["args"]["allow_small_splits"]
    ck = _load(out)
    assert ck["iteration"] == 1 and ck["args"]["dataset"] == dataset and ck["args"]["pooling"] == "max"

    # one resume (the small-split flag and the data set are the run's) equals an uninterrupted run
    resume = [a for a in _tiny(dataset, data, out, "--iterations", "2", "--resume") if a != "--allow-small-splits"]
    assert main_train(resume) == 0
    assert "from iteration 1 of 2" in capsys.readouterr().out
    assert main_train(_tiny(dataset, data, straight, "--iterations", "2")) == 0
    a, b = _load(out), _load(straight)
    assert a["iteration"] == b["iteration"] == 2 and a["history"] == b["history"]
    for k, v in b["meta"].items():
        assert torch.equal(a["meta"][k], v), k
    capsys.readouterr()

    # eval of the checkpoint: the run's data set, folder and splits
    assert main_eval([str(out), "--test-tasks", "3", "--device", "cpu", "--quiet",
                      "--json", str(tmp_path / "eval.json")]) == 0
    assert "test accuracy, MAML, 2-way 1-shot, iteration 2, 3 tasks, 1 inner steps" in capsys.readouterr().out
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["dataset"] == dataset and ev["tasks"] == 3 and ev["iteration"] == 2
    assert main_eval([str(out), "--split", "val", "--test-tasks", "2", "--device", "cpu", "--quiet"]) == 0


def test_resnet12_and_maml_plus_plus(tmp_path, capsys):
    data = write_cifar100(tmp_path / "data")
    out = tmp_path / "resnet"
    assert main_train(_tiny("cifar-fs", data, out, "--iterations", "2", "--model", "resnet12")) == 0
    assert "ResNet-12 with 4-10-20-40 channels" in capsys.readouterr().out
    ck = _load(out)
    assert ck["args"]["model"] == "resnet12"
    assert ck["model"]["features.3.conv3.weight"].shape == (40, 40, 3, 3)
    assert main_eval([str(out), "--test-tasks", "2", "--device", "cpu", "--quiet"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    # MAML++ on an RGB set: mini-ImageNet's released config, here with one step and 1-iteration epochs
    mini = write_mini_imagenet(tmp_path / "mini")
    assert main_train(_tiny("mini-imagenet", mini, tmp_path / "pp", "--iterations", "2", "--algorithm", "maml++",
                            "--epoch-iterations", "1", "--inner-steps", "2", "--test-steps", "2")) == 0
    ck = _load(tmp_path / "pp")
    assert ck["args"]["lslr"] and ck["args"]["per_step_bn"] and ck["args"]["msl_epochs"] == 15


def test_published_setups_are_the_defaults(monkeypatch):
    def resolved(*argv):
        return cli_args.resolve_defaults(cli_args.train_parser().parse_args(list(argv)))

    for name in cli_args.DATASETS:
        monkeypatch.delenv("METAFAST_" + name.upper().replace("-", "_"), raising=False)
    mini = resolved("mini-imagenet")  # MAML paper: 32 filters, max-pool, 5 steps at 0.01 x 5 ways, 10 at test
    assert (mini.hidden, mini.pooling, mini.inner_steps, mini.inner_lr, mini.test_steps, mini.queries,
            mini.meta_batch, mini.meta_lr, mini.iterations) == (32, "max", 5, 0.05, 10, 15, 4, 1e-3, 60_000)
    assert resolved("mini-imagenet", "--shots", "5").meta_batch == 2
    assert mini.data_dir == "data/mini-imagenet" and mini.out == "runs/mini-imagenet-5way-1shot"
    assert vars(resolved("tiered-imagenet")) == {**vars(mini), "dataset": "tiered-imagenet",
                                                 "data_dir": "data/tiered-imagenet",
                                                 "out": "runs/tiered-imagenet-5way-1shot"}
    for name in ("cifar-fs", "fc100"):  # learn2learn's: meta-batch 32, 1 step at 0.5, meta rate 0.003
        c = resolved(name, "--shots", "5")
        assert (c.hidden, c.pooling, c.inner_steps, c.inner_lr, c.test_steps, c.queries, c.meta_batch,
                c.meta_lr) == (32, "max", 1, 0.5, 1, 5, 32, 3e-3)
        assert c.data_dir == "data/cifar100"
    pp = resolved("mini-imagenet", "--algorithm", "maml++")  # MAML++'s mini-ImageNet config
    assert (pp.hidden, pp.meta_batch, pp.inner_lr, pp.inner_steps, pp.test_steps, pp.queries, pp.msl_epochs,
            pp.pooling) == (48, 2, 0.01, 5, 5, 15, 15, "max")
    omniglot = resolved("omniglot")
    assert (omniglot.hidden, omniglot.pooling, omniglot.inner_lr, omniglot.meta_batch, omniglot.queries,
            omniglot.data_dir) == (64, "stride", 2.0, 32, 1, "data/omniglot")
    r12 = resolved("fc100", "--model", "resnet12")
    assert r12.hidden == 64 and r12.out == "runs/fc100-5way-1shot-resnet12"
    monkeypatch.setenv("METAFAST_MINI_IMAGENET", "/data/mini")
    assert resolved("mini-imagenet").data_dir == "/data/mini"
    assert resolved("mini-imagenet", "--data-dir", "here").data_dir == "here"


def test_paper_figures_per_data_set():
    line = evaluation.paper_line
    assert line(5, 1, False, "maml", "omniglot") == "MAML paper: 98.7 ± 0.4 %"
    assert line(5, 1, True, "maml", "mini-imagenet") == "MAML paper: 48.70 ± 1.84 %; Meta-SGD paper: 50.47 %"
    assert line(5, 5, False, "maml++", "mini-imagenet") == "MAML paper: 63.11 ± 0.92 %; MAML++ paper: 68.32 ± 0.44 %"
    assert line(5, 5, False, "maml", "cifar-fs") == "learn2learn's MAML: 73.6 %"
    assert line(5, 5, False, "maml", "fc100") == "learn2learn's MAML: 49.0 %"
    assert "no figure" in line(5, 1, False, "maml", "fc100") and "no figure" in line(5, 1, False, "maml",
                                                                                      "tiered-imagenet")
    assert evaluation.paper_figures("mini-imagenet", 5, 1)["maml++"] == (52.15, 0.26)


@pytest.mark.parametrize("dataset", list(SOURCE))
def test_missing_data_is_one_line_naming_the_file_and_its_source(tmp_path, capsys, dataset):
    nowhere = tmp_path / "nowhere"
    assert main_train([dataset, "--data-dir", str(nowhere), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = _one_line_error(capsys)
    assert str(nowhere) in err and "does not exist" in err and SOURCE[dataset] in err
    (tmp_path / "empty").mkdir()
    assert main_train([dataset, "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = _one_line_error(capsys)
    assert str(tmp_path / "empty" / FIRST_FILE[dataset]) in err and SOURCE[dataset] in err


def test_settings_that_do_not_fit_are_one_line(tmp_path, capsys):
    data = write_mini_imagenet(tmp_path / "data")
    run = _tiny("mini-imagenet", data, tmp_path / "run", "--iterations", "1")
    small = [a for a in run if a != "--allow-small-splits"]
    assert main_train(small) == 1  # the published sizes are required unless asked otherwise
    assert "has 3 classes of 4 to 4 images; the published split has 64" in (err := _one_line_error(capsys))
    assert "pass --allow-small-splits" in err
    assert main_train([*run, "--queries", "4"]) == 1  # 1 + 4 > the 4 images of a class
    assert "--shots + --queries = 5 exceeds the 4 images of the smallest class of the mini-ImageNet train split" \
        in _one_line_error(capsys)
    assert main_train([*run, "--ways", "4"]) == 1
    assert "--ways 4 exceeds the 3 classes of the mini-ImageNet train split" in _one_line_error(capsys)
    assert main_train([*run, "--ways", "17"]) == 1  # the published val split has 16 classes
    assert "--ways 17 exceeds the 16 classes of the mini-ImageNet validation split" in _one_line_error(capsys)
    assert main_train(["omniglot", "--model", "resnet12", "--out", str(tmp_path / "o")]) == 1
    assert "--model resnet12 is for the RGB sets" in _one_line_error(capsys)
    assert main_train([*run, "--model", "resnet12", "--algorithm", "maml++"]) == 1
    assert "pass --no-per-step-bn with --model resnet12" in _one_line_error(capsys)
    # a run on one data set is not continued as another
    assert main_train(run) == 0
    capsys.readouterr()
    assert main_train(["cifar-fs", *run[1:], "--resume"]) == 1
    assert "is a run on mini-imagenet, not cifar-fs" in _one_line_error(capsys)
