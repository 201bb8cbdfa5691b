"""``crosslmm train``: one training stage in this process (multi-GPU: ``torchrun -m crosslmm.train``)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of both launchers, ``crosslmm train`` and ``python -m crosslmm.train``."""
    parser.add_argument("--config", required=True, help="configs/train/<name>.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. lr=1e-4 data.num_frames=8")


def _train(args: argparse.Namespace) -> int:
    from crosslmm.training.config import load_config
    from crosslmm.training.launch import launch

    config = load_config(args.config, args.overrides)  # a bad config is one line from the CLI
    print(f"final model: {launch(config)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train one stage in this process (several GPUs: torchrun -m crosslmm.train)"
    )
    add_arguments(p)
    p.set_defaults(func=_train)
