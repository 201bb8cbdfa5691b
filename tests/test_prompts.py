"""Prompt layouts, HF typed chat messages and batched/padded generation on a model whose answer depends on
the video (gates open), so each test can fail."""

from __future__ import annotations

import pytest
import torch
from helpers import check_cached_generation, coloured_frames, greedy, video_dependent_model

from crosslmm.data.sampling import FrameSampling
from crosslmm.data.video import load_frames, write_video

QUESTION = "What colour is the marker?"
LAYOUTS = {
    "video first": "<video>\nWhat colour is the marker?",
    "video last": "Describe this: <video>",
    "text before and after": "Look at this: <video>\nWhat colour is the marker?",
    "two videos": "<video>\nand\n<video>\nWhich is brighter?",
    "raw prompt ending with its video": "Describe this: <video>",  # no chat template: nothing follows it
}


@pytest.fixture(scope="module")
def tiny():
    return video_dependent_model(cross_attention_mlp=True)


def _prompt(processor, content) -> str:
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def _videos(content: str, seed: int) -> list:
    return [coloured_frames(2 + i, seed=seed + 10 * i) for i in range(content.count("<video>"))]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@torch.no_grad()
def test_generate_matches_full_forward_for_every_layout(tiny, layout):
    """Cached decoding (T2V from the cross-attention cache) gives the full forward's logits, whatever
    the position of the video; a prompt that ends with its video used to raise at the first decode step."""
    model, processor = tiny
    content = LAYOUTS[layout]
    prompt = content if layout.startswith("raw") else _prompt(processor, content)
    inputs = processor(text=[prompt], videos=_videos(content, seed=1))
    step_logits = check_cached_generation(model, inputs)
    other = processor(text=[prompt], videos=_videos(content, seed=2))
    assert not torch.allclose(greedy(model, other)[1], step_logits)  # the video matters


@pytest.mark.parametrize("mlp", [False, True])
@torch.no_grad()
def test_text_only_row_does_not_depend_on_its_batch(mlp):
    """A text-only prompt batched with video prompts gives the logits it gives alone (and the base
    decoder's: no cross-attention applies to it), with and without the gated cross-attention MLP."""
    model, processor = video_dependent_model(cross_attention_mlp=mlp)
    text_only = _prompt(processor, "Say something about colours.")
    with_video = _prompt(processor, LAYOUTS["video first"])
    alone = processor(text=[text_only], padding_side="left")
    batch = processor(text=[with_video, text_only], videos=[coloured_frames(3, seed=0)], padding_side="left")
    length = alone["input_ids"].shape[1]
    logits_alone = model(**alone).logits[0]
    logits_batched = model(**batch).logits[1, -length:]
    torch.testing.assert_close(logits_batched, logits_alone, rtol=1e-5, atol=1e-5)
    base = model(input_ids=alone["input_ids"]).logits[0]  # no video in the batch: cross layers skipped
    torch.testing.assert_close(logits_alone, base, rtol=0, atol=0)


@torch.no_grad()
def test_batched_padded_generation_equals_one_at_a_time(tiny):
    """Left-padded batches mixing frame counts, layouts and a text-only row answer as each prompt alone,
    and the answers differ between videos (a model emitting one token for every input would fail)."""
    model, processor = tiny
    contents = [LAYOUTS["video first"], LAYOUTS["video last"], LAYOUTS["video first"], "No video here."]
    prompts = [_prompt(processor, c) for c in contents]
    videos = [_videos(c, seed=s) for s, c in enumerate(contents)]
    flat = [v for per_prompt in videos for v in per_prompt]
    batch = processor(text=prompts, videos=flat, padding_side="left")
    batched, _ = greedy(model, batch)
    answers = []
    for prompt, video in zip(prompts, videos):
        single, _ = greedy(model, processor(text=[prompt], videos=video or None, padding_side="left"))
        answers.append(single[0].tolist())
    assert batched.tolist() == answers
    assert answers[0] != answers[2]  # same prompt, different videos


