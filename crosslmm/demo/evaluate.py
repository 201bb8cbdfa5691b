"""Score one trained variant through crosslmm.inference, the functions the lmms-eval plugin calls."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from tqdm import tqdm

from crosslmm.demo.synth import is_correct, question_of


def evaluate(
    model_dir: Path,
    test: list[dict],
    data_root: Path,
    frames: int,
    batch_size: int,
    predictions: Path,
    tokens_per_frame: int | None = None,
    closed: tuple[str, ...] = (),
) -> dict:
    """Accuracy through crosslmm.inference (the lmms-eval plugin's path), plus the LLM sequence length and
    analytic prefill FLOPs of the prompts it answered. Every answer goes to ``predictions`` (JSON lines).
    ``tokens_per_frame``: the budget to answer at (an elastic model's; None: the model's default).
    ``closed``: cross-attention blocks (``v2v``, ``t2v``) whose gates are set to 0 before answering."""
    from crosslmm.bench.flops import at_budget, prefill_flops
    from crosslmm.data.sampling import FrameSampling
    from crosslmm.data.video import load_frames
    from crosslmm.inference import build_prompt, generate, load
    from crosslmm.training.params import close_gates

    model, processor = load(model_dir)
    if closed and close_gates(model, closed) == 0:
        raise ValueError(f"{model_dir}: no {'/'.join(closed)} gate to close")
    budget = tokens_per_frame or model.config.tokens_per_frame
    model.config.check_budget(budget, source=f"--tokens-per-frame {budget}")
    counted = at_budget(model.config, budget)
    sampling = FrameSampling.resolve(num_frames=frames)
    lengths, flops, shape_of, answered = [], [], {}, []
    for start in tqdm(range(0, len(test), batch_size), desc=f"eval {model_dir.parent.name}", leave=False):
        batch = test[start : start + batch_size]
        prompts = [build_prompt(processor, question_of(r)) for r in batch]
        videos = [[load_frames(data_root / r["video"], sampling)] for r in batch]
        answers = generate(model, processor, prompts, videos, max_new_tokens=4, tokens_per_frame=budget)
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
                ids = processor(text=[prompt], videos=video, tokens_per_frame=budget)["input_ids"][0]
                prefix = int((ids == processor.video_token_id).nonzero()[0])
                shape_of[prompt] = (prefix, len(ids))
            prefix, total = shape_of[prompt]
            text_tokens = total - prefix - len(video[0]) * budget
            lengths.append(total)
            flops.append(prefill_flops(counted, len(video[0]), text_tokens, prefix_tokens=prefix).total)
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
