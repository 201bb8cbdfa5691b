"""``crosslmm synth --audit DIR``: does a synthetic dataset leak its answer to anything but the target patch?

A synthetic task measures a mechanism only if the shortcuts a model could take instead are closed. Each probe
below reads one kind of summary of the pixels (or of the model's pooled tower features), is fitted on the
train split and scored on the test split (a ridge classifier, its penalty picked on a held-out fifth of
train). A probe that beats the majority floor by more than ``margin`` is a leak. A control probe reads the
target patch itself and must answer (``control_min``): the task has to be solvable from the detail it is
about.

Probes (one feature vector per video):

- ``frame_means``: each frame's channel means (T x 3), what a raw average keeps;
- ``standardised_mean``: every patch standardised (zero mean, unit variance over its pixels, a LayerNorm-like
  step), then averaged over all patches of the video, position-wise (cell x cell x 3);
- ``frame_moments``: per-frame nonlinear channel statistics (std, min, max, 5/95th percentiles, channel
  covariances, per-pixel saturation), each as its mean and its max over frames;
- ``most_saturated``: the pixels of the video's single most saturated patch (what a saliency ranking keeps);
- ``pooled_tower``: the model's own frozen tower features averaged over each frame (what pool-only sees), one
  vector per frame, concatenated;
- control ``target_patch``: the target's patch, averaged over the frames that show it.

Where the question varies between videos (the ``textures`` design names the texture to look for), every probe
also reads the question: its features are given per question (one block of weights per question text, plus
the question itself), so a probe can learn a different read-out for each question, as a model can.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from crosslmm.data.video import load_video
from crosslmm.demo.synth import SynthSpec, answer_of, question_of

PROBES = ("frame_means", "standardised_mean", "frame_moments", "most_saturated", "pooled_tower")
CONTROL = "target_patch"
RIDGE_PENALTIES = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)


@dataclass(frozen=True)
class AuditThresholds:
    margin: float = 0.10  # a shortcut probe may beat the majority floor by at most this much
    control_min: float = 0.95  # the target patch alone must answer at least this often


def patches(frames: np.ndarray, cell: int) -> np.ndarray:
    """(T, H, W, 3) -> (T, rows * cols, cell, cell, 3), row-major cells."""
    t, h, w, _ = frames.shape
    grid = frames.reshape(t, h // cell, cell, w // cell, cell, 3).transpose(0, 1, 3, 2, 4, 5)
    return grid.reshape(t, -1, cell, cell, 3)


def pixel_features(frames: np.ndarray, cell: int, target: dict) -> dict[str, np.ndarray]:
    """Every pixel probe's features of one video (frames (T, H, W, 3) uint8) and the control's."""
    x = frames.astype(np.float32)
    cut = patches(x, cell)  # (T, P, c, c, 3)
    flat = cut.reshape(*cut.shape[:2], -1)
    standardised = (flat - flat.mean(-1, keepdims=True)) / (flat.std(-1, keepdims=True) + 1e-6)
    saturation = x.max(-1) - x.min(-1)  # (T, H, W)
    pixels = x.reshape(len(x), -1, 3)
    centred = pixels - pixels.mean(1, keepdims=True)
    covariance = np.einsum("tpi,tpj->tij", centred, centred)[:, [0, 0, 1], [1, 2, 2]] / pixels.shape[1]
    moments = np.concatenate(
        [
            pixels.std(1),
            pixels.min(1),
            pixels.max(1),
            np.percentile(pixels, 5, axis=1),
            np.percentile(pixels, 95, axis=1),
            covariance,
            saturation.reshape(len(x), -1).mean(1, keepdims=True),
            saturation.reshape(len(x), -1).max(1, keepdims=True),
        ],
        axis=1,
    )  # (T, k)
    patch_saturation = (cut.max(-1) - cut.min(-1)).mean((2, 3))  # (T, P)
    t, p = np.unravel_index(patch_saturation.argmax(), patch_saturation.shape)
    r, c = target["cell"]
    first, end = target["frames"]
    shown = cut[first:end, r * (frames.shape[2] // cell) + c]
    return {
        "frame_means": pixels.mean(1).ravel(),
        "standardised_mean": standardised.mean((0, 1)),
        "frame_moments": np.concatenate([moments.mean(0), moments.max(0)]),
        "most_saturated": cut[t, p].ravel(),
        CONTROL: shown.mean(0).ravel(),
    }


@torch.no_grad()
def pooled_tower_features(model, processor, frames: np.ndarray) -> np.ndarray:
    """The model's frozen tower features of each frame, averaged over the frame: (T * Dv,)."""
    pixel = processor.preprocess_frames(frames)
    return model.model.encode_frames(pixel).mean(1).flatten().float().numpy()


