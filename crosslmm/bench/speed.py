"""CPU prefill time, decode-step time and peak activation memory of CrossLMM against a full-token
baseline built from the same weights and against the vision tower alone (the floor: every frame must be
encoded once).

All variants share one set of random weights and are measured in one run, interleaved, so machine load hits
them alike; each number is a median over repeats. Absolute times mean little on a shared CPU; the ratios do.

Peak memory: a worker process started with ``MALLOC_MMAP_THRESHOLD_=65536``, so every tensor of 64 KiB or
more is its own mmap, returned to the OS when freed; resident memory then follows live tensors. Before each
forward the worker resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), and reports peak minus
resident memory before the call (weights and the input pixels excluded). Linux only.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from crosslmm.bench.flops import prefill_flops, vision_tower_flops
from crosslmm.bench.report import loglog_slope
from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.modeling import CrossLMMForCausalLM

VIDEO_TOKEN_ID = 511  # last id of the 512-token mini vocabulary
CROSSLMM, POOLED, FULL, TOWER = "CrossLMM", "pooled, no cross-attn", "full-token", "vision tower"


@dataclass(frozen=True)
class MiniSpec:
    """A CPU-sized CrossLMM keeping the 7B's proportions where they decide the ratios.

    Kept: SigLIP-like tower with 27x27 = 729 patches per frame; LLM cost per token / tower cost per patch
    ~13 (7B: 14.3), so 9 pooled tokens cost ~0.17 of encoding their frame (7B: 0.18); decoder attention
    scores / dense work per layer at equal sequence length (q width 32 against a 384-wide, 1408-inner
    decoder) close to the 7B's (3584 against 3584/18944), so the quadratic term of the full-token baseline
    grows as it would at 7B; DCAL K/V projections ~2.5 % of the tower (7B: 3.6 %). Not kept: absolute
    widths, so the tower's own attention scores are ~55 % of its work (7B: ~11 %).
    """

    image_size: int = 108
    patch_size: int = 4
    vision_width: int = 96
    vision_mlp: int = 384
    vision_layers: int = 2
    vision_heads: int = 2
    hidden: int = 384
    intermediate: int = 1408
    layers: int = 4
    heads: int = 2
    kv_heads: int = 1
    head_dim: int = 16
    cross_attention_every: int = 2
    tokens_per_frame: int = 9
    text_tokens: int = 70
    vision_chunk_size: int = 32

    @classmethod
    def quick(cls) -> MiniSpec:
        """Seconds-scale shapes for smoke tests: the same code paths, nothing proportional."""
        return cls(
            image_size=54,
            patch_size=2,
            vision_width=16,
            vision_mlp=32,
            vision_layers=1,
            vision_heads=1,
            hidden=32,
            intermediate=64,
            layers=2,
            heads=2,
            kv_heads=1,
            head_dim=16,
            text_tokens=8,
            vision_chunk_size=4,
        )

    @property
    def grid_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def config(self, tokens_per_frame: int, cross_attention_every: int) -> CrossLMMConfig:
        return CrossLMMConfig(
            vision_config=dict(
                model_type="siglip_vision_model",
                hidden_size=self.vision_width,
                intermediate_size=self.vision_mlp,
                num_hidden_layers=self.vision_layers,
                num_attention_heads=self.vision_heads,
                image_size=self.image_size,
                patch_size=self.patch_size,
                vision_use_head=False,
            ),
            text_config=dict(
                model_type="qwen2",
                vocab_size=VIDEO_TOKEN_ID + 1,
                hidden_size=self.hidden,
                intermediate_size=self.intermediate,
                num_hidden_layers=self.layers,
                num_attention_heads=self.heads,
                num_key_value_heads=self.kv_heads,
                head_dim=self.head_dim,
                max_position_embeddings=1 << 20,
            ),
            tokens_per_frame=tokens_per_frame,
            cross_attention_every=cross_attention_every,
            video_token_id=VIDEO_TOKEN_ID,
            vision_chunk_size=self.vision_chunk_size,
        )


def share_weights(base: CrossLMMForCausalLM, config: CrossLMMConfig) -> CrossLMMForCausalLM:
    """A model for ``config`` that runs ``base``'s own tower, projector, LLM and LM head: the same tensors, no
    copy, so a 7B baseline costs no second set of weights. Built on the meta device, then pointed at base's
    modules; ``config`` may differ only where no weights are involved (tokens per frame, pooling) or keep
    fewer cross-attention layers."""
    with torch.device("meta"):
        model = CrossLMMForCausalLM(config)
    inner, source = model.model, base.model
    for name in ("vision_tower", "language_model"):
        setattr(inner, name, getattr(source, name))
    for name, layer in source.projector.named_children():  # its weights; pooling stays as config says
        setattr(inner.projector, name, layer)
    if missing := sorted(set(inner.cross_layers) - set(source.cross_layers)):
        raise ValueError(f"the base model has no cross-attention layers {missing} to share")
    inner.cross_layers = nn.ModuleDict({i: source.cross_layers[i] for i in inner.cross_layers})
    inner.video_end_embedding = source.video_end_embedding
    model.lm_head = base.lm_head
    on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise ValueError(f"cannot share weights: {on_meta[:3]} have no counterpart in the base model")
    return model.train(base.training)


def build_models(spec: MiniSpec, seed: int = 0) -> dict[str, CrossLMMForCausalLM]:
    """CrossLMM, the same without its DCALs, and the full-token baseline (all patches, no DCALs), all
    running CrossLMM's tower, projector and LLM weights."""
    torch.manual_seed(seed)
    crosslmm = CrossLMMForCausalLM(spec.config(spec.tokens_per_frame, spec.cross_attention_every)).eval()
    models = {CROSSLMM: crosslmm}
    for name, tokens in ((POOLED, spec.tokens_per_frame), (FULL, spec.grid_tokens)):
        models[name] = share_weights(crosslmm, spec.config(tokens, 0))
    return models


