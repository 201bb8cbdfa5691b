"""Does a model trained on the synthetic task (:mod:`crosslmm.demo.synth`) look at the target?

First the control: the test accuracy with every T2V block attending uniformly over the original tokens it
reads (:func:`crosslmm.explain.ablation.uniform_attention`) must fall to the majority floor (the share of the
most common answer among the scored videos), within ``CONTROL_MARGIN``. A model that still answers with
uniform T2V weights reads its answer from an average of the memory, and where its attention peaks then
says nothing about what it needed; so only when the control passes are the localisation rates reported.
Both say something only about a model that answers above the floor itself (``answers_above_floor``, by
more than the same margin): a model stuck on one answer passes the control trivially.

Then, for every test video: the first answer token's T2V map (layer mean); whether the top patch of the
whole video lies on the target cell in a target frame (the hit rate, reported over the correctly answered
videos, the issue's target being ``HIT_TARGET``, and over all); the top patch within the target frames and
whether it lies on or touches the target cell (Chebyshev distance <= 1); the attention mass of the target
frames against the others; and the share of target frames among the frames with the most mass (as many as
show the target). The target's cell and frames are the generator's truth, the ``target`` field that
``crosslmm synth`` writes into every record (both designs), mapped onto the frames the check samples.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import torch

CONTROL_MARGIN = 0.10  # uniform-T2V accuracy may beat the floor by this much (the audit's probe margin)
HIT_TARGET = 0.80  # issue 23: share of correctly answered videos whose top T2V patch is on the target


def target_of(record: dict, frame_indices) -> tuple[np.ndarray, tuple[int, int]]:
    """The record's ``target`` on the sampled frames: (marked (F,) bool: the sampled frame shows the target,
    (row, col) of its cell). ``frame_indices`` are the sampled frames' indices in the source video."""
    target = record.get("target")
    if target is None:
        raise ValueError(
            f"record {record.get('id')!r} has no 'target' field: regenerate the data with `crosslmm synth` "
            "(or `crosslmm demo`), which writes the target's cell and frames into every record"
        )
    start, end = target["frames"]
    indices = np.asarray(frame_indices)
    marked = (indices >= start) & (indices < end)
    if not marked.any():
        raise ValueError(
            f"record {record.get('id')!r}: none of the sampled frames {indices.tolist()} shows the target "
            f"(frames {start}-{end - 1}); sample more frames"
        )
    row, col = target["cell"]
    return marked, (int(row), int(col))


def others_of(record: dict) -> list[tuple[int, int]]:
    """The cells of the record's other answer patches (``target.others``, written for the striped designs):
    where a model that answers by elimination looks instead of the target. Empty when the record has none."""
    return [(int(r), int(c)) for r, c in record.get("target", {}).get("others", [])]


def _to_patch(rc: tuple[int, int], cells: int, grid: int) -> tuple[int, int]:
    """A target cell of a ``cells`` x ``cells`` frame -> the patch of a ``grid`` x ``grid`` tower holding its
    centre (the same cell when the target is one patch, as in the demo)."""
    return tuple(int((v + 0.5) * grid / cells) for v in rc)


def score_video(
    t2v: np.ndarray, marked: np.ndarray, patch: tuple[int, int], others: list[tuple[int, int]] = ()
) -> dict:
    """t2v (F, g, g) one token's layer-mean map; ``marked`` (F,) bool: frames showing the target; the
    target's patch (row, col); ``others``: the other answer patches of the target frames, if known."""
    grid = t2v.shape[-1]
    f, r, c = np.unravel_index(t2v.argmax(), t2v.shape)  # the top patch of the whole video
    top_on = bool(marked[f]) and (int(r), int(c)) == tuple(patch)
    inside = t2v[marked]
    _, r, c = np.unravel_index(inside.argmax(), inside.shape)  # the top patch of the target frames
    on_other = (int(r), int(c)) in [tuple(o) for o in others] if others else None
    distance = max(abs(int(r) - patch[0]), abs(int(c) - patch[1]))
    near = [
        (i, j) for i in range(grid) for j in range(grid) if max(abs(i - patch[0]), abs(j - patch[1])) <= 1
    ]
    mass = t2v.sum((1, 2))
    top = np.argsort(-mass)[: int(marked.sum())]  # as many frames as show the target, by mass
    return dict(
        top_on=top_on,
        chance_top_on=1 / (len(marked) * grid**2),
        marked_in_top=float(marked[top].mean()),
        chance_marked_in_top=float(marked.mean()),
        on=distance == 0,
        chance_on=1 / grid**2,
        on_other=on_other,
        chance_on_other=len(others) / grid**2,
        touches=distance <= 1,
        chance_touches=len(near) / grid**2,
        marked_mass=float(mass[marked].mean()),
        other_mass=float(mass[~marked].mean()) if (~marked).any() else float("nan"),
    )


