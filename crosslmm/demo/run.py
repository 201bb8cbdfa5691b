"""``crosslmm demo``: the paper's claim on a laptop CPU, end to end through the real training and eval paths.

Five tiny models that differ only in the visual path (every other weight, the data, the optimiser and the
number of optimiser steps are the same) are trained with :func:`crosslmm.training.run.train` on the synthetic
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

from crosslmm.demo.synth import SynthSpec, is_correct, question_of, write_dataset
from crosslmm.model.presets import CONFIG_DIR

logger = logging.getLogger("crosslmm.demo")

CHANCE = 0.25  # every question has four equally likely answers
DEMO_CONFIG = CONFIG_DIR / "train" / "demo.yaml"


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
        if self.data.size % self.patch_size or self.data.cell != self.patch_size:
            raise ValueError(
                "the marker must fill exactly one patch: cell == patch_size, size % patch_size == 0"
            )


@dataclass
class RunResult:
    """One trained variant for one seed, scored on the test split."""

    variant: str
    seed: int
    accuracy: float
    accuracy_by_type: dict[str, float]
    seq_len: float  # LLM sequence length of a test prompt (mean over the test split)
    prefill_flops: float  # analytic, per test sample (mean), crosslmm.bench.flops.prefill_flops
    train_seconds: float
    final_loss: float | None


def write_mixture(data_dir: Path) -> Path:
    """The training entry point reads data mixtures; the demo's is the whole train split once."""
    path = data_dir / "mixture.yaml"
    path.write_text("datasets:\n  - path: train.json\n    data_root: .\n")
    return path


def _final_loss(run_dir: Path) -> float | None:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    losses = [row["loss"] for row in map(json.loads, metrics.read_text().splitlines()) if "loss" in row]
    return losses[-1] if losses else None


def evaluate(
    model_dir: Path, test: list[dict], data_root: Path, frames: int, batch_size: int, predictions: Path
) -> dict:
    """Accuracy through crosslmm.inference (the lmms-eval plugin's path), plus the LLM sequence length and
    analytic prefill FLOPs of the prompts it answered. Every answer goes to ``predictions`` (JSON lines)."""
    from crosslmm.bench.flops import prefill_flops
    from crosslmm.data.video import FrameSampling, load_frames
    from crosslmm.inference import build_prompt, generate, load

    model, processor = load(model_dir)
    sampling = FrameSampling.resolve(num_frames=frames)
    lengths, flops, shape_of, answered = [], [], {}, []
    for start in tqdm(range(0, len(test), batch_size), desc=f"eval {model_dir.parent.name}", leave=False):
        batch = test[start : start + batch_size]
        prompts = [build_prompt(processor, question_of(r)) for r in batch]
        videos = [[load_frames(data_root / r["video"], sampling)] for r in batch]
        answers = generate(model, processor, prompts, videos, max_new_tokens=4)
        for record, prompt, video, text in zip(batch, prompts, videos, answers):
            answered.append(
                dict(
                    id=record["id"],
                    video=record["video"],
                    question_type=record["question_type"],
                    response=text,
                    correct=is_correct(record, text),
                )
            )
            if prompt not in shape_of:  # (prefix, total) tokens; every video has the same frame count
                ids = processor(text=[prompt], videos=video)["input_ids"][0]
                prefix = int((ids == processor.video_token_id).nonzero()[0])
                shape_of[prompt] = (prefix, len(ids))
            prefix, total = shape_of[prompt]
            text_tokens = total - prefix - len(video[0]) * model.config.tokens_per_frame
            lengths.append(total)
            flops.append(prefill_flops(model.config, len(video[0]), text_tokens, prefix_tokens=prefix).total)
    predictions.write_text("".join(json.dumps(row) + "\n" for row in answered))
    kinds = sorted({row["question_type"] for row in answered})
    return dict(
        accuracy=statistics.fmean(row["correct"] for row in answered),
        accuracy_by_type={
            k: statistics.fmean(row["correct"] for row in answered if row["question_type"] == k)
            for k in kinds
        },
        seq_len=statistics.fmean(lengths),
        prefill_flops=statistics.fmean(flops),
    )


