"""``crosslmm demo``: the paper's claim on a laptop CPU, end to end through the real training and eval paths.

Five tiny models that differ only in the visual path (every other weight, the data, the optimiser and the
number of optimiser steps are the same) are trained with :func:`crosslmm.training.run.train` on the synthetic
marker task (:mod:`crosslmm.demo.synth`) and scored through :mod:`crosslmm.inference`, the functions the
lmms-eval plugin calls. The table puts accuracy next to the LLM's sequence length and the analytic prefill
FLOPs, so one can see what pooling to one token per frame costs in accuracy and what the cross-attention
brings back.

This module is the pipeline (data, then train and score each variant, then the report); the parts are
:mod:`~crosslmm.demo.variants` (what is compared), :mod:`~crosslmm.demo.evaluate` (scoring) and
:mod:`~crosslmm.demo.report` (summary, table, plot).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from crosslmm.demo.evaluate import evaluate
from crosslmm.demo.report import RunResult, majority_floor, summarise, write_report
from crosslmm.demo.synth import has_dataset, write_dataset
from crosslmm.demo.variants import DemoSettings, Variant, build_model, variants
from crosslmm.model.presets import CONFIG_DIR

DEMO_CONFIG = CONFIG_DIR / "train" / "demo.yaml"


def write_mixture(data_dir: Path) -> Path:
    """The training entry point reads data mixtures; the demo's is the whole train split once."""
    path = data_dir / "mixture.yaml"
    path.write_text("datasets:\n  - path: train.json\n    data_root: .\n")
    return path


def final_loss_of(run_dir: Path) -> float | None:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    losses = [row["loss"] for row in map(json.loads, metrics.read_text().splitlines()) if "loss" in row]
    return losses[-1] if losses else None


def finished_training(run_dir: Path, steps: int) -> float | None:
    """The trainer's own seconds (``train_runtime``) of a run in ``run_dir`` that completed ``steps`` steps and
    wrote its ``final/`` dir (renamed into place whole, so it exists only complete); None otherwise."""
    metrics = run_dir / "metrics.jsonl"
    if not (run_dir / "final").is_dir() or not metrics.is_file():
        return None
    rows = [row for row in map(json.loads, metrics.read_text().splitlines()) if "train_runtime" in row]
    return float(rows[-1]["train_runtime"]) if rows and rows[-1].get("step") == steps else None


def train_variant(variant: Variant, seed: int, settings: DemoSettings, mixture: Path, run_dir: Path) -> float:
    """Build the variant's tiny model and train it with the real entry point; returns wall seconds."""
    from crosslmm.model.build import save_model_dir
    from crosslmm.training.config import load_config
    from crosslmm.training.run import train

    model, processor = build_model(variant, seed, settings)
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


def score_run(
    run_dir: Path, test: list[dict], data_dir: Path, settings: DemoSettings, closed: tuple[str, ...] = ()
) -> dict:
    """Score ``run_dir/final`` on the test split (with the ``closed`` blocks' gates at 0); the answers go to
    ``predictions[-<block>-closed].jsonl`` beside it."""
    suffix = "".join(f"-{block}-closed" for block in closed)
    return evaluate(
        run_dir / "final",
        test,
        data_dir,
        settings.data.frames,
        settings.eval_batch_size,
        predictions=run_dir / f"predictions{suffix}.jsonl",
        closed=closed,
    )


def run_demo(out: str | os.PathLike, settings: DemoSettings) -> dict:
    """Generate the data, train and score every variant for every seed, write the report; returns it."""
    settings.validate()
    root = Path(out)
    data_dir = root / "data"
    if settings.reuse and has_dataset(data_dir, settings.data):
        tqdm.write(f"reusing the data in {data_dir} (same spec)")
    else:
        write_dataset(data_dir, settings.data)
    mixture = write_mixture(data_dir)
    test = json.loads((data_dir / "test.json").read_text())
    grid = settings.data.size // settings.patch_size
    compared = variants(grid, list(settings.cross_layers), settings.variants)
    todo = [(seed, v) for seed in range(settings.seeds) for v in compared]
    runs: list[RunResult] = []
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    for seed, variant in tqdm(todo, desc="demo variants", unit="model"):
        run_dir = root / "runs" / f"{variant.name}-seed{seed}"
        seconds = settings.reuse and finished_training(run_dir, settings.steps)
        if not seconds:
            seconds = train_variant(variant, seed, settings, mixture, run_dir)
        scores = score_run(run_dir, test, data_dir, settings)
        closed = {
            block: score_run(run_dir, test, data_dir, settings, (block,))["accuracy"]
            for block in variant.blocks
        }
        runs.append(
            RunResult(
                variant.name,
                seed,
                train_seconds=seconds,
                final_loss=final_loss_of(run_dir),
                closed=closed,
                **scores,
            )
        )
        shut = "".join(f", {block} closed {acc:.3f}" for block, acc in closed.items())
        tqdm.write(
            f"{variant.name} seed {seed}: accuracy {scores['accuracy']:.3f}{shut} ({seconds:.0f} s training)"
        )
    report = summarise(runs, compared, settings, majority_floor(data_dir))
    write_report(root, report)
    return report
