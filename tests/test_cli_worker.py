"""No tests here: ``python tests/test_cli_worker.py ARGS...`` is ``python -m metafast ARGS...`` with the
Omniglot splits replaced by random 8x8 images, so that the subprocess tests of the commands (signals,
torchrun) run without the Omniglot archives and in a fraction of a second per iteration."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


class SyntheticSplit:
    """Stands in for an Omniglot split: random 8x8 images drawn from the generator, as the real one does."""

    num_classes = 40

    def __init__(self, split: str):
        self.split = split

    def sample(self, tasks, ways, shots, queries, generator=None):
        x = torch.rand(tasks, ways * (shots + queries), 1, 8, 8, generator=generator)
        labels = torch.arange(ways)
        return (x[:, :ways * shots], labels.repeat_interleave(shots).expand(tasks, -1),
                x[:, ways * shots:], labels.repeat_interleave(queries).expand(tasks, -1))


# a tiny `train omniglot` on the synthetic splits: 2-way, 4 channels, 2 tasks, one thread
TINY = ["train", "omniglot", "--data-dir", "synthetic", "--device", "cpu", "--hidden", "4", "--ways", "2",
        "--meta-batch", "2", "--val-every", "1", "--val-tasks", "2", "--test-tasks", "2", "--threads", "1", "--quiet"]


def exit_code_file(folder: str, rank: str) -> Path:
    return Path(folder, f"exit-rank{rank}")


if __name__ == "__main__":
    from metafast import train
    from metafast.__main__ import main

    train._load_split = lambda data_dir, split, *args, **kwargs: SyntheticSplit(split)
    code = main(sys.argv[1:])
    if os.environ.get("METAFAST_TEST_EXIT_DIR"):  # torchrun does not always report its workers' exit codes
        exit_code_file(os.environ["METAFAST_TEST_EXIT_DIR"], os.environ.get("RANK", "0")).write_text(str(code))
    sys.exit(code)