def train_variant(variant: Variant, seed: int, settings: DemoSettings, mixture: Path, run_dir: Path) -> float:
    """Build the variant's tiny model and train it with the real entry point; returns wall seconds."""
    from crosslmm.model.checkpoints import save_model_dir
    from crosslmm.model.tiny import TinySpec, make_tiny
    from crosslmm.training.config import load_config
    from crosslmm.training.run import train

    spec = TinySpec(layers=settings.llm_layers, image_size=settings.data.size, patch_size=settings.patch_size)
    model, processor = make_tiny(
        spec, seed=seed, vision_feature_layer=settings.vision_feature_layer, **variant.fields
    )
    init_dir = run_dir / "init"
    save_model_dir(model, processor, init_dir)
    recipe = load_config(str(DEMO_CONFIG), validate=False)
    config = replace(
        recipe,
        model=str(init_dir),
        output_dir=str(run_dir),
        data=replace(recipe.data, mixture=str(mixture), num_frames=settings.data.frames),
        max_steps=settings.steps,
        per_device_batch_size=settings.batch_size,
        seed=seed,
    )
    config.validate()
    start = time.perf_counter()
    train(config)
    return time.perf_counter() - start


def run_demo(out: str | os.PathLike, settings: DemoSettings) -> dict:
    """Generate the data, train and score every variant for every seed, write the report; returns it."""
    settings.validate()
    root = Path(out)
    data_dir = root / "data"
    paths = write_dataset(data_dir, settings.data)
    mixture = write_mixture(data_dir)
    test = json.loads(paths["test"].read_text())
    grid = settings.data.size // settings.patch_size
    todo = [(seed, v) for seed in range(settings.seeds) for v in variants(grid, list(settings.cross_layers))]
    runs: list[RunResult] = []
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    for seed, variant in tqdm(todo, desc="demo variants", unit="model"):
        run_dir = root / "runs" / f"{variant.name}-seed{seed}"
        seconds = train_variant(variant, seed, settings, mixture, run_dir)
        scores = evaluate(
            run_dir / "final",
            test,
            data_dir,
            settings.data.frames,
            settings.eval_batch_size,
            predictions=run_dir / "predictions.jsonl",
        )
        runs.append(
            RunResult(variant.name, seed, train_seconds=seconds, final_loss=_final_loss(run_dir), **scores)
        )
        tqdm.write(
            f"{variant.name} seed {seed}: accuracy {scores['accuracy']:.3f} ({seconds:.0f} s training)"
        )
    report = summarise(runs, variants(grid, list(settings.cross_layers)), settings)
    write_report(root, report)
    return report


def summarise(runs: list[RunResult], compared: list[Variant], settings: DemoSettings) -> dict:
    """Mean (and spread over seeds) per variant, and the two ratios the target is stated in."""
    rows = []
    for variant in compared:
        mine = [r for r in runs if r.variant == variant.name]
        accs = [r.accuracy for r in mine]
        kinds = sorted(mine[0].accuracy_by_type)
        rows.append(
            dict(
                variant=variant.name,
                label=variant.label,
                tokens_per_frame=variant.fields["tokens_per_frame"],
                accuracy=statistics.fmean(accs),
                accuracy_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                accuracy_per_seed=accs,
                accuracy_by_type={k: statistics.fmean(r.accuracy_by_type[k] for r in mine) for k in kinds},
                seq_len=mine[0].seq_len,
                prefill_flops=mine[0].prefill_flops,
                train_seconds=statistics.fmean(r.train_seconds for r in mine),
                final_loss=statistics.fmean(r.final_loss for r in mine if r.final_loss is not None)
                if any(r.final_loss is not None for r in mine)
                else None,
            )
        )
    by_name = {row["variant"]: row for row in rows}
    full, pool, cross = by_name["full"], by_name["pool"], by_name["crosslmm"]
    claims = dict(
        pool_gap_points=100 * (full["accuracy"] - pool["accuracy"]),
        crosslmm_recovery=cross["accuracy"] / full["accuracy"] if full["accuracy"] else float("nan"),
        seq_shorter=full["seq_len"] / cross["seq_len"],
        flops_lower=full["prefill_flops"] / cross["prefill_flops"],
    )
    # Recovery means nothing if the baseline itself did not learn: require it 20 points above chance.
    claims["full_learned"] = bool(full["accuracy"] >= CHANCE + 0.2)
    claims["target_met"] = bool(
        claims["full_learned"]
        and claims["pool_gap_points"] >= 20
        and claims["crosslmm_recovery"] >= 0.9
        and claims["seq_shorter"] >= 9
    )
    settings_dict = asdict(settings)
    return dict(rows=rows, claims=claims, settings=settings_dict, runs=[asdict(r) for r in runs])


