"""Streaming: frames arrive while the conversation goes on; the streamed logits equal the offline model's
on the same token layout, whatever the chunking."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from helpers import coloured_frames, set_gates, video_dependent_model
from transformers import LogitsProcessor, LogitsProcessorList

from crosslmm.cli import main
from crosslmm.data.video import write_video
from crosslmm.model.modeling import CrossLMMForCausalLM
from crosslmm.model.processing import CrossLMMProcessor
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


class _Force(LogitsProcessor):
    """Makes generation emit ``tokens`` in order (the step logits ``output_logits`` returns stay the model's)."""

    def __init__(self, tokens: list[int], start: int):
        self.tokens, self.start = tokens, start  # start: the prompt's length

    def __call__(self, input_ids, scores):
        step = min(input_ids.shape[1] - self.start, len(self.tokens) - 1)
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.tokens[step]] = 0
        return forced


def _forcing(tokens: list[int], prompt_len: int) -> LogitsProcessorList:
    return LogitsProcessorList([_Force(tokens, prompt_len)])


class _FailAtStep(LogitsProcessor):
    """Raises at generation step ``step``: by then the prompt is in the KV cache and some tokens too."""

    def __init__(self, step: int):
        self.step, self.calls = step, 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        if self.calls > self.step:
            raise RuntimeError("generation failed on purpose")
        return scores


def _fail(*_):
    """A forward pre-hook for a decoder layer: the layers before it have cached their keys/values."""
    raise RuntimeError("forward failed on purpose")


def _state(session: StreamingSession):
    return (
        repr(session.messages),
        list(session.ids),
        session._rendered,
        session.cache.get_seq_length(),
        session.frames_seen,
        {layer: k.shape for layer, (k, _) in session.cache.cross_kv.items()},
    )


def _first_step_logits(session: StreamingSession, question: str) -> torch.Tensor:
    session.ask(question, max_new_tokens=2, output_logits=True, return_dict_in_generate=True)
    return session.last_output.logits[0]


def test_failed_ask_leaves_the_session_as_it_was(tiny):
    """Generate kwargs the session cannot honour are refused before anything changes; a failure inside
    generation (prompt and some tokens already cached) is rolled back; the next ask then gives the logits of
    a fresh session fed the same frames and question."""
    model, processor = tiny
    frames = coloured_frames(3, seed=7)
    session = StreamingSession(model, processor)
    session.add_frames(frames[:2])
    session.ask("What colour?", max_new_tokens=3)
    session.add_frames(frames[2:])
    before = _state(session)
    for bad, message in [
        (dict(num_beams=2), "num_beams=2"),
        (dict(num_return_sequences=2, do_sample=True), "num_return_sequences=2"),
        (dict(past_key_values=None), "past_key_values"),
        (dict(attention_mask=torch.ones(1, 3)), "attention_mask"),
    ]:
        with pytest.raises(ValueError, match=message):
            session.ask("And now?", **bad)
        assert _state(session) == before
    with pytest.raises(RuntimeError, match="on purpose"):
        session.ask("And now?", max_new_tokens=5, logits_processor=LogitsProcessorList([_FailAtStep(3)]))
    assert _state(session) == before
    handle = model.model.language_model.layers[-1].register_forward_pre_hook(_fail)  # midway in the prompt
    try:
        with pytest.raises(RuntimeError, match="on purpose"):
            session.ask("And now?")
    finally:
        handle.remove()
    assert _state(session) == before

    fresh = StreamingSession(model, processor)
    fresh.add_frames(frames[:2])
    fresh.ask("What colour?", max_new_tokens=3)
    fresh.add_frames(frames[2:])
    torch.testing.assert_close(
        _first_step_logits(session, "And now?"), _first_step_logits(fresh, "And now?"), rtol=0, atol=1e-5
    )
    assert session.ids == fresh.ids and session.messages == fresh.messages


