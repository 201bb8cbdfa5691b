"""``crosslmm synth`` and ``crosslmm demo``."""

from __future__ import annotations

import argparse
import dataclasses
import time


def _synth(args: argparse.Namespace) -> int:
    from crosslmm.demo.synth import SynthSpec, write_dataset

    if args.audit:
        return _audit(args.out)
    spec = SynthSpec(
        videos=args.videos,
        frames=args.frames,
        seed=args.seed,
        questions=tuple(args.questions.split(",")),
        design=args.design,
    )
    paths = write_dataset(args.out, spec)
    print(
        f"wrote {args.videos} videos of {args.frames} frames to {args.out}: "
        + ", ".join(p.name for p in paths.values())
    )
    return 0


def _audit(data_dir: str) -> int:
    """Probe the dataset for shortcuts (:mod:`crosslmm.demo.audit`); exit 1 when one leaks or the control fails."""
    import json
    from pathlib import Path

    from crosslmm.demo.audit import audit, markdown_table
    from crosslmm.demo.synth import SynthSpec
    from crosslmm.demo.variants import DemoSettings, shared_tower

    spec = SynthSpec(**json.loads((Path(data_dir) / "spec.json").read_text()))
    report = audit(data_dir, tower=shared_tower(DemoSettings(data=spec)))
    (Path(data_dir) / "audit.json").write_text(json.dumps(report, indent=1))
    print(markdown_table(report))
    print(f"written to {Path(data_dir) / 'audit.json'}")
    return 0 if report["passed"] else 1


def _demo(args: argparse.Namespace) -> int:
    from crosslmm.demo.report import markdown_table
    from crosslmm.demo.run import run_demo
    from crosslmm.demo.variants import DemoSettings

    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.needle:
        return _needle(args)
    if args.videos is not None or args.source is not None:
        raise ValueError("--videos and --from apply to --needle only")
    if args.elastic:
        if args.reuse or args.variants:
            raise ValueError("--reuse and --variants apply to the default demo, not to --elastic")
        return _elastic(args)
    settings = _sized(DemoSettings.quick() if args.quick else DemoSettings(), args)
    if args.variants is not None:
        settings = dataclasses.replace(settings, variants=tuple(args.variants.split(",")))
    return _run("demo", run_demo, markdown_table, args.out or "runs/demo", settings)


def _run(name: str, run, table, out: str, settings) -> int:
    """``run(out, settings)``, then its report's ``table`` and how long it took."""
    start = time.perf_counter()
    report = run(out, settings)
    print()
    print(table(report))
    print(f"{name} finished in {time.perf_counter() - start:.0f} s; table, JSON and plot in {out}")
    return 0


def _sized(settings, args: argparse.Namespace):
    """``settings`` (DemoSettings) with the --seeds / --steps / --questions / --design the user gave."""
    if args.questions is not None:
        data = dataclasses.replace(settings.data, questions=tuple(args.questions.split(",")))
        settings = dataclasses.replace(settings, data=data)
    if args.design is not None:
        settings = dataclasses.replace(settings, data=dataclasses.replace(settings.data, design=args.design))
    if args.seeds is not None:
        settings = dataclasses.replace(settings, seeds=args.seeds)
    if args.steps is not None:
        settings = dataclasses.replace(settings, steps=args.steps)
    if args.reuse:
        settings = dataclasses.replace(settings, reuse=True)
    return settings


def _needle(args: argparse.Namespace) -> int:
    from crosslmm.demo.needle.report import markdown_table
    from crosslmm.demo.needle.run import NeedleSettings, run_needle

    given = ["--elastic"] if args.elastic else []
    given += [
        flag
        for flag, value in [
            ("--steps", args.steps),
            ("--questions", args.questions),
            ("--design", args.design),
            ("--variants", args.variants),
        ]
        if value
    ]
    if given:
        raise ValueError(f"--needle scores the demo's trained models; {', '.join(given)} do not apply")
    settings = NeedleSettings.quick() if args.quick else NeedleSettings()
    if args.videos is not None:
        settings = dataclasses.replace(settings, videos=args.videos)
    if args.seeds is not None:
        settings = dataclasses.replace(settings, seeds=args.seeds)
    if args.reuse:
        settings = dataclasses.replace(settings, reuse=True)
    source = args.source or "runs/demo"
    return _run(
        "needle test",
        lambda out, s: run_needle(source, out, s),
        markdown_table,
        args.out or "runs/demo-needle",
        settings,
    )


def _elastic(args: argparse.Namespace) -> int:
    from crosslmm.demo.elastic.report import markdown_table
    from crosslmm.demo.elastic.run import ElasticSettings, run_elastic

    settings = ElasticSettings.quick() if args.quick else ElasticSettings()
    settings = dataclasses.replace(settings, demo=_sized(settings.demo, args))
    return _run("elastic demo", run_elastic, markdown_table, args.out or "runs/demo-elastic", settings)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synth", help="write the synthetic fine-detail video QA dataset")
    p.add_argument(
        "out",
        help="output directory (videos/, train.json, test.json, lmms-eval task YAML); with --audit, the dataset",
    )
    p.add_argument(
        "--audit",
        action="store_true",
        help="probe the dataset in OUT for shortcuts to the answer instead of writing one (exit 1 on a leak)",
    )
    p.add_argument(
        "--design", default="stripes", help="task design: stripes, textures or marker (docs/demo.md)"
    )
    p.add_argument("--videos", type=int, default=1400, help="videos in train + test (10%% test)")
    p.add_argument("--frames", type=int, default=20, help="frames per video (>= 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--questions",
        default="colour",
        help="comma-separated question types: colour, quarter, motion (default: colour)",
    )
    p.set_defaults(func=_synth)

    p = subparsers.add_parser(
        "demo", help="train and compare full-token, pooled and CrossLMM variants on CPU"
    )
    p.add_argument(
        "--out", default=None, help="output directory (default: runs/demo, with --elastic runs/demo-elastic)"
    )
    p.add_argument("--quick", action="store_true", help="tiny smoke run (CI): a few steps, seconds per model")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds per variant (default 1, 5 with --elastic); the table shows the mean; with --needle: "
        "score seeds 0 .. N-1 only (default: every seed whose models exist)",
    )
    p.add_argument(
        "--elastic",
        action="store_true",
        help="one elastic CrossLMM and one elastic pool-only model (budgets 1/4/9/16) against fixed budgets",
    )
    p.add_argument(
        "--steps", type=int, default=None, help="optimiser steps per variant (default: the preset's)"
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep the data (same spec) and every run in OUT that finished its steps; train and score the rest; "
        "with --needle: keep every cell the same model weights already scored",
    )
    p.add_argument(
        "--questions",
        default=None,
        help="comma-separated question types of the data (default: colour; see crosslmm synth)",
    )
    p.add_argument(
        "--design", default=None, help="task design of the data (default: stripes; see crosslmm synth)"
    )
    p.add_argument(
        "--variants",
        default=None,
        help="comma-separated variants to train (default: full,pool,pool_v2v,pool_t2v,crosslmm; pool and "
        "crosslmm are required)",
    )
    p.add_argument(
        "--needle",
        action="store_true",
        help="score the trained models of the demo in --from on longer videos with the target at several "
        "depths (docs/needle.md); writes to --out (default runs/demo-needle)",
    )
    p.add_argument(
        "--from",
        dest="source",
        default=None,
        help="with --needle: the output dir of the demo whose models to score (default: runs/demo)",
    )
    p.add_argument(
        "--videos", type=int, default=None, help="with --needle: needle videos per (depth, frames) cell (30)"
    )
    p.set_defaults(func=_demo)
