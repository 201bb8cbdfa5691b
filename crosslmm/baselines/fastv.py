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

The model core knows none of this: ``FastVModel`` subclasses ``CrossLMMModel`` with its own decoder loop and
``FastVCache`` (which prompt positions survive, for later generation steps), and ``CrossLMMForCausalLM``
builds it when ``visual_reducer="fastv"`` (``crosslmm.baselines.decoder_model_class``). Weights and their
names are CrossLMM's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # Qwen2 shares the formula

from crosslmm.model.cache import CrossLMMCache
from crosslmm.model.modeling import IGNORE_INDEX, CrossLMMModel


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
    labelled = shift_labels.to(valid.device) != IGNORE_INDEX
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


def valid_keys(attention_mask, batch: int, length: int, device) -> torch.Tensor:
    """(B, length) bool, the last ``length`` positions not padded, from a 2D ``attention_mask`` (None: all)."""
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        return attention_mask[:, -length:].bool().to(device).clone()
    return torch.ones((batch, length), dtype=torch.bool, device=device)


class FastVCache(CrossLMMCache):
    """A ``CrossLMMCache`` that also keeps ``visible_prompt`` (B, S_prompt) bool: the prompt positions that
    decoder layers from ``fastv_layer`` on may attend to (False at the dropped visual tokens)."""

    sample_state = ("visible_prompt",)


class FastVModel(CrossLMMModel):
    """CrossLMM's model (same modules and weight names, no cross-attention) whose decoder layers from
    ``fastv_layer`` on see only the visual tokens ranked highest by layer ``fastv_layer - 1``.

    Extra forward input: ``fastv_query_positions`` (B,), the ranking query, each sample's last prompt token
    (None: its last unpadded position; with labels, ``CrossLMMForCausalLM`` passes the position before the
    first labelled token)."""

    cache_class = FastVCache
    position_inputs = ("position_ids", "fastv_query_positions")

    def __init__(self, config):
        super().__init__(config)
        self.pruning = FastVPruning(config.fastv_layer, config.fastv_keep)

    def inputs_from_labels(self, shift_labels: torch.Tensor, attention_mask: torch.Tensor | None) -> dict:
        valid = valid_keys(attention_mask, *shift_labels.shape, shift_labels.device)
        return {"fastv_query_positions": query_positions(valid, shift_labels)}

    def _frames_before(self, cache, past: int, batch: int) -> int:
        if past:
            raise ValueError("visual_reducer='fastv' cannot take videos after a cached prefix (streaming)")
        return 0

    def _run_decoder(
        self,
        inputs_embeds,
        attention_mask,
        position_ids,
        cache,
        use_cache,
        layout,
        memory,
        past,
        fastv_query_positions=None,
        **kwargs,
    ) -> torch.Tensor:
        """The stock decoder loop; layers from ``fastv_layer`` on get a mask without the dropped visual tokens,
        ranked here at a prompt with videos (and kept in the cache), else read from the cache."""
        if isinstance(attention_mask, dict):
            raise ValueError(
                "visual_reducer='fastv' builds its own masks: pass a 2D attention_mask, not a dict"
            )
        if cache is not None and not isinstance(cache, FastVCache):
            raise TypeError(
                f"visual_reducer='fastv' keeps its kept tokens in a FastVCache, got {type(cache)}"
            )
        lm = self.language_model
        if position_ids is None:
            length = inputs_embeds.shape[1]
            position_ids = torch.arange(past, past + length, device=inputs_embeds.device)[None]  # (1, L)
        full_masks = self._mask_map(inputs_embeds, attention_mask, cache, position_ids)
        rank_here = layout is not None and layout.tokens_per_frame > 0
        pruned_masks = None
        if not rank_here and cache is not None and cache.visible_prompt is not None:
            pruned_masks = self._pruned_mask_map(
                inputs_embeds, attention_mask, cache.visible_prompt, cache, position_ids
            )
        hidden = inputs_embeds
        position_embeddings = lm.rotary_emb(hidden, position_ids)
        for i, decoder_layer in enumerate(lm.layers[: lm.config.num_hidden_layers]):
            if rank_here and i == self.pruning.rank_layer:
                visible = self._rank(
                    decoder_layer, hidden, position_embeddings, attention_mask, layout, fastv_query_positions
                )
                if cache is not None:
                    cache.visible_prompt = visible
                # The prompt starts the cache (no videos after a cached prefix), so no cache is needed for the
                # mask sizes; layer 0 has already cached this prompt's keys.
                pruned_masks = self._pruned_mask_map(
                    inputs_embeds, attention_mask, visible, None, position_ids
                )
            masks = pruned_masks if pruned_masks is not None and i >= self.pruning.layer else full_masks
            hidden = decoder_layer(
                hidden,
                attention_mask=masks[self.layer_types[i]],
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )
        return lm.norm(hidden)

    def _rank(
        self, decoder_layer, hidden, position_embeddings, attention_mask, layout, queries
    ) -> torch.Tensor:
        """(B, L) bool, False at the visual tokens FastV drops: per frame all but the ``fastv_keep`` that the
        last prompt token attends to most in ``decoder_layer`` (the last unpruned one), given its input."""
        batch, length = hidden.shape[:2]
        valid = valid_keys(attention_mask, batch, length, hidden.device)
        queries = (query_positions(valid) if queries is None else queries).to(hidden.device)
        causal = torch.arange(length, device=hidden.device)[None] <= queries[:, None]
        attention = attention_row(decoder_layer, hidden, position_embeddings, queries, causal & valid)
        return keep_mask(attention, layout.video_positions, layout.tokens_per_frame, self.pruning.keep)

    def _pruned_mask_map(self, inputs_embeds, attention_mask, visible, cache, position_ids) -> dict:
        """Masks for the layers after FastV's: the dropped visual tokens of the prompt (``visible``
        (B, S_prompt) False) treated as padding; positions after the prompt are all kept."""
        batch, length = inputs_embeds.shape[:2]
        total = (cache.get_seq_length() if cache is not None else 0) + length
        valid = valid_keys(attention_mask, batch, total, inputs_embeds.device)
        valid[:, : visible.shape[1]] &= visible.to(valid.device)
        return self._mask_map(inputs_embeds, valid, cache, position_ids)
