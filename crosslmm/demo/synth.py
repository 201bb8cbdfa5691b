"""Synthetic long-video QA whose answer hides in one patch of a few frames: what pooling to one token destroys.

Each video is T frames of mid-range noise with a few dimmed squares in the answer colours, redrawn every
frame. For a few consecutive frames inside one quarter of the video, one patch-sized square is fully
saturated (the only pixels at 0 or 255): the marker. Questions ask for the marker's colour (the default)
or the quarter of the video it appears in. The opt-in ``motion`` question asks where a light, unsaturated
block of 2x2 patches moves (left, right, up or down, one cell per stage): evidence spread over four patches
and every frame, which a frame pooled to one token also loses (the block is cell-aligned, so its share of
the frame average does not depend on where it is), but which no single saturated patch gives away.

A marked frame keeps the per-channel mean it had without the marker (the pixels around the marker are
shifted to cancel its colour cast), so the marker's colour cancels out of any average over a frame: a frame
pooled to one token (of the frozen, patch-linear features) carries no trace of it, while every single patch
still shows it plainly. That is the fine detail the demo asks about: lost by pooling, recoverable by
attending to the original tokens.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from crosslmm.data.synthetic import COLOURS
from crosslmm.data.video import write_video

QUARTERS = ("first", "second", "third", "last")
QUESTIONS = {
    "colour": "What colour is the marker?",
    "quarter": "Which quarter of the video shows the marker?",
    "motion": "Which way does the block move?",
}
DIRECTIONS = ("left", "right", "up", "down")
ANSWERS = {"colour": tuple(COLOURS), "quarter": QUARTERS, "motion": DIRECTIONS}
BLOCK_VALUE = 215.0  # the moving block's grey: above the noise (80..175), below saturation
TASK_NAME = "crosslmm_synth"


@dataclass(frozen=True)
class SynthSpec:
    """What to generate; the defaults are what ``crosslmm demo`` uses."""

    videos: int = 1400  # train + test
    frames: int = 20
    seed: int = 0
    test_fraction: float = 0.1
    size: int = 40  # frame side in pixels (decord 0.6 cannot read 48-px-wide mp4s)
    cell: int = 8  # marker/distractor side; equal to the tower's patch so a marker fills one patch
    marker_frames: int = 4  # consecutive frames the marker is shown (clipped to a quarter of the video)
    distractors: int = 3  # dimmed squares per frame
    questions: tuple[str, ...] = ("colour",)  # drawn uniformly per video; any of QUESTIONS
    constant_mean: bool = True  # marked frames keep their unmarked channel means (see module docstring)
    fps: float = 4.0

    def validate(self) -> None:
        """Reject settings that would give an empty split or an unanswerable question."""
        if self.videos < 2:
            raise ValueError(f"--videos must be >= 2 (one train and one test video), got {self.videos}")
        if self.frames < 4:
            raise ValueError(
                f"--frames must be >= 4 so every quarter of the video has a frame, got {self.frames}"
            )
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.size % self.cell or self.size % 2:
            raise ValueError(f"size {self.size} must be even and a multiple of cell {self.cell}")
        if self.marker_frames < 1 or self.distractors < 0:
            raise ValueError("marker_frames must be >= 1 and distractors >= 0")
        unknown = [q for q in self.questions if q not in QUESTIONS]
        if not self.questions or unknown:
            raise ValueError(
                f"questions must be a non-empty subset of {tuple(QUESTIONS)}, got {self.questions}"
            )


def quarter_of(frame: int, frames: int) -> int:
    """Index 0..3 of the quarter of a ``frames``-long video that ``frame`` falls in."""
    return frame * 4 // frames


def _square(r: int, c: int, side: int) -> tuple[slice, slice]:
    """The (rows, cols) of grid cell (r, c) when cells are ``side`` pixels."""
    return slice(r * side, (r + 1) * side), slice(c * side, (c + 1) * side)


def make_video(spec: SynthSpec, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One video (T, H, W, 3) uint8 and its ground truth (marker colour, quarter, cell, frames)."""
    cells = spec.size // spec.cell
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    # Mid-range noise: no pixel near 0 or 255, so saturation is the marker's signature.
    frames = rng.integers(80, 176, (spec.frames, spec.size, spec.size, 3)).astype(np.float32)
    dimmed = 0.35 * palette + 0.65 * 128.0  # same hues as the answers, never saturated
    for t in range(spec.frames):
        for cell in rng.choice(cells * cells, spec.distractors, replace=False):
            frames[t][_square(*divmod(int(cell), cells), spec.cell)] = dimmed[rng.integers(len(names))]
    colour = int(rng.integers(len(names)))
    quarter = int(rng.integers(4))
    first, end = math.ceil(quarter * spec.frames / 4), math.ceil((quarter + 1) * spec.frames / 4)
    length = min(spec.marker_frames, end - first)
    start = int(rng.integers(first, end - length + 1))
    r, c = divmod(int(rng.integers(cells * cells)), cells)
    # Drawn after everything else and only when asked, so the default spec's videos stay as they were.
    motion = _draw_block(frames, spec, rng) if "motion" in spec.questions else {}
    marker = np.zeros(frames.shape[:3], dtype=bool)
    marker[(slice(start, start + length), *_square(r, c, spec.cell))] = True
    unmarked_mean = frames.mean((1, 2))  # (T, 3): each frame's colour cast from noise and distractors
    frames[marker] = palette[colour]
    if spec.constant_mean:
        # Spread the marker's colour cast, negated, over the pixels around it (a grey level or so, so nothing
        # else saturates): every frame keeps the average it had without the marker, which varies by chance
        # from frame to frame and says nothing about the marker.
        for t in range(start, start + length):
            rest = ~marker[t]
            frames[t][rest] -= (frames[t].mean((0, 1)) - unmarked_mean[t]) * marker[t].size / rest.sum()
    truth = (
        dict(
            colour=names[colour],
            quarter=QUARTERS[quarter],
            cell=[r, c],
            marker_frames=[start, start + length],
        )
        | motion
    )
    return np.rint(frames).astype(np.uint8), truth


