"""``crosslmm demo --needle``: ``SynthSpec.depth`` puts the marked frames where asked and leaves the default
videos as they were; the needle run scores every trained model of a demo dir on every (depth, frames) cell
through the demo's own evaluation, and its tables, JSON and heatmap say what the predictions say."""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from crosslmm.cli import main as cli
from crosslmm.data.sampling import FrameSampling
from crosslmm.data.video import load_frames
from crosslmm.demo.needle import run as needle_run
from crosslmm.demo.needle.run import NeedleSettings, trained_models
from crosslmm.demo.synth import (
    QUARTERS,
    STRIPE_COLOURS,
    SynthSpec,
    answer_of,
    is_correct,
    make_video,
    quarter_of,
    stripe_patch,
    write_dataset,
)
from crosslmm.demo.variants import DemoSettings, build_model, variants
from crosslmm.model.build import save_model_dir

# sha256 (first 16 hex digits) of three videos and their truths from np.random.default_rng(7), recorded with
# the code before ``depth`` existed: the default placement must draw exactly as it did.
BEFORE_DEPTH = {
    "default": ({}, "8410841b56c09e0a"),
    "16 frames": (dict(frames=16), "3cfddae685c50feb"),
    "256 frames": (dict(frames=256), "69588128cb388de6"),
    "marker design": (dict(design="marker"), "7f2225c2c2d5139b"),
    "motion question": (dict(questions=("colour", "motion")), "b3a81a60147e5c8a"),
}


@pytest.mark.parametrize("name", list(BEFORE_DEPTH))
def test_default_videos_are_unchanged_by_the_depth_option(name):
    fields, expected = BEFORE_DEPTH[name]
    rng, digest = np.random.default_rng(7), hashlib.sha256()
    for _ in range(3):
        frames, truth = make_video(SynthSpec(**fields), rng)
        digest.update(frames.tobytes())
        recorded = {k: v for k, v in truth.items() if k != "others"}  # added later, drawn from nothing
        digest.update(json.dumps(recorded, sort_keys=True).encode())
    assert digest.hexdigest()[:16] == expected


def target_frames(frames: np.ndarray, truth: dict, tolerance: float = 0, cell: int = 8) -> list[int]:
    """Frames whose target cell shows the target's vertical stripes (mean absolute error <= ``tolerance``)."""
    r, c = truth["cell"]
    patch = stripe_patch(STRIPE_COLOURS.index(truth["colour"]), True, cell)
    window = frames[:, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell].astype(np.float32)
    return [t for t in range(len(frames)) if np.abs(window[t] - patch).mean() <= tolerance]


@pytest.mark.parametrize("length", [16, 21, 64, 256])
def test_depth_places_the_target_where_asked_in_the_same_haystack(length):
    videos = {}
    for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
        spec = SynthSpec(frames=length, depth=depth)
        frames, truth = make_video(spec, np.random.default_rng(11))
        start = round(depth * (length - 4))
        assert truth["marker_frames"] == [start, start + 4]
        assert target_frames(frames, truth) == list(range(start, start + 4))  # the pixels, not just the label
        # the quarter names the middle marked frame, and the run touches that quarter
        middle = quarter_of(start + 1, length)
        assert truth["quarter"] == QUARTERS[middle]
        assert quarter_of(start, length) <= middle <= quarter_of(start + 3, length)
        videos[depth] = frames, truth
    assert videos[0.0][1]["marker_frames"][0] == 0 and videos[1.0][1]["marker_frames"][1] == length
    # Only the placement differs: the same colour, cells and noise outside the two runs.
    first, truth0 = videos[0.0]
    for frames, truth in videos.values():
        assert {k: truth[k] for k in ("colour", "cell")} == {k: truth0[k] for k in ("colour", "cell")}
        elsewhere = np.ones(length, bool)
        elsewhere[slice(*truth["marker_frames"])] = elsewhere[slice(*truth0["marker_frames"])] = False
        np.testing.assert_array_equal(frames[elsewhere], first[elsewhere])


