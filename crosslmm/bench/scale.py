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

All four run one set of weights (``speed.share_weights``). Each cell: ``warmup`` untimed prefills, the
median of ``repeats`` timed prefills (generation-style: K/V cached, LM head on the last position), the
median of ``decode_steps`` one-token steps on that cache, the cached K/V in MB, and the peak memory of one
prefill without a cache above the weights. Times come from CUDA events on a GPU and ``perf_counter`` on a
CPU. Peak memory is ``torch.cuda.max_memory_allocated`` minus the weights' allocation (inputs, activations,
and anything the forward allocates count); on a CPU it is not measured (null): the RSS method of
``speed._measure_memory`` needs a fresh process per model, see the mini benchmark. A cell that runs out of
memory is recorded as ``"OOM"`` and the run goes on. Last, one stage-1 training step (projector + V2V
trainable, AdamW, batch 1): milliseconds and peak memory above the weights.
"""

from __future__ import annotations

import copy
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from crosslmm.bench.flops import grid_tokens, prefill_flops, vision_tower_flops
from crosslmm.bench.paper import FIG4_CROSSLMM, FIG4_LLAVA_OV
from crosslmm.bench.speed import (
    CROSSLMM,
    FULL,
    POOLED,
    TOWER,
    MiniSpec,
    Target,
    cross_kv_mb,
    kv_cache_mb,
    make_inputs,
    run_variant,
    share_weights,
)
from crosslmm.data.dataset import IGNORE_INDEX
from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.modeling import CrossLMMForCausalLM
from crosslmm.model.presets import load_config_yaml

VARIANTS = (TOWER, CROSSLMM, POOLED, FULL)
OOM, SKIPPED = "OOM", "skipped"
STAGE1_TRAINABLE = ["projector", "v2v"]  # configs/train/crosslmm-7b-stage1.yaml
# The bench's own shapes, usable where a preset is asked for: seconds on a CPU (speed.MiniSpec).
MINI_PRESETS = {"mini": MiniSpec(), "mini-quick": MiniSpec.quick()}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class ScaleSettings:
    frames: list[int]
    device: str = "cuda"
    dtype: str = "bfloat16"
    repeats: int = 5
    warmup: int = 1
    decode_steps: int = 5
    text_tokens: int = 70  # in all, around the video
    text_before: int = 10  # of those, before the video (no T2V): chat header and system prompt
    train_frames: int | None = 32  # stage 1 samples 32 frames; None: no training step
    baseline_max_frames: int | None = None
    memory: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.repeats < 1 or self.warmup < 0 or self.decode_steps < 1:
            raise ValueError("--repeats and --decode-steps must be >= 1 and --warmup >= 0")
        if not 0 <= self.text_before < self.text_tokens:
            raise ValueError(
                f"--text-before must be in [0, --text-tokens={self.text_tokens}), got {self.text_before}"
            )
        if self.train_frames is not None and self.train_frames < 1:
            raise ValueError(f"--train-frames must be positive, got {self.train_frames}")


def load_preset(name: str) -> CrossLMMConfig:
    """A ``configs/model`` preset (name or YAML path) or one of ``MINI_PRESETS``; a preset without a video
    token id gets the last vocabulary row (Qwen2.5 pads its vocabulary past the tokenizer's ids)."""
    if name in MINI_PRESETS:
        spec = MINI_PRESETS[name]
        return spec.config(spec.tokens_per_frame, spec.cross_attention_every)
    config = CrossLMMConfig(**load_config_yaml(name))
    if config.video_token_id is None:
        config.video_token_id = config.text_config.vocab_size - 1
    return config


def llava_ov_tokens_per_frame(vision_config: Any) -> int:
    """LLaVA-OneVision's video tokens per frame: the patch grid bilinearly resized to ceil(side / 2)."""
    return math.ceil(math.isqrt(grid_tokens(vision_config)) / 2) ** 2


def variant_configs(config: CrossLMMConfig) -> dict[str, CrossLMMConfig]:
    """The configs of the LLM-running cells; the tower cell runs CrossLMM's ``encode_frames``."""
    pooled = copy.deepcopy(config)
    pooled.cross_attention_layers, pooled.cross_attention_every = None, 0
    full = copy.deepcopy(pooled)
    full.tokens_per_frame = llava_ov_tokens_per_frame(config.vision_config)
    full.pooling_mode, full.pooling_antialias, full.pooling_position = "bilinear", False, "after_projector"
    for variant in (pooled, full):
        variant.validate_crosslmm()
    return {CROSSLMM: config, POOLED: pooled, FULL: full}


def build_variants(config: CrossLMMConfig, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """CrossLMM with random weights made on ``device`` in ``dtype``, and the other variants sharing them."""
    configs = variant_configs(config)
    torch.manual_seed(seed)
    with torch.device(device):
        crosslmm = CrossLMMForCausalLM._from_config(configs[CROSSLMM], dtype=dtype).eval()
    models = {CROSSLMM: crosslmm}
    models.update({name: share_weights(crosslmm, configs[name]) for name in (POOLED, FULL)})
    return models


class Clock:
    """Milliseconds of one call: CUDA events around it on a GPU (the host returns before the GPU is done),
    ``perf_counter`` around it on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
        if not self.cuda:
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            return 1e3 * (time.perf_counter() - start), out
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn(*args, **kwargs)
        end.record()
        end.synchronize()
        return start.elapsed_time(end), out


class PeakMemory:
    """Peak allocated memory above the weights, MB (2^20 bytes); None on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        _release(device)
        self.weights = torch.cuda.memory_allocated(device) if self.cuda else None

    @property
    def weights_mb(self) -> float | None:
        return None if self.weights is None else self.weights / 2**20

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float | None:
        return (torch.cuda.max_memory_allocated(self.device) - self.weights) / 2**20 if self.cuda else None


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or an allocator's RuntimeError (CPU: "can't allocate memory")."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _finite(out: Any) -> bool:
    tensor = out if isinstance(out, torch.Tensor) else out.logits
    return bool(torch.isfinite(tensor).all())


def measure_cell(
    models: dict[str, CrossLMMForCausalLM],
    variant: str,
    frames: int,
    settings: ScaleSettings,
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
            _release(model.device)
            memory.reset()
            out = run_variant(model, variant, inputs, use_cache=False)
            cell["peak_mb"] = memory.peak_mb()
            del out
    return cell


def measure_train_step(
    model: CrossLMMForCausalLM, settings: ScaleSettings, clock: Clock, memory: PeakMemory
) -> dict[str, Any]:
    """One stage-1 step on one sample: projector + V2V trainable, captions (the text after the video)
    labelled, AdamW; ``warmup`` steps first (they allocate the optimizer state), then ``repeats`` timed."""
    from crosslmm.training.params import set_trainable

    frames, after = settings.train_frames, settings.text_tokens - settings.text_before
    inputs = make_inputs(
        model.config, frames, after, text_before=settings.text_before, device=model.device, uint8_frames=True
    )
    labels = inputs["input_ids"].clone()
    labels[:, : labels.shape[1] - after] = IGNORE_INDEX
    flags = {p: p.requires_grad for p in model.parameters()}
    counts = set_trainable(model, STAGE1_TRAINABLE, lora=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step() -> torch.Tensor:
        loss = model(**inputs, labels=labels, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    model.train()
    try:
        for _ in range(max(settings.warmup, 1)):
            step()
        _release(model.device)
        memory.reset()
        runs, losses = [], []
        for _ in range(settings.repeats):
            ms, loss = clock(step)
            runs.append(ms)
            losses.append(float(loss))
        state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values())
        return {
            "frames": frames,
            "trainable": STAGE1_TRAINABLE,
            "trainable_params": sum(counts.values()),
            "step_ms": statistics.median(runs),
            "step_ms_runs": runs,
            "peak_mb": memory.peak_mb(),
            "optimizer_state_mb": state / 2**20,
            "finite": all(math.isfinite(x) for x in losses),
        }
    finally:
        model.eval()
        for p, flag in flags.items():
            p.requires_grad_(flag)


def _guarded(fn: Callable[..., dict[str, Any]], device: torch.device, *args: Any) -> dict[str, Any] | str:
    """``fn(*args)``, or ``"OOM"`` when it runs out of memory; memory is released either way. The error is
    left before releasing: its traceback holds the frames' tensors."""
    try:
        return fn(*args)
    except RuntimeError as err:
        if not is_oom(err):
            raise
        message = str(err).splitlines()[0]
    _release(device)
    _log(f"    out of memory: {message}")
    return OOM


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_scale(config: CrossLMMConfig, settings: ScaleSettings) -> dict[str, Any]:
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
    _log(
        f"built {sum(p.numel() for p in crosslmm.parameters()) / 1e6:,.1f} M parameters on {device} "
        f"({settings.dtype}) in {time.perf_counter() - started:.1f} s"
    )
    plan = [(t, v) for t in settings.frames for v in VARIANTS]
    cells: dict[str, dict[int, Any]] = {v: {} for v in VARIANTS}
    for i, (frames, variant) in enumerate(plan, 1):
        cap = settings.baseline_max_frames
        if variant == FULL and cap is not None and frames > cap:
            cells[variant][frames] = SKIPPED
            continue
        start = time.perf_counter()
        cell = _guarded(measure_cell, device, models, variant, frames, settings, clock, memory)
        cells[variant][frames] = cell
        _log(
            f"[{i:2d}/{len(plan)}] {frames:4d} frames, {variant}: {_summary(cell)} ({time.perf_counter() - start:.1f} s)"
        )
    for frames, tower in cells[TOWER].items():
        for variant in VARIANTS:
            cell = cells[variant][frames]
            if isinstance(cell, dict) and isinstance(tower, dict):
                cell["ratio_to_tower"] = cell["prefill_ms"] / tower["prefill_ms"]
    train = None
    if settings.train_frames is not None:
        start = time.perf_counter()
        train = _guarded(measure_train_step, device, crosslmm, settings, clock, memory)
        _log(
            f"stage-1 training step, {settings.train_frames} frames: {_summary(train)} ({time.perf_counter() - start:.1f} s)"
        )
    result = {
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
        "cells": cells,
        "train_step": train,
        "paper_fig4": {m.model: asdict(m) for m in (FIG4_CROSSLMM, FIG4_LLAVA_OV)},
        "seconds": time.perf_counter() - started,
    }
    result["targets"] = [asdict(t) | {"met": t.met} for t in scale_targets(cells, settings.frames)]
    return result


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


def _value(cells: dict[str, dict[int, Any]], variant: str, frames: int, key: str) -> float | None:
    cell = cells.get(variant, {}).get(frames)
    return cell.get(key) if isinstance(cell, dict) else None


def scale_targets(cells: dict[str, dict[int, Any]], frames: list[int]) -> list[Target]:
    """docs/efficiency.md's targets for the 7B preset on an H100/H200-class GPU, each at the frame count it names
    (left out where that frame count was not asked for). A cell that did not run (OOM) gives no value."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    targets = [
        Target(
            f"prefill CrossLMM / vision tower at {t} frames",
            ratio(_value(cells, CROSSLMM, t, "prefill_ms"), _value(cells, TOWER, t, "prefill_ms")),
            1.3,
        )
        for t in frames
    ]
    if 256 in frames:
        paper_ms = FIG4_CROSSLMM.prefill_ms[256]
        targets.append(
            Target(
                "prefill ms CrossLMM at 256 frames (paper: 2019)",
                _value(cells, CROSSLMM, 256, "prefill_ms"),
                paper_ms,
            )
        )
    if 128 in frames:
        targets.append(
            Target(
                "prefill CrossLMM / full-token at 128 frames (>= 5x faster)",
                ratio(_value(cells, CROSSLMM, 128, "prefill_ms"), _value(cells, FULL, 128, "prefill_ms")),
                0.2,
            )
        )
    if 256 in frames and _value(cells, TOWER, 256, "peak_mb") is not None:
        targets.append(
            Target(
                "peak MB above weights, CrossLMM at 256 frames (paper: 2530)",
                _value(cells, CROSSLMM, 256, "peak_mb"),
                2500,
            )
        )
    return targets
