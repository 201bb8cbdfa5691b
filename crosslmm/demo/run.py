"""``crosslmm demo``: the paper's claim on a laptop CPU, end to end through the real training and eval paths.

Five tiny models that differ only in the visual path (every other weight, the data, the optimiser and the
number of optimiser steps are the same) are trained with :func:`crosslmm.train.main` on the synthetic
marker task (:mod:`crosslmm.demo.synth`) and scored through :mod:`crosslmm.inference`, the functions the
lmms-eval plugin calls. The table puts accuracy next to the LLM's sequence length and the analytic prefill
FLOPs, so one can see what pooling to one token per frame costs in accuracy and what the cross-attention
brings back.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from crosslmm.demo.synth import SynthSpec, generate

logger = logging.getLogger("crosslmm.demo")

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "demo.yaml"


@dataclass(frozen=True)
class Variant:
    """One model of the comparison: a name and the CrossLMMConfig fields of its visual path."""

    name: str
    label: str
    fields: dict


def variants(grid: int, cross_layers: list[int]) -> list[Variant]:
    """The five visual paths of the paper's ablation (Table 2a) plus the unpooled baseline."""
    pooled = dict(tokens_per_frame=1, cross_attention_layers=cross_layers)
    return [
        Variant("full", f"full tokens ({grid * grid}/frame)", dict(tokens_per_frame=grid * grid, cross_attention_every=0)),
        Variant("pool", "pool to 1, no cross-attn", dict(tokens_per_frame=1, cross_attention_every=0)),
        Variant("pool_v2v", "pool to 1 + V2V", pooled | dict(v2v=True, t2v=False)),
        Variant("pool_t2v", "pool to 1 + T2V", pooled | dict(v2v=False, t2v=True)),
        Variant("crosslmm", "pool to 1 + V2V + T2V (CrossLMM)", pooled | dict(v2v=True, t2v=True)),
    ]


@dataclass(frozen=True)
class DemoSettings:
    """Everything that sets the size of the run; ``quick()`` is the CI smoke version."""

    data: SynthSpec = field(default_factory=lambda: SynthSpec(videos=1400, frames=8, marker_frames=2))
    steps: int = 300  # optimiser steps, the same for every variant
    batch_size: int = 16
    seeds: int = 1
    llm_layers: int = 2
    cross_layers: tuple[int, ...] = (0,)  # DCAL after the first decoder layer, so a later layer reads it
    patch_size: int = 4  # 32 px frames -> 8x8 = 64 tokens per frame before pooling
    vision_feature_layer: int = 0  # the frozen random tower's patch embeddings (see docs/demo.md)
    eval_batch_size: int = 25

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(data=SynthSpec(videos=24, frames=4, marker_frames=1, test_fraction=0.25), steps=3, batch_size=4)

    def validate(self) -> None:
        self.data.validate()
        if self.steps < 1 or self.batch_size < 1 or self.seeds < 1:
            raise ValueError(
                f"steps, batch_size and seeds must be >= 1, got {self.steps}, {self.batch_size}, {self.seeds}"
            )
        if self.data.size % self.patch_size or self.data.cell != self.patch_size:
            raise ValueError("the marker must fill exactly one patch: cell == patch_size, size % patch_size == 0")