def block_cell(direction: str, stage: int, across: int, cells: int) -> tuple[int, int]:
    """Top-left grid cell (row, col) of the 2x2-cell block at ``stage`` (0 .. cells - 2) of its path."""
    along = stage if direction in ("right", "down") else cells - 2 - stage
    return (across, along) if direction in ("left", "right") else (along, across)


def _draw_block(frames: np.ndarray, spec: SynthSpec, rng: np.random.Generator) -> dict:
    """Paint the ``motion`` question's block onto ``frames`` (T, H, W, 3) in place; returns its truth.

    The block covers 2x2 cells and steps one cell at a time across the frame, spending an equal share of the
    video at each of the ``cells - 1`` positions of its path; the other coordinate stays fixed."""
    cells = spec.size // spec.cell
    direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    across = int(rng.integers(cells - 1))
    for t in range(spec.frames):
        r, c = block_cell(direction, t * (cells - 1) // spec.frames, across, cells)
        frames[t, r * spec.cell : (r + 2) * spec.cell, c * spec.cell : (c + 2) * spec.cell] = BLOCK_VALUE
    return dict(motion=direction, block_across=across)


def _record(vid: str, video: str, kind: str, truth: dict) -> dict:
    return {
        "id": f"{vid}_{kind}",
        "video": video,
        "question_type": kind,
        "conversations": [
            {"from": "human", "value": f"<video>\n{QUESTIONS[kind]}"},
            {"from": "gpt", "value": truth[kind]},
        ],
    }


def question_of(record: dict) -> str:
    """The human turn without its ``<video>`` line: the question both the demo and the lmms-eval task ask."""
    return record["conversations"][0]["value"].replace("<video>\n", "")


def answer_of(record: dict) -> str:
    return record["conversations"][1]["value"]


def normalise(text: str) -> str:
    """Lower-case, first word, no punctuation: 'Red.' and 'red' are the same answer."""
    words = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text.lower()).split()
    return words[0] if words else ""


def is_correct(record: dict, response: str) -> bool:
    """The task's one scoring rule, shared by ``crosslmm demo`` and the generated lmms-eval task."""
    return normalise(response) == answer_of(record)


def task_yaml(test_json: str) -> str:
    """An lmms-eval task over the local test JSON: generate a few tokens, scored by :func:`is_correct`."""
    return (
        f"task: {TASK_NAME}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {test_json}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        "doc_to_visual: !function utils.doc_to_visual\n"
        "doc_to_text: !function utils.doc_to_text\n"
        "doc_to_target: !function utils.doc_to_target\n"
        "process_results: !function utils.process_results\n"
        "generation_kwargs:\n  max_new_tokens: 4\n  do_sample: false\n"
        "metric_list:\n  - metric: accuracy\n    aggregation: mean\n    higher_is_better: true\n"
    )


TASK_UTILS = '''"""lmms-eval hooks for the synthetic CrossLMM task; videos are relative to this directory."""

import os

from crosslmm.demo.synth import answer_of, is_correct, question_of

ROOT = os.path.dirname(os.path.abspath(__file__))


def doc_to_visual(doc):
    return [os.path.join(ROOT, doc["video"])]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return question_of(doc)


def doc_to_target(doc):
    return answer_of(doc)


def process_results(doc, results):
    return {"accuracy": float(is_correct(doc, results[0]))}
'''


def write_dataset(out: str | os.PathLike, spec: SynthSpec, progress: bool = True) -> dict[str, Path]:
    """Write videos/*.mp4, train.json, test.json, the lmms-eval task (YAML + hooks) and spec.json to ``out``.

    Everything is a function of ``spec`` (one numpy Generator seeded with ``spec.seed``), so the same spec
    gives byte-identical JSON and identical frames. Each video gets one question, drawn uniformly from
    ``spec.questions``; the test split is the last ``test_fraction`` of the videos.
    """
    spec.validate()
    root = Path(out)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    n_test = max(1, round(spec.videos * spec.test_fraction))
    records: list[dict] = []
    for i in tqdm(range(spec.videos), desc="synth videos", disable=not progress, leave=False):
        frames, truth = make_video(spec, rng)
        vid = f"v{i:05d}"
        rel = f"videos/{vid}.mp4"
        write_video(root / rel, frames, spec.fps)
        kind = spec.questions[int(rng.integers(len(spec.questions)))]
        records.append(_record(vid, rel, kind, truth))
    paths = {
        "train": root / "train.json",
        "test": root / "test.json",
        "task": root / f"{TASK_NAME}.yaml",
        "spec": root / "spec.json",
    }
    paths["train"].write_text(json.dumps(records[:-n_test], indent=1))
    paths["test"].write_text(json.dumps(records[-n_test:], indent=1))
    paths["task"].write_text(task_yaml(str(paths["test"].resolve())))
    (root / "utils.py").write_text(TASK_UTILS)
    paths["spec"].write_text(json.dumps(asdict(spec), indent=1))
    return paths
