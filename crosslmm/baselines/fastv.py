"""In-LLM pruning in the style of FastV: all visual tokens through the first L decoder layers, then only the
ones the last prompt token attended to most.

FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024): at layer K, rank the image
tokens by the attention the last token pays them in layer K - 1, averaged over heads,

    s_j = 1/H sum_h softmax_j(q_h,last . k_h,j / sqrt(d)),

keep the top R and drop the rest from every later layer. Here L = ``fastv_layer`` = K (layers 0..L-1 see
every token, layer L-1's attention ranks) and R = ``fastv_keep`` per frame (FastV ranks the whole image; a
per-frame budget keeps every frame in the sequence, as the other reducers do).

Implemented as FastV's KV-cache-compatible variant: the dropped visual tokens are masked out of the
attention of layers >= L (they are treated like padding there), which is exact for every kept position and
keeps one KV cache length for all layers, so cached generation equals a full forward. The masked tokens are
still computed, so this saves no time; the FLOPs counter (``crosslmm.bench.flops``) counts the pruned
sequence for layers >= L, as a pruning implementation would compute. Ranking computes layer L-1's attention
for the one query row per sample from its q/k projections, never an eager attention map.

"Last prompt token": the last non-padded position at inference; in training (labels given) the position
before the first labelled token, so answers never choose what the model sees; a caller scoring prompt +
continuation passes ``fastv_query_positions`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # Qwen2 shares the formula


@dataclass(frozen=True)
class FastVPruning:
    """``layer`` L: decoder layers that see every token (L >= 1); ``keep``: visual tokens kept per frame."""

    layer: int
    keep: int

    @property
    def rank_layer(self) -> int:
        """The decoder layer whose attention ranks the visual tokens: the last one that sees them all."""
        return self.layer - 1


def query_positions(valid: torch.Tensor, shift_labels: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) position of each sample's last prompt token: valid (B, L) unpadded positions; with
    ``shift_labels`` (B, L) (position t predicts shift_labels[t]) the first position that has a target,
    else (or for a sample without one) the last valid position."""
    position = torch.arange(valid.shape[1], device=valid.device)
    last = (valid.long() * position).argmax(1)
    if shift_labels is None:
        return last
    labelled = shift_labels.to(valid.device) != -100
    first = torch.where(labelled, position, valid.shape[1]).min(1).values
    return torch.where(labelled.any(1), first, last)


def attention_row(
    layer: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    queries: torch.Tensor,
    key_mask: torch.Tensor,
) -> torch.Tensor:
    """Head-averaged softmax attention that ``layer`` (a Qwen2/Llama decoder layer) computes for one query
    per sample: hidden (B, L, D) is the layer's input, queries (B,) their positions, key_mask (B, L) the
    keys each may see (causal and padding already applied) -> (B, L)."""
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    normed = layer.input_layernorm(hidden)
    rows = torch.arange(batch, device=hidden.device)
    q = attn.q_proj(normed[rows, queries])  # (B, H * hd), one row per sample
    q = q.view(batch, 1, -1, attn.head_dim).transpose(1, 2)  # (B, H, 1, hd)
    k = attn.k_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)  # (B, KVH, L, hd)
    cos, sin = (t.expand(batch, -1, -1) for t in position_embeddings)  # (B, L, hd)
    q, _ = apply_rotary_pos_emb(q, q, cos[rows, queries][:, None], sin[rows, queries][:, None])
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    k = k.repeat_interleave(attn.num_key_value_groups, dim=1)  # (B, H, L, hd)
    scores = (q @ k.transpose(2, 3)).float()[:, :, 0] * attn.scaling  # (B, H, L)
    scores = scores.masked_fill(~key_mask[:, None], float("-inf"))
    return scores.softmax(-1).mean(1)


def keep_mask(
    attention: torch.Tensor, video_positions: torch.Tensor, tokens_per_frame: int, keep: int
) -> torch.Tensor:
    """attention (B, L) to every position; video_positions (F * N,) flat positions of the frames' tokens,
    N = ``tokens_per_frame`` consecutive per frame -> (B, L) bool: False at each frame's dropped tokens."""
    flat = torch.ones(attention.numel(), dtype=torch.bool, device=attention.device)
    per_frame = video_positions.view(-1, tokens_per_frame)  # (F, N)
    top = attention.flatten()[per_frame].topk(keep, dim=1).indices  # (F, keep)
    flat[video_positions] = False
    flat[per_frame.gather(1, top).flatten()] = True
    return flat.view_as(attention)
