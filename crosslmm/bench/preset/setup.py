"""What a ``crosslmm bench speed --preset`` run is made of: its settings, the preset's config, and the
variant models sharing the preset's random weights (see ``run.py``)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from crosslmm.bench.flops.shapes import grid_tokens
from crosslmm.bench.mini import MiniSpec
from crosslmm.bench.variants import CROSSLMM, FULL, POOLED, TOWER, share_weights
from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.modeling import CrossLMMForCausalLM
from crosslmm.model.presets import load_config_yaml

VARIANTS = (TOWER, CROSSLMM, POOLED, FULL)
# The bench's own shapes, usable where a preset is asked for: seconds on a CPU (mini.MiniSpec).
MINI_PRESETS = {"mini": MiniSpec(), "mini-quick": MiniSpec.quick()}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class PresetSettings:
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
