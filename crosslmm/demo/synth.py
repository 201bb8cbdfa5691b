"""Synthetic long-video QA whose answer sits only in the fine detail of one patch of a few frames.

Two designs of the ``colour`` question (``SynthSpec.design``):

- ``stripes`` (the default): for a few consecutive frames inside one quarter of the video, every answer
  colour (red, green, blue) appears as a patch-sized square, each at the same saturation and striped by the
  same grey (achromatic) stripes. The target's stripes run vertically, the others' horizontally; the question
  asks for the colour of the vertical stripes. Every colour is present in every marked frame with the same
  pixel statistics (the colours are permutations of one (hi, lo, lo) triple, so per-patch means and standard
  deviations are equal), and the stripes are added in grey, so the sum of the patches does not depend on
  which colour carries the vertical ones. A frame average, any per-pixel or per-patch statistic averaged over
  a frame, the most saturated patch, and a linear read-out of the average of patch-linear features all carry
  no trace of the answer; only the orientation inside the right patch does. ``crosslmm synth --audit`` checks
  this with probes (:mod:`crosslmm.demo.audit`).
- ``textures``: as ``stripes``, but the three patches carry three different grey textures (vertical
  stripes, horizontal stripes, 2-px checks; each covers half the patch), assigned to the colours at random,
  and each video's question names one of them ("What colour are the checks?"). The sum of the patches again
  does not depend on which colour carries which texture. It closes the stripes design's cheapest second
  route: there every marked frame shows the three colours, so "the colour that is not horizontally striped"
  answers without the target; here the other two patches' textures change from video to video and the
  question decides which patch matters, so answering without the named patch means reading both others.
- ``marker`` (the earlier design, kept to show what the audit catches): one patch-sized square fully
  saturated in the answer colour, the only pixels at 0 or 255. With ``constant_mean`` the pixels around it
  are shifted to cancel its colour cast, which puts the negated answer into every other patch: a per-patch
  standardisation followed by an average, or the most saturated patch, reads the answer without finding it.

Questions ask for the target's colour (the default) or the quarter of the video it appears in. The opt-in
``motion`` question asks where a light, unsaturated block of 2x2 patches moves (left, right, up or down, one
cell per stage): evidence spread over four patches and every frame, which a frame pooled to one token also
loses (the block is cell-aligned, so its share of the frame average does not depend on where it is).
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
DESIGNS = ("stripes", "textures", "marker")
QUESTIONS = {
    "stripes": {
        "colour": "What colour are the vertical stripes?",
        "quarter": "Which quarter of the video shows the vertical stripes?",
    },
    "textures": {
        "colour": "What colour are the {texture}?",
        "quarter": "Which quarter of the video shows the {texture}?",
    },
    "marker": {
        "colour": "What colour is the marker?",
        "quarter": "Which quarter of the video shows the marker?",
    },
}
MOTION_QUESTION = "Which way does the block move?"
DIRECTIONS = ("left", "right", "up", "down")
# The stripes design's colours: permutations of one (hi, lo, lo) triple, so every colour patch has the same
# per-patch mean and standard deviation; STRIPE adds the same grey to every channel of the bright stripes.
STRIPE_HI, STRIPE_LO, STRIPE = 190.0, 30.0, 60.0
STRIPE_COLOURS = ("red", "green", "blue")
TEXTURES = (
    "vertical stripes",
    "horizontal stripes",
    "checks",
)  # the textures design's, as questions name them
BLOCK_VALUE = 215.0  # the moving block's grey: above the noise (80..175), below saturation
TASK_NAME = "crosslmm_synth"


def questions_of(design: str) -> dict[str, str]:
    """Question type -> question sentence for ``design``."""
    return QUESTIONS[design] | {"motion": MOTION_QUESTION}


def answers_of(design: str) -> dict[str, tuple[str, ...]]:
    """Question type -> the possible answers for ``design`` (the majority floor's classes)."""
    colours = tuple(COLOURS) if design == "marker" else STRIPE_COLOURS
    return {"colour": colours, "quarter": QUARTERS, "motion": DIRECTIONS}


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
    questions: tuple[str, ...] = ("colour",)  # drawn uniformly per video; any of questions_of(design)
    design: str = "stripes"  # "stripes" (leak-free) or "marker" (the earlier design; see module docstring)
    constant_mean: bool = True  # marker design only: marked frames keep their unmarked channel means
    fps: float = 4.0
    # None: the marked frames sit at a random place inside a random quarter. A number in [0, 1] (the needle
    # test, crosslmm.demo.needle): they start at round(depth * (frames - length)), length = min(marker_frames,
    # frames // 4), and nothing about the placement is drawn, so every depth gets the same haystack and needle.
    depth: float | None = None

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
        if self.design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}, got {self.design!r}")
        if self.design != "marker" and not self.constant_mean:
            raise ValueError("constant_mean=False applies to the marker design only (design='marker')")
        known = tuple(questions_of(self.design))
        unknown = [q for q in self.questions if q not in known]
        if not self.questions or unknown:
            raise ValueError(f"questions must be a non-empty subset of {known}, got {self.questions}")
        if self.depth is not None and not 0 <= self.depth <= 1:
            raise ValueError(f"depth must be in [0, 1] (0: the first frames, 1: the last), got {self.depth}")
        if self.design != "marker" and self.cell % 4:
            raise ValueError(
                f"the stripes design needs cell to be a multiple of 4 (2-px stripes), got {self.cell}"
            )


