"""``crosslmm train``: one training stage in this process (multi-GPU: ``torchrun -m crosslmm.train``)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of both launchers, ``crosslmm train`` and ``python -m crosslmm.train``."""
    parser.add_argument("--config", required=True, help="configs/train/<name>.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. lr=1e-4 data.num_frames=8")


def _check(args: argparse.Namespace) -> int:
    from crosslmm.training.preflight import run_check

    check = run_check(
        args.config,
        args.overrides,
        model_config=args.model_config,
        tokenizer=args.tokenizer,
        gpus=args.gpus,
        sample=args.sample,
        probe_all=args.all,
        gpu_memory_gib=args.gpu_memory,
    )
    print("\n".join(check.lines))
    if check.problems:
        print(f"{len(check.problems)} problem(s):")
        print("\n".join(check.problems))
        return 1
    print("no problems found")
    return 0


def _train(args: argparse.Namespace) -> int:
    if args.check:
        return _check(args)
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
    check = p.add_argument_group(
        "preflight (--check: validate and estimate, train nothing; docs/training.md)"
    )
    check.add_argument(
        "--check", action="store_true", help="check the config, data and memory; exit 1 on problems"
    )
    check.add_argument("--all", action="store_true", help="probe every record's media (default: a sample)")
    check.add_argument(
        "--sample", type=int, default=100, help="records probed per mixture entry (default 100)"
    )
    check.add_argument("--gpus", type=int, default=8, help="GPUs of the job, all nodes together (default 8)")
    check.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80)")
    check.add_argument(
        "--model-config", help="preset or model YAML for the shapes when the model dir does not exist yet"
    )
    check.add_argument(
        "--tokenizer", help="tokenizer dir for text lengths when the model dir has no processor"
    )
    p.set_defaults(func=_train)
