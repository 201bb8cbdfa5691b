"""``crosslmm bench speed``'s bounded-decode rows: a generated token's cost and the cross-attention cache
with ``decode_memory="topk_frames"`` (docs/streaming.md, "Bounded decode") against exact decoding and the
pooled-only model, on the CPU mini of ``measure.py``.

One set of weights (``mini.build_models``); the bounded mode is a generate-time setting of the cache
(``CrossLMMCache(decode_memory=..., decode_frames=m)``), so every row runs the same model. Per frame count
and repeat the cells are timed back to back in a rotated order, each a prompt prefill (``use_cache=True``)
then ``decode_steps`` one-token steps; numbers are medians.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from crosslmm.bench.mini import MiniSpec, build_models
from crosslmm.bench.report import format_table, write_json
from crosslmm.bench.speed.measure import _seconds
from crosslmm.bench.targets import Target, print_targets
from crosslmm.bench.variants import CROSSLMM, POOLED, make_inputs
from crosslmm.model.cache import CrossLMMCache

FULL_DECODE = "CrossLMM, full"


def _cell_name(decode_frames: int | None) -> str:
    return FULL_DECODE if decode_frames is None else f"CrossLMM, top-{decode_frames} frames"


def _cache(model, decode_frames: int | None) -> CrossLMMCache:
    if decode_frames is None:
        return CrossLMMCache(config=model.config.text_config, decode_memory="full")
    return CrossLMMCache(
        config=model.config.text_config, decode_memory="topk_frames", decode_frames=decode_frames
    )


def run_bounded_decode(
    spec: MiniSpec,
    frames: list[int],
    decode_frames: list[int],
    *,
    repeats: int = 3,
    decode_steps: int = 5,
    threads: int = 1,
) -> dict[str, Any]:
    """Prefill ms, decode-step ms and cross-attention cache MB per (cell, frames); cells: the pooled-only
    model, CrossLMM exact, CrossLMM keeping the top ``m`` frames for each ``m`` in ``decode_frames``."""
    torch.set_num_threads(threads)
    models = build_models(spec)
    cells: list[tuple[str, str, int | None]] = [(POOLED, POOLED, None), (FULL_DECODE, CROSSLMM, None)]
    cells += [(_cell_name(m), CROSSLMM, m) for m in decode_frames]
    samples: dict[tuple[str, str, int], list[float]] = {}
    cross_mb: dict[str, dict[int, float]] = {}
    with torch.inference_mode():
        for repeat in range(repeats + 1):  # repeat 0 warms up (lazy initialisation), untimed
            for t in frames:
                order = cells[repeat % len(cells) :] + cells[: repeat % len(cells)]
                for name, variant, m in order:
                    model = models[variant]
                    inputs = make_inputs(model.config, t, spec.text_tokens)
                    cache = _cache(model, m) if model.model.cross_layers else None
                    seconds, out = _seconds(model, **inputs, cache=cache, use_cache=True, logits_to_keep=1)
                    timed = [seconds]
                    token = out.logits[:, -1:].argmax(-1)
                    for _ in range(decode_steps):
                        seconds, step = _seconds(model, input_ids=token, cache=out.cache, logits_to_keep=1)
                        timed.append(seconds)
                        token = step.logits.argmax(-1)
                    if repeat:
                        samples.setdefault(("prefill_s", name, t), []).append(timed[0])
                        samples.setdefault(("decode_step_s", name, t), []).extend(timed[1:])
                        nbytes = out.cache.cross_nbytes() if isinstance(out.cache, CrossLMMCache) else 0
                        cross_mb.setdefault(name, {})[t] = nbytes / 2**20
                    del out
    results: dict[str, Any] = {"prefill_s": {}, "decode_step_s": {}, "cross_cache_mb": cross_mb}
    for (metric, name, t), values in samples.items():
        results[metric].setdefault(name, {})[t] = statistics.median(values)
    results["targets"] = [target.as_dict() for target in _targets(results, frames[-1], decode_frames)]
    return {"frames": frames, "decode_frames": decode_frames, "repeats": repeats, **results}


def _targets(results: dict[str, Any], last: int, decode_frames: list[int]) -> list[Target]:
    """The bounded-decode targets (docs/streaming.md) at the largest frame count, for each ``m``."""
    decode, mb = results["decode_step_s"], results["cross_cache_mb"]
    targets = []
    for m in decode_frames:
        name = _cell_name(m)
        targets.append(
            Target(
                f"decode step top-{m} / pooled at {last} frames",
                decode[name][last] / decode[POOLED][last],
                1.3,
            )
        )
        targets.append(
            Target(
                f"cross-cache MB top-{m} / full at {last} frames",
                mb[name][last] / mb[FULL_DECODE][last],
                0.25,
            )
        )
    return targets


def bench_bounded_decode(
    spec: MiniSpec,
    frames: list[int],
    decode_frames: list[int],
    *,
    repeats: int,
    decode_steps: int,
    threads: int,
    out: Path,
    stem: str,
) -> dict[str, Any]:
    """Run ``run_bounded_decode``; print its table and targets; write ``out/STEM_bounded.json``."""
    result = run_bounded_decode(
        spec, frames, decode_frames, repeats=repeats, decode_steps=decode_steps, threads=threads
    )
    prefill, decode, mb = result["prefill_s"], result["decode_step_s"], result["cross_cache_mb"]
    rows = [
        [
            t,
            name,
            1e3 * prefill[name][t],
            1e3 * decode[name][t],
            decode[name][t] / decode[POOLED][t],
            mb[name][t],
        ]
        for t in frames
        for name in decode
    ]
    print(f"\nBounded decode, CPU mini config ({threads} threads, median of {repeats})")
    print(
        format_table(["frames", "model", "prefill ms", "decode step ms", "/ pooled", "cross cache MB"], rows)
    )
    print_targets(result["targets"])
    write_json(out / f"{stem}_bounded.json", result)
    print(f"wrote {out / stem}_bounded.json")
    return result
