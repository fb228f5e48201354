"""Command line: python -m metafast {demo,train,eval,info} ..."""
from __future__ import annotations

import sys

USAGE = """usage: python -m metafast COMMAND [options]

commands:
  demo                 meta-train the MAML paper's sinusoid model and compare with the paper
  train omniglot | mini-imagenet | tiered-imagenet | cifar-fs | fc100 ...
                       meta-train Conv-4 (or --model resnet12) with MAML, its variants or MAML++ on a few-shot
                       vision set, the published setup as defaults (see `train omniglot --help`)
  train navigation ... MAML-RL on 2D navigation (see `train navigation --help`)
  train half-cheetah-vel ... / train half-cheetah-dir ...
                       MAML-RL on the MAML paper's half-cheetah tasks (needs the `mujoco` extra)
  eval CHECKPOINT ...  evaluate a saved few-shot vision or RL checkpoint on test tasks
  info                 print versions and which kernels are compiled in
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in ("demo", "train", "eval") and not any(a in ("-h", "--help") for a in rest):
        from metafast._optional import MissingExtraError, require

        try:  # progress bars, plots and image decoding: the `cli` extra
            for module in ("tqdm", "matplotlib", "PIL"):
                require(module, f"python -m metafast {command}")
        except MissingExtraError as exc:
            print(f"metafast: {exc}", file=sys.stderr)
            return 2
    if command == "demo":
        from metafast.demo import main as demo_main
        return demo_main(rest)
    if command == "train":
        from metafast.rl.cli import ENVS, main_train as rl_train  # light: eval imports it too

        if rest[:1] and rest[0] in ENVS:
            return rl_train(rest[1:], rest[0])
        from metafast.train import main_train
        return main_train(rest)
    if command == "eval":
        from metafast.rl.cli import is_rl_checkpoint
        if rest and is_rl_checkpoint(rest[0]):
            from metafast.rl.cli import main_eval as rl_eval
            return rl_eval(rest)
        from metafast.train import main_eval
        return main_eval(rest)
    if command == "info":
        import json

        import metafast
        print(json.dumps(metafast.build_info(), indent=2))
        return 0
    print(f"metafast: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