def _two_padded_prompts(processor):
    """Two chat prompts of different lengths (questions and frame counts) with different videos."""
    prompts = [_prompt(processor, LAYOUTS["video first"]), _prompt(processor, "<video>\nColour?")]
    return prompts, [coloured_frames(3, seed=1), coloured_frames(2, seed=2)]


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padded_batch_answers_each_video_as_alone(tiny, side):
    """Left- and right-padded batches give each prompt its unbatched answer and answer-position logits.
    Right padding once answered the shorter row from its padding ("green" for a blue video): generate
    continues every row after the batch's last position, so the model moves right padding to the left."""
    model, processor = tiny
    prompts, videos = _two_padded_prompts(processor)
    batch = processor(text=prompts, videos=videos, padding_side=side)
    edge = 0 if side == "left" else -1
    assert batch["attention_mask"][:, edge].tolist() == [1, 0]  # the second row is padded on that side
    tokens, step_logits = greedy(model, batch)
    last = batch["attention_mask"].sum(1) - 1 if side == "right" else torch.full((2,), -1)
    forward_logits = model(**batch).logits[torch.arange(2), last]  # (2, V) at each row's last prompt token
    for row, (prompt, video) in enumerate(zip(prompts, videos)):
        alone_tokens, alone_logits = greedy(model, processor(text=[prompt], videos=[video]))
        assert tokens[row].tolist() == alone_tokens[0].tolist()
        torch.testing.assert_close(step_logits[row], alone_logits[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(forward_logits[row], alone_logits[0, 0], rtol=1e-4, atol=1e-4)
    assert tokens[0].tolist() != tokens[1].tolist()  # the two videos get different answers


def test_the_processor_pads_on_the_left_by_default(tiny):
    """A batch from the processor or its chat template is left-padded whatever the tokenizer's own side, as
    transformers' video-LLM checkpoints ship their tokenizers (generation continues after the last position)."""
    model, processor = tiny
    assert processor.tokenizer.padding_side == "right"  # the default does not come from the tokenizer
    prompts, videos = _two_padded_prompts(processor)
    assert processor(text=prompts, videos=videos)["attention_mask"][:, 0].tolist() == [1, 0]
    conversations = [
        [{"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": q}]}]
        for video, q in zip(videos, ["What colour is the marker?", "Colour?"])
    ]
    inputs = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, num_frames=2
    )
    assert inputs["attention_mask"][:, 0].tolist() == [1, 0]


def test_right_padding_with_explicit_positions_is_refused(tiny):
    """Per-position inputs cannot be moved with the padding by guesswork: refused with the fix."""
    model, processor = tiny
    prompts, videos = _two_padded_prompts(processor)
    batch = processor(text=prompts, videos=videos, padding_side="right")
    positions = torch.arange(batch["input_ids"].shape[1])[None].expand(2, -1)
    with pytest.raises(ValueError, match=r"right-padded batch with position_ids: pad on the left"):
        model.generate(**batch, position_ids=positions, max_new_tokens=2)


def test_typed_chat_messages_render_like_placeholders(tiny):
    """HF's multimodal message format renders as the ``<video>`` placeholder form, in the order given."""
    _, processor = tiny
    typed = [{"type": "video"}, {"type": "text", "text": QUESTION}]
    assert _prompt(processor, typed) == _prompt(processor, f"<video>\n{QUESTION}")
    reversed_order = [{"type": "text", "text": "Describe this:"}, {"type": "video"}]
    assert "Describe this:\n<video><|im_end|>" in _prompt(processor, reversed_order)
    with pytest.raises(ValueError, match="unsupported content block"):
        _prompt(processor, [{"type": "audio", "path": "a.wav"}])


@torch.no_grad()
def test_typed_chat_messages_load_the_video(tiny, tmp_path):
    """``tokenize=True, return_dict=True`` loads each video block's file with our reader and sampling rule
    and returns the model inputs: the same as decoding the frames ourselves."""
    model, processor = tiny
    path = tmp_path / "clip.mp4"
    write_video(path, coloured_frames(12, seed=3, size=32), fps=4)
    messages = [
        {
            "role": "user",
            "content": [{"type": "video", "path": str(path)}, {"type": "text", "text": QUESTION}],
        }
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, num_frames=4
    )
    assert inputs["video_frame_counts"].tolist() == [4]
    frames = load_frames(str(path), FrameSampling(num_frames=4))
    reference = processor(text=[_prompt(processor, f"<video>\n{QUESTION}")], videos=[frames])
    for key in ("input_ids", "pixel_values_videos"):
        torch.testing.assert_close(inputs[key], reference[key])
    ids = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, num_frames=4)
    assert torch.equal(ids, reference["input_ids"])
    model.generate(**inputs, max_new_tokens=2)  # the inputs are what the model takes
    with pytest.raises(ValueError, match="needs a 'path'"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "video"}]}], tokenize=True)
    with pytest.raises(ValueError, match="URLs are not downloaded"):
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "video", "url": "https://example.com/a.mp4"}]}],
            tokenize=True,
        )
    with pytest.raises(ValueError, match="missing.mp4: no such file"):
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "video", "path": str(tmp_path / "missing.mp4")}]}],
            tokenize=True,
        )