def clears_floor(accuracy: float, floor: float) -> bool:
    """Above the majority floor by more than ``CONTROL_MARGIN``: the control must not, the model must."""
    return accuracy - floor > CONTROL_MARGIN


def majority_floor(records: list[dict]) -> tuple[str, float]:
    """The most common answer of ``records`` and its share: the accuracy of always giving it."""
    from crosslmm.demo.synth import answer_of

    answer, count = Counter(answer_of(r) for r in records).most_common(1)[0]
    return answer, count / len(records)


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


def _accuracy(records: list[dict], answers: list[str]) -> float:
    from crosslmm.demo.synth import is_correct

    return statistics.fmean(is_correct(r, a) for r, a in zip(records, answers))


def _closed_gate_accuracy(model, processor, test: list[dict], questions, videos) -> dict[str, float]:
    """Accuracy with each cross-attention kind's gates at zero in turn: which block carries the answer."""
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
            out[kind] = _accuracy(test, answers)
    return out


def uniform_t2v_control(model, processor, test: list[dict], questions, videos) -> dict:
    """The control: accuracy with uniform T2V weights against the majority floor of ``test``."""
    from crosslmm.demo.synth import normalise
    from crosslmm.explain.ablation import uniform_attention

    with uniform_attention(model, "t2v"):
        answers = _answers(model, processor, questions, videos)
    majority, floor = majority_floor(test)
    accuracy = _accuracy(test, answers)
    return dict(
        majority_answer=majority,
        majority_floor=floor,
        accuracy_uniform_t2v=accuracy,
        margin=CONTROL_MARGIN,
        passed=not clears_floor(accuracy, floor),
        answers_uniform_t2v=dict(Counter(normalise(a) for a in answers).most_common()),
    )


def localisation(rows: list[dict]) -> dict:
    """The rates over the scored videos (``rows`` from :func:`score_video` with ``correct``)."""
    correct = [r for r in rows if r["correct"]]
    with_others = [r for r in rows if r["other_mass"] == r["other_mass"]]
    return dict(
        hit_rate=_rate([r["top_on"] for r in correct]),  # the measure, on the answered videos
        hit_target=HIT_TARGET,
        hit_rate_all=_rate([r["top_on"] for r in rows]),
        hit_rate_wrong=_rate([r["top_on"] for r in rows if not r["correct"]]),
        chance_hit=statistics.fmean(r["chance_top_on"] for r in rows),
        top_patch_of_target_frames_on_target=statistics.fmean(r["on"] for r in rows),
        chance_on=statistics.fmean(r["chance_on"] for r in rows),
        # where elimination looks: the other answer patches (records that name them)
        top_patch_of_target_frames_on_other_patch=_rate(
            [r["on_other"] for r in rows if r.get("on_other") is not None]
        ),
        chance_on_other=_rate([r["chance_on_other"] for r in rows if r.get("on_other") is not None]),
        top_patch_of_target_frames_touches_target=statistics.fmean(r["touches"] for r in rows),
        chance_touches=statistics.fmean(r["chance_touches"] for r in rows),
        target_share_of_top_frames=statistics.fmean(r["marked_in_top"] for r in rows),
        chance_target_share=statistics.fmean(r["chance_marked_in_top"] for r in rows),
        target_frames_get_more_mass=_rate([r["marked_mass"] > r["other_mass"] for r in with_others]),
        mass_ratio_target_to_other=_rate([r["marked_mass"] / r["other_mass"] for r in with_others]),
    )


