"""``crosslmm bench speed`` without ``--preset``: the CPU mini benchmark of ``measure.py`` as tables,
``STEM.json`` and a log-log plot ``STEM.png``."""

from __future__ import annotations

from pathlib import Path

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
    """Run ``speed.run_speed`` and, with two or more frame counts, ``streaming.run_streaming_ingest`` at the
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
    print(f"CPU speed, mini config ({threads} threads, median of {result['repeats']})")
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
    if len(frames) > 1:
        ingest = run_streaming_ingest(spec, frames[0], frames[-1], repeats=ingest_repeats)
        result["streaming_ingest"] = ingest
        result["targets"].append(ingest_target(ingest).as_dict())
        print(f"\nStreaming ingest: one add_frames of one frame (median of {ingest_repeats})")
        print(format_table(INGEST_HEADER, ingest_rows(ingest)))
    print_targets(result["targets"])
    write_json(out / f"{stem}.json", result)
    panels = [("prefill", "seconds", _series(prefill)), ("decode step", "seconds", _series(decode))]
    if peak:
        panels.append(("peak activation memory", "MB", _series(peak)))
    loglog_panels(
        out / f"{stem}.png", panels, "CPU, mini config: CrossLMM vs full-token baseline vs vision tower"
    )
    print(f"\nwrote {out / stem}.json and .png")


def _get(table: dict[str, dict[int, float]], variant: str, frames: int, scale: float = 1.0) -> float | None:
    value = table.get(variant, {}).get(frames)
    return None if value is None else scale * value


def _series(table: dict[str, dict[int, float]]) -> dict[str, tuple[list[int], list[float]]]:
    return {v: (list(values), list(values.values())) for v, values in table.items()}
