"""Per-token decode FLOPs and cache memory: what a model costs after its prefill, per generated token and per
sample held in memory (``crosslmm compare`` tables them beside the prefill FLOPs of ``analytic.py``).

Same counting convention as ``prefill_flops``: 2 FLOPs per multiply-add, every matmul, attention scores as
the full row. One generated token, with ``cached`` positions already in the decoder's cache, costs per
decoder layer its projections and MLP on one position and a score row over ``cached + 1`` keys; then the LM
head on one position. Each cross-attention layer with T2V adds the token's query/output projections and a
score row over the T2V keys cached at prefill (every original token, or the ``decode_frames`` frames bounded
decode keeps); the optional gated MLP runs on it. V2V does nothing at decode (its queries are the pooled
video tokens, all in the prompt). FastV's later layers see ``fastv_keep`` visual tokens per frame, counted
as a pruning implementation computes (ours masks instead; see ``crosslmm.baselines.fastv``).

Cache memory: the decoder's self-attention K/V (``2 x layers x positions x kv_dim`` elements) and the
cross-attention cache (``2 x T2V layers x T x N x kv_dim``: the keys and values of every original token,
``CrossLMMCache.cross_kv``), at ``dtype_bytes`` per element (2 for bf16).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from crosslmm.bench.flops.analytic import decoder_tokens_per_layer
from crosslmm.bench.flops.shapes import DecoderShape, grid_tokens, linear_flops


def _t2v_keys(config: Any, num_frames: int) -> int:
    """Keys a generated token's T2V attends to in each cross layer (0 without T2V or frames)."""
    if not (config.t2v and num_frames and config.resolved_cross_layers()):
        return 0
    frames = num_frames
    if getattr(config, "decode_memory", "full") == "topk_frames":
        frames = min(num_frames, config.decode_frames)
    return frames * grid_tokens(config.vision_config)


def decode_flops(
    config: Any, num_frames: int, text_tokens: int, *, prefix_tokens: int = 0, generated: int = 0
) -> int:
    """FLOPs of generating one token after a prefill of ``prefix_tokens`` + video + ``text_tokens`` and
    ``generated`` tokens already generated (0: the first token after the prompt)."""
    dec = DecoderShape.from_config(config.text_config)
    one_layer = DecoderShape(**(asdict(dec) | dict(layers=1)))
    prompt = decoder_tokens_per_layer(config, num_frames, text_tokens, prefix_tokens=prefix_tokens)
    flops = sum(one_layer.dense(1) + dec.scores(1, cached + generated + 1) for cached in prompt)
    flops += linear_flops(1, dec.hidden, dec.vocab)
    keys = _t2v_keys(config, num_frames)
    if keys:
        per_layer = linear_flops(1, dec.hidden, dec.q_dim) + linear_flops(1, dec.q_dim, dec.hidden)
        per_layer += dec.scores(1, keys)
        if config.cross_attention_mlp:
            per_layer += dec.swiglu(1)
        flops += len(config.resolved_cross_layers()) * per_layer
    return flops


@dataclass(frozen=True)
class CacheBytes:
    """Bytes one sample keeps in its generation cache after the prefill."""

    decoder: int  # self-attention K/V of every decoder layer
    cross_attention: int  # T2V K/V of the original tokens, per cross layer

    @property
    def total(self) -> int:
        return self.decoder + self.cross_attention


def cache_bytes(
    config: Any, num_frames: int, text_tokens: int, *, prefix_tokens: int = 0, dtype_bytes: int = 2
) -> CacheBytes:
    """The cache of one sample right after its prefill, at ``dtype_bytes`` per element."""
    dec = DecoderShape.from_config(config.text_config)
    prompt = decoder_tokens_per_layer(config, num_frames, text_tokens, prefix_tokens=prefix_tokens)
    decoder = sum(2 * positions * dec.kv_dim for positions in prompt)
    cross = len(config.resolved_cross_layers()) * 2 * _t2v_keys(config, num_frames) * dec.kv_dim
    return CacheBytes(decoder * dtype_bytes, cross * dtype_bytes)
