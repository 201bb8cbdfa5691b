"""``crosslmm demo --elastic``: one checkpoint, any token budget, measured on the demo's task.

Per seed, four tiny models train on the same data for the same number of steps through the real entry point
(:func:`crosslmm.demo.run.train_variant`): an elastic CrossLMM and an elastic pool-only model (no
cross-attention), each drawing one budget per batch from ``budgets`` (1/4/9/16 pooled tokens per frame of
the demo's 5x5 patch grid), and fixed-budget CrossLMMs trained at the smallest and the largest budget. Each
elastic model is then scored at every budget, each fixed one at its own, through :mod:`crosslmm.inference`
(:func:`crosslmm.demo.evaluate.evaluate`). The report (:mod:`crosslmm.demo.elastic.report`) states the
targets: elastic within 2 points of fixed at both ends, pool-only rising with the budget (the pooling loss
made visible), CrossLMM at the smallest budget at least as accurate as pool-only at the largest.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from crosslmm.demo.evaluate import evaluate
from crosslmm.demo.run import train_variant, write_mixture
from crosslmm.demo.synth import write_dataset
from crosslmm.demo.variants import DemoSettings, Variant
from crosslmm.model.configuration import invalid_budgets


@dataclass(frozen=True)
class ElasticSettings:
    """The run's size: the default demo's data and models, trained ``steps`` steps each at ``budgets``."""

    demo: DemoSettings = field(default_factory=lambda: DemoSettings(seeds=5))
    budgets: tuple[int, ...] = (1, 4, 9, 16)

    @classmethod
    def quick(cls) -> ElasticSettings:
        return cls(demo=DemoSettings.quick(), budgets=(1, 4))

    def validate(self) -> None:
        self.demo.validate()
        grid = self.demo.data.size // self.demo.patch_size
        if len(self.budgets) < 2 or len(set(self.budgets)) != len(self.budgets):
            raise ValueError(
                f"budgets must be at least two distinct tokens-per-frame values, got {self.budgets}"
            )
        # The model config refuses budgets that are not s*s pooled grids of the patch grid; say it up front.
        bad = invalid_budgets(list(self.budgets), grid)
        if bad:
            raise ValueError(f"budgets {bad} are not s*s pooled grids of the demo's {grid}x{grid} patch grid")


def elastic_variants(budgets: tuple[int, ...], cross_layers: list[int]) -> list[Variant]:
    """The compared models: two elastic ones over ``budgets``, fixed CrossLMMs at the smallest and largest."""
    low, high = min(budgets), max(budgets)
    cross = dict(cross_attention_layers=cross_layers, v2v=True, t2v=True)
    elastic = dict(tokens_per_frame=low, tokens_per_frame_choices=sorted(budgets))
    return [
        Variant("elastic_crosslmm", "CrossLMM, elastic", elastic | cross),
        Variant("elastic_pool", "pool-only, elastic", elastic | dict(cross_attention_every=0)),
        Variant(f"fixed_crosslmm_{low}", f"CrossLMM, fixed at {low}", dict(tokens_per_frame=low) | cross),
        Variant(f"fixed_crosslmm_{high}", f"CrossLMM, fixed at {high}", dict(tokens_per_frame=high) | cross),
    ]


def run_elastic(out: str | os.PathLike, settings: ElasticSettings) -> dict:
    """Generate the data, train and score every model of every seed at its budgets; write the report."""
    from crosslmm.demo.elastic.report import summarise, write_report
    from crosslmm.demo.report import majority_floor

    settings.validate()
    demo = settings.demo
    root = Path(out)
    data_dir = root / "data"
    paths = write_dataset(data_dir, demo.data)
    mixture = write_mixture(data_dir)
    test = json.loads(paths["test"].read_text())
    compared = elastic_variants(settings.budgets, list(demo.cross_layers))
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    scores: list[dict] = []
    todo = [(seed, v) for seed in range(demo.seeds) for v in compared]
    for seed, variant in tqdm(todo, desc="elastic demo", unit="model"):
        run_dir = root / "runs" / f"{variant.name}-seed{seed}"
        seconds = train_variant(variant, seed, demo, mixture, run_dir)
        for budget in variant.fields.get("tokens_per_frame_choices") or [variant.fields["tokens_per_frame"]]:
            result = evaluate(
                run_dir / "final",
                test,
                data_dir,
                demo.data.frames,
                demo.eval_batch_size,
                predictions=run_dir / f"predictions-{budget}.jsonl",
                tokens_per_frame=budget,
            )
            scores.append(
                dict(variant=variant.name, seed=seed, budget=budget, train_seconds=seconds, **result)
            )
            tqdm.write(
                f"{variant.name} seed {seed} at {budget} tokens/frame: accuracy {result['accuracy']:.3f}"
            )
    report = summarise(scores, compared, settings, majority_floor(data_dir))
    write_report(root, report)
    return report