def run_check(model_dir: str, data_dir: str, frames: int, limit: int | None = None) -> dict:
    """The control and, when it passes, the localisation rates over the test split of a ``crosslmm synth``
    / ``crosslmm demo`` data dir (``test.json``, ``spec.json``)."""
    from crosslmm.data.video import load_video
    from crosslmm.demo.synth import is_correct, question_of
    from crosslmm.explain.maps import answer_text, explain
    from crosslmm.inference import load

    root = Path(data_dir)
    test = json.loads((root / "test.json").read_text())[:limit]
    spec = json.loads((root / "spec.json").read_text())
    model, processor = load(model_dir)
    clips = [load_video(root / record["video"], num_frames=frames) for record in test]
    targets = [target_of(record, clip.indices) for record, clip in zip(test, clips)]  # fail before the work
    videos = [clip.frames for clip in clips]
    questions = [question_of(record) for record in test]
    answers = _answer_ids(model, processor, questions, videos)
    result = dict(
        model=str(model_dir),
        design=spec.get("design", "marker"),
        videos=len(test),
        frames=frames,
        accuracy=_accuracy(test, [answer_text(processor, ids) for ids in answers]),
        control=uniform_t2v_control(model, processor, test, questions, videos),
        accuracy_gate_closed=_closed_gate_accuracy(model, processor, test, questions, videos),
        answers_above_floor=None,
        localisation=None,
    )
    result["answers_above_floor"] = clears_floor(result["accuracy"], result["control"]["majority_floor"])
    if not result["control"]["passed"]:
        return result  # uniform weights answer as well: where attention peaks is not what it needs
    rows = []
    for record, clip, (marked, rc), question, answer_ids in zip(test, clips, targets, questions, answers):
        expl = explain(
            model, processor, clip.frames, question, answer_ids, frame_indices=clip.indices.tolist()
        )
        cells = clip.frames.shape[1] // spec["cell"]
        others = [_to_patch(o, cells, expl.grid) for o in others_of(record)]
        rows.append(
            score_video(expl.t2v[0].mean(0), marked, _to_patch(rc, cells, expl.grid), others)
            | dict(correct=is_correct(record, expl.answer))
        )
    result["localisation"] = localisation(rows)
    return result


def summary(result: dict) -> str:
    """The check's verdict in a few lines: the control first, then the hit rate (only if it passed)."""
    control = result["control"]
    lines = [
        f"{result['model']}: {result['videos']} test videos ({result['design']} design), "
        f"accuracy {result['accuracy']:.3f}",
        f"control: uniform T2V weights answer {control['accuracy_uniform_t2v']:.3f} against a majority floor "
        f"of {control['majority_floor']:.3f} ({control['majority_answer']!r}): "
        + (
            "passed"
            if control["passed"]
            else f"FAILED (more than {control['margin']:.2f} above the floor): the answer does not need "
            "T2V's attention to find anything, so no hit rate is reported"
        ),
    ]
    if not result["answers_above_floor"]:
        lines.append(
            f"the model itself answers at the floor ({result['accuracy']:.3f}): the control passes trivially "
            "and the hit rate cannot show what it needed"
        )
    where = result["localisation"]
    if where is not None:
        hit = where["hit_rate"]
        verdict = "n/a" if hit is None else ("met" if hit >= where["hit_target"] else "NOT met")
        lines.append(
            "hit rate (top T2V patch on the target cell in a target frame, correctly answered videos): "
            + ("none answered" if hit is None else f"{hit:.3f}")
            + f" (target {where['hit_target']:.2f}: {verdict}; chance {where['chance_hit']:.3f}; "
            f"all videos {where['hit_rate_all']:.3f})"
        )
        if where["top_patch_of_target_frames_on_other_patch"] is not None:
            lines.append(
                "top T2V patch of the target frames: on the target "
                f"{where['top_patch_of_target_frames_on_target']:.3f}, on another answer patch "
                f"{where['top_patch_of_target_frames_on_other_patch']:.3f} (chance {where['chance_on']:.3f} "
                f"and {where['chance_on_other']:.3f}): the second is where elimination looks"
            )
    return "\n".join(lines)


def _rate(values: list) -> float | None:
    return statistics.fmean(values) if values else None
