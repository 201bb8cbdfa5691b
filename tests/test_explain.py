"""Attention capture (crosslmm.model.cross_attention.capture_attention), ``crosslmm explain``, the uniform-T2V
ablation (crosslmm.explain.ablation) and the target check of crosslmm.explain.check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import coloured_frames, video_dependent_model

from crosslmm.cli import main
from crosslmm.data.video import load_video, write_video
from crosslmm.explain.ablation import uniform_attention
from crosslmm.explain.check import clears_floor, localisation, majority_floor, score_video, summary, target_of
from crosslmm.explain.maps import answer_text, explain, generate_ids
from crosslmm.explain.render import write_all
from crosslmm.inference import build_prompt, generate
from crosslmm.model.build import save_model_dir
from crosslmm.model.cross_attention import capture_attention

FRAMES = 6
QUESTION = "What colour is the marker?"


@pytest.fixture(scope="module")
def tiny():
    return video_dependent_model()


def _inputs(processor, frames):
    return processor(text=[build_prompt(processor, QUESTION)], videos=[frames])


def test_capture_weights_are_softmaxes_over_the_frame_grid(tiny):
    model, processor = tiny
    grid, k = model.model.vision_tower.grid_size, model.config.tokens_per_frame
    with torch.no_grad(), capture_attention(model) as records:
        model(**_inputs(processor, coloured_frames(FRAMES, seed=1)), use_cache=False)
    layers = model.config.resolved_cross_layers()
    assert sorted(records) == sorted((kind, i) for kind in ("v2v", "t2v") for i in layers)
    heads = model.config.text_config.num_attention_heads
    for i in layers:
        v2v = torch.cat(records[("v2v", i)])  # frame scope: chunks of (frames, H, k, N)
        assert v2v.shape == (FRAMES, heads, k, grid * grid)
        t2v = records[("t2v", i)][-1]  # the question after the video: every frame's patches
        assert t2v.shape[:2] == (1, heads) and t2v.shape[-1] == FRAMES * grid * grid
        for weights in (v2v, t2v):
            torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]))
    assert all(block.captured is None for block in model.modules() if hasattr(block, "captured"))


def test_capture_off_is_the_sdpa_path_and_on_changes_nothing(tiny):
    model, processor = tiny
    inputs = _inputs(processor, coloured_frames(FRAMES, seed=2))
    block = model.model.cross_layers[str(model.config.resolved_cross_layers()[0])].t2v
    queries = torch.randn(2, 3, model.config.text_config.hidden_size)
    keys, values = torch.randn(2, 2, block.num_kv_heads, 7, block.head_dim).unbind(0)
    with torch.no_grad():
        q = (
            block.q_proj(block.query_norm(queries))
            .view(2, 3, block.num_heads, block.head_dim)
            .transpose(1, 2)
        )
        sdpa = (
            F.scaled_dot_product_attention(q, keys, values, enable_gqa=True).transpose(1, 2).reshape(2, 3, -1)
        )
        expected = torch.tanh(block.gate) * block.o_proj(sdpa)
        assert torch.equal(block(queries, keys, values), expected)  # off: bit for bit the SDPA computation
        before = model(**inputs, use_cache=False).logits
        with capture_attention(model):
            captured = model(**inputs, use_cache=False).logits
            torch.testing.assert_close(block(queries, keys, values), expected, rtol=1e-5, atol=1e-6)
        after = model(**inputs, use_cache=False).logits
    assert torch.equal(before, after)
    torch.testing.assert_close(captured, before, rtol=1e-4, atol=1e-5)


def test_explain_maps_first_and_every_token(tiny):
    model, processor = tiny
    frames = coloured_frames(FRAMES, seed=3)
    (answer_ids,) = generate_ids(model, processor, [build_prompt(processor, QUESTION)], [frames], 4)
    answer = generate(model, processor, [build_prompt(processor, QUESTION)], [[frames]], 4)[0]
    assert answer and answer_text(processor, answer_ids) == answer  # chat's answer
    grid, k = model.model.vision_tower.grid_size, model.config.tokens_per_frame
    layers = model.config.resolved_cross_layers()
    first = explain(model, processor, frames, QUESTION, answer_ids)
    every = explain(model, processor, frames, QUESTION, answer_ids, all_tokens=True)
    assert first.layers == layers and first.grid == grid and first.answer == answer
    assert first.t2v.shape == (1, len(layers), FRAMES, grid, grid)
    assert every.t2v.shape[0] == len(every.tokens) == len(answer_ids) > 1
    np.testing.assert_allclose(first.frame_mass().sum(-1), 1, rtol=1e-5)
    np.testing.assert_allclose(every.frame_mass().sum(-1), 1, rtol=1e-5)
    np.testing.assert_allclose(every.t2v[0], first.t2v[0], rtol=1e-4, atol=1e-7)  # causal: same first row
    assert not np.allclose(
        every.t2v[0], every.t2v[-1], rtol=1e-5, atol=0
    )  # later tokens have maps of their own
    assert first.v2v.shape == (len(layers), FRAMES, k, grid, grid)
    np.testing.assert_allclose(first.v2v.sum((-2, -1)), 1, rtol=1e-5)
    assert first.gates == [{"v2v": pytest.approx(np.tanh(3.0)), "t2v": pytest.approx(np.tanh(3.0))}] * len(
        layers
    )
    # The map is the video's: another video, another map.
    other = explain(model, processor, coloured_frames(FRAMES, seed=4), QUESTION, answer_ids)
    assert not np.allclose(other.t2v, first.t2v, rtol=1e-5, atol=0)


def test_all_tokens_explains_the_generated_ids_against_captured_weights(tiny):
    """On this video the model generates newlines before its text, so re-tokenising the printed answer
    would explain a sequence the model never produced. Each token's map is the captured T2V weights of its
    own layer, at the row that predicts it, of a forward over the prompt and the generated ids."""
    model, processor = tiny
    frames = coloured_frames(FRAMES, seed=7)
    prompt = build_prompt(processor, QUESTION)
    (answer_ids,) = generate_ids(model, processor, [prompt], [frames], 8)
    retokenised = processor.tokenizer(answer_text(processor, answer_ids), add_special_tokens=False).input_ids
    assert retokenised != answer_ids and len(answer_ids) > 2
    expl = explain(model, processor, frames, QUESTION, answer_ids, all_tokens=True)
    assert expl.tokens == [processor.tokenizer.decode([t]) for t in answer_ids]
    inputs = _inputs(processor, frames)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([answer_ids[:-1]])], 1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with torch.no_grad(), capture_attention(model) as records:
        model(**inputs, use_cache=False)
    grid = model.model.vision_tower.grid_size
    expected = np.stack(
        [
            records[("t2v", layer)][-1][0, :, -len(answer_ids) :]  # rows of the prompt's last token on
            .mean(0)
            .view(len(answer_ids), FRAMES, grid, grid)
            .numpy()
            for layer in expl.layers
        ],
        1,
    )  # (tokens, layers, F, g, g)
    assert len(expl.layers) > 1 and not np.allclose(expected[:, 0], expected[:, 1], rtol=1e-4, atol=0)
    np.testing.assert_allclose(expl.t2v, expected, rtol=1e-5, atol=0)


def test_explain_check_creates_the_folder_of_its_out_file(tmp_path, monkeypatch, capsys):
    """--out DIR/check.json with DIR missing: the folder is made before the (long) check runs."""
    out = tmp_path / "new" / "check.json"

    def fake_check(model, data, frames, limit):
        assert out.parent.is_dir(), "the folder must exist before the work starts"
        return _result(passed=False)

    monkeypatch.setattr("crosslmm.explain.check.run_check", fake_check)
    assert main(["explain-check", "--model", "m", "--data", "d", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == _result(passed=False)
    assert "control: uniform T2V weights answer 0.600" in capsys.readouterr().err


def test_video_scope_v2v_keeps_each_frames_own_block():
    model, processor = video_dependent_model(v2v_scope="video")
    expl = explain(model, processor, coloured_frames(FRAMES, seed=5), QUESTION, [])
    grid = model.model.vision_tower.grid_size
    assert expl.v2v.shape == (len(expl.layers), FRAMES, model.config.tokens_per_frame, grid, grid)
    assert (expl.v2v.sum((-2, -1)) < 1).all()  # a share of attention over every frame


def test_write_all_figures_and_json(tiny, tmp_path):
    model, processor = tiny
    frames = coloured_frames(FRAMES, seed=3)
    ids = processor.tokenizer("abc de", add_special_tokens=False).input_ids
    expl = explain(model, processor, frames, QUESTION, ids, all_tokens=True)
    paths = write_all(expl, frames, tmp_path)
    names = sorted(p.rsplit("/", 1)[-1] for p in paths)
    assert names == ["explanation.json", "gates.png", "t2v.png", "t2v_tokens.png", "v2v.png"]
    saved = json.loads((tmp_path / "explanation.json").read_text())
    np.testing.assert_allclose(saved["t2v"], expl.t2v, rtol=1e-6)
    np.testing.assert_allclose(saved["frame_mass"], expl.frame_mass(), rtol=1e-6)
    assert saved["frame_indices"] == list(range(FRAMES)) and saved["tokens"] == expl.tokens


@pytest.mark.slow
def test_explain_command(tiny, tmp_path, capsys):
    model, processor = tiny
    save_model_dir(model, processor, tmp_path / "model")
    write_video(tmp_path / "clip.mp4", coloured_frames(8, seed=6, size=32), fps=4)
    out = tmp_path / "out"
    args = ["explain", "--model", str(tmp_path / "model"), "--question", QUESTION, "--frames", "4"]
    assert main([*args, "--video", str(tmp_path / "clip.mp4"), "--out", str(out)]) == 0
    saved = json.loads((out / "explanation.json").read_text())
    assert saved["frame_indices"] == load_video(tmp_path / "clip.mp4", num_frames=4).indices.tolist()
    assert saved["answer"] == capsys.readouterr().out.strip().splitlines()[-1]  # the answer, printed
    assert main([*args, "--video", str(tmp_path / "missing.mp4"), "--out", str(out)]) == 2
    assert "missing.mp4: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("design", ["stripes", "marker"])
def test_target_of_maps_the_records_truth_onto_the_sampled_frames(tmp_path, design):
    """Each record's ``target`` names the cell and frames that show the target in its video: on the frames
    the check samples (all 20, or 8 of them), those frames have the target's pixels in that cell (vertical
    stripes or the saturated marker), and no other frame does."""
    from crosslmm.demo.synth import STRIPE, SynthSpec, write_dataset

    spec = SynthSpec(videos=6, design=design, seed=3)
    write_dataset(tmp_path, spec, progress=False)
    records = json.loads((tmp_path / "train.json").read_text()) + json.loads(
        (tmp_path / "test.json").read_text()
    )
    for record in records:
        for count in (spec.frames, 8):
            clip = load_video(tmp_path / record["video"], num_frames=count)
            marked, (row, col) = target_of(record, clip.indices)
            start, end = record["target"]["frames"]
            assert marked.tolist() == [start <= i < end for i in clip.indices.tolist()] and marked.any()
            cells = np.s_[:, row * spec.cell : (row + 1) * spec.cell, col * spec.cell : (col + 1) * spec.cell]
            patch = clip.frames[cells].astype(np.float32)  # (T, cell, cell, 3)
            grey = patch.mean(-1)  # the stripes are grey; the codec's 4:2:0 chroma blurs colour edges
            columns, rows = np.ptp(grey.mean(1), axis=1), np.ptp(grey.mean(2), axis=1)  # (T,) each
            if design == "stripes":  # vertical stripes: the columns differ by STRIPE, the rows far less
                shows = (columns > STRIPE / 2) & (rows < columns / 3)
            else:  # saturated: the only cell whose pixels are all near 0 or 255
                shows = np.abs(patch - 128).max(-1).mean((1, 2)) > 100
            assert shows.tolist() == marked.tolist()


def test_target_of_refuses_records_without_a_target_or_unsampled_frames():
    with pytest.raises(ValueError, match="no 'target' field: regenerate"):
        target_of({"id": "v0_colour"}, [0, 1])
    record = {"id": "v0_colour", "target": {"cell": [1, 2], "frames": [8, 10]}}
    with pytest.raises(ValueError, match="none of the sampled frames"):
        target_of(record, [0, 5, 10, 15])
    marked, cell = target_of(record, [0, 5, 9, 15])
    assert marked.tolist() == [False, False, True, False] and cell == (1, 2)


def test_score_video_on_and_next_to_the_target():
    t2v = np.full((4, 5, 5), 0.01)
    marked = np.array([False, True, True, False])
    t2v[2, 1, 3] = 0.5  # the top patch of the target frames, next to the target at (2, 2)
    t2v[0, 0, 0] = 0.9  # a higher one outside them: the video's top patch, not on the target
    row = score_video(t2v, marked, (2, 2))
    assert row["touches"] and not row["on"] and not row["top_on"]
    assert row["marked_mass"] < row["other_mass"]
    assert row["chance_touches"] == 9 / 25 and row["chance_top_on"] == 1 / 100
    assert row["marked_in_top"] == 0.5 and row["chance_marked_in_top"] == 0.5  # frames 0 and 2 lead
    assert score_video(t2v, marked, (1, 3))["on"] and not score_video(t2v, marked, (1, 3))["top_on"]
    assert not score_video(t2v, marked, (4, 0))["touches"]
    assert not score_video(t2v, marked, (0, 0))["top_on"]  # the right cell in a frame without the target
    t2v[0, 0, 0] = 0.01
    assert score_video(t2v, marked, (1, 3))["top_on"]
    assert row["on_other"] is None  # the record names no other patches
    assert score_video(t2v, marked, (2, 2), [(1, 3), (4, 4)])["on_other"]  # elimination's place
    assert not score_video(t2v, marked, (1, 3), [(2, 2), (4, 4)])["on_other"]
    assert score_video(t2v, marked, (2, 2), [(1, 3), (4, 4)])["chance_on_other"] == 2 / 25


def test_records_of_the_striped_designs_name_the_other_answer_patches():
    """explain-check can tell "looked at another answer patch" from "looked at the target" from the record."""
    from crosslmm.demo.synth import SynthSpec, _record, make_video
    from crosslmm.explain.check import others_of

    for design in ("stripes", "textures"):
        spec = SynthSpec(design=design)
        frames, truth = make_video(spec, np.random.default_rng(1))
        others = others_of(_record("v", "v.mp4", "colour", truth, design))
        start = truth["marker_frames"][0]
        assert len(others) == 2 and tuple(truth["cell"]) not in others
        for r, c in others:  # each is a saturated answer patch: one channel at the stripes' high value
            patch = frames[start, r * spec.cell : (r + 1) * spec.cell, c * spec.cell : (c + 1) * spec.cell]
            assert patch.reshape(-1, 3).min(0).max() >= 180
    assert others_of({"target": {"cell": [0, 0], "frames": [0, 1]}}) == []


def _result(passed: bool) -> dict:
    """A run_check result: control, then the localisation only when the control passed."""
    control = dict(
        majority_answer="green",
        majority_floor=0.4 if passed else 0.3,
        accuracy_uniform_t2v=0.45 if passed else 0.6,
        margin=0.1,
        passed=passed,
        answers_uniform_t2v={"green": 5},
    )
    rows = [
        dict(
            top_on=hit,
            chance_top_on=0.01,
            marked_in_top=1.0,
            chance_marked_in_top=0.2,
            on=hit,
            chance_on=0.04,
            touches=True,
            chance_touches=0.36,
            marked_mass=0.3,
            other_mass=0.1,
            correct=correct,
        )
        for hit, correct in [(True, True)] * 4 + [(False, True), (False, False)]
    ]
    return dict(
        model="m",
        design="stripes",
        videos=6,
        frames=20,
        accuracy=5 / 6,
        control=control,
        answers_above_floor=True,
        accuracy_gate_closed={"v2v": 0.8, "t2v": 0.3},
        localisation=localisation(rows) if passed else None,
    )


def test_localisation_rates_and_the_summary_report_the_control_first():
    where = _result(passed=True)["localisation"]
    assert where["hit_rate"] == 4 / 5 and where["hit_rate_all"] == 4 / 6 and where["hit_rate_wrong"] == 0
    assert where["target_frames_get_more_mass"] == 1 and where["mass_ratio_target_to_other"] == pytest.approx(
        3
    )
    text = summary(_result(passed=True))
    assert text.index("control:") < text.index("hit rate") and "passed" in text
    assert "0.800 (target 0.80: met" in text
    failed = summary(_result(passed=False))
    assert "FAILED" in failed and "hit rate (" not in failed and "no hit rate is reported" in failed
    assert "answers at the floor" not in text
    stuck = _result(passed=True) | {"accuracy": 0.4, "answers_above_floor": False}
    assert "answers at the floor (0.400): the control passes trivially" in summary(stuck)


def test_clears_floor_by_more_than_the_margin():
    assert clears_floor(0.51, 0.4) and not clears_floor(0.5, 0.4) and not clears_floor(0.3, 0.4)


def test_majority_floor_is_the_most_common_answers_share():
    def record(answer):
        return {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": answer}]}

    assert majority_floor([record(a) for a in ["red", "blue", "blue", "green"]]) == ("blue", 0.5)


def test_uniform_attention_averages_the_values_the_block_reads(tiny):
    """Inside ``uniform_attention(model, "t2v")`` a T2V block returns tanh(gate) * o_proj(mean of its values)
    whatever the queries, V2V is untouched, and on leaving the model is bit for bit what it was."""
    model, processor = tiny
    layer = model.model.cross_layers[str(model.config.resolved_cross_layers()[0])]
    block = layer.t2v
    queries = torch.randn(2, 3, model.config.text_config.hidden_size)
    keys, values = torch.randn(2, 2, block.num_kv_heads, 7, block.head_dim).unbind(0)
    with torch.no_grad():
        mean = block._per_head(values).mean(2, keepdim=True).expand(-1, -1, 3, -1)  # (G, H, Lq, hd)
        expected = torch.tanh(block.gate) * block.o_proj(mean.transpose(1, 2).reshape(2, 3, -1))
        before = block(queries, keys, values)
        v2v_before = layer.v2v(queries, keys, values)
        with uniform_attention(model, "t2v") as count:
            torch.testing.assert_close(block(queries, keys, values), expected, rtol=1e-5, atol=1e-6)
            assert torch.equal(layer.v2v(queries, keys, values), v2v_before)
        assert count == len(model.config.resolved_cross_layers())
        assert torch.equal(block(queries, keys, values), before)
        assert not torch.allclose(before, expected, atol=1e-3)  # the ablation changes something


def test_uniform_attention_weights_in_the_model_and_cleanup(tiny):
    """In a forward pass, every captured T2V row is uniform over the patches it may see (the prompt's text
    before the video sees none), the V2V weights are the ordinary ones, the logits change; afterwards the
    logits are bit for bit the same as before."""
    model, processor = tiny
    inputs = _inputs(processor, coloured_frames(FRAMES, seed=2))
    with torch.no_grad():
        before = model(**inputs, use_cache=False).logits
        with capture_attention(model) as plain:
            eager = model(**inputs, use_cache=False).logits
        with uniform_attention(model, "t2v"), capture_attention(model) as records:
            uniform = model(**inputs, use_cache=False).logits
        after = model(**inputs, use_cache=False).logits
    # The random model's T2V weights are close to uniform already, so the logits move little (~2e-5) but
    # move; both passes are eager, so no difference comes from SDPA's rounding.
    assert torch.equal(before, after) and not torch.equal(eager, uniform)
    for (kind, layer), calls in records.items():
        for weights, ordinary in zip(calls, plain[(kind, layer)]):
            if kind == "t2v":
                torch.testing.assert_close(weights, torch.full_like(weights, 1 / weights.shape[-1]))
                assert not torch.allclose(ordinary, weights)
            else:
                assert torch.equal(weights, ordinary)


def test_uniform_attention_refuses_a_missing_kind():
    from crosslmm.model.tiny import TinySpec, make_tiny

    model, _ = make_tiny(TinySpec(), seed=0, v2v=True, t2v=False)
    with pytest.raises(ValueError, match="no t2v cross-attention"):
        with uniform_attention(model, "t2v"):
            pass
    with pytest.raises(ValueError, match="kind must be one of"):
        with uniform_attention(model, "x2v"):
            pass


def _colour_records(answers: list[str]) -> list[dict]:
    return [
        {"conversations": [{"from": "human", "value": "<video>\nq"}, {"from": "gpt", "value": a}]}
        for a in answers
    ]


def test_uniform_t2v_control_scores_answers_given_under_uniform_attention(tiny, monkeypatch):
    """The control's answers come from inside ``uniform_attention`` and pass only within the margin of the
    floor: the majority answer everywhere passes, every answer right fails."""
    from crosslmm.explain import check

    model, processor = tiny
    test = _colour_records(["green"] * 4 + ["red"] * 3 + ["blue"] * 3)
    blocks = [layer.t2v for layer in model.model.cross_layers.values()]
    given = {}

    def fake_answers(model, processor, questions, videos):
        assert all(block.q_proj._forward_hooks for block in blocks), "answers must come from the ablation"
        return given["answers"]

    monkeypatch.setattr(check, "_answers", fake_answers)
    given["answers"] = ["Green."] * 10
    control = check.uniform_t2v_control(model, processor, test, [], [])
    assert control["majority_floor"] == 0.4 and control["accuracy_uniform_t2v"] == 0.4 and control["passed"]
    assert control["answers_uniform_t2v"] == {"green": 10} and control["majority_answer"] == "green"
    given["answers"] = [r["conversations"][1]["value"] for r in test]
    control = check.uniform_t2v_control(model, processor, test, [], [])
    assert control["accuracy_uniform_t2v"] == 1 and not control["passed"]
    assert not any(block.q_proj._forward_hooks for block in blocks)


@pytest.mark.parametrize("passed", [True, False])
def test_run_check_reports_localisation_only_after_the_control_passes(tiny, tmp_path, monkeypatch, passed):
    """End to end on a tiny dataset and model; with the control failed no map is even taken."""
    from crosslmm.demo.synth import SynthSpec, write_dataset
    from crosslmm.explain import check

    model, processor = tiny
    save_model_dir(model, processor, tmp_path / "model")
    write_dataset(tmp_path / "data", SynthSpec(videos=8, frames=8, test_fraction=0.5, seed=1), progress=False)
    real_control = check.uniform_t2v_control

    def control(*args):
        return real_control(*args) | {"passed": passed}

    monkeypatch.setattr(check, "uniform_t2v_control", control)
    if not passed:
        monkeypatch.setattr("crosslmm.explain.maps.explain", lambda *a, **k: pytest.fail("maps taken"))
    result = check.run_check(str(tmp_path / "model"), str(tmp_path / "data"), frames=8)
    assert result["videos"] == 4 and result["design"] == "stripes"
    floor = result["control"]["majority_floor"]
    assert result["answers_above_floor"] == check.clears_floor(result["accuracy"], floor)
    assert 0 < floor <= 1 and set(result["accuracy_gate_closed"]) == {
        "v2v",
        "t2v",
    }
    if passed:
        where = result["localisation"]
        assert 0 <= where["hit_rate_all"] <= 1 and where["chance_hit"] == 1 / (
            8 * model.model.vision_tower.grid_size**2
        )
        assert "hit rate" in summary(result)
    else:
        assert result["localisation"] is None and "FAILED" in summary(result)
