"""What ``crosslmm compare`` trains: every visual-token reducer at budgets matched to CrossLMM's analytic
prefill FLOPs, and the full-token, pooled and CrossLMM models at several frame counts of one long video. Each
model is also costed per generated token (``decode_flops``) and by the cache one sample holds
(``cache_bytes``).

A method's knob (k tokens per frame; for FastV the pruning layer L and the visual tokens it keeps) is not
chosen by hand: every setting the method allows is costed with :func:`crosslmm.bench.flops.prefill_flops` on
the real prompt and the one nearest CrossLMM's FLOPs (log ratio) wins. A method whose nearest setting is
outside the band (uniform pooling only has square budgets; FastV runs every token through its first L
layers) runs at that nearest setting and the table says so.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from crosslmm.demo.synth import SynthSpec
from crosslmm.demo.variants import DemoSettings, Variant

# Every compared method (docs/comparisons.md), in table order: the two ends (all tokens, CrossLMM) and
# the reducers between.
METHODS = ("full", "pool", "random", "salient", "merge", "fastv", "crosslmm")
LABELS = {
    "full": "full tokens",
    "pool": "uniform pooling",
    "random": "random drop",
    "salient": "salient (VisionZip-style)",
    "merge": "merging (ToMe-style)",
    "fastv": "in-LLM pruning (FastV-style)",
    "crosslmm": "CrossLMM (pool + V2V + T2V)",
}


# The tower layer whose attention ranks the salient reducer's patches: the last of the tiny tower's two,
# deeper than the feature layer the demo feeds the LLM (0, the patch embeddings), as VisionZip ranks by a
# deep layer.
SALIENT_LAYER = -1


@dataclass(frozen=True)
class Planned:
    """One model to train: its method, config fields, the frames it sees and how its cost was chosen."""

    name: str  # run directory stem, e.g. "eq-salient-k3"
    study: str  # "equal" (equal-compute table) or "frames" (more frames for the same compute)
    method: str
    knob: str  # the method's setting as shown in the table, e.g. "k=3" or "L=1, keep=2"
    fields: dict
    frames: int
    flops: float  # analytic prefill FLOPs per sample, mean over the study's test prompts
    decode_flops: float = 0.0  # analytic FLOPs of the first generated token, mean over the same prompts
    cross_cache_bytes: float = 0.0  # T2V K/V cached per sample (bf16), mean over the same prompts
    decoder_cache_bytes: float = 0.0  # decoder self-attention K/V cached per sample (bf16)
    budget: str = ""  # the CrossLMM point it was matched to ("" for reference points)
    target_flops: float = 0.0
    in_band: bool = True

    @property
    def ratio(self) -> float:
        return self.flops / self.target_flops if self.target_flops else float("nan")

    def variant(self) -> Variant:
        return Variant(self.name, f"{LABELS[self.method]} ({self.knob})", self.fields)


@dataclass(frozen=True)
class CompareSettings:
    """Everything that sizes ``crosslmm compare``; ``quick()`` is the test's smoke version."""

    # Equal compute, on the leak-free stripes design (crosslmm.demo.synth; ``crosslmm synth --audit``):
    # colour (which of three equally saturated patches has vertical stripes) and motion (a 2x2-patch block)
    # questions on the same videos.
    equal: SynthSpec = field(
        default_factory=lambda: SynthSpec(
            videos=1200, frames=8, test_fraction=0.15, questions=("colour", "motion"), design="stripes"
        )
    )
    # More frames: the striped patches in 2 of 16 frames.
    long: SynthSpec = field(
        default_factory=lambda: SynthSpec(
            videos=800, frames=16, seed=1, test_fraction=0.15, marker_frames=2, design="stripes"
        )
    )
    steps: int = 600  # optimiser steps per model, the same for every model of a study (docs/comparisons.md)
    long_steps: int = 800  # the frames study's evidence is sparser (2 frames in 16): it learns later
    batch_size: int = 8
    seeds: int = 5  # every model on the same seeds: the tables pair them seed by seed (crosslmm.demo.stats)
    llm_layers: int = 2
    crosslmm_budgets: tuple[int, ...] = (1, 4)  # CrossLMM's tokens per frame; every method is matched to each
    band: float = 0.10  # |FLOPs / CrossLMM's - 1| allowed
    methods: tuple[str, ...] = METHODS
    full_frames: tuple[int, ...] = (4, 8)  # the full-token model on the long videos
    long_frames: tuple[int, ...] = (8, 16)  # pooling and CrossLMM on the long videos
    patch_size: int = 8
    eval_batch_size: int = 25

    @classmethod
    def quick(cls) -> CompareSettings:
        return cls(
            equal=SynthSpec(
                videos=8, frames=4, test_fraction=0.25, questions=("colour", "motion"), design="stripes"
            ),
            long=SynthSpec(
                videos=6, frames=16, seed=1, test_fraction=0.34, marker_frames=2, design="stripes"
            ),
            seeds=1,
            steps=2,
            long_steps=2,
            batch_size=2,
            crosslmm_budgets=(1,),
            full_frames=(4,),
            long_frames=(8,),
        )

    def validate(self) -> None:
        for spec in (self.equal, self.long):
            self.demo(spec, spec.frames, self.steps).validate()
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or "crosslmm" not in self.methods:
            raise ValueError(f"methods must include crosslmm and be among {METHODS}, got {self.methods}")
        if self.long_steps < 1:
            raise ValueError(f"long_steps must be >= 1, got {self.long_steps}")
        too_many = [f for f in (*self.full_frames, *self.long_frames) if f > self.long.frames]
        if too_many:
            raise ValueError(f"frame counts {too_many} exceed the long videos' {self.long.frames} frames")
        grid = self.equal.size // self.patch_size
        if any(b > grid * grid or math.isqrt(b) ** 2 != b for b in self.crosslmm_budgets):
            raise ValueError(
                f"crosslmm_budgets must be squares <= {grid * grid}, got {self.crosslmm_budgets}"
            )

    def demo(self, data: SynthSpec, frames: int, steps: int) -> DemoSettings:
        """The demo's settings for one model: ``train_variant`` reads the frames it samples from ``data``."""
        return DemoSettings(
            data=replace(data, frames=frames),
            steps=steps,
            batch_size=self.batch_size,
            seeds=self.seeds,
            llm_layers=self.llm_layers,
            patch_size=self.patch_size,
            eval_batch_size=self.eval_batch_size,
        )


