"""``crosslmm bench flops`` and ``crosslmm bench speed``: print a table, write JSON and a PNG into --out."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_FLOPS_FRAMES = "8,16,32,64,128,256,512"
DEFAULT_SPEED_FRAMES = "16,32,64,128,256"


def _frames(text: str) -> list[int]:
    try:
        frames = sorted({int(t) for t in text.split(",")})
    except ValueError:
        raise ValueError(f"--frames must be comma-separated integers, got {text!r}") from None
    if frames[0] < 1:
        raise ValueError(f"--frames must be positive, got {text!r}")
    return frames


def _flops(args: argparse.Namespace) -> int:
    from crosslmm.bench.flops import flops_sweep
    from crosslmm.bench.report import format_table, loglog_panels, write_json
    from crosslmm.model.configuration import CrossLMMConfig
    from crosslmm.model.presets import load_config_yaml

    config = CrossLMMConfig(**load_config_yaml(args.config))
    result = {
        "config": args.config,
        **flops_sweep(config, _frames(args.frames), args.text_tokens, args.paper_column),
    }
    rows = []
    for frames in result["frames"]:
        for name, model in result["models"].items():
            f = model["flops"][frames]
            other = f["projector"] + f["lm_head"]
            rows.append(
                [frames, name]
                + [v / 1e12 for v in (f["vision"], f["llm"], f["cross_attention"], other, f["total"])]
            )
            rows[-1].append(f["total"] / f["vision"])
    header = [
        "frames",
        "model",
        "vision TF",
        "LLM layers TF",
        "cross-attn TF",
        "proj+head TF",
        "total TF",
        "total/vision",
    ]
    print(f"Analytic prefill FLOPs, {args.config}, {args.text_tokens} text tokens (2 FLOPs per multiply-add)")
    print(format_table(header, rows))
    paper_rows = [
        [t, p["tmac"], p["published_tflops"], p.get("error_pct")]
        for t, p in result["paper_convention"].items()
    ]
    print(
        f"\nPaper convention (multiply-adds, see flops.paper_convention_flops) vs published {args.paper_column} column"
    )
    print(format_table(["frames", "ours TMAC", "paper TFLOPs", "error %"], paper_rows))
    result["targets"] = [_llm_side_target(result)]
    _print_targets(result["targets"])
    out = Path(args.out)
    write_json(out / "flops.json", result)
    models = result["models"]
    xs = result["frames"]
    series = {name: (xs, [m["flops"][t]["total"] / 1e12 for t in xs]) for name, m in models.items()}
    series["vision tower"] = (xs, [next(iter(models.values()))["flops"][t]["vision"] / 1e12 for t in xs])
    llm_side = {name: (xs, [m["flops"][t]["llm_side"] / 1e12 for t in xs]) for name, m in models.items()}
    loglog_panels(
        out / "flops.png",
        [("total prefill", "TFLOPs", series), ("LLM layers + cross-attention", "TFLOPs", llm_side)],
        f"Analytic prefill FLOPs, {args.config}",
    )
    print(f"\nwrote {out / 'flops.json'} and {out / 'flops.png'}")
    return 0


def _llm_side_target(result: dict[str, Any]) -> dict[str, Any]:
    """Issue #6: LLM-side FLOPs of CrossLMM-9 at most 1/20 of the 169-token baseline's, at 256 frames
    (or the largest frame count asked for)."""
    frames = 256 if 256 in result["frames"] else result["frames"][-1]
    crosslmm = result["models"]["CrossLMM-9"]["flops"][frames]["llm_side"]
    baseline = result["models"]["LLaVA-Video (169)"]["flops"][frames]["llm_side"]
    ratio = crosslmm / baseline
    return {
        "name": f"LLM-side FLOPs CrossLMM-9 / 169-token at {frames} frames",
        "value": ratio,
        "limit": 1 / 20,
        "met": ratio <= 1 / 20,
    }


def _print_targets(targets: list[dict[str, Any]]) -> None:
    from crosslmm.bench.report import format_table

    print("\nTargets")
    print(
        format_table(
            ["target", "value", "limit", "met"],
            [[t["name"], t["value"], t["limit"], t["met"]] for t in targets],
        )
    )


def _speed(args: argparse.Namespace) -> int:
    from crosslmm.bench.report import format_table, loglog_panels, write_json
    from crosslmm.bench.speed import CROSSLMM, FULL, POOLED, TOWER, MiniSpec, run_speed

    spec = MiniSpec.quick() if args.quick else MiniSpec()
    frames = _frames(args.frames or ("2,4" if args.quick else DEFAULT_SPEED_FRAMES))
    result = run_speed(
        spec,
        frames,
        repeats=1 if args.quick else args.repeats,
        decode_steps=args.decode_steps,
        baseline_max_frames=args.baseline_max_frames,
        threads=args.threads,
        memory=not args.no_memory,
    )
    variants = [TOWER, CROSSLMM, POOLED, FULL]
    prefill, decode, peak = result["prefill_s"], result["decode_step_s"], result["peak_activation_mb"]
    rows = []
    for t in frames:
        for v in variants:
            if t not in prefill.get(v, {}):
                continue
            ms = 1e3 * prefill[v][t]
            rows.append(
                [
                    t,
                    v,
                    ms,
                    ms / (1e3 * prefill[TOWER][t]),
                    _get(decode, v, t, 1e3),
                    _get(peak, v, t),
                    _get(result["cache_mb"], v, t),
                ]
            )
    print(f"CPU speed, mini config ({args.threads} threads, median of {result['repeats']})")
    print(
        format_table(
            ["frames", "model", "prefill ms", "/ tower", "decode step ms", "peak act. MB", "cache MB"], rows
        )
    )
    ratio_rows = [
        [
            t,
            result["analytic_gflops"][CROSSLMM][t] / result["analytic_gflops"][TOWER][t],
            prefill[CROSSLMM][t] / prefill[TOWER][t],
        ]
        for t in frames
    ]
    print("\nCrossLMM / vision tower: analytic FLOPs ratio vs measured time ratio")
    print(format_table(["frames", "FLOPs ratio", "time ratio"], ratio_rows))
    print(
        "\nlog-log slope of prefill time vs frames: "
        + ", ".join(f"{v} {s:.2f}" for v, s in result["slope"].items())
    )
    _print_targets(result["targets"])
    out = Path(args.out)
    write_json(out / "speed.json", result)
    panels = [("prefill", "seconds", _series(prefill)), ("decode step", "seconds", _series(decode))]
    if peak:
        panels.append(("peak activation memory", "MB", _series(peak)))
    loglog_panels(
        out / "speed.png", panels, "CPU, mini config: CrossLMM vs full-token baseline vs vision tower"
    )
    print(f"\nwrote {out / 'speed.json'} and {out / 'speed.png'}")
    return 0


def _get(table: dict[str, dict[int, float]], variant: str, frames: int, scale: float = 1.0) -> float | None:
    value = table.get(variant, {}).get(frames)
    return None if value is None else scale * value


def _series(table: dict[str, dict[int, float]]) -> dict[str, tuple[list[int], list[float]]]:
    return {v: (list(values), list(values.values())) for v, values in table.items()}


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="efficiency benchmarks (FLOPs, CPU speed and memory)")
    sub = bench.add_subparsers(dest="bench_command", required=True)

    p = sub.add_parser("flops", help="analytic prefill FLOPs of CrossLMM and full-token baselines")
    p.add_argument("--config", default="crosslmm-7b-9tok", help="configs/model/<name>.yaml or a path")
    p.add_argument("--frames", default=DEFAULT_FLOPS_FRAMES)
    p.add_argument("--text-tokens", type=int, default=70, help="prompt text after the video (T2V queries)")
    p.add_argument(
        "--paper-column", choices=["7b", "2b"], default="7b", help="published TFLOPs to compare with"
    )
    p.add_argument("--out", default="bench_out")
    p.set_defaults(func=_flops)

    p = sub.add_parser("speed", help="CPU prefill/decode time and peak memory on a mini config")
    p.add_argument("--frames", default=None, help=f"default {DEFAULT_SPEED_FRAMES} (2,4 with --quick)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode-steps", type=int, default=5)
    p.add_argument("--baseline-max-frames", type=int, default=64, help="the full-token baseline is quadratic")
    p.add_argument("--threads", type=int, default=1, help="1 is steadiest on a shared machine")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory worker process")
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 and 4 frames: a smoke test")
    p.add_argument("--out", default="bench_out")
    p.set_defaults(func=_speed)
