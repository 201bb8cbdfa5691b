"""CrossLMMProcessor: tokenizer + image processor; expands each ``<video>`` to its pooled-token slots."""

from __future__ import annotations

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin, SiglipImageProcessor

VIDEO_TOKEN = "<video>"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_image_processor(vision_tower) -> SiglipImageProcessor:
    """Resize every frame to the tower's square input (no crop: a video frame's edges can hold the answer)
    and normalise with the tower's own mean/std."""
    size = vision_tower.image_size
    return SiglipImageProcessor(
        size={"height": size, "width": size},
        image_mean=list(vision_tower.image_mean),
        image_std=list(vision_tower.image_std),
    )


def _special_token_id(tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {token!r} token; add it as a special token first")
    return token_id


VideoInput = np.ndarray | torch.Tensor  # (T, H, W, 3) uint8 frames, as crosslmm.data.video returns them


class CrossLMMProcessor(ProcessorMixin):
    """Turns prompts with ``<video>`` placeholders plus decoded frames into model inputs.

    Each ``<video>`` becomes ``frames * tokens_per_frame`` video tokens, so the sequence the LLM sees
    is exactly as long as the pooled visual input. Outputs ``pixel_values_videos`` (B, F_max, 3, H, W)
    with ``video_frame_counts`` (B,): a sample's videos are concatenated in placeholder order. With
    ``video_end_token`` set, one such token follows each video's tokens (see ``video_end_token_id``).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        tokens_per_frame: int = 9,
        video_token: str = VIDEO_TOKEN,
        video_end_token: str | None = None,
        chat_template: str | None = None,
        **kwargs,
    ):
        self.tokens_per_frame = tokens_per_frame
        self.video_token = video_token
        self.video_end_token = video_end_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        self.video_token_id = _special_token_id(tokenizer, video_token)
        if video_end_token is not None:
            _special_token_id(tokenizer, video_end_token)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Messages with plain-string content (``"<video>\\nWhat happens?"``) -> prompt string."""
        template = kwargs.pop("chat_template", None) or self.chat_template or self.tokenizer.chat_template
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **kwargs,
        )

    def expand_video_tokens(self, text: str, frame_counts: list[int]) -> str:
        """Replace the i-th ``<video>`` in ``text`` by ``frame_counts[i] * tokens_per_frame`` video tokens
        (plus the end token, if any)."""
        pieces = text.split(self.video_token)
        if len(pieces) - 1 != len(frame_counts):
            raise ValueError(
                f"prompt has {len(pieces) - 1} {self.video_token} placeholder(s) but {len(frame_counts)} video(s) "
                "were given for it"
            )
        out = [pieces[0]]
        end = self.video_end_token or ""
        for count, piece in zip(frame_counts, pieces[1:]):
            out.append(self.video_token * (count * self.tokens_per_frame) + end)
            out.append(piece)
        return "".join(out)

    def preprocess_frames(self, frames: VideoInput) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (T, 3, S, S) normalised for the vision tower."""
        if len(frames) == 0:
            raise ValueError("a video with zero frames was given; every video needs at least one frame")
        arr = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
        if arr.dim() != 4 or arr.shape[-1] != 3:
            raise ValueError(f"video frames must be (T, H, W, 3) RGB, got shape {tuple(arr.shape)}")
        pixel = self.image_processor(images=list(arr.permute(0, 3, 1, 2)), return_tensors="pt")[
            "pixel_values"
        ]
        return pixel

    def __call__(
        self,
        text: str | list[str],
        videos: list[VideoInput] | None = None,
        return_tensors: str = "pt",
        padding: bool | str = True,
        **kwargs,
    ) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text)
        videos = list(videos or [])
        placeholders = [t.count(self.video_token) for t in texts]
        if sum(placeholders) != len(videos):
            raise ValueError(
                f"the prompts have {sum(placeholders)} {self.video_token} placeholder(s) but {len(videos)} video(s) "
                "were given"
            )
        pixel = [self.preprocess_frames(v) for v in videos]
        expanded, per_sample, start = [], [], 0
        for t, n in zip(texts, placeholders):
            mine = pixel[start : start + n]
            start += n
            expanded.append(self.expand_video_tokens(t, [p.shape[0] for p in mine]))
            per_sample.append(torch.cat(mine) if mine else None)
        data = dict(self.tokenizer(expanded, padding=padding, return_tensors=return_tensors, **kwargs))
        if pixel:
            counts = torch.tensor([0 if p is None else p.shape[0] for p in per_sample])
            batch = torch.zeros((len(texts), int(counts.max()), *pixel[0].shape[1:]), dtype=pixel[0].dtype)
            for b, p in enumerate(per_sample):
                if p is not None:
                    batch[b, : p.shape[0]] = p
            data["pixel_values_videos"] = batch
            data["video_frame_counts"] = counts
        return BatchFeature(data=data)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)
