"""Does a model trained on the synthetic marker task (:mod:`crosslmm.demo.synth`) look at the marker?

For every test video: the first answer token's T2V map (layer mean); the patch with the largest attention
within the marked frames, and whether it lies on the marker cell or touches it (Chebyshev distance <= 1);
the attention mass of the marked frames against the others; and the share of marked frames among the
frames with the most mass (as many as are marked). The marker is found in the decoded frames
themselves: it is the only saturated square of a video (every other pixel stays in 80..175, see synth.py),
so the check needs nothing but the videos and the questions.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import torch

SATURATED = 90.0  # mean |pixel - 128| of a cell: the marker's is ~127, noise and distractors' under 50


def find_marker(frames: np.ndarray, cell: int) -> tuple[np.ndarray, tuple[int, int]]:
    """frames (T, H, W, 3) uint8 -> (marked (T,) bool, (row, col) of the marker cell in ``cell``-px cells)."""
    t, h, w, _ = frames.shape
    cells = np.abs(frames.astype(np.float32) - 128).max(-1).reshape(t, h // cell, cell, w // cell, cell)
    score = cells.mean((2, 4))  # (T, rows, cols)
    marked = score.max((1, 2)) > SATURATED
    if not marked.any():
        raise ValueError("no saturated marker cell in any sampled frame")
    row, col = np.unravel_index(score[marked].sum(0).argmax(), score.shape[1:])
    return marked, (int(row), int(col))


def _to_patch(rc: tuple[int, int], cells: int, grid: int) -> tuple[int, int]:
    """A marker cell of a ``cells`` x ``cells`` frame -> the patch of a ``grid`` x ``grid`` tower holding its
    centre (the same cell when the marker is one patch, as in the demo)."""
    return tuple(int((v + 0.5) * grid / cells) for v in rc)


def score_video(t2v: np.ndarray, marked: np.ndarray, patch: tuple[int, int]) -> dict:
    """t2v (F, g, g) one token's layer-mean map; ``marked`` (F,) bool; the marker's patch (row, col)."""
    grid = t2v.shape[-1]
    inside = t2v[marked]
    f, r, c = np.unravel_index(inside.argmax(), inside.shape)
    distance = max(abs(int(r) - patch[0]), abs(int(c) - patch[1]))
    near = [
        (i, j) for i in range(grid) for j in range(grid) if max(abs(i - patch[0]), abs(j - patch[1])) <= 1
    ]
    mass = t2v.sum((1, 2))
    top = np.argsort(-mass)[: int(marked.sum())]  # as many frames as are marked, by mass
    return dict(
        marked_in_top=float(marked[top].mean()),
        chance_marked_in_top=float(marked.mean()),
        on=distance == 0,
        touches=distance <= 1,
        chance_touches=len(near) / grid**2,
        marked_mass=float(mass[marked].mean()),
        other_mass=float(mass[~marked].mean()) if (~marked).any() else float("nan"),
    )


def _answer_ids(
    model, processor, questions: list[str], videos: list[np.ndarray], batch: int = 32
) -> list[list[int]]:
    from crosslmm.explain.maps import generate_ids
    from crosslmm.inference import build_prompt

    prompts = [build_prompt(processor, q) for q in questions]
    return [
        ids
        for i in range(0, len(prompts), batch)
        for ids in generate_ids(model, processor, prompts[i : i + batch], videos[i : i + batch], 4)
    ]


def _answers(model, processor, questions: list[str], videos: list[np.ndarray]) -> list[str]:
    from crosslmm.explain.maps import answer_text

    return [answer_text(processor, ids) for ids in _answer_ids(model, processor, questions, videos)]


def _closed_gate_accuracy(model, processor, test: list[dict], questions, videos) -> dict[str, float]:
    """Accuracy with each cross-attention kind's gates at zero in turn: which block carries the answer."""
    from crosslmm.demo.synth import is_correct
    from crosslmm.explain.maps import dual_layers

    out = {}
    for kind in ("v2v", "t2v"):
        gates = [
            getattr(layer, kind).gate for layer in dual_layers(model) if getattr(layer, kind) is not None
        ]
        saved = [g.detach().clone() for g in gates]
        try:
            with torch.no_grad():
                for g in gates:
                    g.zero_()
            answers = _answers(model, processor, questions, videos)
        finally:
            with torch.no_grad():
                for g, value in zip(gates, saved):
                    g.copy_(value)
        if gates:
            out[kind] = statistics.fmean(is_correct(r, a) for r, a in zip(test, answers))
    return out


def run_check(model_dir: str, data_dir: str, frames: int, limit: int | None = None) -> dict:
    """The rates over the test split of a ``crosslmm demo`` data dir (``test.json``, ``spec.json``)."""
    from crosslmm.data.video import load_video
    from crosslmm.demo.synth import is_correct, question_of
    from crosslmm.explain.maps import explain
    from crosslmm.inference import load

    root = Path(data_dir)
    test = json.loads((root / "test.json").read_text())[:limit]
    cell = json.loads((root / "spec.json").read_text())["cell"]
    model, processor = load(model_dir)
    clips = [load_video(root / record["video"], num_frames=frames) for record in test]
    questions = [question_of(record) for record in test]
    answers = _answer_ids(model, processor, questions, [clip.frames for clip in clips])
    rows = []
    for record, clip, question, answer_ids in zip(test, clips, questions, answers):
        expl = explain(
            model, processor, clip.frames, question, answer_ids, frame_indices=clip.indices.tolist()
        )
        answer = expl.answer
        marked, rc = find_marker(clip.frames, cell)
        patch = _to_patch(rc, clip.frames.shape[1] // cell, expl.grid)
        rows.append(
            score_video(expl.t2v[0].mean(0), marked, patch) | dict(correct=is_correct(record, answer))
        )
    with_others = [r for r in rows if r["other_mass"] == r["other_mass"]]
    return dict(
        model=str(model_dir),
        videos=len(rows),
        frames=frames,
        accuracy=statistics.fmean(r["correct"] for r in rows),
        accuracy_gate_closed=_closed_gate_accuracy(
            model, processor, test, questions, [clip.frames for clip in clips]
        ),
        top_patch_on_marker=statistics.fmean(r["on"] for r in rows),
        top_patch_touches_marker=statistics.fmean(r["touches"] for r in rows),
        chance_touches=statistics.fmean(r["chance_touches"] for r in rows),
        marked_share_of_top_frames=statistics.fmean(r["marked_in_top"] for r in rows),
        chance_marked_share=statistics.fmean(r["chance_marked_in_top"] for r in rows),
        marked_frames_get_more_mass=statistics.fmean(r["marked_mass"] > r["other_mass"] for r in with_others),
        mass_ratio_marked_to_other=statistics.fmean(r["marked_mass"] / r["other_mass"] for r in with_others),
        touches_when_correct=_rate([r["touches"] for r in rows if r["correct"]]),
        touches_when_wrong=_rate([r["touches"] for r in rows if not r["correct"]]),
    )


def _rate(values: list[bool]) -> float | None:
    return statistics.fmean(values) if values else None