def test_failed_add_frames_leaves_the_session_as_it_was(tiny):
    """A failure in the forward of new frames (their T2V keys already appended in the first cross layer)
    is rolled back: the same frames added again give a fresh session's logits."""
    model, processor = tiny
    frames = coloured_frames(4, seed=8)
    session = StreamingSession(model, processor)
    session.add_frames(frames[:2])
    before = _state(session)

    handle = model.model.language_model.layers[-1].register_forward_pre_hook(_fail)
    try:
        with pytest.raises(RuntimeError, match="on purpose"):
            session.add_frames(frames[2:])
    finally:
        handle.remove()
    assert _state(session) == before
    fresh = StreamingSession(model, processor)
    fresh.add_frames(frames[:2])
    torch.testing.assert_close(
        session.add_frames(frames[2:]), fresh.add_frames(frames[2:]), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(
        _first_step_logits(session, "What colour?"),
        _first_step_logits(fresh, "What colour?"),
        rtol=0,
        atol=1e-5,
    )


def _with_video_end(seed: int = 0):
    """A tiny CrossLMM whose processor puts a ``<video_end>`` slot after each video (as a converted
    LLaVA-OneVision has), every gate open."""
    model, processor = video_dependent_model(cross_attention_mlp=True)
    tokenizer = copy.deepcopy(processor.tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<video>", "<video_end>"]})
    config = copy.deepcopy(model.config)
    config.video_end_token_id = tokenizer.convert_tokens_to_ids("<video_end>")
    config.text_config.vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    model = CrossLMMForCausalLM(config).eval()
    set_gates(model, 3.0)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = CrossLMMProcessor(
        processor.image_processor, tokenizer, processor.tokens_per_frame, video_end_token="<video_end>"
    )
    return model, processor


@pytest.fixture(scope="module")
def with_video_end():
    return _with_video_end()


def test_a_text_only_forward_reads_the_learned_video_end_embedding(with_video_end):
    """A ``<video_end>`` id in a forward without frames (a streaming question after cached frames, or any
    text-only call) is the learned end embedding, as in the forward that carries the video."""
    model, processor = with_video_end
    end = processor.video_end_token_id
    ids = torch.tensor([[processor.tokenizer.eos_token_id, end, end]])
    embedding = model.model.video_end_embedding.detach()
    assert not torch.allclose(model.get_input_embeddings().weight[end], embedding)  # the two differ
    by_hand = model.get_input_embeddings()(ids).detach().clone()
    by_hand[0, 1:] = embedding
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, model(inputs_embeds=by_hand).logits)


def _three_turns(model, processor, session, answers_by_turn=None):
    """Three runs of frames, a question after each; turn i's answer is forced to ``answers_by_turn[i]``'s
    token ids when given. Returns the runs, the conversation as a user would write it (the answers as
    ``ask`` returned them), and per turn the step logits of its first answer token (V,)."""
    runs = [coloured_frames(2, seed=s) for s in (11, 12, 13)]
    questions = ["What colour?", "And now?", "Which is brighter?"]
    conversation, first = [], []
    for i, (run, question) in enumerate(zip(runs, questions)):
        session.add_frames(run)
        kwargs = dict(max_new_tokens=4, output_logits=True, return_dict_in_generate=True)
        if answers_by_turn is not None:
            prompt_len = len(session.ids) + len(_prompt_tail_ids(processor, session, question))
            kwargs["logits_processor"] = _forcing(answers_by_turn[i], prompt_len)
        answer = session.ask(question, **kwargs)
        conversation += [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": answer},
        ]
        first.append(session.last_output.logits[0][0])
    return runs, conversation, first


def _prompt_tail_ids(processor, session, question):
    """The ids ``ask`` will add after ``session.ids`` for ``question``: the end slot and the prompt text."""
    messages = copy.deepcopy(session.messages)
    messages[-1]["content"].append({"type": "text", "text": question})
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    end = [processor.video_end_token_id] if processor.video_end_token_id is not None else []
    return end + processor.tokenizer(prompt[len(session._rendered) :], add_special_tokens=False).input_ids


def _offline_first_tokens(model, processor, runs, conversation) -> tuple[list[int], list[torch.Tensor]]:
    """The processor's ids for the whole conversation, and the offline model's logits at each position that
    predicts an answer's first token (the end of each ``<|im_start|>assistant\n``)."""
    text = processor.apply_chat_template(conversation, add_generation_prompt=False)
    inputs = processor(text=[text], videos=runs)
    ids = inputs["input_ids"][0].tolist()
    with torch.inference_mode():
        logits = model(**inputs, use_cache=False).logits[0]
    header = processor.tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids
    ends = [i + len(header) for i in range(len(ids)) if ids[i : i + len(header)] == header]
    assert len(ends) == 3
    return ids, [logits[end - 1] for end in ends]


def test_three_turn_stream_equals_the_offline_model(with_video_end):
    """Each answer is spelt in unusual pieces (r, e, d rather than red): the session then holds the ids the
    processor gives for the rendered conversation, <video_end> slots included, and every turn's prompt gives
    the offline model's logits."""
    model, processor = with_video_end
    tokenizer = processor.tokenizer
    pieces = [tokenizer.convert_tokens_to_ids(list(word)) for word in ("red", "blue", "yes")]
    for word, ids in zip(("red", "blue", "yes"), pieces):
        assert tokenizer(word, add_special_tokens=False).input_ids != ids  # a re-tokenisation differs
    session = StreamingSession(model, processor)
    runs, conversation, first = _three_turns(
        model, processor, session, [ids + [tokenizer.eos_token_id] for ids in pieces]
    )
    assert [m["content"] for m in conversation[1::2]] == ["red", "blue", "yes"]
    ids, offline = _offline_first_tokens(model, processor, runs, conversation)
    assert session.ids == ids
    assert ids.count(processor.video_end_token_id) == 3
    for streamed, expected in zip(first, offline):
        torch.testing.assert_close(streamed, expected, rtol=0, atol=1e-5)


def test_bounded_decode_answers_leave_no_trace_in_the_cache(tiny):
    """With a top-1-frame decode, the answer tokens decoded over one frame are fed again over every frame:
    each later turn's prompt gives the exact offline model's logits."""
    model, processor = tiny
    session = StreamingSession(model, processor)
    session.cache.decode_memory, session.cache.decode_frames = "topk_frames", 1
    runs, conversation, first = _three_turns(model, processor, session)
    assert any(m["content"] for m in conversation[1::2])
    ids, offline = _offline_first_tokens(model, processor, runs, conversation)
    assert session.ids == ids
    for streamed, expected in zip(first, offline):
        torch.testing.assert_close(streamed, expected, rtol=0, atol=1e-5)


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
