"""Attention capture (crosslmm.model.cross_attention.capture_attention), ``crosslmm explain`` and the
marker check of crosslmm.explain.check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import coloured_frames, video_dependent_model

from crosslmm.cli import main
from crosslmm.data.video import load_video, write_video
from crosslmm.explain.check import find_marker, score_video
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
        return {"videos": 0}

    monkeypatch.setattr("crosslmm.explain.check.run_check", fake_check)
    assert main(["explain-check", "--model", "m", "--data", "d", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"videos": 0}


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


def test_find_marker_recovers_the_generators_truth(tmp_path):
    from crosslmm.demo.synth import SynthSpec, make_video

    spec, rng = SynthSpec(), np.random.default_rng(0)
    for i in range(4):
        frames, truth = make_video(spec, rng)
        write_video(tmp_path / f"{i}.mp4", frames, spec.fps)  # lossy: the check reads decoded frames
        decoded = load_video(tmp_path / f"{i}.mp4", num_frames=spec.frames).frames
        marked, cell = find_marker(decoded, spec.cell)
        start, end = truth["marker_frames"]
        assert cell == tuple(truth["cell"])
        assert marked.nonzero()[0].tolist() == list(range(start, end))


def test_score_video_on_and_next_to_the_marker():
    t2v = np.full((4, 5, 5), 0.01)
    marked = np.array([False, True, True, False])
    t2v[2, 1, 3] = 0.5  # the top patch of the marked frames, next to the marker at (2, 2)
    t2v[0, 0, 0] = 0.9  # a higher one outside them does not count
    row = score_video(t2v, marked, (2, 2))
    assert row["touches"] and not row["on"]
    assert row["marked_mass"] < row["other_mass"]
    assert row["chance_touches"] == 9 / 25
    assert row["marked_in_top"] == 0.5 and row["chance_marked_in_top"] == 0.5  # frames 0 and 2 lead
    assert score_video(t2v, marked, (1, 3))["on"]
    assert not score_video(t2v, marked, (4, 0))["touches"]
