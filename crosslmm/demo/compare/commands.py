"""``crosslmm compare``: visual-token reducers at equal prefill FLOPs, and more frames for the same compute."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path


def _compare(args: argparse.Namespace) -> int:
    from crosslmm.demo.compare.plan import CompareSettings
    from crosslmm.demo.compare.report import markdown, split_docs, update_docs
    from crosslmm.demo.compare.run import run_compare

    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.docs:
        split_docs(Path(args.docs))
    settings = CompareSettings.quick() if args.quick else CompareSettings()
    if args.seeds is not None:
        settings = dataclasses.replace(settings, seeds=args.seeds)
    if args.steps is not None:
        settings = dataclasses.replace(settings, steps=args.steps, long_steps=args.steps)
    start = time.perf_counter()
    report = run_compare(args.out, settings, reuse=args.reuse)
    print()
    print(markdown(report))
    print(f"compare finished in {time.perf_counter() - start:.0f} s; tables, JSON and plots in {args.out}")
    if args.docs:
        command = f"crosslmm compare --seeds {settings.seeds}" + (" --quick" if args.quick else "")
        command += f" --steps {args.steps}" if args.steps is not None else ""
        update_docs(Path(args.out), Path(args.docs), command)
        print(f"tables written into {args.docs}, plots copied next to it")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="train CrossLMM and other visual-token reducers at equal prefill FLOPs, and at more frames (CPU)",
    )
    p.add_argument("--out", default="runs/compare", help="output directory (default: runs/compare)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (tests): every method, a few steps")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds per model, the same for every model (default 5; --quick: 1); the tables show mean ± sd "
        "and CrossLMM's paired per-seed differences",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimiser steps per model, both studies (default: the preset's)",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep --out's data and the models that already finished there (resume, or add seeds)",
    )
    p.add_argument(
        "--docs",
        default=None,
        help="also write the tables into this markdown file (between its compare markers) and copy the plots "
        "next to it, e.g. docs/comparisons.md",
    )
    p.set_defaults(func=_compare)