def quarter_of(frame: int, frames: int) -> int:
    """Index 0..3 of the quarter of a ``frames``-long video that ``frame`` falls in."""
    return frame * 4 // frames


def _square(r: int, c: int, side: int) -> tuple[slice, slice]:
    """The (rows, cols) of grid cell (r, c) when cells are ``side`` pixels."""
    return slice(r * side, (r + 1) * side), slice(c * side, (c + 1) * side)


def make_video(spec: SynthSpec, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One video (T, H, W, 3) uint8 and its ground truth (target colour, quarter, cell, frames)."""
    cells = spec.size // spec.cell
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    # Mid-range noise: no pixel near 0 or 255.
    frames = rng.integers(80, 176, (spec.frames, spec.size, spec.size, 3)).astype(np.float32)
    # Marker design: dimmed (never saturated, the marker is). Stripes design: fully saturated, more than any
    # striped patch, so the most salient patch of a frame is clutter that says nothing about the answer.
    dimmed = palette if spec.design == "stripes" else 0.35 * palette + 0.65 * 128.0
    for t in range(spec.frames):
        for cell in rng.choice(cells * cells, spec.distractors, replace=False):
            frames[t][_square(*divmod(int(cell), cells), spec.cell)] = dimmed[rng.integers(len(names))]
    answers = answers_of(spec.design)["colour"]
    colour = int(rng.integers(len(answers)))
    if spec.depth is None:
        quarter = int(rng.integers(4))
        first, end = math.ceil(quarter * spec.frames / 4), math.ceil((quarter + 1) * spec.frames / 4)
        length = min(spec.marker_frames, end - first)
        start = int(rng.integers(first, end - length + 1))
    else:  # placed, not drawn; the run may cross a quarter boundary: its middle frame names the quarter
        length = min(spec.marker_frames, spec.frames // 4)
        start = round(spec.depth * (spec.frames - length))
        quarter = quarter_of(start + (length - 1) // 2, spec.frames)
    shown = slice(start, start + length)
    texture, others = {}, []
    if spec.design == "stripes":
        (r, c), others = _paint_stripes(frames, shown, colour, spec, rng)
    elif spec.design == "textures":
        (r, c), others, texture = _paint_textures(frames, shown, colour, spec, rng)
    else:
        r, c = divmod(int(rng.integers(cells * cells)), cells)
    # Drawn after everything else and only when asked, so the default spec's videos stay as they were.
    motion = _draw_block(frames, spec, rng) if "motion" in spec.questions else {}
    if spec.design == "marker":
        _paint_marker(frames, shown, (r, c), palette[colour], spec)
    truth = (
        dict(
            colour=answers[colour],
            quarter=QUARTERS[quarter],
            cell=[r, c],
            marker_frames=[start, start + length],
        )
        | (dict(others=others) if others else {})
        | texture
        | motion
    )
    return np.rint(frames).astype(np.uint8), truth


def texture_patch(colour: int, texture: str, cell: int) -> np.ndarray:
    """(cell, cell, 3) float: a patch of ``STRIPE_COLOURS[colour]`` with one of ``TEXTURES`` added in grey
    (2-px stripes or checks, the same phase in every patch; each covers half the patch)."""
    base = np.full(3, STRIPE_LO, dtype=np.float32)
    base[colour] = STRIPE_HI
    on = (np.arange(cell) // 2) % 2 == 0  # 2 px on, 2 px off
    grey = {
        "vertical stripes": on[None, :] & np.ones((cell, 1), bool),
        "horizontal stripes": on[:, None] & np.ones((1, cell), bool),
        "checks": on[:, None] ^ on[None, :],
    }[texture]
    return base + STRIPE * grey[..., None]


def stripe_patch(colour: int, vertical: bool, cell: int) -> np.ndarray:
    """(cell, cell, 3) float: the stripes design's patch of ``STRIPE_COLOURS[colour]``, 2-px grey stripes."""
    return texture_patch(colour, TEXTURES[0] if vertical else TEXTURES[1], cell)


def _paint_stripes(
    frames: np.ndarray, shown: slice, target: int, spec: SynthSpec, rng: np.random.Generator
) -> tuple[tuple[int, int], list[list[int]]]:
    """Paint every answer colour as a striped patch (target vertical, others horizontal) at distinct random
    cells, the same cells in each frame of ``shown``; returns the target's cell and the other patches'."""
    cells = spec.size // spec.cell
    where = rng.choice(cells * cells, len(STRIPE_COLOURS), replace=False)
    for colour, cell in enumerate(where):
        rows, cols = _square(*divmod(int(cell), cells), spec.cell)
        frames[shown, rows, cols] = stripe_patch(colour, colour == target, spec.cell)
    return _cells_of(where, target, cells)


def _cells_of(where: np.ndarray, target: int, cells: int) -> tuple[tuple[int, int], list[list[int]]]:
    """The target's (row, col) and the other painted patches' [row, col] (what explain-check tells apart)."""
    others = [list(divmod(int(cell), cells)) for i, cell in enumerate(where) if i != target]
    return divmod(int(where[target]), cells), others


def _paint_textures(
    frames: np.ndarray, shown: slice, target: int, spec: SynthSpec, rng: np.random.Generator
) -> tuple[tuple[int, int], list[list[int]], dict]:
    """Paint every answer colour with its own texture (a random assignment) at distinct random cells, the
    same in each frame of ``shown``; the question names the target's texture. Returns the target's cell, the
    other patches' and the truth's ``texture``."""
    cells = spec.size // spec.cell
    where = rng.choice(cells * cells, len(STRIPE_COLOURS), replace=False)
    textures = rng.permutation(len(TEXTURES))
    for colour, cell in enumerate(where):
        rows, cols = _square(*divmod(int(cell), cells), spec.cell)
        frames[shown, rows, cols] = texture_patch(colour, TEXTURES[textures[colour]], spec.cell)
    return (*_cells_of(where, target, cells), dict(texture=TEXTURES[textures[target]]))


def _paint_marker(
    frames: np.ndarray, shown: slice, cell: tuple[int, int], colour: np.ndarray, spec: SynthSpec
) -> None:
    """The marker design: one fully saturated patch; with ``constant_mean`` its colour cast is cancelled
    by shifting every other pixel of the frame (which is what leaks the answer into them)."""
    marker = np.zeros(frames.shape[:3], dtype=bool)
    marker[(shown, *_square(*cell, spec.cell))] = True
    unmarked_mean = frames.mean((1, 2))  # (T, 3): each frame's colour cast from noise and distractors
    frames[marker] = colour
    if spec.constant_mean:
        for t in range(shown.start, shown.stop):
            rest = ~marker[t]
            frames[t][rest] -= (frames[t].mean((0, 1)) - unmarked_mean[t]) * marker[t].size / rest.sum()


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


def _record(vid: str, video: str, kind: str, truth: dict, design: str) -> dict:
    """A LLaVA-format record; ``target`` (the target's cell and frames, and for the striped designs the other
    patches' cells) is what the audit's control and ``crosslmm explain-check`` read."""
    target = {"cell": truth["cell"], "frames": truth["marker_frames"]}
    return {
        "id": f"{vid}_{kind}",
        "video": video,
        "question_type": kind,
        "target": target | ({"others": truth["others"]} if "others" in truth else {}),
        "conversations": [
            {"from": "human", "value": "<video>\n" + questions_of(design)[kind].format(**truth)},
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


def has_dataset(out: str | os.PathLike, spec: SynthSpec) -> bool:
    """Whether ``out`` holds the dataset :func:`write_dataset` writes for ``spec`` (its spec.json says so:
    the same spec gives the same data)."""
    written = Path(out) / "spec.json"
    return written.is_file() and written.read_text() == _spec_text(spec)


def _spec_text(spec: SynthSpec) -> str:
    return json.dumps(asdict(spec), indent=1)


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
        write_video(root / rel, frames, spec.fps, crf=0)  # lossless: no codec artefact can carry the answer
        kind = spec.questions[int(rng.integers(len(spec.questions)))]
        records.append(_record(vid, rel, kind, truth, spec.design))
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
    paths["spec"].write_text(_spec_text(spec))
    return paths