def candidates(method: str, grid: int, layers: int, budget: int) -> list[tuple[str, dict]]:
    """(knob, config fields) of every setting ``method`` allows on a ``grid x grid`` patch grid."""
    n = grid * grid
    none = dict(cross_attention_every=0, v2v=False, t2v=False)
    if method == "full":
        return [(f"k={n}", dict(tokens_per_frame=n) | none)]
    if method == "pool":
        return [(f"k={s * s}", dict(tokens_per_frame=s * s) | none) for s in range(1, grid + 1)]
    if method in ("random", "salient", "merge"):
        ranking = dict(salient_layer=SALIENT_LAYER) if method == "salient" else {}
        return [
            (f"k={k}", dict(visual_reducer=method, tokens_per_frame=k) | ranking | none) for k in range(1, n)
        ]
    if method == "fastv":
        return [
            (
                f"L={L}, keep={k}",
                dict(visual_reducer="fastv", tokens_per_frame=n, fastv_layer=L, fastv_keep=k) | none,
            )
            for L in range(1, layers)
            for k in range(1, n)
        ]
    if method == "crosslmm":
        return [
            (f"k={budget}", dict(tokens_per_frame=budget, cross_attention_layers=[0], v2v=True, t2v=True))
        ]
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


class Coster:
    """Analytic prefill FLOPs of any visual path of the tiny model on a task's prompts.

    Builds one tiny model to read its config and processor, then costs each candidate's config (the base
    config with the candidate's fields) at the mean over ``questions`` (a question type per prompt, e.g. the
    test split's, so the cost is the mean the evaluation measures) of the real prompt shape."""

    def __init__(self, settings: CompareSettings, questions: Sequence[str]):
        from crosslmm.demo.synth import questions_of
        from crosslmm.inference import build_prompt
        from crosslmm.model.tiny import TinySpec, make_tiny

        spec = TinySpec(
            layers=settings.llm_layers, image_size=settings.equal.size, patch_size=settings.patch_size
        )
        model, processor = make_tiny(
            spec, vision_feature_layer=0, tokens_per_frame=1, cross_attention_every=0
        )
        self.base = model.config.to_dict()
        self.shapes = Counter()  # (prefix, text after the video) tokens of a prompt -> prompts of that shape
        for kind, count in Counter(questions).items():
            ids = processor.tokenizer(build_prompt(processor, questions_of(settings.equal.design)[kind]))[
                "input_ids"
            ]
            prefix = ids.index(processor.video_token_id)
            self.shapes[prefix, len(ids) - prefix - 1] += count

    def config(self, fields: dict):
        from crosslmm.model.configuration import CrossLMMConfig, check_fields

        check_fields(fields, "compare candidate")  # the base is a built model's config, already checked
        return CrossLMMConfig.from_dict(self.base | fields)

    def _mean(self, count_one) -> float:
        """Mean over the prompts of ``count_one(prefix, text)``."""
        total = sum(count * count_one(prefix, text) for (prefix, text), count in self.shapes.items())
        return total / self.shapes.total()

    def __call__(self, fields: dict, frames: int) -> float:
        """Analytic prefill FLOPs per sample."""
        from crosslmm.bench.flops import prefill_flops

        config = self.config(fields)
        return self._mean(
            lambda prefix, text: prefill_flops(config, frames, text, prefix_tokens=prefix).total
        )

    def after_prefill(self, fields: dict, frames: int) -> dict:
        """The decode cost and cache memory fields of :class:`Planned`: the first generated token's FLOPs,
        the T2V and decoder K/V bytes (bf16) one sample holds after its prefill."""
        from crosslmm.bench.flops import cache_bytes, decode_flops

        config = self.config(fields)
        cache = {
            shape: cache_bytes(config, frames, shape[1], prefix_tokens=shape[0]) for shape in self.shapes
        }
        return dict(
            decode_flops=self._mean(lambda p, t: decode_flops(config, frames, t, prefix_tokens=p)),
            cross_cache_bytes=self._mean(lambda p, t: cache[p, t].cross_attention),
            decoder_cache_bytes=self._mean(lambda p, t: cache[p, t].decoder),
        )


