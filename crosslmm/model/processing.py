"""CrossLMMProcessor: tokenizer + image processor; expands each ``<video>`` to its pooled-token slots."""

from __future__ import annotations

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin, SiglipImageProcessor

from crosslmm.data.sampling import FrameSampling
from crosslmm.data.video import load_frames

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
    """Resize every frame to the tower's square input (no crop: a video frame's edges can hold the answer),
    and nothing else: the model normalises uint8 frames with its tower's mean/std, their one owner."""
    size = vision_tower.image_size
    return SiglipImageProcessor(size={"height": size, "width": size}, do_rescale=False, do_normalize=False)


def _special_token_id(tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {token!r} token; add it as a special token first")
    return token_id


VideoInput = np.ndarray | torch.Tensor  # (T, H, W, 3) uint8 frames, as crosslmm.data.video returns them


class CrossLMMProcessor(ProcessorMixin):
    """Turns prompts with ``<video>`` placeholders plus decoded frames into model inputs.

    Each ``<video>`` becomes ``frames * tokens_per_frame`` video tokens, so the sequence the LLM sees
    is exactly as long as the pooled visual input. Outputs ``pixel_values_videos`` (B, F_max, 3, H, W), uint8
    frames resized but not normalised (the model normalises them), with ``video_frame_counts`` (B,): a sample's
    videos are concatenated in placeholder order. With
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
        self.video_end_token_id = (
            _special_token_id(tokenizer, video_end_token) if video_end_token is not None else None
        )

    def apply_chat_template(
        self,
        conversation: list[dict] | list[list[dict]],
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors: str = "pt",
        num_frames: int | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        min_frames: int | None = None,
        tokens_per_frame: int | None = None,
        **kwargs,
    ):
        """Render chat messages (one conversation or a batch) as transformers' VLM processors do.

        Content is a string with ``<video>`` placeholders, or HF's typed list
        (``[{"type": "video", "path": "clip.mp4"}, {"type": "text", "text": "..."}]``; ``"image"`` blocks
        are one-frame videos), rendered in the order given, blocks joined by newlines. With
        ``tokenize=True`` each video block's ``path``/``video``/``image`` is loaded by our reader under
        ``FrameSampling.resolve(num_frames, fps, max_frames, min_frames)`` (the rule training and the
        lmms-eval plugin use; nothing given means the stage-2 default), at :attr:`frame_size`, and the prompt goes through
        :meth:`__call__` (at ``tokens_per_frame``, default the processor's): ``return_dict=True`` gives the
        model inputs, else the ``input_ids``.
        """
        batched = bool(conversation) and isinstance(conversation[0], list | tuple)
        conversations = conversation if batched else [conversation]
        template = chat_template or self.chat_template or self.tokenizer.chat_template
        prompts, videos = [], []
        for messages in conversations:
            flat = [self._flatten_message(m, videos) for m in messages]
            prompts.append(
                self.tokenizer.apply_chat_template(
                    flat,
                    chat_template=template,
                    tokenize=False,
                    add_generation_prompt=add_generation_prompt,
                    **kwargs,
                )
            )
        if not tokenize:
            return prompts if batched else prompts[0]
        sampling = FrameSampling.resolve(num_frames, fps, max_frames, min_frames)
        frames = []
        for block in videos:
            source = next((block[k] for k in ("path", "video", "image") if block.get(k) is not None), None)
            if source is None and block.get("url") is not None:
                raise ValueError(f"{block['url']}: URLs are not downloaded; give the video as a local 'path'")
            if source is None:
                raise ValueError(
                    f"a {block['type']!r} content block needs a 'path' (or 'video'/'image': decoded frames) to "
                    f"load with tokenize=True, got keys {sorted(block)}"
                )
            frames.append(load_frames(source, sampling, size=self.frame_size))
        inputs = self(
            text=prompts,
            videos=frames or None,
            return_tensors=return_tensors,
            tokens_per_frame=tokens_per_frame,
        )
        return inputs if return_dict else inputs["input_ids"]

    def _flatten_message(self, message: dict, videos: list[dict]) -> dict:
        """A message with typed content -> the same message with string content; visual blocks are
        appended to ``videos`` in placeholder order."""
        content = message.get("content")
        if content is None or isinstance(content, str):
            return message
        if not isinstance(content, list | tuple):
            raise TypeError(
                f"message content must be a string or a list of typed blocks, got {type(content)}"
            )
        parts = []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind in ("video", "image"):
                parts.append(self.video_token)
                videos.append(block)
            elif kind == "text":
                parts.append(block["text"])
            else:
                raise ValueError(f"unsupported content block {block!r}: use type 'text', 'video' or 'image'")
        return {**message, "content": "\n".join(parts)}

    def budget(self, tokens_per_frame: int | None = None) -> int:
        """This call's tokens per frame: the one asked for, else the processor's default. Whether the model
        was trained at it is the model's check (its config owns the trained budgets)."""
        if tokens_per_frame is None:
            return self.tokens_per_frame
        if (
            isinstance(tokens_per_frame, bool)
            or not isinstance(tokens_per_frame, int)
            or tokens_per_frame < 1
        ):
            raise ValueError(f"tokens_per_frame must be a positive int, got {tokens_per_frame!r}")
        return tokens_per_frame

    def video_slots(self, num_frames: int, tokens_per_frame: int | None = None) -> str:
        """What one ``<video>`` of ``num_frames`` frames becomes in the prompt: ``num_frames *
        tokens_per_frame`` video tokens (the budget asked for, default the processor's), then the end token
        if the model has one. The one owner of this expansion: the processor and the training data ask it."""
        count = num_frames * self.budget(tokens_per_frame)
        return self.video_token * count + (self.video_end_token or "")

    def video_slot_ids(
        self, num_frames: int, tokens_per_frame: int | None = None, end: bool = True
    ) -> list[int]:
        """Token ids of :meth:`video_slots` (each slot is one special token); ``end=False`` leaves out the
        end token, for a run of frames that is still growing (streaming)."""
        ids = [self.video_token_id] * (num_frames * self.budget(tokens_per_frame))
        if end and self.video_end_token_id is not None:
            ids.append(self.video_end_token_id)
        return ids

    def expand_video_tokens(
        self, text: str, frame_counts: list[int], tokens_per_frame: int | None = None
    ) -> str:
        """Replace the i-th ``<video>`` in ``text`` by :meth:`video_slots` of ``frame_counts[i]`` frames."""
        pieces = text.split(self.video_token)
        if len(pieces) - 1 != len(frame_counts):
            raise ValueError(
                f"prompt has {len(pieces) - 1} {self.video_token} placeholder(s) but {len(frame_counts)} video(s) "
                "were given for it"
            )
        out = [pieces[0]]
        for count, piece in zip(frame_counts, pieces[1:]):
            out.append(self.video_slots(count, tokens_per_frame))
            out.append(piece)
        return "".join(out)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) the frames are resized to: the tower's input. Readers take it as ``size`` so
        frames leave the decoder at this size (``load_frames(video, sampling, size=processor.frame_size)``)
        and :meth:`preprocess_frames` has nothing left to resize."""
        size = self.image_processor.size
        return int(size["height"]), int(size["width"])

    def preprocess_frames(self, frames: VideoInput) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (T, 3, S, S) uint8, resized to the tower's input but not normalised.

        Frames already at :attr:`frame_size` (a reader resized them) are only transposed; others go through
        the image processor, whose resize :func:`crosslmm.data.video.resize_frames` reproduces exactly, so a
        file and its full-size frames passed as an array give the same pixels.
        The model normalises on its own device with the tower's mean/std (``CrossLMMModel.normalize_frames``),
        one chunk of frames at a time: fp32 pixels would be 4x larger in every data-loader worker, collated
        batch and host-to-device copy (906 MB for 512 frames at 384 px)."""
        if len(frames) == 0:
            raise ValueError("a video with zero frames was given; every video needs at least one frame")
        arr = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
        if arr.dim() != 4 or arr.shape[-1] != 3:
            raise ValueError(f"video frames must be (T, H, W, 3) RGB, got shape {tuple(arr.shape)}")
        if tuple(arr.shape[1:3]) == self.frame_size and arr.dtype == torch.uint8:
            return arr.permute(0, 3, 1, 2).contiguous()  # the image processor's resize would be a no-op
        pixel = self.image_processor(
            images=list(arr.permute(0, 3, 1, 2)), do_rescale=False, do_normalize=False, return_tensors="pt"
        )["pixel_values"]
        if pixel.dtype != torch.uint8:  # an image-processor backend that resizes in float
            pixel = pixel.round().clamp_(0, 255).to(torch.uint8)
        return pixel

    def __call__(
        self,
        text: str | list[str],
        videos: list[VideoInput] | None = None,
        return_tensors: str = "pt",
        padding: bool | str = True,
        tokens_per_frame: int | None = None,
        padding_side: str = "left",
        **kwargs,
    ) -> BatchFeature:
        """``tokens_per_frame``: this call's budget (None: the processor's); an elastic model reads it back
        from the expanded prompts, so one model answers at any budget it was trained at.

        ``padding_side``: a batch is padded on the left by default, whatever the tokenizer's own side, as
        transformers' video-LLM checkpoints ship their tokenizers: ``generate`` continues every row after the
        batch's last position, so a right-padded row would be continued from its padding
        (``CrossLMMForCausalLM.generate`` moves such rows to the left; training collates its own batches)."""
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
            expanded.append(self.expand_video_tokens(t, [p.shape[0] for p in mine], tokens_per_frame))
            per_sample.append(torch.cat(mine) if mine else None)
        data = dict(
            self.tokenizer(
                expanded, padding=padding, padding_side=padding_side, return_tensors=return_tensors, **kwargs
            )
        )
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
