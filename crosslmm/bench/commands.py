"""``crosslmm bench flops|speed|memory|data``: the argument parsers, and dispatch to the module that runs each
benchmark and writes its table, JSON and plot into --out (``flops/report.py``, ``speed/report.py``,
``preset/report.py`` for ``speed --preset``, ``memory/report.py``, ``data/report.py``). Standard library only at module level:
``crosslmm --help`` builds every parser."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_FLOPS_FRAMES = "8,16,32,64,128,256,512"
DEFAULT_SPEED_FRAMES = "16,32,64,128,256"
DEFAULT_PRESET_FRAMES = "32,64,128,256"  # the paper's Fig. 4
DEFAULT_DECODE_FRAMES = "8,16"  # bounded decode (decode_memory="topk_frames"): frames kept per layer
# Options of ``bench speed --preset`` only; the mini benchmark has its own fixed shapes.
PRESET_ONLY = ("device", "dtype", "warmup", "text_tokens", "text_before", "train_frames", "no_train")


def _frames(text: str, flag: str = "--frames") -> list[int]:
    try:
        frames = sorted({int(t) for t in text.split(",")})
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if frames[0] < 1:
        raise ValueError(f"{flag} must be positive, got {text!r}")
    return frames


def _csv(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    values = [t for t in text.split(",") if t]
    if not values or any(v not in allowed for v in values):
        raise ValueError(f"{flag} takes a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return values


def _flops(args: argparse.Namespace) -> int:
    from crosslmm.bench.flops.report import bench_flops

    bench_flops(args.config, _frames(args.frames), args.text_tokens, args.paper_column, Path(args.out))
    return 0


def _speed(args: argparse.Namespace) -> int:
    if args.preset is not None:
        if args.decode_frames is not None:
            raise ValueError("--decode-frames applies to the CPU mini benchmark only, not with --preset")
        return _speed_preset(args)
    preset_only = [f"--{k.replace('_', '-')}" for k in PRESET_ONLY if getattr(args, k) not in (None, False)]
    if preset_only:
        raise ValueError(f"{', '.join(preset_only)} only apply with --preset (a real-size model on a device)")
    from crosslmm.bench.mini import MiniSpec
    from crosslmm.bench.speed.bounded_decode import bench_bounded_decode
    from crosslmm.bench.speed.report import bench_speed

    spec = MiniSpec.quick() if args.quick else MiniSpec()
    frames = _frames(args.frames or ("2,4" if args.quick else DEFAULT_SPEED_FRAMES))
    repeats = 1 if args.quick else (args.repeats or 3)
    bench_speed(
        spec,
        frames,
        repeats=repeats,
        decode_steps=args.decode_steps,
        baseline_max_frames=64 if args.baseline_max_frames is None else args.baseline_max_frames,
        threads=args.threads,
        memory=not args.no_memory,
        out=Path(args.out),
        stem=args.stem,
        ingest_repeats=3 if args.quick else 7,
    )
    bench_bounded_decode(
        spec,
        frames,
        _frames(args.decode_frames or ("1" if args.quick else DEFAULT_DECODE_FRAMES), "--decode-frames"),
        repeats=repeats,
        decode_steps=args.decode_steps,
        threads=args.threads,
        out=Path(args.out),
        stem=args.stem,
    )
    return 0


def _speed_preset(args: argparse.Namespace) -> int:
    """``bench speed --preset``: a preset at its real size on a device (crosslmm.bench.preset)."""
    if args.quick:
        raise ValueError("--quick picks the mini shapes; with --preset use --preset mini-quick")
    from crosslmm.bench.preset.report import bench_preset
    from crosslmm.bench.preset.setup import PresetSettings

    defaults = PresetSettings(frames=[])
    settings = PresetSettings(
        frames=_frames(args.frames or DEFAULT_PRESET_FRAMES),
        device=args.device or "cpu",
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
    bench_preset(args.preset, settings, args.threads, Path(args.out), args.stem)
    return 0


def _memory(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from crosslmm.bench.memory.measure import DTYPES, MemorySpec
    from crosslmm.bench.memory.report import bench_memory

    dtypes = _csv(args.dtypes, tuple(DTYPES), "--dtypes")
    visions = _csv(args.vision, ("frozen", "trained"), "--vision")
    base = MemorySpec.quick() if args.quick else MemorySpec()
    overrides = {"threads": args.threads, "batch": args.batch}
    if args.frames is not None:
        overrides["frames"] = args.frames
    bench_memory(dtypes, visions, replace(base, **overrides), Path(args.out))
    return 0


def _data(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from crosslmm.bench.data.measure import Throughput
    from crosslmm.bench.data.report import FULL, DataBenchSpec, bench_data

    base = DataBenchSpec.quick() if args.quick else DataBenchSpec()
    overrides = {
        "repeats": args.repeats,
        "assume": Throughput(args.gpus, args.gpu_tflops, args.mfu, args.train_factor, args.text_tokens),
    }
    if args.frames is not None:
        overrides["frames"] = tuple(_frames(args.frames))
    if args.workers is not None:
        overrides["workers"] = tuple(_frames(args.workers, "--workers"))
    if args.threads is not None:
        overrides["threads"] = tuple(_frames(args.threads, "--threads"))
    if args.backends is not None:
        overrides["backends"] = tuple(t for t in args.backends.split(",") if t)
    if args.sizes is not None:
        overrides["sizes"] = tuple(_csv(args.sizes, (FULL, "resized"), "--sizes"))
    if args.loader_frames is not None:
        overrides["loader_frames"] = args.loader_frames
    if args.only is not None:
        prefixes = [t for t in args.only.split(",") if t]
        overrides["videos"] = tuple(v for v in base.videos if any(v.name.startswith(p) for p in prefixes))
        if not overrides["videos"]:
            names = ", ".join(v.name for v in base.videos)
            raise ValueError(f"--only {args.only!r} matches none of the test videos: {names}")
    if args.loader_video is not None:
        videos = overrides.get("videos", base.videos)
        matches = [i for i, v in enumerate(videos) if v.name.startswith(args.loader_video)]
        if len(matches) != 1:
            names = ", ".join(v.name for v in videos)
            raise ValueError(f"--loader-video {args.loader_video!r} must match one of the videos: {names}")
        overrides["loader_video"] = matches[0]
    bench_data(replace(base, **overrides), Path(args.videos), Path(args.out), progress=not args.no_progress)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench", help="efficiency benchmarks (FLOPs, speed and memory on a CPU or a GPU)"
    )
    sub = bench.add_subparsers(dest="bench_command", required=True)
    _add_memory(sub)
    _add_flops(sub)
    _add_speed(sub)
    _add_data(sub)


def _add_memory(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "memory",
        help="peak memory of a training step: labelled-only logits, uint8 frames vs full logits, fp32 frames",
    )
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated, of fp32,bf16")
    p.add_argument("--vision", default="frozen,trained", help="vision tower frozen (stage 1) and/or trained")
    p.add_argument("--frames", type=int, default=None, help="default 64 (4 with --quick)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test")
    p.add_argument("--out", default="bench_out")
    p.set_defaults(func=_memory)


def _add_flops(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flops", help="analytic prefill FLOPs of CrossLMM and full-token baselines")
    p.add_argument("--config", default="crosslmm-7b-9tok", help="configs/model/<name>.yaml or a path")
    p.add_argument("--frames", default=DEFAULT_FLOPS_FRAMES)
    p.add_argument("--text-tokens", type=int, default=70, help="prompt text after the video (T2V queries)")
    p.add_argument(
        "--paper-column", choices=["7b", "2b"], default="7b", help="published TFLOPs to compare with"
    )
    p.add_argument("--out", default="bench_out")
    p.set_defaults(func=_flops)


def _add_speed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "speed",
        help="prefill/decode time and peak memory: a CPU mini config, or a preset at real size on a device",
    )
    p.add_argument(
        "--frames",
        default=None,
        help=f"default {DEFAULT_SPEED_FRAMES} (2,4 with --quick; {DEFAULT_PRESET_FRAMES} with --preset)",
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
    p.add_argument(
        "--decode-frames",
        default=None,
        help=f"bounded-decode rows: frames kept per layer, comma-separated (default {DEFAULT_DECODE_FRAMES}; 1 with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 and 4 frames: a smoke test")
    p.add_argument("--out", default="bench_out")
    p.add_argument(
        "--stem", default="speed", help="file names written into --out: STEM.json, STEM.png (STEM.md)"
    )
    _add_preset_options(p)
    p.set_defaults(func=_speed)


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="the input pipeline: seconds and peak RSS per sample for each video backend, DataLoader "
        "samples/s, and the samples/s a stage-2 job needs",
    )
    p.add_argument(
        "--videos", default="bench_videos", help="directory of the generated test videos (made once, reused)"
    )
    p.add_argument(
        "--only",
        default=None,
        help="test videos whose names start with these, comma-separated (e.g. 720p_600s)",
    )
    p.add_argument("--frames", default=None, help="frames per sample, comma-separated (default 64,256,512)")
    p.add_argument(
        "--backends", default=None, help="comma-separated (default: every backend that imports, then auto)"
    )
    p.add_argument(
        "--sizes", default=None, help="full and/or resized (default both where load_video takes size=)"
    )
    p.add_argument("--workers", default=None, help="DataLoader workers, comma-separated (default 1,4,8)")
    p.add_argument(
        "--threads",
        default=None,
        help="torch threads of the process decoding one sample, comma-separated (default 1: a worker's)",
    )
    p.add_argument(
        "--loader-frames", type=int, default=None, help="frames per DataLoader sample (default 512)"
    )
    p.add_argument(
        "--loader-video",
        default=None,
        help="the video the DataLoader reads, by name prefix (default: the first)",
    )
    p.add_argument("--repeats", type=int, default=1, help="fresh-process decodes per cell (median time)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the stage-2 job")
    p.add_argument("--gpu-tflops", type=float, default=989.0, help="GPU peak TFLOP/s (H100 SXM bf16 dense)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed")
    p.add_argument(
        "--train-factor", type=float, default=3.0, help="training FLOPs per sample / forward FLOPs"
    )
    p.add_argument("--text-tokens", type=int, default=256, help="text tokens per stage-2 sample (assumed)")
    p.add_argument("--quick", action="store_true", help="one small clip, 4 and 64 frames: a smoke test")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--out", default="bench_out")
    p.set_defaults(func=_data)


def _add_preset_options(p: argparse.ArgumentParser) -> None:
    """``bench speed``'s options for a real-size preset on a device (``crosslmm.bench.preset``)."""
    preset = p.add_argument_group("real-size model on a device (crosslmm.bench.preset)")
    preset.add_argument(
        "--preset",
        default=None,
        help="configs/model/<name>.yaml, a path, or mini / mini-quick (the bench's own CPU shapes)",
    )
    preset.add_argument("--device", default=None, help="cpu or cuda[:N] (default cpu)")
    preset.add_argument(
        "--dtype", default=None, choices=["bfloat16", "float16", "float32"], help="default bfloat16"
    )
    preset.add_argument("--warmup", type=int, default=None, help="untimed prefills per cell (default 1)")
    preset.add_argument(
        "--text-tokens", type=int, default=None, help="text tokens around the video (default 70)"
    )
    preset.add_argument(
        "--text-before", type=int, default=None, help="of those, before the video (default 10)"
    )
    preset.add_argument(
        "--train-frames", type=int, default=None, help="frames of the stage-1 training step (default 32)"
    )
    preset.add_argument("--no-train", action="store_true", help="skip the stage-1 training step")
