"""Where the pooled visual tokens sit in a batch, and which frames each text token may look at."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QueryGroup:
    """Text positions of one sample that see the same prefix of that sample's frames (T2V queries)."""

    sample: int
    positions: torch.Tensor  # (n,) flat indices into the (B*L) sequence
    visible_frames: int


@dataclass
class VisualLayout:
    """Built once per forward pass from ``input_ids``; shared by every cross-attention layer.

    Frames are numbered in row-major order of their video tokens across the batch, which is also the
    order of the flattened frame tensor, so frame ``f`` of sample ``b`` is global frame
    ``frame_offsets[b] + f``.
    """

    video_positions: torch.Tensor  # (F_total * tokens_per_frame,) flat positions of pooled video tokens
    frame_counts: torch.Tensor  # (B,) frames per sample
    frame_offsets: torch.Tensor  # (B,) index of each sample's first frame in the flat frame list
    text_groups: list[QueryGroup]
    appends_frames: bool = False  # these frames follow frames already cached (streaming, batch of 1)
    tokens_per_frame: int = 0  # pooled tokens per frame of this input (its budget); 0 when decoding
    # (F_total * tokens_per_frame,) patches each visual token stands for, in ``video_positions`` order, from a
    # merging reducer (ToMe's proportional attention reads them); None: the reducer keeps no sizes.
    token_sizes: torch.Tensor | None = None

    @property
    def total_frames(self) -> int:
        return int(self.frame_counts.sum())


def _text_groups(
    text_mask: torch.Tensor, visible: torch.Tensor, frame_counts: torch.Tensor
) -> list[QueryGroup]:
    """Group text positions by how many frames precede them (almost always one group per sample)."""
    batch, length = text_mask.shape
    groups = []
    for b in range(batch):
        if int(frame_counts[b]) == 0:
            continue
        for c in torch.unique(visible[b][text_mask[b]]).tolist():
            if c > 0:
                pos = torch.nonzero(text_mask[b] & (visible[b] == c)).squeeze(1) + b * length
                groups.append(QueryGroup(sample=b, positions=pos, visible_frames=int(c)))
    return groups


def tokens_per_frame_of(input_ids: torch.Tensor, frame_counts: torch.Tensor, video_token_id: int) -> int:
    """The budget an input was built for: video tokens / frames, one value for the whole batch.

    Samples of a batch must share it (pooled tokens of every frame are one (F, k, D) tensor)."""
    per_sample = (input_ids == video_token_id).sum(1).tolist()
    counts = frame_counts.tolist()
    budgets = {t // f for t, f in zip(per_sample, counts) if f}
    if any(f and t % f for t, f in zip(per_sample, counts)) or len(budgets) > 1:
        raise ValueError(
            f"video tokens per sample {per_sample} do not match frames x tokens_per_frame for one budget "
            f"(frames {counts}): every sample of a batch needs the same tokens per frame; build the prompts "
            "with one CrossLMMProcessor call so each <video> expands to the right length"
        )
    if not budgets:
        raise ValueError(f"videos were given but no sample has frames (frames {counts})")
    return budgets.pop()


def prefill_layout(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    frame_counts: torch.Tensor,
    video_token_id: int,
    tokens_per_frame: int,
    frames_before: int = 0,
) -> VisualLayout:
    """Layout of a prompt (or, streaming, of the next chunk of one) that contains video tokens.

    A text token sees every frame whose last pooled token comes before it (causal T2V), counting the
    ``frames_before`` frames already in the cache (a streamed continuation of one sample); text before
    the first video sees nothing.
    """
    is_video = input_ids == video_token_id
    per_sample = is_video.sum(1)
    expected = frame_counts.to(per_sample.device) * tokens_per_frame
    if not torch.equal(per_sample, expected):
        raise ValueError(
            f"video tokens per sample {per_sample.tolist()} do not match frames x tokens_per_frame "
            f"{expected.tolist()} (frames {frame_counts.tolist()}, {tokens_per_frame} tokens per frame): "
            "build the prompt with CrossLMMProcessor so each <video> expands to the right length"
        )
    video_seen = torch.cumsum(is_video.long(), dim=1)
    visible = torch.div(video_seen, tokens_per_frame, rounding_mode="floor") + frames_before
    text_mask = ~is_video
    if attention_mask is not None:
        text_mask &= attention_mask.bool()
    counts = frame_counts.to(input_ids.device)
    return VisualLayout(
        video_positions=torch.nonzero(is_video.flatten()).squeeze(1),
        frame_counts=counts,
        frame_offsets=torch.cumsum(counts, 0) - counts,
        text_groups=_text_groups(text_mask, visible, counts),
        appends_frames=frames_before > 0,
        tokens_per_frame=tokens_per_frame,
    )


def decode_layout(
    shape: tuple[int, int], attention_mask: torch.Tensor | None, frame_counts: torch.Tensor
) -> VisualLayout:
    """Layout for the (B, L) tokens generated after the prompt: they see all of their sample's frames."""
    batch, length = shape
    device = frame_counts.device
    text_mask = torch.ones((batch, length), dtype=torch.bool, device=device)
    if attention_mask is not None:
        text_mask &= attention_mask[:, -length:].bool().to(device)
    counts = frame_counts
    if bool(
        text_mask.all()
    ):  # the usual decode step: skip _text_groups' unique/nonzero, one group per sample
        positions = torch.arange(length, device=device)
        groups = [
            QueryGroup(sample=b, positions=positions + b * length, visible_frames=c)
            for b, c in enumerate(counts.tolist())
            if c > 0
        ]
    else:
        groups = _text_groups(text_mask, counts[:, None].expand(batch, length), counts)
    return VisualLayout(
        video_positions=torch.zeros(0, dtype=torch.long, device=device),
        frame_counts=counts,
        frame_offsets=torch.cumsum(counts, 0) - counts,
        text_groups=groups,
    )
