"""What the demo compares: five tiny models that differ only in the visual path, and the settings that size
the run (the same data, optimiser and number of steps for every variant)."""

from __future__ import annotations

from dataclasses import dataclass, field

from crosslmm.demo.synth import SynthSpec


@dataclass(frozen=True)
class Variant:
    """One model of the comparison: a name and the CrossLMMConfig fields of its visual path."""

    name: str
    label: str
    fields: dict

    @property
    def blocks(self) -> tuple[str, ...]:
        """The cross-attention blocks this variant has (``v2v``, ``t2v``), in that order."""
        if self.fields.get("cross_attention_every") == 0:
            return ()
        return tuple(block for block in ("v2v", "t2v") if self.fields.get(block))


def variants(grid: int, cross_layers: list[int], names: tuple[str, ...] | None = None) -> list[Variant]:
    """The five visual paths of the paper's ablation (Table 2a) plus the unpooled baseline (``names``: only
    those, in this order)."""
    pooled = dict(tokens_per_frame=1, cross_attention_layers=cross_layers)
    every = [
        Variant(
            "full",
            f"full tokens ({grid * grid}/frame)",
            dict(tokens_per_frame=grid * grid, cross_attention_every=0),
        ),
        Variant("pool", "pool to 1, no cross-attn", dict(tokens_per_frame=1, cross_attention_every=0)),
        Variant("pool_v2v", "pool to 1 + V2V", pooled | dict(v2v=True, t2v=False)),
        Variant("pool_t2v", "pool to 1 + T2V", pooled | dict(v2v=False, t2v=True)),
        Variant("crosslmm", "pool to 1 + V2V + T2V (CrossLMM)", pooled | dict(v2v=True, t2v=True)),
    ]
    return [v for v in every if names is None or v.name in names]


@dataclass(frozen=True)
class DemoSettings:
    """Everything that sets the size of the run; ``quick()`` is the CI smoke version."""

    data: SynthSpec = field(default_factory=lambda: SynthSpec())
    steps: int = 800  # optimiser steps, the same for every variant
    batch_size: int = 8
    seeds: int = 1
    llm_layers: int = 2
    cross_layers: tuple[int, ...] = (0,)  # DCAL after the first decoder layer, so a later layer reads it
    patch_size: int = 8  # 40 px frames -> 5x5 = 25 tokens per frame before pooling
    vision_feature_layer: int = 0  # the frozen random tower's patch embeddings (see docs/demo.md)
    tower_seed: int = 0  # one frozen tower for every seed: the seed varies the training, not the tower
    # Which of variants() to train; pool and CrossLMM are the least a report needs (full tokens: the ceiling).
    variants: tuple[str, ...] = ("full", "pool", "pool_v2v", "pool_t2v", "crosslmm")
    reuse: bool = False  # keep runs whose training finished (an interrupted or extended run trains the rest)
    eval_batch_size: int = 25

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(data=SynthSpec(videos=16, frames=4, test_fraction=0.25), steps=2, batch_size=2)

    def validate(self) -> None:
        self.data.validate()
        if self.steps < 1 or self.batch_size < 1 or self.seeds < 1:
            raise ValueError(
                f"steps, batch_size and seeds must be >= 1, got {self.steps}, {self.batch_size}, {self.seeds}"
            )
        known = [v.name for v in variants(1, [0])]
        if not {"pool", "crosslmm"} <= set(self.variants) or not set(self.variants) <= set(known):
            raise ValueError(f"variants must include pool and crosslmm, from {known}; got {self.variants}")
        if self.data.size % self.patch_size or self.data.cell != self.patch_size:
            raise ValueError(
                "the marker must fill exactly one patch: cell == patch_size, size % patch_size == 0"
            )


def _tiny(seed: int, settings: DemoSettings, **fields):
    from crosslmm.model.tiny import TinySpec, make_tiny

    spec = TinySpec(layers=settings.llm_layers, image_size=settings.data.size, patch_size=settings.patch_size)
    return make_tiny(spec, seed=seed, vision_feature_layer=settings.vision_feature_layer, **fields)


def shared_tower(settings: DemoSettings):
    """The pool-only tiny model of ``settings.tower_seed`` and its processor: its frozen vision tower is the
    one every demo model reads (and the one the audit's pooled-feature probe reads)."""
    return _tiny(settings.tower_seed, settings, tokens_per_frame=1, cross_attention_every=0)


def build_model(variant: Variant, seed: int, settings: DemoSettings):
    """The variant's tiny model (weights drawn from ``seed``) with the shared frozen tower of
    ``settings.tower_seed``, and its processor."""
    model, processor = _tiny(seed, settings, **variant.fields)
    tower, _ = shared_tower(settings)
    model.model.vision_tower.load_state_dict(tower.model.vision_tower.state_dict())
    return model, processor
