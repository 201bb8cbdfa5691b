"""Supervised video-chat samples: chat-template tokenisation, assistant-only labels, frames, batching.

The conversation is rendered by the processor's chat template with a single ``<video>`` token, tokenised
once with character offsets (labels are the tokens inside assistant turns), and only then is the video
token expanded to the processor's slots for it (``CrossLMMProcessor.video_slot_ids``: frames x
tokens_per_frame video tokens and the video-end token if the model has one), exactly as at inference. Over-length samples are cut after the video or
dropped, never inside it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from crosslmm.data.records import Record, RecordError
from crosslmm.data.sampling import FrameSampling
from crosslmm.data.video import VideoError, load_frames

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
OVERLENGTH_POLICIES = ("truncate", "drop")


@dataclass
class Encoded:
    input_ids: torch.Tensor  # (L,) with the video already expanded
    labels: torch.Tensor  # (L,) IGNORE_INDEX outside assistant turns


def assistant_spans(processor, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns.

    A turn's span runs from the end of the generation prompt before it to the end of the turn (so the
    end-of-turn token is learned). This needs a template whose renders of message prefixes are prefixes
    of the full render, which holds for ChatML and the Llama-3 templates.
    """
    text = processor.apply_chat_template(messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(processor.apply_chat_template(messages[:i], add_generation_prompt=True))
        upto = processor.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if not text.startswith(upto):
            raise ValueError(
                "the chat template renders a conversation prefix differently from the full conversation; "
                "assistant turns cannot be located for the labels"
            )
        spans.append((start, len(upto)))
    return text, spans


def encode_conversation(
    processor, messages: list[dict], num_frames: int, max_length: int, overlength: str
) -> Encoded | None:
    """Token ids and labels for a conversation with one ``<video>``; None if it must be dropped."""
    text, spans = assistant_spans(processor, messages)
    enc = processor.tokenizer(text, return_offsets_mapping=True)
    ids = torch.tensor(enc["input_ids"])
    starts = torch.tensor([s for s, _ in enc["offset_mapping"]])
    in_answer = torch.zeros(len(ids), dtype=torch.bool)
    for s, e in spans:
        in_answer |= (starts >= s) & (starts < e)
    labels = torch.where(in_answer, ids, IGNORE_INDEX)

    slot = (ids == processor.video_token_id).nonzero().flatten()
    if len(slot) != 1:
        raise ValueError(f"expected one {processor.video_token} token after tokenisation, found {len(slot)}")
    at, video = int(slot[0]), ids.new_tensor(processor.video_slot_ids(num_frames))
    n_video = len(video)
    ids = torch.cat([ids[:at], video, ids[at + 1 :]])
    labels = torch.cat([labels[:at], labels.new_full((n_video,), IGNORE_INDEX), labels[at + 1 :]])
    if len(ids) > max_length:
        # Cut only text after the video, and only if some answer survives.
        if overlength == "drop" or at + n_video >= max_length:
            return None
        ids, labels = ids[:max_length], labels[:max_length]
        if bool((labels == IGNORE_INDEX).all()):
            return None
    return Encoded(ids, labels)


class VideoChatDataset(Dataset):
    """Records -> {input_ids, labels, frames (T, 3, S, S) uint8}.

    A record whose video cannot be read raises :class:`RecordError` (file, index, reason) unless
    ``skip_bad``; skipped and over-length records are replaced by the next usable record and counted in
    the sample's ``dropped`` = (bad, over-length), so batches keep their size on every rank and the trainer
    can report the totals.
    """

    def __init__(
        self,
        records: list[Record],
        processor,
        max_length: int,
        sampling: FrameSampling,
        overlength: str = "truncate",
        skip_bad: bool = False,
    ) -> None:
        if overlength not in OVERLENGTH_POLICIES:
            raise ValueError(f"overlength must be one of {OVERLENGTH_POLICIES}, got {overlength!r}")
        if not records:
            raise ValueError("the dataset has no records")
        self.records = records
        self.processor = processor
        self.max_length = max_length
        self.sampling = sampling
        self.overlength = overlength
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.records)

    def encode(self, record: Record) -> tuple[Encoded, torch.Tensor] | None:
        """Token ids/labels and resized uint8 frames (T, 3, S, S) of a record (None: over-length, dropped)."""
        try:
            frames = load_frames(record.media, self.sampling)
        except VideoError as e:
            raise RecordError(record.source, record.index, f"unreadable media: {e}") from None
        encoded = encode_conversation(
            self.processor, list(record.messages), len(frames), self.max_length, self.overlength
        )
        if encoded is None:
            return None
        return encoded, self.processor.preprocess_frames(frames)

    def __getitem__(self, index: int) -> dict:
        bad = overlong = 0
        for step in range(len(self.records)):
            record = self.records[(index + step) % len(self.records)]
            try:
                sample = self.encode(record)
            except RecordError as e:
                if not self.skip_bad:
                    raise
                bad += 1
                logger.warning("skipping bad record: %s", e)
                continue
            if sample is None:
                overlong += 1
                logger.warning(
                    "dropping %s record %d (id %s): longer than max_length=%d even after cutting text",
                    record.source,
                    record.index,
                    record.id,
                    self.max_length,
                )
                continue
            encoded, frames = sample
            return dict(
                input_ids=encoded.input_ids,
                labels=encoded.labels,
                frames=frames,
                dropped=torch.tensor([bad, overlong]),
            )
        raise RuntimeError("no usable record in the whole dataset: every record was bad or over-length")


@dataclass
class VideoChatCollator:
    """Right-pads ids/labels and stacks frames into (B, F_max, 3, S, S) with per-sample frame counts.

    Frames keep their dtype: uint8 from the processor (a quarter of fp32 through the data-loader workers'
    shared memory and the host-to-device copy), normalised by the model on its device."""

    pad_token_id: int

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(s["input_ids"]) for s in samples)
        most_frames = max(len(s["frames"]) for s in samples)
        batch = len(samples)
        input_ids = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, longest), dtype=torch.long)
        first = samples[0]["frames"]
        pixels = first.new_zeros((batch, most_frames, *first.shape[1:]))
        for b, s in enumerate(samples):
            n = len(s["input_ids"])
            input_ids[b, :n], labels[b, :n], attention_mask[b, :n] = s["input_ids"], s["labels"], 1
            pixels[b, : len(s["frames"])] = s["frames"]
        return dict(
            input_ids=input_ids,
            labels=labels,
            attention_mask=attention_mask,
            pixel_values_videos=pixels,
            video_frame_counts=torch.tensor([len(s["frames"]) for s in samples]),
            dropped=torch.stack([s["dropped"] for s in samples]).sum(0),
        )