def equal_compute_plan(settings: CompareSettings, cost: Coster) -> list[Planned]:
    """One row per (method, CrossLMM budget): the method's setting nearest that budget's FLOPs (two budgets
    may pick the same setting: one run, two rows); as references, full tokens and uniform pooling at
    CrossLMM's own tokens per frame (CrossLMM without its cross-attention)."""
    grid, frames, layers = (
        settings.equal.size // settings.patch_size,
        settings.equal.frames,
        settings.llm_layers,
    )
    plan = []
    for method in settings.methods:
        if method == "full":
            ((knob, fields),) = candidates(method, grid, layers, 0)
            plan.append(
                Planned(f"eq-full-{frames}f", "equal", method, knob, fields, frames, cost(fields, frames))
            )
            continue
        costed = None  # (knob, fields, flops) of every setting, the same for every budget but CrossLMM's
        for budget in settings.crosslmm_budgets:
            target = cost(candidates("crosslmm", grid, layers, budget)[0][1], frames)
            if costed is None or method == "crosslmm":
                costed = [(k, f, cost(f, frames)) for k, f in candidates(method, grid, layers, budget)]
            knob, fields, flops = min(costed, key=lambda c: abs(math.log(c[2] / target)))
            plan.append(
                Planned(
                    f"eq-{method}-{knob.replace(', ', '-').replace('=', '')}",
                    "equal",
                    method,
                    knob,
                    fields,
                    frames,
                    flops,
                    budget=f"CrossLMM k={budget}",
                    target_flops=target,
                    in_band=abs(flops / target - 1) <= settings.band,
                )
            )
    if "pool" in settings.methods:  # CrossLMM without its V2V/T2V at each budget: what the DCALs add
        for budget in settings.crosslmm_budgets:
            knob, fields = candidates("pool", grid, layers, budget)[math.isqrt(budget) - 1]
            if f"eq-pool-k{budget}" not in {p.name for p in plan}:
                plan.append(
                    Planned(f"eq-pool-k{budget}", "equal", "pool", knob, fields, frames, cost(fields, frames))
                )
    return [replace(p, **cost.after_prefill(p.fields, p.frames)) for p in plan]


def frames_plan(settings: CompareSettings, cost: Coster) -> list[Planned]:
    """Full tokens at few frames against pooling and CrossLMM (1 token per frame) at many, on the long videos."""
    grid, layers = settings.long.size // settings.patch_size, settings.llm_layers
    ((full_knob, full),) = candidates("full", grid, layers, 0)
    pool = candidates("pool", grid, layers, 1)[0][1]  # the first pooling setting: k = 1
    cross = candidates("crosslmm", grid, layers, 1)[0][1]
    runs = [("full", full_knob, full, f) for f in settings.full_frames]
    runs += [
        (m, "k=1", fields, f)
        for m, fields in (("pool", pool), ("crosslmm", cross))
        for f in settings.long_frames
    ]
    return [
        Planned(
            f"fr-{m}-{f}f", "frames", m, knob, fields, f, cost(fields, f), **cost.after_prefill(fields, f)
        )
        for m, knob, fields, f in runs
    ]
