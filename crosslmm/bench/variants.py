"""The four cells every speed benchmark compares, on one set of weights: the vision tower alone (the floor:
every frame must be encoded once), CrossLMM, CrossLMM without its cross-attention layers, and a full-token
baseline; the inputs they run on, one prefill of each, and the size of the cache it leaves."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.modeling import CrossLMMForCausalLM

CROSSLMM, POOLED, FULL, TOWER = "CrossLMM", "pooled, no cross-attn", "full-token", "vision tower"


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
    fields = ("tokens_per_frame", "v2v_scope", "vision_chunk_size")  # the shared DCALs were built with base's
    if inner.cross_layers and any(getattr(config, f) != getattr(base.config, f) for f in fields):
        raise ValueError(f"cross-attention layers can be shared only when {', '.join(fields)} are the same")
    inner.cross_layers = nn.ModuleDict({i: source.cross_layers[i] for i in inner.cross_layers})
    inner.video_end_embedding = source.video_end_embedding
    model.lm_head = base.lm_head
    on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise ValueError(f"cannot share weights: {on_meta[:3]} have no counterpart in the base model")
    return model.train(base.training)


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


def kv_cache_mb(cache: Any) -> float:
    """Self-attention K/V plus the cross-attention K/V kept for decoding, MB."""
    self_kv = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    return self_kv / 2**20 + cross_kv_mb(cache)


def cross_kv_mb(cache: Any) -> float:
    return (
        sum(t.numel() * t.element_size() for kv in getattr(cache, "cross_kv", {}).values() for t in kv)
        / 2**20
    )
