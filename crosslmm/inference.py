"""Ask a CrossLMM about a video: loading, frame sampling, prompts, batched generation and answer scoring.

This is the one evaluation path: ``crosslmm chat``, the lmms-eval plugin and the demo all go through
these functions, so frames are sampled and prompts are built the same way everywhere.

    model, processor = load("runs/crosslmm-2b")
    answer(model, processor, "clip.mp4", "What happens at the end?", max_frames=64)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

from crosslmm.data.dataset import assistant_spans
from crosslmm.data.sampling import FrameSampling
from crosslmm.data.video import VideoLike, load_frames
from crosslmm.model import CrossLMMForCausalLM, CrossLMMProcessor  # importing registers the Auto classes
from crosslmm.model.modeling import IGNORE_INDEX

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load(
    model_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    allow_untrained_budgets: bool = False,
) -> tuple[CrossLMMForCausalLM, CrossLMMProcessor]:
    """A saved CrossLMM dir -> (model in eval mode on ``device``, processor).

    ``dtype`` None means float32 on CPU (bf16 matmuls are slow there) and bfloat16 on accelerators.
    ``allow_untrained_budgets``: answer at tokens-per-frame budgets the model was not trained at, with a
    warning, instead of refusing them (``CrossLMMConfig.check_budget``).
    """
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir}: no such model directory")
    if dtype is None:
        dtype = torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    elif isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
        dtype = _DTYPES[dtype]
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, allow_untrained_budgets=allow_untrained_budgets
    )
    model = model.to(device).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    return model, processor


def load_processor(model_dir: str | os.PathLike) -> CrossLMMProcessor:
    """A saved CrossLMM dir's processor alone (a second, no weights): commands read its ``frame_size`` to
    decode the video, and fail on a bad video path, before loading the model."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir}: no such model directory")
    return AutoProcessor.from_pretrained(model_dir)


def build_prompt(processor: CrossLMMProcessor, question: str, num_videos: int = 1) -> str:
    """Chat prompt with the videos first (the paper's [visual ; text] order), then the question."""
    content = [{"type": "video"}] * num_videos + [{"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def _model_inputs(
    model,
    processor,
    prompts: Sequence[str],
    videos: Sequence[Sequence[np.ndarray]],
    tokens_per_frame: int | None = None,
):
    """Left-padded batch (generation appends on the right); ``videos[i]`` fill prompt i's placeholders,
    at ``tokens_per_frame`` pooled tokens per frame (None: the processor's default; elastic models only)."""
    flat = [frames for per_prompt in videos for frames in per_prompt]
    return processor(
        text=list(prompts), videos=flat or None, padding_side="left", tokens_per_frame=tokens_per_frame
    ).to(model.device)


@torch.inference_mode()
def generate(
    model,
    processor,
    prompts: Sequence[str],
    videos: Sequence[Sequence[np.ndarray]],
    max_new_tokens: int = 64,
    streamer=None,
    tokens_per_frame: int | None = None,
    **generate_kwargs,
) -> list[str]:
    """One batched ``model.generate`` over prompts that may hold any number of ``<video>`` placeholders.

    Greedy unless ``generate_kwargs`` say otherwise. Returns the stripped new text of each prompt.
    """
    if len(prompts) != len(videos):
        raise ValueError(f"{len(prompts)} prompts but {len(videos)} video lists")
    inputs = _model_inputs(model, processor, prompts, videos, tokens_per_frame)
    generate_kwargs.setdefault("do_sample", False)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer, **generate_kwargs)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def answer(
    model,
    processor,
    video: VideoLike,
    question: str,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    max_new_tokens: int = 64,
    streamer=None,
    tokens_per_frame: int | None = None,
) -> str:
    """The answer to ``question`` about ``video`` (greedy). Pass a transformers ``TextStreamer`` to see
    it as it is generated."""
    frames = load_frames(video, FrameSampling.resolve(num_frames, fps, max_frames), size=processor.frame_size)
    prompt = build_prompt(processor, question)
    return generate(
        model,
        processor,
        [prompt],
        [[frames]],
        max_new_tokens,
        streamer=streamer,
        tokens_per_frame=tokens_per_frame,
    )[0]


