"""Ask a CrossLMM about a video: loading, frame sampling, prompts, batched generation and answer scoring.

This is the one evaluation path: ``crosslmm chat``, the lmms-eval plugin and the demo all go through
these functions, so frames are sampled and prompts are built the same way everywhere.

    model, processor = load("runs/crosslmm-2b")
    answer(model, processor, "clip.mp4", "What happens at the end?", max_frames=64)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor

from crosslmm.data.video import load_video, sample_indices
from crosslmm.model import CrossLMMForCausalLM, CrossLMMProcessor  # importing registers the Auto classes

DEFAULT_NUM_FRAMES = 64  # frames per video when neither a count nor an fps is given (see docs/evaluation.md)

# What a caller may hand over as one video: a video/image file, decoded (T, H, W, 3) uint8 frames, or PIL
# images (one image = a one-frame video; a list = the frames of one video).
VideoLike = str | os.PathLike | np.ndarray | torch.Tensor | Image.Image | Sequence[Image.Image]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class FrameSampling:
    """Which frames of a video the model sees: ``num_frames`` uniformly spaced, or one every ``1/fps``
    seconds; ``max_frames`` caps either. Build it with :meth:`resolve`, which fills the default."""

    num_frames: int | None = None
    fps: float | None = None
    max_frames: int | None = None

    @classmethod
    def resolve(
        cls, num_frames: int | None = None, fps: float | None = None, max_frames: int | None = None
    ) -> FrameSampling:
        """Validate once, up front. With neither ``num_frames`` nor ``fps``, take ``max_frames`` (or
        :data:`DEFAULT_NUM_FRAMES`) uniform frames, so ``max_frames=64`` alone means "64 frames"."""
        if num_frames is not None and fps is not None:
            raise ValueError("give either a frame count or an fps, not both")
        for name, value in (("num_frames", num_frames), ("fps", fps), ("max_frames", max_frames)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if num_frames is None and fps is None:
            num_frames = max_frames or DEFAULT_NUM_FRAMES
        return cls(num_frames=num_frames, fps=fps, max_frames=max_frames)

    @property
    def budget(self) -> int | None:
        """Most frames this sampling can yield, if bounded (an fps without a cap is not)."""
        counts = [n for n in (self.num_frames, self.max_frames) if n is not None]
        return min(counts) if counts else None


def load_frames(video: VideoLike, sampling: FrameSampling) -> np.ndarray:
    """Any :data:`VideoLike` -> (T, H, W, 3) uint8 frames under ``sampling``.

    Files are decoded by :func:`crosslmm.data.video.load_video` (which names the file in every error).
    Already decoded frames have no known frame rate, so only the frame budget applies to them: they are
    subsampled uniformly to ``sampling.budget``. Anything else raises TypeError saying what is accepted.
    """
    if isinstance(video, (str, os.PathLike)):
        clip = load_video(
            video, num_frames=sampling.num_frames, fps=sampling.fps, max_frames=sampling.max_frames
        )
        return clip.frames
    if isinstance(video, Image.Image):
        video = [video]
    if isinstance(video, (list, tuple)) and video and all(isinstance(im, Image.Image) for im in video):
        size = video[0].size  # the processor takes one array per video, so frames must share a size
        frames = np.stack([np.asarray(im.convert("RGB").resize(size)) for im in video])
    elif isinstance(video, (np.ndarray, torch.Tensor)):
        frames = video.cpu().numpy() if isinstance(video, torch.Tensor) else video
        if frames.ndim == 3:
            frames = frames[None]  # one (H, W, 3) image
    else:
        raise TypeError(
            f"cannot use a {type(video).__name__} as a video: give a video/image file path, (T, H, W, 3) "
            "uint8 frames, a PIL image or a non-empty list of PIL images"
        )
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be non-empty (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if sampling.budget is not None and len(frames) > sampling.budget:
        frames = frames[sample_indices(len(frames), 1.0, num_frames=sampling.budget)]
    return frames


def load(
    model_dir: str | os.PathLike, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
) -> tuple[CrossLMMForCausalLM, CrossLMMProcessor]:
    """A saved CrossLMM dir -> (model in eval mode on ``device``, processor).

    ``dtype`` None means float32 on CPU (bf16 matmuls are slow there) and bfloat16 on accelerators.
    """
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir}: no such model directory")
    if dtype is None:
        dtype = torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    elif isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
        dtype = _DTYPES[dtype]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    return model, processor


def build_prompt(processor: CrossLMMProcessor, question: str, num_videos: int = 1) -> str:
    """Chat prompt with the videos first (the paper's [visual ; text] order), then the question."""
    content = f"{processor.video_token}\n" * num_videos + question
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def _model_inputs(model, processor, prompts: Sequence[str], videos: Sequence[Sequence[np.ndarray]]):
    """Left-padded batch (generation appends on the right); ``videos[i]`` fill prompt i's placeholders."""
    flat = [frames for per_prompt in videos for frames in per_prompt]
    return processor(text=list(prompts), videos=flat or None, padding_side="left").to(model.device)


@torch.inference_mode()
def generate(
    model,
    processor,
    prompts: Sequence[str],
    videos: Sequence[Sequence[np.ndarray]],
    max_new_tokens: int = 64,
    streamer=None,
    **generate_kwargs,
) -> list[str]:
    """One batched ``model.generate`` over prompts that may hold any number of ``<video>`` placeholders.

    Greedy unless ``generate_kwargs`` say otherwise. Returns the stripped new text of each prompt.
    """
    if len(prompts) != len(videos):
        raise ValueError(f"{len(prompts)} prompts but {len(videos)} video lists")
    inputs = _model_inputs(model, processor, prompts, videos)
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
) -> str:
    """The answer to ``question`` about ``video`` (greedy). Pass a transformers ``TextStreamer`` to see
    it as it is generated."""
    frames = load_frames(video, FrameSampling.resolve(num_frames, fps, max_frames))
    prompt = build_prompt(processor, question)
    return generate(model, processor, [prompt], [[frames]], max_new_tokens, streamer=streamer)[0]


@torch.inference_mode()
def continuation_nll(
    model, processor, prompt: str, videos: Sequence[np.ndarray], continuations: Sequence[str]
) -> list[tuple[float, bool]]:
    """For each continuation: (-log P(continuation | prompt, videos), whether greedy decoding yields it).

    Negative log-likelihoods, lower is likelier: lmms-eval's multiple-choice scoring takes the argmin.
    The prompt and frames are preprocessed once; the continuation tokens are appended to the prompt's
    ids (not re-tokenised together), so the scored tokens are exactly the continuation's own.
    """
    inputs = _model_inputs(model, processor, [prompt], [list(videos)])
    visual = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    scores = []
    for text in continuations:
        cont = processor.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        if cont.shape[1] == 0:
            raise ValueError(f"continuation {text!r} has no tokens")
        cont = cont.to(model.device)
        ids = torch.cat([inputs["input_ids"], cont], dim=1)
        logits = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            use_cache=False,
            logits_to_keep=cont.shape[1] + 1,
            **visual,
        ).logits
        logprobs = logits[:, :-1].float().log_softmax(-1)  # (1, n, V): position j predicts cont[j]
        token_logprobs = logprobs.gather(-1, cont[..., None]).squeeze(-1)
        scores.append((-float(token_logprobs.sum()), bool((logprobs.argmax(-1) == cont).all())))
    return scores