def test_the_default_placement_names_the_same_quarter_rule():
    """Without ``depth`` the run lies inside its quarter, so the middle-frame rule gives the same quarter."""
    rng = np.random.default_rng(5)
    for length in (4, 7, 20, 33):
        for _ in range(20):
            _, truth = make_video(SynthSpec(frames=length), rng)
            start, end = truth["marker_frames"]
            assert truth["quarter"] == QUARTERS[quarter_of(start + (end - start - 1) // 2, length)]
            assert quarter_of(start, length) == quarter_of(end - 1, length)


@pytest.mark.parametrize("depth", [-0.1, 1.5])
def test_depth_outside_zero_to_one_is_refused(depth):
    with pytest.raises(ValueError, match="depth must be in"):
        SynthSpec(depth=depth).validate()


# The fake demo's models answer one word whatever the video: a random tiny model with tied embeddings echoes
# the prompt's last token ("\n"); a colour word whose embedding is twice that token's wins instead.
# Every model says " red" ("red red red red") but these; "red" with no space gives "redredredred", no word.
ANSWERS = {("crosslmm", 1): " green", ("pool", 1): "red"}
POSITIONS = {"full": 150}  # full tokens (25 per frame) fit 4 frames, not 8


def save_answering(demo: Path, name: str, seed: int, word: str) -> None:
    """Save the demo variant ``name`` (seed ``seed``) as a model that always answers ``word``."""
    settings = DemoSettings.quick()
    variant = next(v for v in variants(settings.data.size // settings.patch_size, [0]) if v.name == name)
    model, processor = build_model(variant, seed, settings)
    (answer,), (newline,) = processor.tokenizer.encode(word), processor.tokenizer.encode("\n")
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        embeddings[answer] = 2 * embeddings[newline]
    if name in POSITIONS:
        model.config.text_config.max_position_embeddings = POSITIONS[name]
    save_model_dir(model, processor, demo / "runs" / f"{name}-seed{seed}" / "final")


@pytest.fixture(scope="module")
def fake_demo(tmp_path_factory) -> Path:
    """A demo output dir (data/, runs/<variant>-seed<k>/final) like ``crosslmm demo --quick`` leaves, with
    two seeds of the three needle variants whose answers are known."""
    root = tmp_path_factory.mktemp("demo")
    settings = DemoSettings.quick()
    write_dataset(root / "data", settings.data, progress=False)
    for name in NeedleSettings().variants:
        for seed in (0, 1):
            save_answering(root, name, seed, ANSWERS.get((name, seed), " red"))
    return root


def test_trained_models_finds_finished_runs_and_names_what_is_missing(fake_demo):
    found = trained_models(fake_demo, ("crosslmm", "pool", "full"), None)
    assert {name: list(runs) for name, runs in found.items()} == dict(
        crosslmm=[0, 1], pool=[0, 1], full=[0, 1]
    )
    assert list(trained_models(fake_demo, ("pool",), 1)["pool"]) == [0]
    with pytest.raises(FileNotFoundError, match="no finished pool_v2v model"):
        trained_models(fake_demo, ("pool", "pool_v2v"), None)


@pytest.mark.slow
def test_needle_end_to_end(fake_demo, tmp_path, capsys, monkeypatch):
    out = tmp_path / "needle"
    calls, real = [], needle_run.evaluate  # what the demo's evaluate() scored (the fake models answer blind)

    def spy(model_dir, test, data_root, frames, *args, **kwargs):
        calls.append((Path(model_dir).parent.name, Path(data_root), frames, test))
        return real(model_dir, test, data_root, frames, *args, **kwargs)

    monkeypatch.setattr(needle_run, "evaluate", spy)
    assert cli(["demo", "--needle", "--quick", "--from", str(fake_demo), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "needle test finished" in printed.out
    assert "full seed 0 8 frames: skipped" in printed.out + printed.err
    report = json.loads((out / "results.json").read_text())
    settings = NeedleSettings.quick()
    assert report["settings"] == json.loads(json.dumps(asdict(settings)))
    assert (out / "needle.png").stat().st_size > 0
    table = (out / "results.md").read_text()

    # Every cell: the demo's scoring of its own records, the accuracy the mean of those predictions, and (the
    # models saying one word) the share of that word among the cell's answers.
    cells = {(c["variant"], c["seed"], c["frames"], c["depth"]): c for c in report["cells"]}
    expected = {
        (name, seed, frames, depth)
        for name in settings.variants
        for seed in (0, 1)
        for frames in settings.frames
        for depth in settings.depths
        if not (name == "full" and frames == 8)
    }
    assert set(cells) == expected
    for (name, seed, frames, depth), cell in cells.items():
        data = out / "data" / f"frames{frames:03d}-depth{round(100 * depth):03d}"
        records = [r for split in ("train", "test") for r in json.loads((data / f"{split}.json").read_text())]
        assert json.loads((data / "spec.json").read_text())["depth"] == depth
        predictions = [json.loads(line) for line in (out / cell["predictions"]).open()]
        assert [p["id"] for p in predictions] == [r["id"] for r in records] and len(
            records
        ) == settings.videos
        assert [p["correct"] for p in predictions] == [
            is_correct(r, p["response"]) for r, p in zip(records, predictions)
        ]
        assert cell["accuracy"] == pytest.approx(statistics.fmean(p["correct"] for p in predictions))
        token = ANSWERS.get((name, seed), " red")
        share = statistics.fmean(answer_of(r) == token.strip() for r in records)
        spaced = token.startswith(" ")
        assert cell["accuracy"] == pytest.approx(share if spaced else 0.0)
        assert cell["well_formed"] == (1.0 if spaced else 0.0)
        assert cell["lenient_accuracy"] == pytest.approx(share)

    # Each model scored each cell's own videos, read as evaluate() reads them, with the target at the depth.
    assert sorted((name, root.name) for name, root, _, _ in calls) == sorted(
        (f"{name}-seed{seed}", f"frames{frames:03d}-depth{round(100 * depth):03d}")
        for name, seed, frames, depth in cells
    )
    for root in {root for _, root, _, _ in calls}:
        spec = json.loads((root / "spec.json").read_text())
        records = [r for split in ("train", "test") for r in json.loads((root / f"{split}.json").read_text())]
        assert all(frames == spec["frames"] and test == records for _, r, frames, test in calls if r == root)
        length = min(spec["marker_frames"], spec["frames"] // 4)  # 1 frame in a 4-frame video
        start = round(spec["depth"] * (spec["frames"] - length))
        for record in records:
            video = load_frames(root / record["video"], FrameSampling.resolve(num_frames=spec["frames"]))
            truth = dict(cell=record["target"]["cell"], colour=answer_of(record))
            assert record["target"]["frames"] == [start, start + length] and len(video) == spec["frames"]
            # decoded from yuv: the marked frames are off by under 7 on average, the others by over 70
            assert target_frames(video, truth, tolerance=20) == list(range(start, start + length))

    # Heatmaps: per seed the cells' accuracies, the mean their mean; full tokens skipped at 8 frames.
    for name, heat in report["heatmaps"].items():
        assert heat["seeds"] == [0, 1]
        for i, depth in enumerate(settings.depths):
            for j, frames in enumerate(settings.frames):
                per_seed = [heat["per_seed"][str(s)][i][j] for s in (0, 1)]
                if name == "full" and frames == 8:
                    assert per_seed == [None, None] and heat["mean"][i][j] is None
                    continue
                assert per_seed == [cells[name, s, frames, depth]["accuracy"] for s in (0, 1)]
                assert heat["mean"][i][j] == pytest.approx(statistics.fmean(per_seed))
    assert {(s["variant"], s["frames"]) for s in report["skipped"]} == {("full", 8)}
    assert all(s["tokens"] > s["limit"] == POSITIONS["full"] for s in report["skipped"])
    assert "n/a" in table and f"more than its {POSITIONS['full']}" in table

    # The floor: the share of the most common answer among a length's needle videos, in every table.
    for frames in settings.frames:
        records = [
            r
            for depth in settings.depths
            for split in ("train", "test")
            for r in json.loads(
                (
                    out / "data" / f"frames{frames:03d}-depth{round(100 * depth):03d}" / f"{split}.json"
                ).read_text()
            )
        ]
        shares = {c: statistics.fmean(answer_of(r) == c for r in records) for c in STRIPE_COLOURS}
        assert report["floor"][str(frames)] == pytest.approx(max(shares.values()))
        assert shares[report["majority_answer"][str(frames)]] == max(shares.values())
    assert table.count("| majority floor |") == len(settings.variants)
    for name, form in report["answer_form"].items():  # means over seeds and depths of the cells above
        for key in ("well_formed", "lenient_accuracy"):
            for frames in settings.frames:
                mine = [c[key] for k, c in cells.items() if k[0] == name and k[2] == frames]
                assert form[key][str(frames)] == (pytest.approx(statistics.fmean(mine)) if mine else None)
    assert "| pool-only well-formed | 0.50 | 0.50 |" in table  # seed 0 always, seed 1 never

    # Paired per seed, accuracy averaged over depths; nothing to pair where full tokens were skipped.
    for comparison in report["paired"]:
        a, b, frames = comparison["a"], comparison["b"], comparison["frames"]
        if b == "full" and frames == 8:
            assert comparison["seeds"] == [] and comparison["verdict"] == "no common seed scored"
            continue
        assert comparison["seeds"] == [0, 1]
        depth_mean = {
            name: [
                statistics.fmean(cells[name, s, frames, d]["accuracy"] for d in settings.depths)
                for s in (0, 1)
            ]
            for name in (a, b)
        }
        assert comparison["differences"] == pytest.approx(
            [x - y for x, y in zip(depth_mean[a], depth_mean[b])]
        )
        assert comparison["verdict"] in table
    assert [(c["a"], c["b"]) for c in report["paired"]] == [("crosslmm", "pool")] * 2 + [
        ("crosslmm", "full")
    ] * 2


@pytest.mark.slow
def test_needle_reuse_keeps_only_what_the_same_model_scored(fake_demo, tmp_path, monkeypatch):
    demo, out = tmp_path / "demo", tmp_path / "needle"
    shutil.copytree(fake_demo, demo)
    argv = ["demo", "--needle", "--quick", "--from", str(demo), "--out", str(out)]
    assert cli(argv) == 0
    first = json.loads((out / "results.json").read_text())
    calls, real = [], needle_run.evaluate

    def spy(model_dir, *args, **kwargs):
        calls.append(Path(model_dir).parent.name)
        return real(model_dir, *args, **kwargs)

    monkeypatch.setattr(needle_run, "evaluate", spy)
    assert cli(argv + ["--reuse"]) == 0
    assert calls == []  # nothing scored again, the same report
    again = json.loads((out / "results.json").read_text())
    assert again["cells"] == first["cells"] and again["heatmaps"] == first["heatmaps"]

    save_answering(demo, "pool", 1, " green")  # retrained: new weights, the old scores no longer apply
    assert cli(argv + ["--reuse"]) == 0
    assert set(calls) == {"pool-seed1"} and len(calls) == 4  # its 2 lengths x 2 depths
    for cell in json.loads((out / "results.json").read_text())["cells"]:
        if (cell["variant"], cell["seed"]) == ("pool", 1):
            records = [json.loads(line) for line in (out / cell["predictions"]).open()]
            assert {r["response"] for r in records} == {"green green green green"}
    calls.clear()  # other videos (a changed spec): every cell is scored again
    assert cli(argv + ["--reuse", "--videos", "4"]) == 0
    assert len(calls) == 20  # (4 + 4 + 2 full-token cells) x 2 seeds


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--needle", "--elastic"], "--elastic do not apply"),
        (["demo", "--needle", "--steps", "3"], "--steps do not apply"),
        (["demo", "--videos", "5"], "--videos and --from apply to --needle only"),
        (["demo", "--needle", "--videos", "1", "--from", "{out}"], "--videos must be >= 2"),
    ],
)
def test_needle_arguments_give_a_clear_error(tmp_path, capsys, argv, message):
    assert cli([a.format(out=tmp_path) for a in argv] + ["--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_one_seed_gives_no_verdict():
    from crosslmm.demo.needle.report import summarise

    scored = [
        dict(variant=v, seed=0, frames=4, depth=0.0, accuracy=a, well_formed=1.0, lenient_accuracy=a)
        for v, a in (("crosslmm", 1.0), ("pool", 0.0))
    ]
    settings = replace(NeedleSettings.quick(), depths=(0.0,), frames=(4,), variants=("crosslmm", "pool"))
    (comparison,) = summarise(scored, [], {4: ("red", 0.5)}, settings, Path("demo"), 1.0)["paired"]
    assert comparison["differences"] == [1.0]
    assert comparison["verdict"] == "one seed only (+100.0 points): no interval, no test"


def test_needle_settings_refuse_a_bad_grid():
    with pytest.raises(ValueError, match="depths must be distinct numbers in"):
        replace(NeedleSettings(), depths=(0.0, 2.0)).validate()
    with pytest.raises(ValueError, match="frames must be distinct video lengths >= 4"):
        replace(NeedleSettings(), frames=(2, 16)).validate()