def markdown_table(report: dict) -> str:
    """The table printed by ``crosslmm demo`` and pasted into docs/demo.md."""
    seeds = report["settings"]["seeds"]
    kinds = sorted(report["rows"][0]["accuracy_by_type"])
    kinds = kinds if len(kinds) > 1 else []  # one question type: its column would repeat the accuracy
    head = ["variant", "tokens/frame", "LLM seq len", "prefill MFLOPs", f"accuracy (mean of {seeds} seed(s))"]
    head += [f"{k} acc" for k in kinds] + ["train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        spread = f" ± {row['accuracy_std']:.3f}" if seeds > 1 else ""
        cells = [
            row["label"],
            str(row["tokens_per_frame"]),
            f"{row['seq_len']:.0f}",
            f"{row['prefill_flops'] / 1e6:.1f}",
            f"{row['accuracy']:.3f}{spread}",
            *(f"{row['accuracy_by_type'][k]:.3f}" for k in kinds),
            f"{row['train_seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    c = report["claims"]
    lines += [
        "",
        f"- pool-only is {c['pool_gap_points']:.1f} accuracy points below full tokens (target >= 20)",
        f"- CrossLMM (V2V + T2V) reaches {100 * c['crosslmm_recovery']:.1f}% of full-token accuracy (target >= 90%)",
        f"- with a {c['seq_shorter']:.1f}x shorter LLM sequence (target >= 9x) "
        f"and {c['flops_lower']:.1f}x fewer prefill FLOPs",
        f"- target {'met' if c['target_met'] else 'NOT met'}",
    ]
    if not c["full_learned"]:
        lines.append(
            f"- the full-token baseline is within 20 points of chance ({CHANCE:.2f}): it did not learn the task, "
            "so this run says nothing about pooling or cross-attention (train longer: --steps)"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Bar chart of accuracy per variant and accuracy against prefill FLOPs, side by side.

    A bare ``Figure`` (no pyplot) renders with Agg when saved: no global backend switch."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    rows = report["rows"]
    names = [r["variant"] for r in rows]
    acc = [r["accuracy"] for r in rows]
    err = [r["accuracy_std"] for r in rows]
    colours = ["#555555", "#d62728", "#1f77b4", "#9467bd", "#2ca02c"]
    fig = Figure(figsize=(11, 4))
    bars, scatter = fig.subplots(1, 2)
    bars.bar(names, acc, yerr=err, color=colours, capsize=4)
    bars.axhline(CHANCE, ls="--", color="k", lw=1)
    bars.text(len(rows) - 0.5, CHANCE + 0.01, "chance", ha="right", va="bottom", fontsize=8)
    bars.set_ylim(0, 1.05)
    bars.set_ylabel("test accuracy")
    bars.set_title(f"accuracy (mean ± std of {report['settings']['seeds']} seed(s))")
    for i, (r, c) in enumerate(zip(rows, colours)):
        scatter.errorbar(
            r["prefill_flops"] / 1e6, r["accuracy"], yerr=r["accuracy_std"], fmt="o", color=c, capsize=3
        )
        scatter.annotate(  # alternate above/below: the pooled variants sit close together
            f"{r['variant']} (seq {r['seq_len']:.0f})",
            (r["prefill_flops"] / 1e6, r["accuracy"]),
            textcoords="offset points",
            xytext=(8, 6 if i % 2 else -12),
            fontsize=8,
        )
    scatter.set_xscale("log")
    scatter.xaxis.set_minor_formatter(NullFormatter())
    scatter.set_ylim(0, 1.05)
    scatter.set_xlabel("prefill MFLOPs per sample (analytic)")
    scatter.set_ylabel("test accuracy")
    scatter.set_title("accuracy vs. prefill cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(root: Path, report: dict) -> dict[str, Path]:
    """results.json, results.md and demo.png in the output dir."""
    paths = {"json": root / "results.json", "markdown": root / "results.md", "plot": root / "demo.png"}
    paths["json"].write_text(json.dumps(report, indent=1))
    paths["markdown"].write_text(markdown_table(report))
    plot(report, paths["plot"])
    return paths