def ridge_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classes: int) -> np.ndarray:
    """Fit a one-vs-rest ridge classifier on standardised features; returns test predictions.

    The penalty is the one that scores best on the last fifth of train (fitted on the rest); the final fit
    uses all of train."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    targets = np.eye(classes)[train_y] * 2 - 1
    cut = max(1, len(train_x) * 4 // 5)

    def fit(x, y, penalty):
        x = np.hstack([x, np.ones((len(x), 1))])
        gram = x @ x.T  # dual form: features often outnumber samples
        alpha = np.linalg.solve(gram + penalty * np.eye(len(x)), y)
        return lambda z: np.hstack([z, np.ones((len(z), 1))]) @ (x.T @ alpha)

    def score(penalty):
        head = fit(train_x[:cut], targets[:cut], penalty)
        return (head(train_x[cut:]).argmax(1) == train_y[cut:]).mean()

    best = max(RIDGE_PENALTIES, key=score)
    return fit(train_x, targets, best)(test_x).argmax(1)


def _features(
    root: Path, records: list[dict], spec: SynthSpec, tower, progress: bool
) -> dict[str, np.ndarray]:
    rows: dict[str, list[np.ndarray]] = {}
    for record in tqdm(records, desc="audit videos", disable=not progress, leave=False):
        path = root / record["video"]
        if "target" not in record:
            raise ValueError(
                f"{path}: record {record['id']} has no 'target' (written by an older crosslmm synth)"
            )
        frames = load_video(path, num_frames=spec.frames).frames
        if frames.shape[1:3] != (spec.size, spec.size):
            raise ValueError(
                f"{path}: frames are {frames.shape[1:3]}, spec.json says {spec.size}x{spec.size}"
            )
        features = pixel_features(frames, spec.cell, record["target"])
        if tower is not None:
            features["pooled_tower"] = pooled_tower_features(*tower, frames)
        for name, value in features.items():
            rows.setdefault(name, []).append(value)
    return {name: np.stack(values) for name, values in rows.items()}


def per_question(x: np.ndarray, questions: np.ndarray, count: int) -> np.ndarray:
    """(N, d) features -> (N, count * (d + 1)): each video's features (and a bias) in its question's block,
    zeros elsewhere; a linear probe on these is one probe per question. ``questions`` (N,) in [0, count)."""
    blocks = np.zeros((len(x), count, x.shape[1] + 1), dtype=x.dtype)
    blocks[np.arange(len(x)), questions, :-1] = x
    blocks[np.arange(len(x)), questions, -1] = 1
    return blocks.reshape(len(x), -1)


def audit(data_dir: str | os.PathLike, tower=None, thresholds=AuditThresholds(), progress=True) -> dict:
    """Run every probe on the dataset in ``data_dir`` (written by ``crosslmm synth``); returns the report.

    ``tower`` is a ``(model, processor)`` pair whose frozen tower gives ``pooled_tower``; without it that
    probe is not run. Only records of the colour question are audited (the question the demo asks)."""
    root = Path(data_dir)
    for name in ("spec.json", "train.json", "test.json"):
        if not (root / name).is_file():
            raise FileNotFoundError(
                f"{root / name}: missing; is {root} a dataset written by `crosslmm synth`?"
            )
    spec = SynthSpec(**{**json.loads((root / "spec.json").read_text()), "questions": ("colour",)})
    split = {
        name: [r for r in json.loads((root / f"{name}.json").read_text()) if r["question_type"] == "colour"]
        for name in ("train", "test")
    }
    for name, records in split.items():
        if len(records) < 2:
            raise ValueError(f"{root / name}.json: {len(records)} colour records; the audit needs at least 2")
    labels = sorted({answer_of(r) for r in split["train"] + split["test"]})
    y = {name: np.array([labels.index(answer_of(r)) for r in records]) for name, records in split.items()}
    x = {name: _features(root, records, spec, tower, progress) for name, records in split.items()}
    texts = sorted({question_of(r) for r in split["train"] + split["test"]})
    q = {name: np.array([texts.index(question_of(r)) for r in records]) for name, records in split.items()}
    # The floor answers each question with its most common training answer (one question: the usual floor).
    majority = {
        k: Counter(y["train"][q["train"] == k].tolist() or [0]).most_common(1)[0][0]
        for k in range(len(texts))
    }
    floor = float(np.mean([y["test"][i] == majority[k] for i, k in enumerate(q["test"])]))
    probes = {}
    for name in (*PROBES, CONTROL):
        if name not in x["train"]:
            continue
        train_x, test_x = x["train"][name], x["test"][name]
        if len(texts) > 1 and name != CONTROL:  # the control reads the named patch already
            train_x, test_x = (per_question(x[s][name], q[s], len(texts)) for s in ("train", "test"))
        predicted = ridge_probe(train_x, y["train"], test_x, len(labels))
        accuracy = float((predicted == y["test"]).mean())
        ok = accuracy >= thresholds.control_min if name == CONTROL else accuracy - floor <= thresholds.margin
        probes[name] = {"accuracy": accuracy, "ok": bool(ok)}
    return {
        "data": str(root),
        "design": spec.design,
        "train": len(split["train"]),
        "test": len(split["test"]),
        "questions": len(texts),
        "majority_floor": floor,
        "margin": thresholds.margin,
        "control_min": thresholds.control_min,
        "probes": probes,
        "passed": all(p["ok"] for p in probes.values()),
    }


def markdown_table(report: dict) -> str:
    floor = report["majority_floor"]
    lines = [
        f"audit of {report['data']} (design {report['design']}; {report['train']} train / {report['test']} "
        f"test colour questions in {report['questions']} wording(s), each probe reading the question; "
        f"majority floor {floor:.3f})",
        "",
        "| probe | test accuracy | above floor | verdict |",
        "|---|---|---|---|",
    ]
    for name, probe in report["probes"].items():
        rule = (
            f">= {report['control_min']:.2f} (control)"
            if name == CONTROL
            else f"<= floor + {report['margin']:.2f}"
        )
        verdict = "ok" if probe["ok"] else "LEAK" if name != CONTROL else "UNANSWERABLE"
        lines.append(
            f"| {name} | {probe['accuracy']:.3f} | {probe['accuracy'] - floor:+.3f} | {verdict} ({rule}) |"
        )
    lines += ["", "audit passed" if report["passed"] else "audit FAILED"]
    return "\n".join(lines)
