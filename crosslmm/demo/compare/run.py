"""``crosslmm compare``: CrossLMM against other visual-token reducers at equal prefill FLOPs, and more frames for
the same compute (docs/comparisons.md), through the demo's own training and evaluation.

Every model is a tiny CrossLMM that differs only in its visual path (:mod:`~crosslmm.demo.compare.plan` says
which paths and why those settings), trained by :func:`crosslmm.demo.run.train_variant` (the real entry point,
``configs/train/demo.yaml``) and scored by :func:`crosslmm.demo.evaluate.evaluate` (``crosslmm.inference``).
Two studies, each on its own synthetic data (the leak-free stripes design by default): ``equal`` (colour
and motion questions on 8-frame videos) and ``frames`` (the striped patches in 2 of 16 frames, the model
sampling 4 to 16 of them). Every model is built by :func:`crosslmm.demo.variants.build_model` (through
``train_variant``): one frozen tower from ``tower_seed`` for every model and seed, the seed varying only the
training. The report is :mod:`~crosslmm.demo.compare.report`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from crosslmm.demo.compare.plan import CompareSettings, Coster, Planned, equal_compute_plan, frames_plan
from crosslmm.demo.compare.report import floors, summarise, write_report
from crosslmm.demo.evaluate import evaluate
from crosslmm.demo.report import RunResult
from crosslmm.demo.run import final_loss_of, finished_training, train_variant, write_mixture
from crosslmm.demo.synth import SynthSpec, write_dataset


def plan(settings: CompareSettings, equal_questions: list[str], long_questions: list[str]) -> list[Planned]:
    """Every model of both studies, costed at the mean over each study's test questions (a type per question)."""
    equal = equal_compute_plan(settings, Coster(settings, equal_questions))
    return equal + frames_plan(settings, Coster(settings, long_questions))


@dataclass(frozen=True)
class Study:
    """One study's data as written: where, its mixture file, its test records and how long to train on it."""

    data_dir: Path
    mixture: Path
    test: list[dict]
    spec: SynthSpec
    steps: int

    @classmethod
    def write(cls, data_dir: Path, spec: SynthSpec, steps: int, reuse: bool = False) -> Study:
        """Generate the data, or with ``reuse`` keep what ``data_dir`` holds when it was written from ``spec``
        (the mp4 encoder is not byte-reproducible, so models already trained keep their exact test videos)."""
        spec_file = data_dir / "spec.json"
        if (
            reuse
            and spec_file.is_file()
            and json.loads(spec_file.read_text()) == json.loads(json.dumps(asdict(spec)))
        ):
            test = data_dir / "test.json"
        else:
            test = write_dataset(data_dir, spec)["test"]
        return cls(data_dir, write_mixture(data_dir), json.loads(test.read_text()), spec, steps)

    def questions(self) -> list[str]:
        return [record["question_type"] for record in self.test]


def run_compare(out: str | os.PathLike, settings: CompareSettings, reuse: bool = False) -> dict:
    """Generate both datasets, train and score every planned model for every seed, write the report.

    ``reuse``: keep ``out``'s data when its spec is unchanged and each model that already finished its steps
    there (it is scored again; its train seconds are the trainer's own), so an interrupted run, or one with
    more seeds, trains only what is missing."""
    settings.validate()
    root = Path(out)
    studies = {
        "equal": Study.write(root / "data" / "equal", settings.equal, settings.steps, reuse),
        "frames": Study.write(root / "data" / "frames", settings.long, settings.long_steps, reuse),
    }
    planned = plan(settings, studies["equal"].questions(), studies["frames"].questions())
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    runs: list[RunResult] = []
    unique = {p.name: p for p in planned}.values()  # a setting nearest two budgets trains once
    todo = [(seed, p) for seed in range(settings.seeds) for p in unique]
    for seed, p in tqdm(todo, desc="compare models", unit="model"):
        study = studies[p.study]
        run_dir = root / "runs" / f"{p.name}-seed{seed}"
        start = time.perf_counter()
        demo = settings.demo(study.spec, p.frames, study.steps)
        seconds = finished_training(run_dir, study.steps) if reuse else None
        if seconds is None:
            seconds = train_variant(p.variant(), seed, demo, study.mixture, run_dir)
        scores = evaluate(
            run_dir / "final",
            study.test,
            study.data_dir,
            p.frames,
            settings.eval_batch_size,
            run_dir / "predictions.jsonl",
        )
        runs.append(
            RunResult(p.name, seed, train_seconds=seconds, final_loss=final_loss_of(run_dir), **scores)
        )
        tqdm.write(
            f"{p.name} seed {seed}: accuracy {scores['accuracy']:.3f}, "
            f"{scores['prefill_flops'] / 1e6:.1f} MFLOPs ({time.perf_counter() - start:.0f} s)"
        )
    study_floors = {name: floors(study.data_dir) for name, study in studies.items()}
    report = summarise(runs, planned, settings, study_floors)
    write_report(root, report)
    return report
