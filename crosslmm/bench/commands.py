"""``crosslmm bench flops`` and ``crosslmm bench speed``: print a table, write JSON and a PNG into --out."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_FLOPS_FRAMES = "8,16,32,64,128,256,512"
DEFAULT_SPEED_FRAMES = "16,32,64,128,256"
DEFAULT_SCALE_FRAMES = "32,64,128,256"  # the paper's Fig. 4
# Options of ``bench speed --preset`` only; the mini benchmark has its own fixed shapes.
PRESET_ONLY = ("device", "dtype", "warmup", "text_tokens", "text_before", "train_frames", "no_train")


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
    """Target (docs/efficiency.md): LLM-side FLOPs of CrossLMM-9 at most 1/20 of the 169-token baseline's, at 256 frames
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
    if args.preset is not None:
        return _speed_preset(args)
    preset_only = [f"--{k.replace('_', '-')}" for k in PRESET_ONLY if getattr(args, k) not in (None, False)]
    if preset_only:
        raise ValueError(f"{', '.join(preset_only)} only apply with --preset (a real-size model on a device)")
    from crosslmm.bench.report import format_table, loglog_panels, write_json
    from crosslmm.bench.speed import CROSSLMM, FULL, POOLED, TOWER, MiniSpec, run_speed

    spec = MiniSpec.quick() if args.quick else MiniSpec()
    frames = _frames(args.frames or ("2,4" if args.quick else DEFAULT_SPEED_FRAMES))
    result = run_speed(
        spec,
        frames,
        repeats=1 if args.quick else (args.repeats or 3),
        decode_steps=args.decode_steps,
        baseline_max_frames=64 if args.baseline_max_frames is None else args.baseline_max_frames,
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
    write_json(out / f"{args.stem}.json", result)
    panels = [("prefill", "seconds", _series(prefill)), ("decode step", "seconds", _series(decode))]
    if peak:
        panels.append(("peak activation memory", "MB", _series(peak)))
    loglog_panels(
        out / f"{args.stem}.png", panels, "CPU, mini config: CrossLMM vs full-token baseline vs vision tower"
    )
    print(f"\nwrote {out / args.stem}.json and .png")
    return 0


def _speed_preset(args: argparse.Namespace) -> int:
    """``bench speed --preset``: crosslmm.bench.scale, its tables, JSON, Markdown and plot."""
    if args.quick:
        raise ValueError("--quick picks the mini shapes; with --preset use --preset mini-quick")
    from crosslmm.bench.report import format_table, markdown_table, write_json
    from crosslmm.bench.scale import ScaleSettings, load_preset, run_scale

    defaults = ScaleSettings(frames=[])
    device = args.device or "cpu"
    settings = ScaleSettings(
        frames=_frames(args.frames or DEFAULT_SCALE_FRAMES),
        device=device,
        dtype=args.dtype or defaults.dtype,
        repeats=args.repeats or defaults.repeats,
        warmup=defaults.warmup if args.warmup is None else args.warmup,
        decode_steps=args.decode_steps,
        text_tokens=args.text_tokens or defaults.text_tokens,
        text_before=defaults.text_before if args.text_before is None else args.text_before,
        train_frames=None if args.no_train else (args.train_frames or defaults.train_frames),
        baseline_max_frames=args.baseline_max_frames,
        memory=not args.no_memory,
    )
    if device.startswith("cpu"):
        import torch

        torch.set_num_threads(args.threads)
    result = run_scale(load_preset(args.preset), settings)
    result["preset"] = args.preset
    tables = _scale_tables(result)
    title = (
        f"{args.preset} on {result['device_name']} ({settings.dtype}, torch {result['torch']}, transformers "
        f"{result['transformers']}): one sample, {settings.text_tokens} text tokens "
        f"({settings.text_before} before the video), median of {settings.repeats}"
    )
    print(title)
    for heading, header, rows in tables:
        print(f"\n{heading}\n{format_table(header, rows)}")
    if result["weights_mb"] is None:
        print("\n(the targets are for the 7B preset on an H100/H200-class GPU: a CPU run checks the command)")
    _print_targets(result["targets"])
    out = Path(args.out)
    write_json(out / f"{args.stem}.json", result)
    _scale_plot(result, out / f"{args.stem}.png", f"{args.preset}, {result['device_name']}, {settings.dtype}")
    command = (
        f"crosslmm bench speed --preset {args.preset} --device {device} --dtype {settings.dtype} "
        f"--frames {','.join(map(str, settings.frames))} --repeats {settings.repeats} "
        + (f"--train-frames {settings.train_frames}" if settings.train_frames else "--no-train")
    )
    md = [f"# Speed and memory: {title}", "", f"`{command}`", ""]
    for heading, header, rows in tables:
        md += [f"## {heading}", "", markdown_table(header, rows), ""]
    targets = [[t["name"], t["value"], t["limit"], t["met"]] for t in result["targets"]]
    md += ["## Targets (7B preset on an H100/H200-class GPU)", ""]
    md += [markdown_table(["target", "value", "limit", "met"], targets), "", f"![plot]({args.stem}.png)", ""]
    (out / f"{args.stem}.md").write_text("\n".join(md))
    print(f"\nwrote {out / args.stem}.json, .md and .png")
    return 0


def _scale_tables(result: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    """(heading, header, rows) of the measured cells, the paper's Fig. 4 beside ours, and the training step."""
    from crosslmm.bench.paper import FIG4_CROSSLMM, FIG4_LLAVA_OV
    from crosslmm.bench.scale import CROSSLMM, FULL, TOWER, VARIANTS

    cells = result["cells"]
    rows = []
    for frames in result["frames"]:
        for variant in VARIANTS:
            cell = cells[variant][frames]
            if isinstance(cell, str):  # OOM or skipped
                rows.append([frames, variant] + [None] * 2 + [cell] + [None] * 6)
                continue
            rows.append(
                [frames, variant, cell["tokens_per_frame"], cell["llm_tokens"], cell["prefill_ms"]]
                + [cell.get(k) for k in ("ratio_to_tower", "analytic_tflops", "achieved_tflop_s")]
                + [cell.get(k) for k in ("decode_step_ms", "peak_mb", "cache_mb")]
            )
    measured = (
        f"Measured ({result['device_name']}; peak MB: "
        + ("above the weights" if result["weights_mb"] is not None else "not measured on a CPU")
        + ")"
    )
    header = ["frames", "model", "tok/frame", "LLM tokens", "prefill ms", "/ tower", "TFLOPs", "TFLOP/s"]
    header += ["decode ms", "peak MB", "KV cache MB"]

    def ours(variant: str, frames: int, key: str) -> Any:
        cell = cells[variant].get(frames)
        return cell.get(key) if isinstance(cell, dict) else cell

    paper_rows = [
        [t, ours(CROSSLMM, t, "prefill_ms"), FIG4_CROSSLMM.prefill_ms[t], ours(FULL, t, "prefill_ms")]
        + [FIG4_LLAVA_OV.prefill_ms[t], ours(CROSSLMM, t, "peak_mb"), FIG4_CROSSLMM.memory_mb[t]]
        + [ours(FULL, t, "peak_mb"), FIG4_LLAVA_OV.memory_mb[t], ours(TOWER, t, "prefill_ms")]
        for t in FIG4_CROSSLMM.prefill_ms
    ]
    paper_header = ["frames", "CrossLMM ms", "paper", "full-token ms", "paper LLaVA-OV"]
    paper_header += ["CrossLMM MB", "paper", "full-token MB", "paper LLaVA-OV", "tower ms"]
    tables = [
        (measured, header, rows),
        ("The paper's Fig. 4 (8 H800s) beside ours (- : not measured here)", paper_header, paper_rows),
    ]
    train = result["train_step"]
    if isinstance(train, str):  # OOM
        tables.append(
            ("Stage-1 training step", ["frames", "step"], [[result["settings"]["train_frames"], train]])
        )
    elif train is not None:
        keys = ("frames", "trainable_params", "step_ms", "peak_mb", "optimizer_state_mb")
        row = [train[k] / 1e6 if k == "trainable_params" else train[k] for k in keys]
        header = [
            "frames",
            "M params (" + "+".join(train["trainable"]) + ")",
            "step ms",
            "peak MB",
            "AdamW state MB",
        ]
        tables.append(("Stage-1 training step (one sample, AdamW)", header, [row]))
    return tables


def _scale_plot(result: dict[str, Any], path: Path, title: str) -> None:
    """Prefill, decode step and peak memory against frames; the paper's Fig. 4 curves where we measured
    at its frame counts."""
    from crosslmm.bench.paper import FIG4_CROSSLMM, FIG4_LLAVA_OV
    from crosslmm.bench.report import loglog_panels

    def series(key: str) -> dict[str, tuple[list[int], list[float]]]:
        out = {}
        for variant, cells in result["cells"].items():
            points = [(t, c[key]) for t, c in cells.items() if isinstance(c, dict) and c.get(key) is not None]
            if points:
                out[variant] = ([t for t, _ in points], [v for _, v in points])
        return out

    prefill, peak = series("prefill_ms"), series("peak_mb")
    if set(result["frames"]) & set(FIG4_CROSSLMM.prefill_ms):
        for paper in (FIG4_CROSSLMM, FIG4_LLAVA_OV):
            prefill[f"paper: {paper.model}"] = (list(paper.prefill_ms), list(paper.prefill_ms.values()))
            if peak:
                peak[f"paper: {paper.model}"] = (list(paper.memory_mb), list(paper.memory_mb.values()))
    panels = [("prefill", "ms", prefill), ("decode step", "ms", series("decode_step_ms"))]
    if peak:
        panels.append(("peak memory above the weights", "MB", peak))
    loglog_panels(path, panels, title)


def _get(table: dict[str, dict[int, float]], variant: str, frames: int, scale: float = 1.0) -> float | None:
    value = table.get(variant, {}).get(frames)
    return None if value is None else scale * value


def _series(table: dict[str, dict[int, float]]) -> dict[str, tuple[list[int], list[float]]]:
    return {v: (list(values), list(values.values())) for v, values in table.items()}


def _memory(args: argparse.Namespace) -> int:
    from crosslmm.bench.memory import command

    return command(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench", help="efficiency benchmarks (FLOPs, speed and memory on a CPU or a GPU)"
    )
    sub = bench.add_subparsers(dest="bench_command", required=True)

    p = sub.add_parser("memory", help="peak memory of a training step: old (full logits, fp32 pixels) vs new")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated, of fp32,bf16")
    p.add_argument("--vision", default="frozen,trained", help="vision tower frozen (stage 1) and/or trained")
    p.add_argument("--frames", type=int, default=None, help="default 64 (4 with --quick)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test")
    p.add_argument("--out", default="bench_out")
    p.set_defaults(func=_memory)

    p = sub.add_parser("flops", help="analytic prefill FLOPs of CrossLMM and full-token baselines")
    p.add_argument("--config", default="crosslmm-7b-9tok", help="configs/model/<name>.yaml or a path")
    p.add_argument("--frames", default=DEFAULT_FLOPS_FRAMES)
    p.add_argument("--text-tokens", type=int, default=70, help="prompt text after the video (T2V queries)")
    p.add_argument(
        "--paper-column", choices=["7b", "2b"], default="7b", help="published TFLOPs to compare with"
    )
    p.add_argument("--out", default="bench_out")
    p.set_defaults(func=_flops)

    p = sub.add_parser(
        "speed",
        help="prefill/decode time and peak memory: a CPU mini config, or a preset at real size on a device",
    )
    p.add_argument(
        "--frames",
        default=None,
        help=f"default {DEFAULT_SPEED_FRAMES} (2,4 with --quick; {DEFAULT_SCALE_FRAMES} with --preset)",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed runs per cell: default 3 (5 with --preset)"
    )
    p.add_argument("--decode-steps", type=int, default=5)
    p.add_argument(
        "--baseline-max-frames",
        type=int,
        default=None,
        help="the full-token baseline is quadratic: default 64 (no limit with --preset)",
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads; 1 is steadiest on a shared machine")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 and 4 frames: a smoke test")
    p.add_argument("--out", default="bench_out")
    p.add_argument(
        "--stem", default="speed", help="file names written into --out: STEM.json, STEM.png (STEM.md)"
    )
    scale = p.add_argument_group("real-size model on a device (crosslmm.bench.scale)")
    scale.add_argument(
        "--preset",
        default=None,
        help="configs/model/<name>.yaml, a path, or mini / mini-quick (the bench's own CPU shapes)",
    )
    scale.add_argument("--device", default=None, help="cpu or cuda[:N] (default cpu)")
    scale.add_argument(
        "--dtype", default=None, choices=["bfloat16", "float16", "float32"], help="default bfloat16"
    )
    scale.add_argument("--warmup", type=int, default=None, help="untimed prefills per cell (default 1)")
    scale.add_argument(
        "--text-tokens", type=int, default=None, help="text tokens around the video (default 70)"
    )
    scale.add_argument(
        "--text-before", type=int, default=None, help="of those, before the video (default 10)"
    )
    scale.add_argument(
        "--train-frames", type=int, default=None, help="frames of the stage-1 training step (default 32)"
    )
    scale.add_argument("--no-train", action="store_true", help="skip the stage-1 training step")
    p.set_defaults(func=_speed)