def make_inputs(
    config: CrossLMMConfig,
    frames: int,
    text_tokens: int,
    *,
    text_before: int = 0,
    device: torch.device | str = "cpu",
    uint8_frames: bool = False,
) -> dict[str, torch.Tensor]:
    """One sample, ``[text_before text][video tokens][text_tokens text]``: the text after the video is what
    T2V attends from. Frames are normalised-looking floats, or uint8 as the processor gives them (the model
    normalises those chunk by chunk). Made on ``device``, seeded by the frame count."""
    vid = config.video_token_id
    video = torch.full((frames * config.tokens_per_frame,), vid, device=device)
    seed = torch.Generator(device).manual_seed(frames)
    text = torch.randint(0, vid, (text_tokens + text_before,), generator=seed, device=device)
    size = config.vision_config.image_size
    shape, seed = (1, frames, 3, size, size), torch.Generator(device).manual_seed(frames)
    if uint8_frames:
        pixels = torch.randint(0, 256, shape, generator=seed, device=device, dtype=torch.uint8)
    else:
        pixels = torch.randn(shape, generator=seed, device=device)
    ids = torch.cat([text[text_tokens:], video, text[:text_tokens]])
    return {"input_ids": ids[None], "pixel_values_videos": pixels}


def run_variant(
    model: CrossLMMForCausalLM, variant: str, inputs: dict[str, torch.Tensor], use_cache: bool
) -> Any:
    """One prefill of ``variant``; the tower floor encodes the frames exactly as the model does."""
    if variant == TOWER:
        return model.model.encode_frames(inputs["pixel_values_videos"][0])
    return model(**inputs, use_cache=use_cache, logits_to_keep=1)


def _seconds(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def kv_cache_mb(cache: Any) -> float:
    """Self-attention K/V plus the cross-attention K/V kept for decoding, MB."""
    self_kv = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    return self_kv / 2**20 + cross_kv_mb(cache)


def cross_kv_mb(cache: Any) -> float:
    return (
        sum(t.numel() * t.element_size() for kv in getattr(cache, "cross_kv", {}).values() for t in kv)
        / 2**20
    )


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


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _memory_worker(spec: MiniSpec, plan: list[tuple[int, str]], threads: int) -> dict[str, dict[int, float]]:
    """Peak activation MB per (variant, frames); runs in a fresh process, see the module docstring."""
    import ctypes

    torch.set_num_threads(threads)
    libc = ctypes.CDLL("libc.so.6")
    models = build_models(spec)
    _warm_up(models, plan, spec.text_tokens)
    peaks: dict[str, dict[int, float]] = {}
    for frames, variant in plan:
        model = models[CROSSLMM if variant == TOWER else variant]
        inputs = make_inputs(model.config, frames, spec.text_tokens)
        gc.collect()
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _proc_status_kb("VmRSS")
        with torch.inference_mode():
            out = run_variant(model, variant, inputs, use_cache=False)
        peaks.setdefault(variant, {})[frames] = (_proc_status_kb("VmHWM") - before) / 1024
        del out
    return peaks


def _measure_memory(spec: MiniSpec, plan: list[tuple[int, str]], threads: int) -> dict[str, dict[int, float]]:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter reads the malloc setting at start
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        with context.Pool(1) as pool:
            return pool.apply(_memory_worker, (spec, plan, threads))
    finally:
        if saved is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None  # None: not measured (e.g. out of memory), so not met
    limit: float

    @property
    def met(self) -> bool:
        return self.value is not None and self.value <= self.limit


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
    results["peak_activation_mb"] = _measure_memory(spec, plan, threads) if memory else {}
    cfg = models[CROSSLMM].config
    results["analytic_gflops"] = {
        CROSSLMM: {t: prefill_flops(cfg, t, spec.text_tokens).total / 1e9 for t in frames},
        TOWER: {t: vision_tower_flops(cfg.vision_config, t) / 1e9 for t in frames},
    }
    results["slope"] = {
        v: loglog_slope(list(times), list(times.values())) for v, times in results["prefill_s"].items()
    }
    results["targets"] = [asdict(t) | {"met": t.met} for t in _targets(results, frames)]
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
        Target(f"prefill time slope, {frames[0]}-{last} frames", results["slope"][CROSSLMM], 1.1),
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
