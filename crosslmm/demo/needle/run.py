"""``crosslmm demo --needle``: how the demo's models, trained on 20-frame videos, find the target in longer ones.

LongVA's visual needle-in-a-haystack (V-NIAH) on the demo's task: for every video length in ``frames`` and
every depth in ``depths`` (0: the marked frames open the video, 1: they close it), ``videos`` needle videos
are generated with :class:`crosslmm.demo.synth.SynthSpec` ``depth`` (the demo's own spec otherwise, a seed the
demo does not train on). Nothing about the placement is drawn, so at one length every depth shows the same
haystacks with the same needles; only where the needle sits differs. Every trained model the demo left in
``<demo>/runs/<variant>-seed<k>/final`` is scored on every cell through :func:`crosslmm.demo.evaluate.evaluate`,
the demo's own scoring path. A model is skipped at a length whose prompt (plus the answer's tokens) does not
fit its LLM's ``max_position_embeddings``: rotary positions past it were never defined for the model, so an
answer there would measure nothing (full tokens, 25 per frame, stop below 4096 / 25 = 163 frames).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from crosslmm.demo.evaluate import evaluate
from crosslmm.demo.synth import (
    SynthSpec,
    answer_of,
    answers_of,
    has_dataset,
    normalise,
    question_of,
    write_dataset,
)

ANSWER_TOKENS = 4  # evaluate() generates this many tokens; they need positions too


@dataclass(frozen=True)
class NeedleSettings:
    """The grid: ``videos`` needle videos per (depth, frames) cell, scored by each of ``variants``."""

    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    frames: tuple[int, ...] = (16, 32, 64, 128, 256)
    videos: int = 30  # 5 seeds x 3 models x 25 cells in about 15 min of one CPU thread (docs/needle.md)
    variants: tuple[str, ...] = ("crosslmm", "pool", "full")
    seeds: int | None = None  # score seeds 0 .. seeds-1 only; None: every seed whose models exist
    seed: int = 1  # the needle videos' generator seed (the demo's data uses seed 0)
    eval_batch_size: int = 25  # videos per batch, fewer when the prompts are long (batch_tokens)
    batch_tokens: int = 16384  # LLM tokens per batch at most: a few 128-frame full-token prompts at a time
    reuse: bool = False  # keep a cell's scores when the same model weights already scored the same videos

    @classmethod
    def quick(cls) -> NeedleSettings:
        """The CI smoke version, sized for the ``crosslmm demo --quick`` models (4-frame videos)."""
        return cls(depths=(0.0, 1.0), frames=(4, 8), videos=3)

    def validate(self) -> None:
        if (
            not self.depths
            or any(not 0 <= d <= 1 for d in self.depths)
            or len(set(self.depths)) != len(self.depths)
        ):
            raise ValueError(f"depths must be distinct numbers in [0, 1], got {self.depths}")
        if not self.frames or min(self.frames) < 4 or len(set(self.frames)) != len(self.frames):
            raise ValueError(f"frames must be distinct video lengths >= 4, got {self.frames}")
        if self.videos < 2:
            raise ValueError(f"--videos must be >= 2 needle videos per cell, got {self.videos}")
        if not self.variants:
            raise ValueError("variants must name at least one of the demo's variants")
        if self.seeds is not None and self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")


def trained_models(source: Path, variants: tuple[str, ...], seeds: int | None) -> dict[str, dict[int, Path]]:
    """variant -> seed -> ``final`` model dir, for every run of the demo in ``source`` that finished."""
    found: dict[str, dict[int, Path]] = {name: {} for name in variants}
    for run in sorted((source / "runs").glob("*-seed*")):
        match = re.fullmatch(r"(.+)-seed(\d+)", run.name)
        if match and match[1] in found and (run / "final" / "config.json").is_file():
            seed = int(match[2])
            if seeds is None or seed < seeds:
                found[match[1]][seed] = run / "final"
    missing = [name for name, runs in found.items() if not runs]
    if missing:
        raise FileNotFoundError(
            f"no finished {', '.join(missing)} model in {source / 'runs'} (<variant>-seed<k>/final); "
            "run `crosslmm demo --out DIR` first and point --from at DIR"
        )
    return {name: dict(sorted(runs.items())) for name, runs in found.items()}


def cell_name(frames: int, depth: float) -> str:
    return f"frames{frames:03d}-depth{round(100 * depth):03d}"


def needle_data(
    out: Path, demo_spec: SynthSpec, settings: NeedleSettings
) -> dict[tuple[int, float], list[dict]]:
    """(frames, depth) -> the cell's records; each cell is a synth dataset in ``out/data/<cell>`` (written
    again only when its spec changed). Every video of a cell is scored (train.json + test.json)."""
    cells = {}
    for frames in settings.frames:
        for depth in settings.depths:
            spec = replace(
                demo_spec,
                videos=settings.videos,
                frames=frames,
                depth=depth,
                seed=settings.seed,
                questions=("colour",),
            )
            root = out / "data" / cell_name(frames, depth)
            if not has_dataset(root, spec):
                write_dataset(root, spec, progress=False)
            records = [
                r for split in ("train", "test") for r in json.loads((root / f"{split}.json").read_text())
            ]
            cells[frames, depth] = records
    return cells


def prompt_length(model_dir: Path, question: str, frames: int, size: int) -> tuple[int, int]:
    """(LLM tokens of a ``frames``-frame prompt incl. the answer's, the model's max_position_embeddings)."""
    from transformers import AutoConfig, AutoProcessor

    from crosslmm.inference import build_prompt

    config = AutoConfig.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    video = np.zeros((frames, size, size, 3), dtype=np.uint8)
    ids = processor(text=[build_prompt(processor, question)], videos=[video])["input_ids"][0]
    return len(ids) + ANSWER_TOKENS, config.text_config.max_position_embeddings


def model_stamp(model_dir: Path) -> str:
    """sha256 of the model's config and weights: what a kept score must have been computed with."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")) + [model_dir / "config.json"]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def kept_scores(scores_file: Path, stamp: str, data: str) -> dict | None:
    """The scores saved next to a cell's predictions if the model ``stamp`` computed them on the videos of
    ``data`` (the cell's spec.json text: the same spec writes the same videos); None otherwise."""
    if not scores_file.is_file():
        return None
    kept = json.loads(scores_file.read_text())
    return kept["scores"] if kept.get("model") == stamp and kept.get("data") == data else None


