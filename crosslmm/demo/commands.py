"""``crosslmm synth`` and ``crosslmm demo``."""

from __future__ import annotations

import argparse
import dataclasses
import time


def _synth(args: argparse.Namespace) -> int:
    from crosslmm.demo.synth import SynthSpec, write_dataset

    spec = SynthSpec(
        videos=args.videos, frames=args.frames, seed=args.seed, questions=tuple(args.questions.split(","))
    )
    paths = write_dataset(args.out, spec)
    print(
        f"wrote {args.videos} videos of {args.frames} frames to {args.out}: "
        + ", ".join(p.name for p in paths.values())
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from crosslmm.demo.report import markdown_table
    from crosslmm.demo.run import run_demo
    from crosslmm.demo.variants import DemoSettings

    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    settings = dataclasses.replace(settings, seeds=args.seeds)
    if args.steps is not None:
        settings = dataclasses.replace(settings, steps=args.steps)
    start = time.perf_counter()
    report = run_demo(args.out, settings)
    print()
    print(markdown_table(report))
    print(f"demo finished in {time.perf_counter() - start:.0f} s; table, JSON and plot in {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synth", help="write the synthetic fine-detail video QA dataset")
    p.add_argument("out", help="output directory (videos/, train.json, test.json, lmms-eval task YAML)")
    p.add_argument("--videos", type=int, default=1400, help="videos in train + test (10%% test)")
    p.add_argument("--frames", type=int, default=20, help="frames per video (>= 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--questions",
        default="colour",
        help="comma-separated question types: colour, quarter (default: colour)",
    )
    p.set_defaults(func=_synth)

    p = subparsers.add_parser(
        "demo", help="train and compare full-token, pooled and CrossLMM variants on CPU"
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (CI): a few steps, seconds per model")
    p.add_argument("--seeds", type=int, default=1, help="seeds per variant; the table shows the mean")
    p.add_argument(
        "--steps", type=int, default=None, help="optimiser steps per variant (default: the preset's)"
    )
    p.set_defaults(func=_demo)
