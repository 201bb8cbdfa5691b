"""``crosslmm bench speed`` without ``--preset``: the CPU mini benchmark of ``measure.py`` as tables,
``STEM.json`` and a log-log plot ``STEM.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crosslmm.bench.mini import MiniSpec
from crosslmm.bench.report import format_table, loglog_panels, write_json
from crosslmm.bench.speed.measure import run_speed
from crosslmm.bench.speed.streaming import INGEST_HEADER, ingest_rows, ingest_target, run_streaming_ingest
from crosslmm.bench.targets import print_targets
from crosslmm.bench.variants import CROSSLMM, FULL, POOLED, TOWER


def bench_speed(
    spec: MiniSpec,
    frames: list[int],
    *,
    repeats: int,
    decode_steps: int,
    baseline_max_frames: int,
    threads: int,
    memory: bool,
    out: Path,
    stem: str,
    ingest_repeats: int = 7,
) -> None:
    """Run ``measure.run_speed`` and, with two or more frame counts, ``streaming.run_streaming_ingest`` at the
    first and last; print the per-cell table, the FLOPs-vs-time ratios, the slopes, the streaming ingest
    and the targets; write ``out/STEM.json`` and ``out/STEM.png``."""
    result = run_speed(
        spec,
        frames,
        repeats=repeats,
        decode_steps=decode_steps,
        baseline_max_frames=baseline_max_frames,
        threads=threads,
        memory=memory,
    )
    _print_cells(result, frames, threads)
    _print_flops_vs_time(result, frames)
    if len(frames) > 1:
        ingest = run_streaming_ingest(spec, frames[0], frames[-1], repeats=ingest_repeats)
        result["streaming_ingest"] = ingest
        result["targets"].append(ingest_target(ingest).as_dict())
        print(f"\nStreaming ingest: one add_frames of one frame (median of {ingest_repeats})")
        print(format_table(INGEST_HEADER, ingest_rows(ingest)))
    print_targets(result["targets"])
    write_json(out / f"{stem}.json", result)
    _plot(result, out / f"{stem}.png")
    print(f"\nwrote {out / stem}.json and .png")


def _print_cells(result: dict[str, Any], frames: list[int], threads: int) -> None:
    """One row per (frames, variant): prefill, its ratio to the tower, decode step, peak memory, cache."""
    prefill, decode, peak = result["prefill_s"], result["decode_step_s"], result["peak_activation_mb"]
    rows = []
    for t in frames:
        for v in (TOWER, CROSSLMM, POOLED, FULL):
            if t not in prefill.get(v, {}):
                continue
            ms = 1e3 * prefill[v][t]
            ratio = ms / (1e3 * prefill[TOWER][t])
            rows.append(
                [t, v, ms, ratio, _get(decode, v, t, 1e3), _get(peak, v, t), _get(result["cache_mb"], v, t)]
            )
    print(f"CPU speed, mini config ({threads} threads, median of {result['repeats']})")
    header = ["frames", "model", "prefill ms", "/ tower", "decode step ms", "peak act. MB", "cache MB"]
    print(format_table(header, rows))


def _print_flops_vs_time(result: dict[str, Any], frames: list[int]) -> None:
    """CrossLMM over the vision tower in analytic FLOPs and in measured time, and the log-log slopes."""
    gflops, prefill = result["analytic_gflops"], result["prefill_s"]
    rows = [
        [t, gflops[CROSSLMM][t] / gflops[TOWER][t], prefill[CROSSLMM][t] / prefill[TOWER][t]] for t in frames
    ]
    print("\nCrossLMM / vision tower: analytic FLOPs ratio vs measured time ratio")
    print(format_table(["frames", "FLOPs ratio", "time ratio"], rows))
    slopes = ", ".join(f"{v} {s:.2f}" for v, s in result["slope"].items())
    print(f"\nlog-log slope of prefill time vs frames: {slopes}")


def _plot(result: dict[str, Any], path: Path) -> None:
    panels = [
        ("prefill", "seconds", _series(result["prefill_s"])),
        ("decode step", "seconds", _series(result["decode_step_s"])),
    ]
    if result["peak_activation_mb"]:
        panels.append(("peak activation memory", "MB", _series(result["peak_activation_mb"])))
    loglog_panels(path, panels, "CPU, mini config: CrossLMM vs full-token baseline vs vision tower")


def _get(table: dict[str, dict[int, float]], variant: str, frames: int, scale: float = 1.0) -> float | None:
    value = table.get(variant, {}).get(frames)
    return None if value is None else scale * value


def _series(table: dict[str, dict[int, float]]) -> dict[str, tuple[list[int], list[float]]]:
    return {v: (list(values), list(values.values())) for v, values in table.items()}