def _answer_ids(processor, prompt: str, continuation: str) -> list[int]:
    """The token ids a chat model emits when it answers ``prompt`` with ``continuation``: the answer as
    the chat template writes it in the assistant turn, through the end-of-turn token (the tokenizer's EOS,
    where generation stops).

    lmms-eval puts the task's target delimiter in front of each option (``" red"``); the template writes
    an answer right after the assistant header (``"red"``, a different byte-level BPE token than
    ``"Ġred"``), so leading whitespace goes. The turn is the span training labels
    (:func:`crosslmm.data.dataset.assistant_spans`), rendered on a one-question conversation: templates
    that render each turn on its own (ChatML, Llama 3) write the same turn after any prompt. ``prompt`` and
    the turn are tokenised as one text, so the ids are those of the whole conversation.
    """
    answer = continuation.lstrip()
    if not answer:
        raise ValueError(f"continuation {continuation!r} is empty")
    conversation = [{"role": "user", "content": ""}, {"role": "assistant", "content": answer}]
    text, [(start, end)] = assistant_spans(processor, conversation)
    prompt_ids = processor.tokenizer(prompt, add_special_tokens=False).input_ids
    ids = processor.tokenizer(prompt + text[start:end], add_special_tokens=False).input_ids
    if ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(f"the answer {answer!r} merges with the end of the prompt when tokenised")
    turn = ids[len(prompt_ids) :]
    eos = processor.tokenizer.eos_token_id
    if eos not in turn:
        raise ValueError(f"the chat template's assistant turn {text[start:end]!r} has no end-of-turn token")
    return turn[: turn.index(eos) + 1]


@torch.inference_mode()
def continuation_nll(
    model,
    processor,
    prompt: str,
    videos: Sequence[np.ndarray],
    continuations: Sequence[str],
    tokens_per_frame: int | None = None,
) -> list[tuple[float, bool]]:
    """For each continuation: (-log P(answer | prompt, videos), whether greedy decoding yields exactly it).

    A continuation is scored as the assistant's answer to ``prompt`` (a chat prompt from
    :func:`build_prompt`), tokenised as training and generation see it: the option without the leading
    delimiter, then the end-of-turn token (:func:`_answer_ids`). Ending the turn is part of the score, as
    training teaches it, so an option that is a prefix of another ("red", "reddish") is told apart.
    Summed over tokens, lower is likelier: lmms-eval 0.7 takes the argmin as the prediction, and its
    ``acc_norm`` divides the sum by the option's length in characters. The prompt and frames are
    preprocessed once; only the answer ids are appended per option.
    """
    inputs = _model_inputs(model, processor, [prompt], [list(videos)], tokens_per_frame)
    visual = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    scores = []
    for text in continuations:
        cont = torch.tensor([_answer_ids(processor, prompt, text)], device=model.device)  # (1, n)
        ids = torch.cat([inputs["input_ids"], cont], dim=1)
        # The answer is the labelled part: the model returns the logits that predict it, and knows where the
        # prompt ends (FastV ranks visual tokens by the prompt's last token, not the answer's).
        labels = torch.cat([torch.full_like(inputs["input_ids"], IGNORE_INDEX), cont], dim=1)
        logits = model(
            input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, use_cache=False, **visual
        ).logits[None]  # (1, n, V): row j predicts cont[j]
        logprobs = logits.float().log_softmax(-1)
        token_logprobs = logprobs.gather(-1, cont[..., None]).squeeze(-1)
        scores.append((-float(token_logprobs.sum()), bool((logprobs.argmax(-1) == cont).all())))
    return scores
