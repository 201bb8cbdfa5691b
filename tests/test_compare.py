"""``crosslmm compare`` (docs/comparisons.md): the motion question's videos, the equal-FLOPs budget matching, and the
``--quick`` comparison end to end through the real training and evaluation paths for every method."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from unittest import mock

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from crosslmm.cli import main as cli
from crosslmm.demo.compare.plan import (
    METHODS,
    CompareSettings,
    Coster,
    Planned,
    candidates,
    equal_compute_plan,
)
from crosslmm.demo.compare.report import (
    BEGIN,
    END,
    PLOTS,
    equal_table,
    floors,
    paired_table,
    split_docs,
    summarise,
    update_docs,
)
from crosslmm.demo.report import RunResult, majority_floor
from crosslmm.demo.synth import BLOCK_VALUE, DIRECTIONS, SynthSpec, block_cell, make_video, questions_of


@pytest.mark.parametrize("design", ["stripes", "marker"])
@pytest.mark.parametrize("frames", [8, 20])
def test_motion_block_moves_the_way_the_answer_says(frames, design):
    # the marker design's constant-mean shift would move the block's grey: drawn without it there
    spec = SynthSpec(
        frames=frames, questions=("colour", "motion"), design=design, constant_mean=design != "marker"
    )
    spec.validate()
    cells = spec.size // spec.cell
    seen = set()
    for seed in range(12):
        video, truth = make_video(spec, np.random.default_rng(seed))
        seen.add(truth["motion"])
        path = [
            block_cell(truth["motion"], t * (cells - 1) // frames, truth["block_across"], cells)
            for t in range(frames)
        ]
        step = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[truth["motion"]]
        assert np.subtract(path[-1], path[0]).tolist() == [(cells - 2) * d for d in step]  # edge to edge
        for t, (r, c) in enumerate(path):  # the 2x2 cells there hold the block, unless the marker covers them
            region = video[t, r * spec.cell : (r + 2) * spec.cell, c * spec.cell : (c + 2) * spec.cell]
            marker = ((region == 0) | (region == 255)).any(-1)
            assert (region[~marker] == BLOCK_VALUE).all()
            assert (video[t] == BLOCK_VALUE).all(-1).sum() == (~marker).sum()  # and nothing else does
    assert seen == set(DIRECTIONS)


def test_motion_leaves_the_colour_question_as_it_was():
    """The block is drawn after every other random draw: the marker's truth does not change with it."""
    for seed in range(5):
        _, plain = make_video(SynthSpec(frames=8), np.random.default_rng(seed))
        _, both = make_video(SynthSpec(frames=8, questions=("colour", "motion")), np.random.default_rng(seed))
        assert {k: both[k] for k in plain} == plain and both["motion"] in DIRECTIONS


def test_budgets_are_matched_to_crosslmm_flops():
    """Every reducer with a free k lands in the band at each CrossLMM budget, at the nearest setting; pooling
    (square budgets), FastV (every token through layer 0 of 2) and salient (its ranking runs the tower's two
    layers, which the others skip: their features are the patch embeddings) are flagged when they cannot."""
    settings = CompareSettings()
    cost = Coster(settings, settings.equal.questions)
    plan = equal_compute_plan(settings, cost)
    grid = settings.equal.size // settings.patch_size
    assert {p.method for p in plan} == set(METHODS)
    for p in plan:
        if not p.budget:
            continue
        budget = int(p.budget.rsplit("=", 1)[1])
        target = cost(candidates("crosslmm", grid, settings.llm_layers, budget)[0][1], settings.equal.frames)
        assert p.target_flops == pytest.approx(target)
        assert p.in_band == (abs(p.flops / target - 1) <= settings.band)
        if p.method in ("random", "merge", "crosslmm"):
            assert p.in_band, p
        allowed = candidates(p.method, grid, settings.llm_layers, budget)
        best = min(abs(math.log(cost(f, p.frames) / target)) for _, f in allowed)
        assert abs(math.log(p.flops / target)) == pytest.approx(best)  # the nearest setting
    for method in ("pool", "random", "merge", "crosslmm"):  # a curve each
        assert len({p.flops for p in plan if p.method == method}) >= 2, method
    # salient's cheapest setting already costs more than CrossLMM's dearer budget: the tower ranking
    salient = [p for p in plan if p.method == "salient"]
    assert salient and not any(p.in_band for p in salient)
    assert all(p.fields["tokens_per_frame"] == 1 and p.fields["salient_layer"] == -1 for p in salient)
    # decode cost and cache memory beside the prefill FLOPs: only CrossLMM caches T2V keys/values, and the
    # full-token model's decoder cache is the largest
    for p in plan:
        assert p.decode_flops > 0 and p.decoder_cache_bytes > 0
        assert (p.cross_cache_bytes > 0) == (p.method == "crosslmm"), p.name
    assert max(plan, key=lambda p: p.decoder_cache_bytes).method == "full"
    # FastV's cheapest setting still runs every token through decoder layer 0 (half the full LLM)
    fastv = [p for p in plan if p.method == "fastv"]
    assert fastv and not any(p.in_band for p in fastv)
    assert all(p.fields["fastv_layer"] == 1 and p.fields["fastv_keep"] == 1 for p in fastv)


