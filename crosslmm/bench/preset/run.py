"""Speed and memory of a model preset at its real size on one device (``crosslmm bench speed --preset``).

Random weights (values do not change the time; they are checked to give finite logits), built directly on
the device in the chosen dtype: a 7B model never exists on the CPU. One sample, ``text_before`` text tokens,
then the video, then the rest of the text (what T2V attends from). Per frame count, four cells:

- ``vision tower``: ``CrossLMMModel.encode_frames`` alone, chunked as the model runs it: the floor;
- ``CrossLMM``: the preset (pooling to a few tokens per frame + cross-attention to the original tokens);
- ``pooled, no cross-attn``: the same without its cross-attention layers;
- ``full-token``: LLaVA-OneVision's video path on the same weights: the projector on all patches, then
  bilinear pooling of each frame's grid to half its side, rounded up (27x27 -> 14x14 = 196 tokens), no
  cross-attention.

All four run one set of weights (``variants.share_weights``). Each cell: ``warmup`` untimed prefills, the
median of ``repeats`` timed prefills (generation-style: K/V cached, LM head on the last position), the
median of ``decode_steps`` one-token steps on that cache, the cached K/V in MB, and the peak memory of one
prefill without a cache above the weights. Times come from CUDA events on a GPU and ``perf_counter`` on a
CPU. Peak memory is ``torch.cuda.max_memory_allocated`` minus the weights' allocation (inputs, activations,
and anything the forward allocates count); on a CPU it is not measured (null): the RSS method of
``bench/speed/measure.py`` needs a fresh process per model, see the mini benchmark. A cell that runs out of
memory is recorded as ``"OOM"`` and the run goes on. Last, one stage-1 training step (projector + V2V
trainable, AdamW, batch 1): milliseconds and peak memory above the weights.

Settings and variant models: ``setup.py``; the training step: ``train.py``; the targets: ``targets.py``;
the clock, peak memory and OOM guard: ``device.py``; tables and plot: ``report.py`` (all in
``bench/preset/``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict
from typing import Any

import torch

from crosslmm.bench.flops import prefill_flops, vision_tower_flops
from crosslmm.bench.preset.device import Clock, PeakMemory, guarded, log, release
from crosslmm.bench.preset.setup import DTYPES, VARIANTS, PresetSettings, build_variants
from crosslmm.bench.preset.targets import preset_targets
from crosslmm.bench.preset.train import measure_train_step
from crosslmm.bench.variants import CROSSLMM, FULL, TOWER, cross_kv_mb, kv_cache_mb, make_inputs, run_variant
from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.modeling import CrossLMMForCausalLM
from crosslmm.paper import FIG4_CROSSLMM, FIG4_LLAVA_OV

SKIPPED = "skipped"


def _finite(out: Any) -> bool:
    tensor = out if isinstance(out, torch.Tensor) else out.logits
    return bool(torch.isfinite(tensor).all())


def measure_cell(
    models: dict[str, CrossLMMForCausalLM],
    variant: str,
    frames: int,
    settings: PresetSettings,
    clock: Clock,
    memory: PeakMemory,
) -> dict[str, Any]:
    """Prefill ms (median), decode-step ms (median), KV cache MB and peak memory MB of one cell."""
    model = models[CROSSLMM if variant == TOWER else variant]
    cfg = model.config
    after = settings.text_tokens - settings.text_before
    inputs = make_inputs(
        cfg, frames, after, text_before=settings.text_before, device=model.device, uint8_frames=True
    )
    cell: dict[str, Any] = {"tokens_per_frame": None if variant == TOWER else cfg.tokens_per_frame}
    cell["llm_tokens"] = None if variant == TOWER else inputs["input_ids"].shape[1]
    if variant == TOWER:
        flops = vision_tower_flops(cfg.vision_config, frames, cfg.vision_feature_layer)
    else:
        flops = prefill_flops(cfg, frames, after, prefix_tokens=settings.text_before).total
    with torch.inference_mode():
        for _ in range(settings.warmup):
            out = run_variant(model, variant, inputs, use_cache=True)
            if variant != TOWER:  # the first one-token step compiles/tunes its own kernels
                model(input_ids=out.logits[:, -1:].argmax(-1), cache=out.cache, logits_to_keep=1)
            del out
        runs = []
        for _ in range(settings.repeats):
            out = None  # free the last cache before the next prefill allocates its own
            ms, out = clock(run_variant, model, variant, inputs, use_cache=True)
            runs.append(ms)
        cell |= {"prefill_ms": statistics.median(runs), "prefill_ms_runs": runs, "finite": _finite(out)}
        cell |= {"analytic_tflops": flops / 1e12, "achieved_tflop_s": flops / 1e9 / cell["prefill_ms"]}
        if variant != TOWER:
            cell["cache_mb"], cell["cross_cache_mb"] = kv_cache_mb(out.cache), cross_kv_mb(out.cache)
            token, steps = out.logits[:, -1:].argmax(-1), []
            for _ in range(settings.decode_steps):
                ms, step = clock(model, input_ids=token, cache=out.cache, logits_to_keep=1)
                steps.append(ms)
                token = step.logits.argmax(-1)
            cell["decode_step_ms"] = statistics.median(steps)
            del step
        del out
        cell["peak_mb"] = None
        if settings.memory and memory.cuda:
            release(model.device)
            memory.reset()
            out = run_variant(model, variant, inputs, use_cache=False)
            cell["peak_mb"] = memory.peak_mb()
            del out
    return cell


def run_preset(config: CrossLMMConfig, settings: PresetSettings) -> dict[str, Any]:
    """All cells of the benchmark, then the training step; a line per cell on stderr."""
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() is False)"
        )
    started = time.perf_counter()
    models = build_variants(config, device, DTYPES[settings.dtype])
    memory, clock = PeakMemory(device), Clock(device)
    crosslmm = models[CROSSLMM]
    log(
        f"built {sum(p.numel() for p in crosslmm.parameters()) / 1e6:,.1f} M parameters on {device} "
        f"({settings.dtype}) in {time.perf_counter() - started:.1f} s"
    )
    cells = _measure_cells(models, settings, device, clock, memory)
    train = None
    if settings.train_frames is not None:
        start = time.perf_counter()
        train = guarded(measure_train_step, device, crosslmm, settings, clock, memory)
        log(
            f"stage-1 training step, {settings.train_frames} frames: {_summary(train)} ({time.perf_counter() - start:.1f} s)"
        )
    result = _describe_run(models, settings, device, memory) | {
        "cells": cells,
        "train_step": train,
        "paper_fig4": {m.model: asdict(m) for m in (FIG4_CROSSLMM, FIG4_LLAVA_OV)},
        "seconds": time.perf_counter() - started,
    }
    result["targets"] = [t.as_dict() for t in preset_targets(cells, settings.frames)]
    return result


def _measure_cells(
    models: dict[str, CrossLMMForCausalLM],
    settings: PresetSettings,
    device: torch.device,
    clock: Clock,
    memory: PeakMemory,
) -> dict[str, dict[int, Any]]:
    """Every (variant, frames) cell: a dict of measurements, ``"OOM"``, or ``SKIPPED`` (the full-token
    baseline past ``baseline_max_frames``); each cell also gets its prefill time over the tower's."""
    plan = [(t, v) for t in settings.frames for v in VARIANTS]
    cells: dict[str, dict[int, Any]] = {v: {} for v in VARIANTS}
    for i, (frames, variant) in enumerate(plan, 1):
        cap = settings.baseline_max_frames
        if variant == FULL and cap is not None and frames > cap:
            cells[variant][frames] = SKIPPED
            continue
        start = time.perf_counter()
        cell = guarded(measure_cell, device, models, variant, frames, settings, clock, memory)
        cells[variant][frames] = cell
        log(
            f"[{i:2d}/{len(plan)}] {frames:4d} frames, {variant}: {_summary(cell)} ({time.perf_counter() - start:.1f} s)"
        )
    for frames, tower in cells[TOWER].items():
        for variant in VARIANTS:
            cell = cells[variant][frames]
            if isinstance(cell, dict) and isinstance(tower, dict):
                cell["ratio_to_tower"] = cell["prefill_ms"] / tower["prefill_ms"]
    return cells