def majority_floor(records: list[dict]) -> tuple[str, float]:
    """The most common answer of ``records`` and its share: the best any one fixed answer scores on them."""
    answer, count = Counter(answer_of(r) for r in records).most_common(1)[0]
    return answer, count / len(records)


def answer_form(records: list[dict], predictions: Path, answers: tuple[str, ...]) -> dict[str, float]:
    """How the answers are wrong, beside the demo's strict score (first word == the answer): the share that
    name one of ``answers`` (well-formed), and the share that start with the right one (lenient: a model that
    says "greengreen" for green counts)."""
    truth = {r["id"]: answer_of(r) for r in records}
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    said = [(normalise(row["response"]), truth[row["id"]]) for row in rows]
    return dict(
        well_formed=float(np.mean([word in answers for word, _ in said])),
        lenient_accuracy=float(np.mean([word.startswith(right) for word, right in said])),
    )


def run_needle(source: str | os.PathLike, out: str | os.PathLike, settings: NeedleSettings) -> dict:
    """Generate the needle videos, score every trained model of the demo in ``source`` on every cell, write
    the report (:mod:`crosslmm.demo.needle.report`) to ``out``; returns it."""
    from crosslmm.demo.needle.report import summarise, write_report

    settings.validate()
    source, root = Path(source), Path(out)
    demo_spec = SynthSpec(**json.loads((source / "data" / "spec.json").read_text()))
    models = trained_models(source, settings.variants, settings.seeds)
    start = time.perf_counter()
    cells = needle_data(root, demo_spec, settings)
    tqdm.write(
        f"needle videos: {len(cells)} cells x {settings.videos} in {root / 'data'} "
        f"({time.perf_counter() - start:.0f} s); models: "
        + ", ".join(f"{name} seeds {list(runs)}" for name, runs in models.items())
    )
    question = question_of(next(iter(cells.values()))[0])
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    scored, skipped = [], []
    todo = [(name, seed, frames) for name in models for seed in models[name] for frames in settings.frames]
    for name, seed, frames in tqdm(todo, desc="needle", unit="model x length"):
        model_dir = models[name][seed]
        tokens, limit = prompt_length(model_dir, question, frames, demo_spec.size)
        if tokens > limit:
            skipped.append(dict(variant=name, seed=seed, frames=frames, tokens=tokens, limit=limit))
            tqdm.write(f"{name} seed {seed} {frames} frames: skipped, {tokens} tokens > {limit} positions")
            continue
        batch = max(1, min(settings.eval_batch_size, settings.batch_tokens // tokens))
        tick, accuracies, stamp, kept = time.perf_counter(), [], model_stamp(model_dir), 0
        for depth in settings.depths:
            predictions = root / "runs" / f"{name}-seed{seed}" / f"{cell_name(frames, depth)}.jsonl"
            predictions.parent.mkdir(parents=True, exist_ok=True)
            data_dir, records = root / "data" / cell_name(frames, depth), cells[frames, depth]
            scores_file = predictions.with_suffix(".scores.json")
            data = (data_dir / "spec.json").read_text()
            scores = kept_scores(scores_file, stamp, data) if settings.reuse else None
            kept += scores is not None
            if scores is None:
                scores = evaluate(model_dir, records, data_dir, frames, batch, predictions)
                scores_file.write_text(json.dumps(dict(model=stamp, data=data, scores=scores)))
            accuracies.append(scores["accuracy"])
            scored.append(
                dict(
                    variant=name,
                    seed=seed,
                    frames=frames,
                    depth=depth,
                    accuracy=scores["accuracy"],
                    videos=len(cells[frames, depth]),
                    seq_len=scores["seq_len"],
                    predictions=str(predictions.relative_to(root)),
                )
                | answer_form(cells[frames, depth], predictions, answers_of(demo_spec.design)["colour"])
            )
        tqdm.write(
            f"{name} seed {seed} {frames} frames: accuracy by depth "
            + " ".join(f"{a:.2f}" for a in accuracies)
            + f" ({time.perf_counter() - tick:.0f} s{f'; {kept} cell(s) kept' if kept else ''})"
        )
    floors = {f: majority_floor([r for d in settings.depths for r in cells[f, d]]) for f in settings.frames}
    report = summarise(scored, skipped, floors, settings, source, time.perf_counter() - start)
    write_report(root, report)
    return report
