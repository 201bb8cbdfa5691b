"""Elastic tokens per frame: one model trained at several budgets answers at any of them (issue 15)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from helpers import (
    check_cached_generation,
    coloured_frames,
    greedy,
    losses,
    set_gates,
    video_prompt,
    write_train_config,
)

from crosslmm.data.dataset import IGNORE_INDEX, VideoChatCollator, draw_budget, encode_conversation
from crosslmm.data.synthetic import make_toy_dataset
from crosslmm.model.build import save_model_dir
from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.tiny import TinySpec, make_tiny

CHOICES = [1, 4]  # TinySpec: 32 px / 4 px patches = an 8x8 grid; 1x1 and 2x2 pooled grids
QUESTIONS = ("What colour is it?", "Which frame is red?")


@pytest.fixture(scope="module")
def elastic():
    model, processor = make_tiny(TinySpec(), tokens_per_frame=4, tokens_per_frame_choices=CHOICES)
    assert vision_grid(model) == 8
    set_gates(model, 3.0)  # open gates: V2V/T2V shape the answer, so the budget can change it
    return model.eval(), processor


def vision_grid(model) -> int:
    from crosslmm.model.vision import vision_grid_size

    return vision_grid_size(model.config.vision_config)


def _inputs(processor, budget: int, videos=((3, 0),)):
    prompts = [video_prompt(processor, q) for q in QUESTIONS[: len(videos)]]
    frames = [coloured_frames(n, seed) for n, seed in videos]
    return processor(text=prompts, videos=frames, tokens_per_frame=budget, padding_side="left")


@pytest.mark.parametrize("budget", CHOICES)
def test_each_trained_budget_answers_with_cache_equal_to_full_forward(elastic, budget):
    model, processor = elastic
    inputs = _inputs(processor, budget)
    video_tokens = int((inputs["input_ids"] == processor.video_token_id).sum())
    assert video_tokens == 3 * budget
    with torch.no_grad():
        full = model(**inputs, use_cache=False).logits
        assert full.shape[:2] == inputs["input_ids"].shape
    check_cached_generation(model, inputs)


@pytest.mark.parametrize("budget", CHOICES)
def test_batched_generate_at_a_budget_matches_single_answers(elastic, budget):
    model, processor = elastic
    videos = ((3, 1), (2, 7))
    with torch.no_grad():
        batch_tokens, batch_logits = greedy(model, _inputs(processor, budget, videos), steps=3)
        for b, video in enumerate(videos):
            single = processor(
                text=[video_prompt(processor, QUESTIONS[b])],
                videos=[coloured_frames(*video)],
                tokens_per_frame=budget,
            )
            tokens, logits = greedy(model, single, steps=3)
            assert torch.equal(tokens[0], batch_tokens[b])
            torch.testing.assert_close(logits[0], batch_logits[b], rtol=1e-4, atol=1e-4)


def test_switching_budgets_needs_no_reload_and_changes_the_answer(elastic):
    model, processor = elastic
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        at_one = model(**_inputs(processor, 1)).logits[:, -1]
        at_four = model(**_inputs(processor, 4)).logits[:, -1]
        again = model(**_inputs(processor, 1)).logits[:, -1]
    assert not torch.allclose(at_one, at_four, atol=1e-3)
    torch.testing.assert_close(again, at_one, rtol=0, atol=0)  # no state left behind by the other budget
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_default_budget_is_the_processors(elastic):
    model, processor = elastic
    default = processor(text=[video_prompt(processor, QUESTIONS[0])], videos=[coloured_frames(3, 0)])
    assert processor.tokens_per_frame == model.config.tokens_per_frame == 4
    assert torch.equal(default["input_ids"], _inputs(processor, 4)["input_ids"])


def test_untrained_budget_is_refused_listing_the_trained_ones(elastic):
    model, processor = elastic
    with pytest.raises(ValueError, match=r"trained at tokens_per_frame in \[1, 4\]"):
        model(**_inputs(processor, 9))
    fixed, fixed_processor = make_tiny(TinySpec())
    with pytest.raises(ValueError, match=r"trained at tokens_per_frame in \[4\]"):
        fixed(**_inputs(fixed_processor, 1))


def test_a_batch_mixing_budgets_is_refused(elastic):
    model, processor = elastic
    one, four = _inputs(processor, 1), _inputs(processor, 4)
    ids = torch.full((2, four["input_ids"].shape[1]), processor.tokenizer.pad_token_id)
    ids[0, : one["input_ids"].shape[1]] = one["input_ids"][0]
    ids[1] = four["input_ids"][0]
    with pytest.raises(ValueError, match="same tokens per frame"):
        model(
            input_ids=ids,
            pixel_values_videos=torch.cat([one["pixel_values_videos"], four["pixel_values_videos"]]),
            video_frame_counts=torch.tensor([3, 3]),
        )


@pytest.mark.parametrize(
    ("choices", "default", "match"),
    [
        ([1, 5], 1, r"valid budgets: \[1, 4, 9, 16, 25, 36, 49, 64\].*invalid: \[5\]"),
        ([1, 81], 1, r"8x8 patch grid.*invalid: \[81\]"),
        ([4, 4], 4, "distinct"),
        ([1, 9], 4, "must be one of tokens_per_frame_choices"),
    ],
)
def test_invalid_choices_are_refused_at_config_time(choices, default, match):
    model, _ = make_tiny(TinySpec())
    fields = model.config.to_dict() | {"tokens_per_frame": default, "tokens_per_frame_choices": choices}
    with pytest.raises(ValueError, match=match):
        CrossLMMConfig(**fields)


def test_config_round_trip_keeps_choices(elastic, tmp_path):
    model, processor = elastic
    save_model_dir(model, processor, tmp_path)
    loaded = CrossLMMConfig.from_pretrained(tmp_path)
    assert loaded.tokens_per_frame_choices == CHOICES and loaded.trained_budgets == CHOICES
    assert make_tiny(TinySpec())[0].config.tokens_per_frame_choices is None


def _samples(processor, n: int, frames: int = 2) -> list[dict]:
    messages = [
        {"role": "user", "content": "<video>\nWhat colour is the marker?"},
        {"role": "assistant", "content": "red"},
    ]
    out = []
    for i in range(n):
        enc = encode_conversation(processor, messages, frames, 256, "truncate", tokens_per_frame=max(CHOICES))
        out.append(
            dict(
                input_ids=enc.input_ids,
                labels=enc.labels,
                frames=torch.zeros((frames, 3, 32, 32), dtype=torch.uint8),
                dropped=torch.zeros(2, dtype=torch.long),
                index=torch.tensor(i),
            )
        )
    return out


def test_collator_draws_one_budget_per_batch_reproducibly_and_covers_the_choices(elastic):
    _, processor = elastic
    samples = _samples(processor, 40)
    collate = VideoChatCollator(
        processor.tokenizer.pad_token_id,
        tokens_per_frame_choices=CHOICES,
        seed=7,
        video_token_id=processor.video_token_id,
    )
    drawn = []
    for i in range(0, 40, 2):
        batch = collate(samples[i : i + 2])
        per_sample = (batch["input_ids"] == processor.video_token_id).sum(1) / batch["video_frame_counts"]
        assert per_sample[0] == per_sample[1]  # one budget per batch: rectangular
        budget = int(per_sample[0])
        assert budget == draw_budget(CHOICES, 7, i)
        answer = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX]
        assert torch.equal(answer, samples[i]["labels"][samples[i]["labels"] != IGNORE_INDEX])
        drawn.append(budget)
    assert set(drawn) == set(CHOICES)
    again = [
        int((collate(samples[i : i + 2])["input_ids"] == processor.video_token_id).sum()) for i in (0, 2)
    ]
    assert again == [2 * 2 * drawn[0], 2 * 2 * drawn[1]]  # same seed and batch: same draw
    other_seed = [draw_budget(CHOICES, 8, i) for i in range(0, 40, 2)]
    assert other_seed != drawn


def test_fixed_budget_collator_leaves_samples_as_they_are(elastic):
    _, processor = elastic
    samples = _samples(processor, 2)
    batch = VideoChatCollator(processor.tokenizer.pad_token_id)(samples)
    assert torch.equal(batch["input_ids"][0], samples[0]["input_ids"])


@pytest.mark.slow
def test_elastic_training_resumes_with_the_same_draws(tmp_path):
    model, processor = make_tiny(TinySpec(), tokens_per_frame=4, tokens_per_frame_choices=CHOICES)
    save_model_dir(model, processor, tmp_path / "model")
    mixture = make_toy_dataset(str(tmp_path / "data"), num_videos=6, num_frames=4)
    env = dict(os.environ, WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    steps = dict(max_steps=6, save_steps=2, keep_checkpoints=5, train=["projector", "v2v", "t2v"])

    def train(name: str, **extra) -> str:
        config = write_train_config(
            tmp_path / f"{name}.yaml", tmp_path / "model", tmp_path / name, mixture, **steps, **extra
        )
        done = subprocess.run(
            [sys.executable, "-m", "crosslmm.train", "--config", config],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "elastic training" in done.stderr
        return str(tmp_path / name)

    reference = losses(train("whole"))
    resumed = losses(train("resumed", resume=str(tmp_path / "whole" / "checkpoint-2")))
    assert [resumed[s] for s in range(3, 7)] == [reference[s] for s in range(3, 7)]


@pytest.fixture(scope="module")
def elastic_dir(elastic, tmp_path_factory) -> str:
    """The elastic model with its final norm negated, as ``helpers.make_tiny_dir`` does: visible text."""
    model, processor = copy.deepcopy(elastic)
    with torch.no_grad():
        model.model.language_model.norm.weight.neg_()
    out = tmp_path_factory.mktemp("elastic") / "model"
    save_model_dir(model, processor, out)
    return str(out)


def test_chat_and_the_lmms_eval_plugin_take_the_budget(elastic_dir, tmp_path, capsys):
    """``crosslmm chat --tokens-per-frame K`` and ``model_args=...,tokens_per_frame=K`` answer at that budget
    (as crosslmm.inference does); an untrained budget is refused at once, listing the trained ones."""
    from crosslmm.cli import main
    from crosslmm.data.video import write_video
    from crosslmm.eval.lmms_plugin import CrossLMMEval
    from crosslmm.inference import answer, load

    model, processor = load(elastic_dir)
    video = tmp_path / "clip.mp4"
    write_video(video, coloured_frames(8, seed=3, size=32), fps=4)
    question = "What colour is the marker?"
    chat = ["chat", "--model", elastic_dir, "--video", str(video), "--frames", "4", "--max-new-tokens", "4"]
    answers = {}
    for budget in CHOICES:
        capsys.readouterr()
        assert main([*chat, "--question", question, "--tokens-per-frame", str(budget)]) == 0
        answers[budget] = capsys.readouterr().out.strip()
        expected = answer(
            model, processor, str(video), question, num_frames=4, max_new_tokens=4, tokens_per_frame=budget
        )
        assert answers[budget] == expected
    assert len(set(answers.values())) > 1  # the budget changes the answer of this model
    assert main([*chat, "--question", question, "--tokens-per-frame", "9"]) == 2
    assert "trained at tokens_per_frame in [1, 4]" in capsys.readouterr().err

    plugin = CrossLMMEval.create_from_arg_string(
        f"pretrained={elastic_dir},num_frames=4,tokens_per_frame=1", {"batch_size": 1, "device": "cpu"}
    )
    assert plugin._generate_kwargs({})["tokens_per_frame"] == 1
    with pytest.raises(ValueError, match=r"trained at tokens_per_frame in \[1, 4\]"):
        CrossLMMEval.create_from_arg_string(f"pretrained={elastic_dir},tokens_per_frame=9", {"device": "cpu"})


def test_an_untrained_budget_runs_only_with_the_override_and_a_warning(elastic_dir, tmp_path, capsys):
    """``allow_untrained_budgets`` (load / chat --allow-untrained-budget / plugin model_args) runs a pooled
    grid the model was not trained at, with a warning; a budget that is no pooled grid is still refused."""
    from crosslmm.cli import main
    from crosslmm.data.video import write_video
    from crosslmm.eval.lmms_plugin import CrossLMMEval
    from crosslmm.inference import answer, load

    model, processor = load(elastic_dir, allow_untrained_budgets=True)
    with pytest.warns(UserWarning, match=r"not trained at \(trained: \[1, 4\]\)"):
        at_nine = model(**_inputs(processor, 9)).logits
    assert (_inputs(processor, 9)["input_ids"] == processor.video_token_id).sum() == 3 * 9
    with pytest.raises(ValueError, match="trained at tokens_per_frame in"):
        model(**_inputs(processor, 5))  # not an s*s grid: no override makes it one
    with torch.no_grad():
        assert not torch.allclose(at_nine[:, -1], model(**_inputs(processor, 4)).logits[:, -1], atol=1e-3)
    assert "allow_untrained_budgets" not in model.config.to_json_string()  # per load, never saved
    assert not load(elastic_dir)[0].config.allow_untrained_budgets

    video = tmp_path / "clip.mp4"
    write_video(video, coloured_frames(8, seed=3, size=32), fps=4)
    chat = ["chat", "--model", elastic_dir, "--video", str(video), "--frames", "4", "--max-new-tokens", "4"]
    capsys.readouterr()
    with pytest.warns(UserWarning, match="not trained at"):
        assert (
            main([*chat, "--question", "Colour?", "--tokens-per-frame", "9", "--allow-untrained-budget"]) == 0
        )
    with pytest.warns(UserWarning, match="not trained at"):
        expected = answer(
            model, processor, str(video), "Colour?", num_frames=4, max_new_tokens=4, tokens_per_frame=9
        )
        plugin = CrossLMMEval.create_from_arg_string(
            f"pretrained={elastic_dir},tokens_per_frame=9,allow_untrained_budgets=true", {"device": "cpu"}
        )
    assert capsys.readouterr().out.strip() == expected
    assert plugin.tokens_per_frame == 9


@pytest.mark.parametrize("override", [False, True])
def test_a_budget_that_is_no_pooled_grid_is_refused_without_suggesting_the_override(elastic, override):
    """5 (not s*s) and 81 (9x9 > the tower's 8x8 patch grid) are refused with or without
    ``allow_untrained_budgets``, and the message says why instead of suggesting the override the user may
    already have passed; a pooled grid refused only because the override is off still suggests it."""
    model, processor = elastic
    model = copy.deepcopy(model)
    model.config.allow_untrained_budgets = override
    for budget in (5, 81):
        with pytest.raises(ValueError, match="trained at tokens_per_frame in") as refused:
            model(**_inputs(processor, budget))
        message = str(refused.value)
        assert "allow_untrained_budgets=True" not in message
        assert f"{budget} is no pooled grid s*s with s <= 8 (the tower's patch grid)" in message
    if override:
        with pytest.warns(UserWarning, match="not trained at"):
            model(**_inputs(processor, 9))
    else:
        with pytest.raises(
            ValueError, match=r"or load with allow_untrained_budgets=True to run a pooled grid"
        ):
            model(**_inputs(processor, 9))


@pytest.mark.parametrize("budget", CHOICES)
def test_streaming_at_each_trained_budget_equals_the_offline_model(elastic, budget):
    """A StreamingSession at budget K feeds K tokens per frame and its answer logits equal the offline
    model's on the same layout; an untrained budget is refused when the session starts."""
    from crosslmm.streaming import StreamingSession

    model, processor = elastic
    frames = coloured_frames(4, seed=5)
    session = StreamingSession(model, processor, tokens_per_frame=budget)
    for chunk in (frames[:2], frames[2:]):
        session.add_frames(chunk)
    assert session.ids.count(processor.video_token_id) == 4 * budget
    session.ask(QUESTIONS[0], max_new_tokens=3, output_logits=True, return_dict_in_generate=True)
    steps = torch.stack(session.last_output.logits, dim=1)[0]
    ids = session.last_output.sequences[0].tolist()[:-1]
    with torch.inference_mode():
        offline = model(
            input_ids=torch.tensor([ids]),
            pixel_values_videos=processor.preprocess_frames(frames)[None],
            video_frame_counts=torch.tensor([4]),
            use_cache=False,
        ).logits[0]
    torch.testing.assert_close(steps, offline[len(ids) - steps.shape[0] :], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"streaming session's tokens_per_frame.*\[1, 4\]"):
        StreamingSession(model, processor, tokens_per_frame=9)


@pytest.mark.slow
def test_quick_elastic_demo_scores_every_model_at_each_of_its_budgets(tmp_path):
    """``crosslmm demo --elastic --quick`` end to end: elastic models answer at every budget from one
    checkpoint (no retraining), fixed ones at their own; the table, JSON and plot are written."""
    import json

    from crosslmm.cli import main
    from crosslmm.demo.variants import DemoSettings

    out = tmp_path / "elastic"
    assert main(["demo", "--elastic", "--quick", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    scored = {(r["variant"], r["tokens_per_frame"]) for r in report["rows"]}
    assert scored == {
        ("elastic_crosslmm", 1),
        ("elastic_crosslmm", 4),
        ("elastic_pool", 1),
        ("elastic_pool", 4),
        ("fixed_crosslmm_1", 1),
        ("fixed_crosslmm_4", 4),
    }
    for name in ("elastic_crosslmm", "elastic_pool"):
        run = out / "runs" / f"{name}-seed0"
        assert CrossLMMConfig.from_pretrained(run / "final").trained_budgets == [1, 4]
        assert (run / "predictions-1.jsonl").is_file() and (run / "predictions-4.jsonl").is_file()
        seq = {r["tokens_per_frame"]: r["seq_len"] for r in report["rows"] if r["variant"] == name}
        frames = DemoSettings.quick().data.frames
        assert seq[4] - seq[1] == 3 * frames  # 3 more tokens for each of the video's frames
    assert set(report["claims"]) >= {
        "elastic_matches_fixed",
        "pool_rises",
        "train_time_vs_fixed",
        "target_met",
    }
    assert "| CrossLMM, elastic | 4 |" in (out / "results.md").read_text()
    assert (out / "elastic.png").stat().st_size > 0


def _elastic_rows(per_seed: dict[tuple[str, int], list[float]]) -> list[dict]:
    """Report rows (only what the claims read) from per-seed accuracies."""
    return [
        dict(
            variant=name,
            label=name,
            tokens_per_frame=budget,
            accuracy=sum(accs) / len(accs),
            accuracy_per_seed=accs,
            train_seconds=1.0,
        )
        for (name, budget), accs in per_seed.items()
    ]


@pytest.mark.parametrize(
    "fixed, elastic, matches",
    [
        ([0.9] * 5, [0.9] * 5, True),  # equal on every seed
        ([1.0, 0.7, 1.0, 0.7, 1.0], [0.7, 1.0, 1.0, 1.0, 0.7], False),  # mean gap 0, seeds disagree by 30
        ([0.95] * 5, [0.9] * 5, False),  # 5 points worse on every seed
    ],
)
def test_elastic_targets_are_decided_on_paired_intervals_not_means(fixed, elastic, matches):
    """A mean gap within the tolerance is not "met" when the seeds cannot rule out a larger gap."""
    from crosslmm.demo.elastic.report import claims, comparisons

    budgets = (1, 16)
    per_seed = {
        ("elastic_crosslmm", 1): elastic,
        ("elastic_crosslmm", 16): elastic,
        ("fixed_crosslmm_1", 1): fixed,
        ("fixed_crosslmm_16", 16): fixed,
        ("elastic_pool", 1): [0.3] * 5,
        ("elastic_pool", 16): [0.3, 0.6, 0.3, 0.6, 0.3],  # rises by 12 on average, not on every seed
    }
    rows = _elastic_rows(per_seed)
    result = claims(rows, budgets, comparisons(rows, budgets))
    assert result["elastic_matches_fixed"] is matches
    assert abs(result["pool_rise_points"] - 12.0) < 1e-9 and not result["pool_rises"]
    assert result["crosslmm_low_beats_pool_high"]