def _describe_run(
    models: dict[str, CrossLMMForCausalLM], settings: PresetSettings, device: torch.device, memory: PeakMemory
) -> dict[str, Any]:
    """What the numbers were measured on: device, library versions, settings, model sizes, variants."""
    crosslmm = models[CROSSLMM]
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": _transformers_version(),
        "settings": asdict(settings),
        "attn_implementation": crosslmm.config._attn_implementation,
        "parameters": sum(p.numel() for p in crosslmm.parameters()),
        "weights_mb": memory.weights_mb,
        "peak_memory": (
            "torch.cuda.max_memory_allocated() during one prefill without a cache, minus the weights' allocation"
            if memory.cuda
            else "not measured on a CPU (null); the mini benchmark (no --preset) measures RSS"
        ),
        "variants": {
            v: {
                "tokens_per_frame": m.config.tokens_per_frame,
                "cross_attention_layers": m.config.resolved_cross_layers(),
            }
            for v, m in models.items()
        },
        "frames": settings.frames,
    }


def _summary(cell: dict[str, Any] | str) -> str:
    if isinstance(cell, str):
        return cell
    parts = [
        f"{k} {cell[k]:.1f}"
        for k in ("prefill_ms", "decode_step_ms", "step_ms", "peak_mb")
        if cell.get(k) is not None
    ]
    return ", ".join(parts)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
