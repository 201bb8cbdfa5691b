"""CPU prefill time, decode-step time and peak activation memory of CrossLMM against a full-token
baseline built from the same weights and against the vision tower alone (the floor: every frame must be
encoded once).

All variants share one set of random weights and are measured in one run, interleaved, so machine load hits
them alike; each number is a median over repeats. Absolute times mean little on a shared CPU; the ratios do.

Peak memory: in a fresh worker process (``rss.in_fresh_process``), the peak resident memory of each forward
above what was resident before it (``rss.peak_rss``; weights and the input pixels excluded). Linux only.
The command's tables and plot are in ``report.py``; the model in ``bench/mini.py``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from crosslmm.bench.flops import prefill_flops, vision_tower_flops
from crosslmm.bench.mini import MiniSpec, build_models
from crosslmm.bench.report import loglog_slope
from crosslmm.bench.rss import in_fresh_process, peak_rss
from crosslmm.bench.targets import Target
from crosslmm.bench.variants import CROSSLMM, FULL, POOLED, TOWER, kv_cache_mb, make_inputs, run_variant
from crosslmm.model.modeling import CrossLMMForCausalLM


def _seconds(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def _warm_up(models: dict[str, CrossLMMForCausalLM], plan: list[tuple[int, str]], text_tokens: int) -> None:
    """First calls pay for lazy initialisation (thread pools, kernel caches): keep that out of the numbers."""
    with torch.inference_mode():
        for variant in dict.fromkeys(v for _, v in plan):
            model = models[CROSSLMM if variant == TOWER else variant]
            run_variant(model, variant, make_inputs(model.config, plan[0][0], text_tokens), use_cache=False)


def _time_variants(
    models: dict[str, CrossLMMForCausalLM],
    plan: list[tuple[int, str]],
    text_tokens: int,
    repeats: int,
    decode_steps: int,
) -> dict[str, dict[str, dict[int, float]]]:
    """Median prefill (generation-style, cache kept) and decode-step seconds; the plan is walked in a
    rotated order each repeat, so slow phases of the machine do not all land on one variant."""
    _warm_up(models, plan, text_tokens)
    samples: dict[tuple[str, str, int], list[float]] = {}
    cache_mb: dict[str, dict[int, float]] = {}
    for repeat in range(repeats):
        shift = repeat * len(plan) // max(repeats, 1)
        for frames, variant in plan[shift:] + plan[:shift]:
            if variant == FULL and repeat:
                continue  # 10-40x slower than the rest: one timing is enough for its ratios
            model = models[CROSSLMM if variant == TOWER else variant]
            inputs = make_inputs(model.config, frames, text_tokens)
            with torch.inference_mode():
                seconds, out = _seconds(run_variant, model, variant, inputs, use_cache=True)
                samples.setdefault(("prefill_s", variant, frames), []).append(seconds)
                if variant == TOWER:
                    continue
                cache_mb.setdefault(variant, {})[frames] = kv_cache_mb(out.cache)
                token = out.logits[:, -1:].argmax(-1)
                for _ in range(decode_steps):
                    seconds, step = _seconds(model, input_ids=token, cache=out.cache, logits_to_keep=1)
                    samples.setdefault(("decode_step_s", variant, frames), []).append(seconds)
                    token = step.logits.argmax(-1)
            del out
    results: dict[str, dict[str, dict[int, float]]] = {
        "prefill_s": {},
        "decode_step_s": {},
        "cache_mb": cache_mb,
    }
    for (metric, variant, frames), values in samples.items():
        results[metric].setdefault(variant, {})[frames] = statistics.median(values)
    return results


def _memory_worker(spec: MiniSpec, plan: list[tuple[int, str]], threads: int) -> dict[str, dict[int, float]]:
    """Peak activation MB per (variant, frames); runs in a fresh process, see the module docstring."""
    torch.set_num_threads(threads)
    models = build_models(spec)
    _warm_up(models, plan, spec.text_tokens)
    peaks: dict[str, dict[int, float]] = {}
    for frames, variant in plan:
        model = models[CROSSLMM if variant == TOWER else variant]
        inputs = make_inputs(model.config, frames, spec.text_tokens)
        with torch.inference_mode():
            peak, _, out = peak_rss(run_variant, model, variant, inputs, use_cache=False)
        peaks.setdefault(variant, {})[frames] = peak
        del out
    return peaks


def run_speed(
    spec: MiniSpec,
    frames: list[int],
    *,
    repeats: int = 3,
    decode_steps: int = 5,
    baseline_max_frames: int = 64,
    threads: int = 1,
    memory: bool = True,
) -> dict[str, Any]:
    """The whole benchmark; the full-token baseline stops at ``baseline_max_frames`` because its
    attention is quadratic in frames (at 256 frames it would take hours on a CPU)."""
    torch.set_num_threads(threads)
    models = build_models(spec)
    plan = [(t, v) for t in frames for v in (TOWER, CROSSLMM, POOLED)]
    plan += [(t, FULL) for t in frames if t <= baseline_max_frames]
    results: dict[str, Any] = _time_variants(models, plan, spec.text_tokens, repeats, decode_steps)
    results["peak_activation_mb"] = in_fresh_process(_memory_worker, spec, plan, threads) if memory else {}
    cfg = models[CROSSLMM].config
    results["analytic_gflops"] = {
        CROSSLMM: {t: prefill_flops(cfg, t, spec.text_tokens).total / 1e9 for t in frames},
        TOWER: {t: vision_tower_flops(cfg.vision_config, t) / 1e9 for t in frames},
    }
    results["slope"] = {  # a variant measured at one frame count only (the capped baseline) has none
        v: loglog_slope(list(times), list(times.values()))
        for v, times in results["prefill_s"].items()
        if len(times) > 1
    }
    results["targets"] = [t.as_dict() for t in _targets(results, frames)]
    return {"spec": asdict(spec), "threads": threads, "repeats": repeats, "frames": frames, **results}


def _targets(results: dict[str, Any], frames: list[int]) -> list[Target]:
    """docs/efficiency.md's speed targets, each at the frame count it names when it was measured (else the
    nearest measured one), so the smoke settings still produce every key."""
    prefill, decode, peak = results["prefill_s"], results["decode_step_s"], results["peak_activation_mb"]
    at_64 = min(prefill[FULL], key=lambda t: abs(t - 64))
    last = frames[-1]
    analytic = results["analytic_gflops"]
    flops_ratio = analytic[CROSSLMM][last] / analytic[TOWER][last]
    time_ratio = prefill[CROSSLMM][last] / prefill[TOWER][last]
    targets = [
        Target(
            f"prefill CrossLMM / full-token at {at_64} frames",
            prefill[CROSSLMM][at_64] / prefill[FULL][at_64],
            0.15,
        ),
        Target(f"prefill time slope, {frames[0]}-{last} frames", results["slope"].get(CROSSLMM), 1.1),
        Target(
            f"|prefill/tower time ratio / FLOPs ratio - 1| at {last} frames",
            abs(time_ratio / flops_ratio - 1),
            0.10,
        ),
        Target(
            f"decode step with / without DCALs at {at_64} frames",
            decode[CROSSLMM][at_64] / decode[POOLED][at_64],
            1.3,
        ),
    ]
    if peak:
        targets.append(
            Target(
                f"peak activation / tower peak at {last} frames",
                peak[CROSSLMM][last] / peak[TOWER][last],
                1.2,
            )
        )
    return targets
