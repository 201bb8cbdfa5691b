"""crosslmm.inference (the shared evaluation path) and ``crosslmm chat``."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from helpers import coloured_frames, random_frames, set_gates
from PIL import Image

from crosslmm.cli import main
from crosslmm.data.sampling import FrameSampling
from crosslmm.data.video import write_video
from crosslmm.inference import (
    _answer_ids,
    answer,
    build_prompt,
    continuation_nll,
    generate,
    load,
    load_frames,
)
from crosslmm.model.tiny import TinySpec, make_tiny


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load(tiny_dir)


@pytest.fixture(scope="module")
def video_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, random_frames(16, size=32), fps=8)
    return str(path)


def test_load_frames_accepts_paths_arrays_and_pil(video_path):
    four = FrameSampling.resolve(num_frames=4)
    assert load_frames(video_path, four).shape == (4, 32, 32, 3)
    frames = random_frames(10)
    assert load_frames(frames, four).shape == (4, 40, 40, 3)  # decoded frames: the budget still applies
    np.testing.assert_array_equal(load_frames(torch.from_numpy(frames), FrameSampling.resolve(20)), frames)
    assert load_frames(Image.new("RGB", (12, 8)), four).shape == (1, 8, 12, 3)
    mixed_sizes = [Image.new("RGB", (12, 8)), Image.new("L", (6, 6))]
    assert load_frames(mixed_sizes, four).shape == (2, 8, 12, 3)


@pytest.mark.parametrize(
    ("video", "error"),
    [
        ({"array": np.zeros(16000), "sampling_rate": 16000}, TypeError),
        (b"raw bytes", TypeError),
        ([], TypeError),
        (np.zeros((2, 8, 8), dtype=np.uint8), ValueError),
        (np.zeros((2, 8, 8, 3), dtype=np.float32), ValueError),
    ],
)
def test_load_frames_refuses_other_inputs(video, error):
    with pytest.raises(error, match="video|frames"):
        load_frames(video, FrameSampling.resolve())


def test_load_frames_names_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="missing.mp4: no such file"):
        load_frames(tmp_path / "missing.mp4", FrameSampling.resolve())


def test_batched_generate_matches_single_answers(tiny):
    """Left padding must not change an answer: a batch of prompts of different lengths, with 0, 1 and 2
    videos, gives each prompt the answer it gets alone."""
    model, processor = tiny
    a, b = random_frames(3, seed=1), random_frames(5, seed=2)
    prompts = [
        build_prompt(processor, "What colour is the marker?"),
        build_prompt(processor, "Which video is brighter, the first or the second?", num_videos=2),
        build_prompt(processor, "Describe it.", num_videos=0),
    ]
    videos = [[a], [a, b], []]
    batched = generate(model, processor, prompts, videos, max_new_tokens=6)
    single = [generate(model, processor, [p], [v], max_new_tokens=6)[0] for p, v in zip(prompts, videos)]
    assert batched == single
    assert all(batched)
    assert answer(model, processor, a, "What colour is the marker?", max_new_tokens=6) == batched[0]


@torch.no_grad()
def test_the_greedy_flag_says_greedy_decoding_gives_the_whole_answer():
    """``continuation_nll``'s flag is True only when greedy decoding (``generate``, the reference) yields every
    answer token through the end of turn: a model that ends its turn after another first token gets False,
    although its end-of-turn prediction matches (a flag computed with ``any`` would say True)."""
    model, processor = make_tiny(TinySpec(llm="llama"), seed=0)  # untied LM head: one row changes one logit
    set_gates(model, 3.0)
    frames = coloured_frames(3, seed=0)
    prompt = build_prompt(processor, "What colour is the marker?")
    inputs = processor(text=[prompt], videos=[frames])
    red, eos = _answer_ids(processor, prompt, "red")
    assert eos == processor.tokenizer.eos_token_id

    def greedy_reply() -> list[int]:
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        return out[0, inputs["input_ids"].shape[1] :].tolist()

    # The final hidden states that predict "red" and the end of turn after it; a head row along the part of
    # one orthogonal to the other makes its token the argmax there and adds nothing to the other position.
    answer_ids = torch.cat([inputs["input_ids"], torch.tensor([[red]])], dim=1)
    before_red, after_red = model.model(
        input_ids=answer_ids,
        pixel_values_videos=inputs["pixel_values_videos"],
        video_frame_counts=inputs["video_frame_counts"],
    ).last_hidden_state[0, -2:]

    def head_row(along, other):
        direction = along - (along @ other) / (other @ other) * other
        return 10 * direction / direction.norm()

    model.lm_head.weight[eos] = head_row(after_red, before_red)  # "red" would be followed by the end of turn
    assert greedy_reply()[0] != red
    [(nll_mixed, flag)] = continuation_nll(model, processor, prompt, [frames], ["red"])
    assert flag is False
    model.lm_head.weight[red] = head_row(before_red, after_red)  # ... and "red" comes first
    assert greedy_reply() == [red, eos]
    [(nll_greedy, flag)] = continuation_nll(model, processor, prompt, [frames], ["red"])
    assert flag is True and nll_greedy < nll_mixed


def test_chat_answers_a_question(tiny, tiny_dir, video_path, capsys):
    """The streamed answer is the one ``answer`` gives for the same model, video, question and frames."""
    question = "What colour is the marker?"
    args = ["chat", "--model", tiny_dir, "--video", video_path, "--question", question]
    assert main(args + ["--frames", "4", "--max-new-tokens", "6"]) == 0
    streamed = capsys.readouterr().out.strip()
    model, processor = tiny
    expected = answer(model, processor, video_path, question, num_frames=4, max_new_tokens=6).strip()
    assert expected and streamed == expected


def test_chat_bad_video_path_is_a_clear_error(tiny_dir, tmp_path, capsys):
    missing = tmp_path / "no_such_video.mp4"
    assert main(["chat", "--model", tiny_dir, "--video", str(missing), "--question", "Hi?"]) == 2
    err = capsys.readouterr().err
    assert "crosslmm chat: error:" in err and f"{missing}: no such file" in err


@pytest.mark.slow
def test_chat_command_reads_questions_until_eof(tiny_dir, video_path):
    """The installed console script, interactive mode: one streamed answer per stdin line, exit 0 at EOF."""
    cmd = ["crosslmm", "chat", "--model", tiny_dir, "--video", video_path, "--fps", "4", "--max-frames", "6"]
    done = subprocess.run(
        cmd + ["--max-new-tokens", "5"],
        input="What colour is the marker?\n\nWhere is it?\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len([line for line in done.stdout.splitlines() if line.strip()]) == 2
    assert "6 frames" in done.stderr
