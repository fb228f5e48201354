"""No tests here: ``python tests/test_cli_worker.py ARGS...`` is ``python -m metafast ARGS...`` with the
Omniglot splits replaced by random 8x8 images, so that the subprocess tests of the commands (signals,
torchrun) run without the Omniglot archives and in a fraction of a second per iteration."""
from __future__ import annotations

import os
import sys

from helpers import SyntheticSplit, exit_code_file

if __name__ == "__main__":
    from metafast import train
    from metafast.__main__ import main

    train._load_split = lambda data_dir, split, *args, **kwargs: SyntheticSplit(split)
    code = main(sys.argv[1:])
    if os.environ.get("METAFAST_TEST_EXIT_DIR"):  # torchrun does not always report its workers' exit codes
        exit_code_file(os.environ["METAFAST_TEST_EXIT_DIR"], os.environ.get("RANK", "0")).write_text(str(code))
    sys.exit(code)