def test_invalid_settings_fail_clearly(tmp_path, capsys):
    assert cli(["compare", "--out", str(tmp_path), "--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="exceed the long videos"):
        replace(CompareSettings(), long_frames=(128,)).validate()
    with pytest.raises(ValueError, match="methods must include crosslmm"):
        replace(CompareSettings(), methods=("pool",)).validate()


def test_docs_get_the_runs_tables_and_plots(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.md").write_text("| table |\n")
    for name in PLOTS:
        (run / name).write_bytes(b"png " + name.encode())
    doc = tmp_path / "docs" / "comparisons.md"
    doc.parent.mkdir()
    doc.write_text(f"intro\n\n{BEGIN}\nold\n{END}\n\nafter\n")
    update_docs(run, doc, "crosslmm compare --seeds 3")
    text = doc.read_text()
    assert text.startswith("intro\n\n") and text.endswith(f"{END}\n\nafter\n") and "old" not in text
    assert "`crosslmm compare --seeds 3`" in text and "| table |" in text
    for name in PLOTS:
        assert f"]({name})" in text and (doc.parent / name).read_bytes() == b"png " + name.encode()
    update_docs(run, doc, "crosslmm compare --seeds 3")  # idempotent: the block is replaced, not appended
    assert doc.read_text() == text
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="needs one"):
        split_docs(doc)


def test_defaults_are_the_stripes_design_with_five_seeds():
    """The comparison runs on the leak-free design, motion question included where the design has it."""
    settings = CompareSettings()
    assert settings.seeds == 5
    assert settings.equal.design == settings.long.design == "stripes"
    assert "motion" in questions_of("stripes") and "motion" in settings.equal.questions
    settings.validate()
    assert CompareSettings.quick().equal.design == "stripes"


def _record(kind: str, answer: str) -> dict:
    return {"question_type": kind, "conversations": [{"value": "q"}, {"value": answer}]}


def test_report_pairs_seed_by_seed_and_shows_the_floor_of_the_test_answers(tmp_path):
    """Paired differences are CrossLMM minus each model on the same seed (runs given out of seed order),
    through crosslmm.demo.stats; the floor is the test split's (each type's train majority, 'red' and
    'left': 2 of 3 colour answers, 1 of 2 motion answers), not a constant; decode FLOPs and cache bytes sit
    in the same table."""
    train = [_record("colour", "red")] * 3 + [_record("colour", "blue"), _record("motion", "left")]
    test = [_record("colour", "red"), _record("colour", "red"), _record("colour", "green")]
    test += [_record("motion", "left"), _record("motion", "up")]
    for split, records in (("train", train), ("test", test)):
        (tmp_path / f"{split}.json").write_text(json.dumps(records))
    floor = floors(tmp_path)
    assert floor["by_type"] == {"colour": pytest.approx(2 / 3), "motion": 0.5}
    assert floor["all"] == pytest.approx(3 / 5)  # each type's majority: 2 colour + 1 motion of 5

    costs = dict(decode_flops=2e5, cross_cache_bytes=2048.0, decoder_cache_bytes=4096.0)
    planned = [
        Planned("eq-crosslmm-k1", "equal", "crosslmm", "k=1", {}, 8, 1e7, **costs, budget="CrossLMM k=1"),
        Planned("eq-random-k3", "equal", "random", "k=3", {}, 8, 1e7, **costs, budget="CrossLMM k=1"),
        Planned("eq-pool-k1", "equal", "pool", "k=1", {}, 8, 8e6, **costs),
    ]
    accuracy = {"eq-crosslmm-k1": [0.6, 0.8], "eq-random-k3": [0.5, 0.9], "eq-pool-k1": [0.3, 0.3]}
    runs = [
        RunResult(name, seed, accs[seed], {"colour": accs[seed]}, 40.0, 1e7, 1.0, None)
        for seed in (1, 0)
        for name, accs in accuracy.items()
    ]
    report = summarise(runs, planned, replace(CompareSettings.quick(), seeds=2), {"equal": floor})
    pairs = {p["b"]: p for p in report["paired"]}
    assert set(pairs) == {"eq-random-k3", "eq-pool-k1"}
    assert pairs["eq-random-k3"]["differences"] == pytest.approx([0.1, -0.1])
    assert (pairs["eq-random-k3"]["wins"], pairs["eq-random-k3"]["losses"]) == (1, 1)
    assert pairs["eq-pool-k1"]["differences"] == pytest.approx([0.3, 0.5])
    assert "not shown" in pairs["eq-random-k3"]["verdict"]
    table = equal_table(report)
    assert "| majority floor (test answers) |" in table and "0.667" in table and "0.600" in table
    assert "decode kFLOPs/token" in table and "| 200 | 2.0 | 4.0 |" in table
    assert "+0.100 -0.100" in paired_table(report, "equal")


@pytest.mark.slow
def test_quick_compare_runs_every_method_end_to_end(tmp_path):
    out = tmp_path / "compare"
    assert cli(["compare", "--quick", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    rows = report["rows"]
    assert {r["method"] for r in rows if r["study"] == "equal"} == set(METHODS)
    assert {r["method"] for r in rows if r["study"] == "frames"} == {"full", "pool", "crosslmm"}
    settings = CompareSettings.quick()
    test = json.loads((out / "data" / "equal" / "test.json").read_text())
    for r in rows:
        run = out / "runs" / f"{r['name']}-seed0"
        config = json.loads((run / "final" / "config.json").read_text())
        for field, value in r["fields"].items():  # the trained model is the planned visual path
            assert config[field] == value, (r["name"], field)
        last = [json.loads(line) for line in (run / "metrics.jsonl").open()][-1]
        assert last["step"] == settings.steps and np.isfinite(last["train_loss"])
        if r["study"] == "equal":
            predictions = [json.loads(line) for line in (run / "predictions.jsonl").open()]
            assert [p["id"] for p in predictions] == [t["id"] for t in test]
        assert r["prefill_flops"] == pytest.approx(r["flops"])  # the plan costed the prompt evaluated
    # the LLM sequence of a frame reducer holds k tokens per frame; FastV's holds every patch
    by_name = {r["name"]: r for r in rows}
    pool1 = by_name["eq-pool-k1"]["seq_len"]
    frames, patches = settings.equal.frames, (settings.equal.size // settings.patch_size) ** 2
    for r in rows:
        if r["study"] == "equal" and r["method"] != "crosslmm":
            assert r["seq_len"] - pool1 == frames * (r["fields"]["tokens_per_frame"] - 1), r["name"]
    assert any(r["method"] == "fastv" and r["seq_len"] - pool1 == frames * (patches - 1) for r in rows)
    # one frozen tower for every model (crosslmm.demo.variants.build_model's rule), whatever its visual path
    towers = []
    for r in rows:
        weights = load_file(out / "runs" / f"{r['name']}-seed0" / "final" / "model.safetensors")
        towers.append({k: v for k, v in weights.items() if k.startswith("model.vision_tower.")})
    assert towers[0] and all(t.keys() == towers[0].keys() for t in towers)
    assert all(torch.equal(t[k], towers[0][k]) for t in towers for k in t)
    markdown = (out / "results.md").read_text()
    assert "### Equal compute" in markdown and "### More frames" in markdown
    assert markdown.count("majority floor (test answers)") == 2 and "Paired per-seed differences" in markdown
    assert report["floors"]["frames"]["all"] == pytest.approx(majority_floor(out / "data" / "frames"))
    assert {p["b"] for p in report["paired"]} == {r["name"] for r in rows if r["method"] != "crosslmm"}
    assert all(r["decode_flops"] > 0 and r["decoder_cache_bytes"] > 0 for r in rows)
    for name in ("comparisons_equal.png", "comparisons_frames.png"):
        assert (out / name).stat().st_size > 0
    # --reuse with one more seed trains only the new seed's models; the finished ones are scored again
    trained, written = [], (out / "data" / "equal" / "test.json").stat().st_mtime_ns
    with mock.patch(
        "crosslmm.demo.compare.run.train_variant", side_effect=lambda *a: trained.append(a[1]) or 0.0
    ):
        # the mock trains nothing, so seed 1's first model has no final dir to score: a clear error, exit 2
        assert cli(["compare", "--quick", "--seeds", "2", "--reuse", "--out", str(out)]) == 2
    assert trained == [1]
    assert (out / "data" / "equal" / "test.json").stat().st_mtime_ns == written  # same spec: data kept


def test_probe_shows_the_norm_oracle_of_the_marker_design_and_not_of_stripes():
    """The numbers docs/comparisons.md and baselines.md quote (python -m crosslmm.demo.compare.probe), on a few
    videos: ranked by feature norm, the marker patch is always among salient's dominant patches (an oracle);
    the striped target is not; ToMe does not keep the marker unmerged in every frame."""
    from crosslmm.demo.compare.probe import target_kept

    marker, stripes = target_kept("marker", videos=6), target_kept("stripes", videos=6)
    assert marker.frames == stripes.frames == 12  # 2 marked frames of 8 per video
    assert marker.salient_norm == marker.frames
    assert stripes.salient_norm < stripes.frames and marker.merge_unmerged < marker.frames
    assert marker.salient_attention < marker.frames  # the tower's attention is no oracle
