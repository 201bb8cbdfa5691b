"""Supervised video-chat samples: chat-template tokenisation, assistant-only labels, frames, batching.

The conversation is rendered by the processor's chat template with a single ``<video>`` token, tokenised
once with character offsets (labels are the tokens inside assistant turns), and only then is the video
token expanded to the processor's slots for it (``CrossLMMProcessor.video_slot_ids``: frames x
tokens_per_frame video tokens and the video-end token if the model has one), exactly as at inference. Over-length samples are cut after the video or
dropped, never inside it.

Elastic budgets (``CrossLMMConfig.tokens_per_frame_choices``): the dataset expands at the largest budget, so
the over-length rule cuts the same text whatever is drawn later, and the collator draws one budget per batch
and re-expands each sample's video slots for it (:class:`VideoChatCollator`). Per batch, not per sample: the
pooled tokens of a batch are one (F, k, D) tensor and the model refuses mixed budgets, so batches stay
rectangular and every step costs what its budget says. The draw is a function of (seed, the batch's first
sample index) only: the same in every data-loader worker, and a resumed run, which replays the sampler's
order and skips the batches already seen, draws the same budgets.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from crosslmm.data.records import Record, RecordError
from crosslmm.data.sampling import FrameSampling
from crosslmm.data.video import VideoError, load_frames
from crosslmm.model.modeling import IGNORE_INDEX  # the one definition, next to the loss that reads it

logger = logging.getLogger(__name__)

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
    processor,
    messages: list[dict],
    num_frames: int,
    max_length: int,
    overlength: str,
    tokens_per_frame: int | None = None,
) -> Encoded | None:
    """Token ids and labels for a conversation with one ``<video>``, expanded at ``tokens_per_frame``
    (None: the processor's budget); None if it must be dropped."""
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
    at, video = int(slot[0]), ids.new_tensor(processor.video_slot_ids(num_frames, tokens_per_frame))
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
    can report the totals. ``tokens_per_frame``: the budget the video is expanded at (None: the
    processor's; elastic training gives the largest choice and the collator re-expands). ``backend``: the
    video backend (:data:`crosslmm.data.video.BACKENDS`). Each sample
    carries its ``index``, from which the collator draws an elastic batch's budget.
    """

    def __init__(
        self,
        records: list[Record],
        processor,
        max_length: int,
        sampling: FrameSampling,
        overlength: str = "truncate",
        skip_bad: bool = False,
        tokens_per_frame: int | None = None,
        backend: str = "auto",
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
        self.tokens_per_frame = tokens_per_frame
        self.backend = backend

    def __len__(self) -> int:
        return len(self.records)

    def encode(self, record: Record) -> tuple[Encoded, torch.Tensor] | None:
        """Token ids/labels and resized uint8 frames (T, 3, S, S) of a record (None: over-length, dropped).
        Frames leave the reader at the processor's ``frame_size``, so no full-size clip is held."""
        try:
            frames = load_frames(
                record.media, self.sampling, size=self.processor.frame_size, backend=self.backend
            )
        except VideoError as e:
            raise RecordError(record.source, record.index, f"unreadable media: {e}") from None
        encoded = encode_conversation(
            self.processor,
            list(record.messages),
            len(frames),
            self.max_length,
            self.overlength,
            self.tokens_per_frame,
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
                index=torch.tensor(index),
            )
        raise RuntimeError("no usable record in the whole dataset: every record was bad or over-length")


def draw_budget(choices: list[int], seed: int, first_index: int) -> int:
    """The elastic budget of the batch whose first sample is ``first_index``: a pure function of
    (seed, index), so data-loader workers and a resumed run draw the same (the sampler replays its order)."""
    return random.Random(f"{seed}/{first_index}").choice(sorted(choices))


def reexpand_video(ids: torch.Tensor, labels: torch.Tensor, frames: int, video_token_id: int, budget: int):
    """Replace the one contiguous run of video tokens in ``ids`` (L,) by ``frames * budget`` of them;
    the labels there are IGNORE_INDEX either way. Text, the video-end token and the answer are kept."""
    at = (ids == video_token_id).nonzero().flatten()
    if len(at) == 0 or int(at[-1] - at[0]) + 1 != len(at):
        raise ValueError("expected one contiguous run of video tokens per sample to re-expand")
    start, end = int(at[0]), int(at[-1]) + 1
    video = ids.new_full((frames * budget,), video_token_id)
    ignore = labels.new_full((frames * budget,), IGNORE_INDEX)
    return torch.cat([ids[:start], video, ids[end:]]), torch.cat([labels[:start], ignore, labels[end:]])


@dataclass
class VideoChatCollator:
    """Right-pads ids/labels and stacks frames into (B, F_max, 3, S, S) with per-sample frame counts.

    Frames keep their dtype: uint8 from the processor (a quarter of fp32 through the data-loader workers'
    shared memory and the host-to-device copy), normalised by the model on its device.

    With ``tokens_per_frame_choices`` (an elastic model's trained budgets) each batch draws one budget,
    :func:`draw_budget` of ``seed`` and its first sample's ``index``, and every sample's video slots are
    re-expanded for it (``video_token_id`` marks them); the model reads the budget back from the ids."""

    pad_token_id: int
    tokens_per_frame_choices: list[int] | None = None
    seed: int = 0
    video_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.tokens_per_frame_choices is not None and self.video_token_id is None:
            raise ValueError("elastic budgets (tokens_per_frame_choices) need the collator's video_token_id")

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        if self.tokens_per_frame_choices:
            if "index" not in samples[0]:
                raise ValueError("elastic budgets need each sample's 'index' (VideoChatDataset gives it)")
            budget = draw_budget(self.tokens_per_frame_choices, self.seed, int(samples[0]["index"]))
            samples = [self._at_budget(s, budget) for s in samples]
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

    def _at_budget(self, sample: dict, budget: int) -> dict:
        ids, labels = reexpand_video(
            sample["input_ids"], sample["labels"], len(sample["frames"]), self.video_token_id, budget
        )
        return {**sample, "input_ids": ids, "labels": labels}
