"""Streaming: frames arrive while the conversation goes on; the streamed logits equal the offline model's
on the same token layout, whatever the chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import coloured_frames, video_dependent_model

from crosslmm.streaming import StreamingSession


@pytest.fixture(scope="module")
def tiny():
    return video_dependent_model(cross_attention_mlp=True)


def _offline_logits(model, processor, ids: list[int], runs: list[np.ndarray]) -> torch.Tensor:
    """The offline model on the session's whole token sequence, each run of frames one video."""
    pixels = torch.cat([processor.preprocess_frames(r) for r in runs])
    with torch.inference_mode():
        return model(
            input_ids=torch.tensor([ids]),
            pixel_values_videos=pixels[None],
            video_frame_counts=torch.tensor([len(pixels)]),
            use_cache=False,
        ).logits[0]


def _stream(model, processor, chunks, questions_after: dict[int, str]):
    """Feed ``chunks`` (lists of frame arrays); ask ``questions_after[i]`` after chunk i. Returns the
    session, the runs of frames as the offline model sees them, and per ask (ids length, step logits)."""
    session = StreamingSession(model, processor)
    runs, current, asked = [], [], []
    for i, chunk in enumerate(chunks):
        session.add_frames(chunk)
        current.append(chunk)
        if i in questions_after:
            runs.append(np.concatenate(current))
            current = []
            before = len(session.ids)
            session.ask(
                questions_after[i], max_new_tokens=3, output_logits=True, return_dict_in_generate=True
            )
            steps = torch.stack(session.last_output.logits, dim=1)[0]
            prompt_len = len(session.last_output.sequences[0]) - steps.shape[0]
            asked.append((before, prompt_len, steps))
    if current:
        runs.append(np.concatenate(current))
    return session, runs, asked


@pytest.mark.parametrize(
    "split",
    [[1, 1, 1, 1], [2, 2], [4]],
    ids=["one at a time", "chunks", "all at once"],
)
def test_streamed_logits_equal_offline(tiny, split):
    model, processor = tiny
    frames = coloured_frames(4, seed=5)
    chunks, start = [], 0
    for n in split:
        chunks.append(frames[start : start + n])
        start += n
    session, runs, asked = _stream(model, processor, chunks, {len(chunks) - 1: "What colour is the marker?"})
    (_, prompt_len, steps) = asked[0]
    offline = _offline_logits(model, processor, session.last_output.sequences[0].tolist()[:-1], runs)
    torch.testing.assert_close(steps, offline[prompt_len - 1 :], rtol=0, atol=1e-5)


def test_question_between_chunks_and_conversation_goes_on(tiny):
    """Ask after two frames, add two more, ask again: both answers come from the offline model on the same
    layout (two videos, the second in a new user turn), and the second answer sees the new frames."""
    model, processor = tiny
    a, b = coloured_frames(2, seed=1), coloured_frames(2, seed=2)
    session, runs, asked = _stream(model, processor, [a, b], {0: "What colour?", 1: "And now?"})
    full = session.last_output.sequences[0].tolist()
    offline = _offline_logits(model, processor, full[:-1], runs)
    for _, prompt_len, steps in asked:
        torch.testing.assert_close(
            steps, offline[prompt_len - 1 : prompt_len - 1 + len(steps)], atol=1e-5, rtol=0
        )
    text = processor.tokenizer.decode(full)
    assert text.count("<|im_start|>user") == 2 and text.count("<|im_start|>assistant") == 2
    assert session.frames_seen == 4
    other, _, other_asked = _stream(
        model, processor, [a, coloured_frames(2, seed=9)], {0: "What colour?", 1: "And now?"}
    )
    assert not torch.allclose(other_asked[1][2], asked[1][2])  # the second answer reads the new frames


def test_bad_frames_and_closed_sessions_are_refused(tiny):
    model, processor = tiny
    session = StreamingSession(model, processor)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        session.add_frames(np.zeros((2, 8, 8), np.uint8))
    session.add_frames(coloured_frames(1, seed=0))
    session.close()
    with pytest.raises(RuntimeError, match="closed"):
        session.add_frames(coloured_frames(1, seed=0))
    with pytest.raises(RuntimeError, match="closed"):
        session.ask("Hi?")
    video_scope, proc = video_dependent_model(v2v_scope="video")
    with pytest.raises(ValueError, match="cannot stream"):
        StreamingSession(video_scope, proc)
