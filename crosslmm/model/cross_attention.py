"""Gated cross-attention from sequence tokens to the original (unpooled) visual tokens.

One block type serves V2V (queries: pooled video tokens) and T2V (queries: text tokens) on Qwen2 and
Llama alike; head counts, GQA and norm epsilon come from the backbone's text config. A
``DualCrossAttentionLayer`` runs V2V and T2V in parallel on the same input after one decoder layer.
Gates are ``tanh(gate)`` with ``gate = 0`` at init, so a fresh layer is the identity.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from crosslmm.model.cache import CrossLMMCache
from crosslmm.model.layout import VisualLayout


class CrossAttention(nn.Module):
    """Pre-norm GQA cross-attention whose keys/values come from visual memory of width ``memory_dim``."""

    def __init__(self, text_config: PretrainedConfig, memory_dim: int):
        super().__init__()
        hidden = text_config.hidden_size
        self.num_heads = text_config.num_attention_heads
        self.num_kv_heads = getattr(text_config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(text_config, "head_dim", None) or hidden // self.num_heads
        self.query_norm = nn.RMSNorm(hidden, eps=text_config.rms_norm_eps)
        self.memory_norm = nn.LayerNorm(memory_dim)
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(memory_dim, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(memory_dim, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.gate = nn.Parameter(torch.zeros(1))
        self.captured: list[torch.Tensor] | None = None  # set only inside capture_attention()

    def project_memory(
        self, memory: torch.Tensor, vision_chunk_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (F, N, Dm) -> keys, values (F, N, KVH, head_dim), ``vision_chunk_size`` frames at a time
        (the chunk the vision tower runs in) so the normalised memory never exists for all frames at once."""
        num_frames, n, _ = memory.shape
        k = v = None
        for start in range(0, num_frames, vision_chunk_size):
            normed = self.memory_norm(memory[start : start + vision_chunk_size])
            k_chunk, v_chunk = self.k_proj(normed), self.v_proj(normed)
            if num_frames <= vision_chunk_size:
                k, v = k_chunk, v_chunk
                break
            if k is None:
                k, v = (
                    k_chunk.new_empty((num_frames, *k_chunk.shape[1:])),
                    v_chunk.new_empty((num_frames, *v_chunk.shape[1:])),
                )
            k[start : start + vision_chunk_size] = k_chunk
            v[start : start + vision_chunk_size] = v_chunk
        shape = (num_frames, n, self.num_kv_heads, self.head_dim)
        return k.view(shape), v.view(shape)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """queries (G, Lq, D) over keys/values (G, KVH, M, hd) -> gated update (G, Lq, D).

        The gate is read here, inside the module's ``forward``, so ZeRO-3's pre-forward hook gathers it."""
        groups, length, _ = queries.shape
        q = self.q_proj(self.query_norm(queries)).view(groups, length, self.num_heads, self.head_dim)
        q = q.transpose(1, 2)
        if self.captured is None:  # the fast path, untouched by capture
            out = F.scaled_dot_product_attention(q, keys, values, enable_gqa=True)
        else:
            weights = self.attention_weights(q, keys)
            self.captured.append(weights)
            out = weights.to(values.dtype) @ self._per_head(values)
        out = self.o_proj(out.transpose(1, 2).reshape(groups, length, -1))
        return torch.tanh(self.gate).to(out.dtype) * out

    def _per_head(self, kv: torch.Tensor) -> torch.Tensor:
        """(G, KVH, M, hd) -> (G, H, M, hd): each key/value head repeated for its query heads, as SDPA's GQA."""
        return kv.repeat_interleave(self.num_heads // self.num_kv_heads, 1)

    def attention_weights(self, q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Projected queries (G, H, Lq, hd) over keys (G, KVH, M, hd) -> fp32 softmax weights (G, H, Lq, M),
        what SDPA computes without materialising."""
        scores = (q @ self._per_head(keys).transpose(2, 3)).float() * self.head_dim**-0.5
        return scores.softmax(-1)

    def frame_attention_mass(
        self, queries: torch.Tensor, keys: torch.Tensor, patches_per_frame: int
    ) -> torch.Tensor:
        """queries (Lq, D) over keys (1, KVH, F * N, hd) -> (F,) softmax attention mass per frame, averaged
        over heads and queries: scores (H, Lq, F * N), so give it a few queries (bounded decode gives one)."""
        q = self.q_proj(self.query_norm(queries)).view(1, -1, self.num_heads, self.head_dim).transpose(1, 2)
        weights = self.attention_weights(q, keys)[0]  # (H, Lq, F * N)
        return weights.unflatten(-1, (-1, patches_per_frame)).sum(-1).mean((0, 1))


class GatedMLP(nn.Module):
    """Optional SwiGLU feed-forward after the cross-attentions, gated like HF mllama's."""

    def __init__(self, text_config: PretrainedConfig):
        super().__init__()
        hidden, inner = text_config.hidden_size, text_config.intermediate_size
        self.norm = nn.RMSNorm(hidden, eps=text_config.rms_norm_eps)
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (n, D) -> gated update (n, D), to be added to the residual stream by the caller."""
        x = self.norm(hidden)
        return torch.tanh(self.gate).to(x.dtype) * self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[dict[tuple[str, int], list[torch.Tensor]]]:
    """Record the cross-attention weights of ``model``'s forward passes inside the ``with`` block.

    Yields ``{("v2v" | "t2v", layer): [weights (G, H, Lq, M), one per call in call order]}``; inside the
    block those calls compute the softmax in eager form (same output up to rounding), outside it they stay
    on SDPA. The record lives on this model's blocks only while the block runs: no global state."""
    records: dict[tuple[str, int], list[torch.Tensor]] = {}
    blocks = [
        (kind, layer.layer_idx, block)
        for layer in model.modules()
        if isinstance(layer, DualCrossAttentionLayer)
        for kind, block in (("v2v", layer.v2v), ("t2v", layer.t2v))
        if block is not None
    ]
    try:
        for kind, layer_idx, block in blocks:
            block.captured = records.setdefault((kind, layer_idx), [])
        yield records
    finally:
        for _, _, block in blocks:
            block.captured = None


def _per_sample(kv: torch.Tensor, layout: VisualLayout) -> list[torch.Tensor]:
    """(F_total, N, KVH, hd) -> per sample (1, KVH, F_b * N, hd), frames in time order; views, no copies."""
    _, n, heads, dim = kv.shape
    return [
        kv[off : off + count].view(1, count * n, heads, dim).transpose(1, 2)
        for off, count in zip(layout.frame_offsets.tolist(), layout.frame_counts.tolist())
    ]


def _rows(padded: torch.Tensor) -> list[torch.Tensor]:
    """(B, KVH, M, hd) cached keys or values -> per sample (1, KVH, M, hd) views (padding included)."""
    return list(padded.split(1))


def _pad_batch(per_sample: list[torch.Tensor]) -> torch.Tensor:
    """Pad per-sample (1, KVH, M_b, hd) to (B, KVH, M_max, hd) for the cache; one sample is kept as is."""
    if len(per_sample) == 1:
        return per_sample[0]
    longest = max(t.shape[2] for t in per_sample)
    return torch.cat([F.pad(t, (0, 0, 0, longest - t.shape[2])) for t in per_sample])


class DualCrossAttentionLayer(GradientCheckpointingLayer):
    """V2V and T2V cross-attention (either may be off) plus an optional gated MLP, after one decoder layer.

    This is the paper's DCAL (dual cross-attention layer); the docs and benchmarks call it by that name."""

    def __init__(self, config, layer_idx: int, memory_dim: int):
        super().__init__()
        text_config = config.text_config
        self.layer_idx = layer_idx
        self.v2v_scope = config.v2v_scope
        self.vision_chunk_size = config.vision_chunk_size
        self.decode_memory, self.decode_frames = config.decode_memory, config.decode_frames
        self.v2v = CrossAttention(text_config, memory_dim) if config.v2v else None
        self.t2v = CrossAttention(text_config, memory_dim) if config.t2v else None
        self.mlp = GatedMLP(text_config) if config.cross_attention_mlp else None

    def forward(
        self,
        hidden: torch.Tensor,
        layout: VisualLayout,
        memory: torch.Tensor | None,
        cache: CrossLMMCache | None = None,
    ) -> torch.Tensor:
        """hidden (B, L, D); memory (F_total, N, Dm) original tokens at prefill, None when decoding.

        Updates are cast to the residual stream's dtype before they are added: under bf16 autocast the
        blocks compute in bf16 while the stream stays fp32. The MLP runs only on the positions a
        cross-attention updated (as mllama masks text rows without images), so a row without a visible
        video is the base decoder's whatever it is batched with.
        """
        batch, length, dim = hidden.shape
        flat = hidden.reshape(batch * length, dim)
        out, updated = flat, []
        if self.v2v is not None and memory is not None and layout.video_positions.numel():
            out = out.index_add(0, layout.video_positions, self._v2v(flat, layout, memory).to(flat.dtype))
            updated.append(layout.video_positions)
        if self.t2v is not None and (layout.text_groups or (memory is not None and cache is not None)):
            step = memory is None and length == 1  # a generation step, not a prompt: may use the selection
            keys, values, patches_per_frame, kept = self._t2v_memory(layout, memory, cache, step)
            if (
                kept is None
                and cache is not None
                and self._decode_frames(cache)
                and not layout.appends_frames
            ):
                self._select_frames(flat, layout, keys, values, patches_per_frame, cache, memory is not None)
            if layout.text_groups:
                positions, update = self._t2v(flat, layout, keys, values, patches_per_frame, kept)
                out = out.index_add(0, positions, update.to(flat.dtype))
                updated.append(positions)
        if self.mlp is not None and updated:
            positions = torch.cat(updated)
            out = out.index_add(0, positions, self.mlp(out[positions]).to(flat.dtype))
        return out.view(batch, length, dim)

    def _v2v(self, flat: torch.Tensor, layout: VisualLayout, memory: torch.Tensor) -> torch.Tensor:
        """Update for the pooled video tokens, (F_total * tokens_per_frame, D); the layout holds this
        input's budget (tokens per frame), so one model serves every trained budget."""
        queries = flat[layout.video_positions]
        per_frame = layout.tokens_per_frame
        if self.v2v_scope == "frame":  # frames are the batch: no mask; chunks bound the K/V held at once
            queries = queries.view(memory.shape[0], per_frame, -1)
            updates = []
            for start in range(0, memory.shape[0], self.vision_chunk_size):
                chunk = slice(start, start + self.vision_chunk_size)
                keys, values = self.v2v.project_memory(memory[chunk], self.vision_chunk_size)
                updates.append(self.v2v(queries[chunk], keys.transpose(1, 2), values.transpose(1, 2)))
            return torch.cat(updates).flatten(0, 1)
        keys, values = self.v2v.project_memory(memory, self.vision_chunk_size)
        per_sample_k, per_sample_v = _per_sample(keys, layout), _per_sample(values, layout)
        updates, start = [], 0
        for b, n in enumerate(layout.frame_counts.tolist()):
            if n:
                q = queries[start : start + n * per_frame]
                updates.append(self.v2v(q[None], per_sample_k[b], per_sample_v[b])[0])
                start += q.shape[0]
        return torch.cat(updates)

    def _t2v_memory(
        self, layout: VisualLayout, memory: torch.Tensor | None, cache: CrossLMMCache | None, step: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], int, list[int] | None]:
        """Per-sample T2V keys/values (1, KVH, M_b, hd), ``patches_per_frame`` (original tokens per frame)
        and, when they are a bounded-decode selection, the frames each sample keeps (else None).

        At prefill they are projected from ``memory`` and stored in ``cache`` (even when no prompt text
        follows a video: the generated tokens will need them); when decoding they come from the cache: a
        generation ``step`` reads the selected frames if this layer has a selection, anything else the
        full memory (the selection only when a one-shot prefill has dropped the full memory).
        """
        if memory is not None:
            keys, values = self.t2v.project_memory(memory, self.vision_chunk_size)
            per_sample_k, per_sample_v = _per_sample(keys, layout), _per_sample(values, layout)
            if layout.appends_frames:  # new frames of one sample: append, then attend over every frame so far
                cache.append_cross(self.layer_idx, per_sample_k[0], per_sample_v[0])
                all_k, all_v = cache.cross_kv[self.layer_idx]
                return [all_k], [all_v], memory.shape[1], None
            if cache is not None:
                cache.store_cross(self.layer_idx, _pad_batch(per_sample_k), _pad_batch(per_sample_v))
            return per_sample_k, per_sample_v, memory.shape[1], None
        has_full = cache is not None and self.layer_idx in cache.cross_kv
        if cache is not None and self.layer_idx in cache.selected_kv and (step or not has_full):
            sel_k, sel_v, kept = cache.selected_kv[self.layer_idx]
            return _rows(sel_k), _rows(sel_v), cache.patches_per_frame, kept.tolist()
        if not has_full:
            raise RuntimeError(
                "T2V on decoded tokens needs the cross-attention keys/values cached at prefill"
            )
        padded_k, padded_v = cache.cross_kv[self.layer_idx]
        return _rows(padded_k), _rows(padded_v), cache.patches_per_frame, None

    def _decode_frames(self, cache: CrossLMMCache) -> int | None:
        """Frames a generated token's T2V keeps per sample (None: all, exact); the cache's setting wins."""
        mode = cache.decode_memory or self.decode_memory
        return (cache.decode_frames or self.decode_frames) if mode == "topk_frames" else None

    def _select_frames(
        self,
        flat: torch.Tensor,
        layout: VisualLayout,
        per_sample_k: list[torch.Tensor],
        per_sample_v: list[torch.Tensor],
        patches_per_frame: int,
        cache: CrossLMMCache,
        one_shot: bool,
    ) -> None:
        """Bounded decode: keep per sample the ``decode_frames`` frames with the largest T2V attention mass
        from the prompt's last token (the position that predicts the first answer token, so the query most
        like the generated tokens'; on the demo it finds the marker frames far better than the whole question,
        docs/streaming.md), in time order, for the generation steps. One query: the ranking costs a T2V
        step's scores, nothing next to the prefill. Frames that token cannot see rank above all seen ones,
        newest first; a sample with no text after its video keeps its newest frames."""
        m = self._decode_frames(cache)
        last_group = {}
        for group in layout.text_groups:  # groups come in position order within a sample
            last_group[group.sample] = group  # its last position is the sample's last text token
        kept_k, kept_v, kept = [], [], []
        for b, count in enumerate(cache.frame_counts.tolist()):
            k = per_sample_k[b][:, :, : count * patches_per_frame].unflatten(2, (count, patches_per_frame))
            v = per_sample_v[b][:, :, : count * patches_per_frame].unflatten(2, (count, patches_per_frame))
            score = torch.arange(1, count + 1, dtype=torch.float32, device=k.device)  # recency, >= 1
            group = last_group.get(b)
            if group is not None:
                seen = group.visible_frames
                mass = self.t2v.frame_attention_mass(
                    flat[group.positions[-1:]],
                    per_sample_k[b][:, :, : seen * patches_per_frame],
                    patches_per_frame,
                )
                score[:seen] = mass - 2  # in [-2, -1]: below every unseen frame
            chosen = score.topk(min(m, count)).indices.sort().values  # (m,) frame indices, time order
            kept_k.append(k[:, :, chosen].flatten(2, 3))
            kept_v.append(v[:, :, chosen].flatten(2, 3))
            kept.append(len(chosen))
        cache.store_selection(
            self.layer_idx,
            _pad_batch(kept_k),
            _pad_batch(kept_v),
            torch.tensor(kept, device=cache.frame_counts.device),
            drop_full=one_shot,
        )

    def _t2v(
        self,
        flat: torch.Tensor,
        layout: VisualLayout,
        per_sample_k: list[torch.Tensor],
        per_sample_v: list[torch.Tensor],
        patches_per_frame: int,
        kept: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions and updates for text tokens; each sees only the frames that precede it (of a
        selection: the ``kept`` frames of its sample, all of which precede a generated token)."""
        updates = []
        for group in layout.text_groups:
            visible = group.visible_frames if kept is None else kept[group.sample]  # a count of frames
            span = visible * patches_per_frame
            k = per_sample_k[group.sample][:, :, :span]
            v = per_sample_v[group.sample][:, :, :span]
            updates.append(self.t2v(flat[group.positions][None], k, v)[0])
        positions = torch.cat([g.positions for g in layout.text_groups])
        return positions, torch.cat(updates)
