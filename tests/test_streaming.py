"""Streaming: frames arrive while the conversation goes on; the streamed logits equal the offline model's
on the same token layout, whatever the chunking."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers import coloured_frames, video_dependent_model

from crosslmm.cli import main
from crosslmm.data.video import write_video
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


# ``crosslmm chat --stream``: a file replayed as a live stream, questions at given video times.

STREAM_HEADER = re.compile(
    r"^\[(\d+\.\d\d) s\] (\d+) frames seen \((?:up to (\d+\.\d\d) s|none yet)\) > (.*)$"
)


def _stream_transcript(out: str) -> list[tuple[float, int, float, str, str]]:
    """(asked at, frames seen, last frame time, question, answer) per header line of ``chat --stream``."""
    turns = []
    for line in out.splitlines():
        if match := STREAM_HEADER.match(line):
            at, seen, last, question = match.groups()
            turns.append([float(at), int(seen), float(last) if last else None, question, []])
        elif turns:
            turns[-1][4].append(line)
    return [(at, seen, last, q, "\n".join(answer).strip()) for at, seen, last, q, answer in turns]


def test_chat_stream_answers_each_question_over_the_frames_before_it(tiny_dir, tmp_path, capsys):
    """8 source frames at 4 fps sampled at 2 fps: frames at 0, 0.5, 1.0, 1.5 s. Asked at 0.7 s the model
    has seen two of them, at 1.2 s three; each answer is what a session fed those frames by hand gives."""
    from crosslmm.data.video import load_video
    from crosslmm.inference import load

    video = tmp_path / "clip.mp4"
    write_video(video, coloured_frames(8, seed=3, size=32), fps=4)
    questions = ["What colour?", "And now?"]
    argv = ["chat", "--stream", "--model", tiny_dir, "--video", str(video), "--fps", "2", "--speed", "0"]
    argv += ["--ask", f"1.2:{questions[1]}", "--ask", f"0.7:{questions[0]}", "--max-new-tokens", "5"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    turns = _stream_transcript(captured.out)
    assert [(at, seen, last, q) for at, seen, last, q, _ in turns] == [
        (0.7, 2, 0.5, questions[0]),
        (1.2, 3, 1.0, questions[1]),
    ]
    assert "4 frames over 2.0 s" in captured.err
    model, processor = load(tiny_dir)
    frames = load_video(video, fps=2.0).frames
    assert len(frames) == 4
    session = StreamingSession(model, processor)
    expected = []
    for upto, question in zip((2, 3), questions):
        session.add_frames(frames[session.frames_seen : upto])
        expected.append(session.ask(question, max_new_tokens=5))
    assert [answer for *_, answer in turns] == expected and any(expected)


def test_chat_stream_errors_are_one_line(tiny_dir, tmp_path, capsys):
    """A missing video names the file; a v2v_scope="video" model cannot stream; --ask needs --stream."""
    missing = tmp_path / "no_such_video.mp4"
    base = ["chat", "--stream", "--speed", "0", "--ask", "1:Hi?"]
    assert main([*base, "--model", tiny_dir, "--video", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"crosslmm chat: error: {missing}: no such file" in err
    video = tmp_path / "clip.mp4"
    write_video(video, coloured_frames(2, seed=0, size=32), fps=2)
    assert main(["init-tiny", str(tmp_path / "video_scope"), "--v2v-scope", "video"]) == 0
    capsys.readouterr()
    assert main([*base, "--model", str(tmp_path / "video_scope"), "--video", str(video)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("crosslmm chat: error: v2v_scope='video' cannot stream")
    assert main(["chat", "--model", tiny_dir, "--video", str(video), "--ask", "1:Hi?"]) == 2
    assert "--ask: only with --stream" in capsys.readouterr().err


def test_chat_stream_reads_typed_questions_until_end_of_input(tiny_dir, tmp_path, capsys, monkeypatch):
    """Without --ask, questions come from stdin (a reader thread); at --speed 0 every frame has arrived
    before a typed line is answered, and end of input ends the session."""
    import io

    video = tmp_path / "clip.mp4"
    write_video(video, coloured_frames(6, seed=4, size=32), fps=2)
    monkeypatch.setattr("sys.stdin", io.StringIO("What colour?\n\nWhere is it?\n"))
    argv = ["chat", "--stream", "--model", tiny_dir, "--video", str(video), "--speed", "0"]
    assert main([*argv, "--max-new-tokens", "3"]) == 0
    captured = capsys.readouterr()
    turns = _stream_transcript(captured.out)
    assert [(at, seen, last, q) for at, seen, last, q, _ in turns] == [
        (2.5, 6, 2.5, "What colour?"),
        (2.5, 6, 2.5, "Where is it?"),
    ]
    assert "end of video: 6 frames seen" in captured.err
