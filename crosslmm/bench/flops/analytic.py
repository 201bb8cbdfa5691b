"""Analytic prefill FLOPs of CrossLMM, of full-token baselines, and under the paper's own counting convention.

Two conventions, kept apart on purpose:

``prefill_flops`` / ``full_token_baseline_flops`` count what our model computes for one sample's prefill:
2 FLOPs per multiply-add; every matmul, including the attention scores (QK^T) and the weighted sum (AV);
causal self-attention counted as the full S x S score matrix, which is what eager and SDPA kernels
compute and what ``torch.utils.flop_counter.FlopCounterMode`` reports; norms, activations, softmax,
rotary embeddings, pooling and bias additions are ignored, as ``FlopCounterMode`` ignores them. So these
numbers can be checked against a counted forward pass.

``paper_convention_flops`` is the count that reproduces the paper's efficiency numbers (Fig. 4 /
Table 6; docs/paper.md section 5): multiply-adds, no decoder attention scores, no LM head, one K/V projection
per cross-attention layer. Only use it to compare with the published TFLOPs.

The prompt is assumed to be laid out as ``[prefix text][T x tokens_per_frame pooled video][text]``: T2V
queries are the text after the video (text before it sees no frames), V2V queries the pooled tokens.
Token-reduction baselines (``visual_reducer``, docs/baselines.md): random/salient/merge put
``tokens_per_frame`` tokens per frame in the sequence like pooling, and their own cost (a sort, a few
similarity matrices) is ignored like pooling's, except the tower work salient's ranking adds
(``salient_ranking_flops``: layers up to ``salient_layer``, its attention recomputed); FastV runs layers <
``fastv_layer`` over every patch and the later layers over ``fastv_keep`` visual tokens per frame
(``decoder_tokens_per_layer``), as a pruning implementation computes (ours masks instead, see
``crosslmm.baselines.fastv``; its one-row ranking is ignored).
The configs are duck-typed: anything with ``CrossLMMConfig``'s fields and ``resolved_cross_layers()``.
Layer shapes are read from them in ``shapes.py``; the sweep of ``crosslmm bench flops`` is ``report.py``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from crosslmm.bench.flops.shapes import DecoderShape, ViTShape, grid_tokens, linear_flops
from crosslmm.paper import FIG4_CROSSLMM, TABLE6_CROSSLMM_2B

# Published TFLOPs at 32/64/128/256 frames. 7B: Fig. 4 (tokens per frame not stated; 9 fits).
# 2B: Table 6 (tokens per frame not stated; only 1 fits, see paper_convention_flops).
PAPER_TFLOPS: dict[str, dict[int, float]] = {
    "7b": FIG4_CROSSLMM.tflops,
    "2b": TABLE6_CROSSLMM_2B.tflops,
}


@dataclass(frozen=True)
class FlopsBreakdown:
    """FLOPs per component for one sample (multiply-adds instead, from ``paper_convention_flops``)."""

    vision: int
    projector: int
    llm_dense: int  # q/k/v/o projections and SwiGLU MLPs of the decoder layers
    llm_attention: int  # QK^T and AV of decoder self-attention
    lm_head: int
    cross_attention: int  # every DCAL: K/V, Q/O projections, scores, optional gated MLP

    @property
    def llm(self) -> int:
        return self.llm_dense + self.llm_attention

    @property
    def llm_side(self) -> int:
        """Work on the decoder's sequence (layers plus cross-attention): what pooling and DCALs trade off."""
        return self.llm + self.cross_attention

    @property
    def total(self) -> int:
        return self.vision + self.projector + self.llm + self.lm_head + self.cross_attention

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "llm": self.llm, "llm_side": self.llm_side, "total": self.total}


def vision_tower_flops(vision_config: Any, num_frames: int, vision_feature_layer: int = -1) -> int:
    """ViT on each frame independently: patch-embedding conv, then attention (scores included) and MLP
    for the layers up to ``vision_feature_layer`` only, as our towers stop there."""
    vit = ViTShape.from_config(vision_config)
    embed = linear_flops(vit.grid, vit.patch_inputs, vit.width)
    return num_frames * (embed + vit.layers_run(vision_feature_layer) * _vit_layer_flops(vit))


def salient_ranking_flops(config: Any, num_frames: int) -> int:
    """What the salient reducer adds to the tower (``visual_reducer="salient"``, else 0): the layers past the
    feature layer up to ``salient_layer``, and that layer's attention recomputed for the ranking (Q and K
    projections, QK^T), as ``VisionTower.tokens_and_attention`` runs them."""
    if getattr(config, "visual_reducer", "pool") != "salient":
        return 0
    vit = ViTShape.from_config(config.vision_config)
    seq = vit.grid + vit.class_tokens
    layer = (-1 if config.salient_layer is None else config.salient_layer) % vit.layers
    extra_layers = max(0, layer + 1 - vit.layers_run(config.vision_feature_layer))
    ranking = 2 * linear_flops(seq, vit.width, vit.width) + 2 * seq * seq * vit.width
    return num_frames * (extra_layers * _vit_layer_flops(vit) + ranking)


def _vit_layer_flops(vit: ViTShape) -> int:
    seq = vit.grid + vit.class_tokens
    per_layer = 4 * linear_flops(seq, vit.width, vit.width) + 2 * linear_flops(seq, vit.width, vit.mlp)
    return per_layer + 2 * 2 * seq * seq * vit.width


def _projector_flops(config: Any, tokens: int) -> int:
    vision_dim, text_dim = ViTShape.from_config(config.vision_config).width, config.text_config.hidden_size
    if config.projector_type == "linear":
        return linear_flops(tokens, vision_dim, text_dim)
    if config.projector_type == "mlp2x_gelu":
        return linear_flops(tokens, vision_dim, text_dim) + linear_flops(tokens, text_dim, text_dim)
    raise ValueError(f"unknown projector_type {config.projector_type!r}; expected mlp2x_gelu or linear")


def _projected_tokens(config: Any, num_frames: int) -> int:
    """Tokens through the projector: pooled ones before it, all originals after it, plus all originals
    once more when they feed the DCALs' keys/values through the projector."""
    originals = num_frames * grid_tokens(config.vision_config)
    if config.pooling_position == "after_projector":
        return originals
    pooled = num_frames * config.tokens_per_frame
    projected_memory = config.cross_attention_kv_source == "projector" and config.resolved_cross_layers()
    return pooled + (originals if projected_memory else 0)


def _memory_dim(config: Any) -> int:
    if config.cross_attention_kv_source == "projector":
        return config.text_config.hidden_size
    return ViTShape.from_config(config.vision_config).width


def cross_attention_flops(config: Any, num_frames: int, text_tokens: int) -> int:
    """All DCALs of one sample's prefill, as ``DualCrossAttentionLayer`` computes them.

    V2V and T2V each project keys/values from all T*N originals; V2V's T*s^2 queries see their own frame's
    N originals (scope "frame") or all T*N ("video"); T2V's ``text_tokens`` queries see all T*N. The
    optional gated MLP runs once per DCAL on the positions those blocks updated, as the model applies it
    (not on the text before the video).
    Without frames the model skips the DCALs entirely.
    """
    if not num_frames:
        return 0
    dec = DecoderShape.from_config(config.text_config)
    grid = grid_tokens(config.vision_config)
    originals, pooled = num_frames * grid, num_frames * config.tokens_per_frame
    blocks = []  # (queries, keys per query)
    if config.v2v:
        blocks.append((pooled, grid if config.v2v_scope == "frame" else originals))
    if config.t2v and text_tokens:
        blocks.append((text_tokens, originals))
    per_layer = 0
    for queries, keys in blocks:
        per_layer += 2 * linear_flops(originals, _memory_dim(config), dec.kv_dim)
        per_layer += linear_flops(queries, dec.hidden, dec.q_dim) + linear_flops(
            queries, dec.q_dim, dec.hidden
        )
        per_layer += dec.scores(queries, keys)
    if config.cross_attention_mlp:  # only where a cross-attention updated: pooled (V2V), text (T2V)
        per_layer += dec.swiglu(sum(queries for queries, _ in blocks))
    return len(config.resolved_cross_layers()) * per_layer


def decoder_tokens_per_layer(
    config: Any, num_frames: int, text_tokens: int, *, prefix_tokens: int = 0
) -> list[int]:
    """Positions each decoder layer processes in one sample's prefill (the LLM sequence length; for FastV
    the later layers' is shorter by the visual tokens it drops)."""
    dec = DecoderShape.from_config(config.text_config)
    seq = prefix_tokens + num_frames * config.tokens_per_frame + text_tokens
    if getattr(config, "visual_reducer", "pool") != "fastv":
        return [seq] * dec.layers
    pruned = seq - num_frames * (config.tokens_per_frame - config.fastv_keep)
    return [seq] * config.fastv_layer + [pruned] * (dec.layers - config.fastv_layer)


def _decoder_dense(config: Any, tokens_per_layer: list[int]) -> int:
    one_layer = replace(DecoderShape.from_config(config.text_config), layers=1)
    return sum(one_layer.dense(tokens) for tokens in tokens_per_layer)


def _decoder_breakdown(
    config: Any, tokens_per_layer: list[int], lm_head_all_positions: bool
) -> tuple[int, int, int]:
    dec = DecoderShape.from_config(config.text_config)
    head_positions = tokens_per_layer[-1] if lm_head_all_positions else 1
    return (
        _decoder_dense(config, tokens_per_layer),
        sum(dec.scores(tokens, tokens) for tokens in tokens_per_layer),
        linear_flops(head_positions, dec.hidden, dec.vocab),
    )


def at_budget(config: Any, tokens_per_frame: int) -> Any:
    """``config`` answering at ``tokens_per_frame`` (an elastic model's budget): the counters read the budget
    from the config, the model from its inputs. A shallow copy; ``config`` is unchanged."""
    variant = copy.copy(config)
    variant.tokens_per_frame = tokens_per_frame
    return variant


def prefill_flops(
    config: Any,
    num_frames: int,
    text_tokens: int,
    *,
    prefix_tokens: int = 0,
    lm_head_all_positions: bool = False,
) -> FlopsBreakdown:
    """CrossLMM prefill of one sample: T frames pooled to ``tokens_per_frame`` each, ``text_tokens`` after
    the video (the T2V queries) and ``prefix_tokens`` before it. The LM head runs on the last position
    only (generation) unless ``lm_head_all_positions`` (training / scoring)."""
    per_layer = decoder_tokens_per_layer(config, num_frames, text_tokens, prefix_tokens=prefix_tokens)
    llm_dense, llm_attention, lm_head = _decoder_breakdown(config, per_layer, lm_head_all_positions)
    return FlopsBreakdown(
        vision=vision_tower_flops(config.vision_config, num_frames, config.vision_feature_layer)
        + salient_ranking_flops(config, num_frames),
        projector=_projector_flops(config, _projected_tokens(config, num_frames)),
        llm_dense=llm_dense,
        llm_attention=llm_attention,
        lm_head=lm_head,
        cross_attention=cross_attention_flops(config, num_frames, text_tokens),
    )


def full_token_baseline_flops(
    config: Any,
    num_frames: int,
    text_tokens: int,
    *,
    tokens_per_frame: int | None = None,
    prefix_tokens: int = 0,
    lm_head_all_positions: bool = False,
) -> FlopsBreakdown:
    """The same vision tower and LLM as a LLaVA-style model without cross-attention, feeding
    ``tokens_per_frame`` tokens per frame to the LLM (default: all N patches; LLaVA-Video uses 169,
    LLaVA-OneVision 196). The projector runs on all N patches, which such models pool afterwards."""
    per_frame = grid_tokens(config.vision_config) if tokens_per_frame is None else tokens_per_frame
    seq = prefix_tokens + num_frames * per_frame + text_tokens
    layers = config.text_config.num_hidden_layers
    llm_dense, llm_attention, lm_head = _decoder_breakdown(config, [seq] * layers, lm_head_all_positions)
    return FlopsBreakdown(
        vision=vision_tower_flops(config.vision_config, num_frames, config.vision_feature_layer),
        projector=_projector_flops(config, num_frames * grid_tokens(config.vision_config)),
        llm_dense=llm_dense,
        llm_attention=llm_attention,
        lm_head=lm_head,
        cross_attention=0,
    )


def paper_convention_flops(
    config: Any, num_frames: int, text_tokens: int = 70, *, kv_sets: int = 1
) -> FlopsBreakdown:
    """The paper's "FLOPs", reconstructed: multiply-adds (values are half of ours), counting the vision
    tower with its attention scores, the projector on the tokens it projects, the decoder's dense layers
    per token (no attention scores, no LM head), and per DCAL only ``kv_sets`` K/V projections of all T*N
    originals (GQA width, from raw encoder features unless ``cross_attention_kv_source="projector"``).

    Fit to the published CrossLMM-7B column (9 tokens per frame, 70 text tokens): kv_sets=1 gives
    +0.20 / +0.06 / -0.03 / -0.04 % at 32 / 64 / 128 / 256 frames. The published numbers are affine in T
    to within rounding (398.44 GMAC per frame + 0.42 TMAC), which rules out anything quadratic in T
    (decoder attention scores, video-scope V2V). The K/V term (6.0 GMAC per frame) decides the fit: 0 sets
    undershoot by 1.3-1.6 %, 2 sets (one per V2V/T2V block, as our model computes) overshoot by 1.5-1.7 %,
    originals projected through the MLP first overshoot by 6 %. The DCALs' Q/O projections and scores are
    not needed: frame-scope V2V scores (0.33 GMAC per frame) sit inside the rounding of the published
    numbers; V2V Q/O (1.6 GMAC per frame) and T2V scores (2.6 GMAC per frame at 70 text tokens) push the
    slope above the published one. The 2B column (Table 6) fits the same count only at 1 token per frame
    (-0.35 %); at 9 tokens it is 2.7 % too high.
    """
    vision_config = config.vision_config
    dec = DecoderShape.from_config(config.text_config)
    originals = num_frames * grid_tokens(vision_config)
    kv_projection = 2 * linear_flops(originals, _memory_dim(config), dec.kv_dim)
    flops = FlopsBreakdown(
        vision=vision_tower_flops(vision_config, num_frames, config.vision_feature_layer),
        projector=_projector_flops(config, _projected_tokens(config, num_frames)),
        llm_dense=_decoder_dense(config, decoder_tokens_per_layer(config, num_frames, text_tokens)),
        llm_attention=0,
        lm_head=0,
        cross_attention=len(config.resolved_cross_layers()) * kv_sets * kv_projection,
    )
    return FlopsBreakdown(**{name: value // 2 for name, value in asdict(flops).items()})


def flop_counter() -> FlopCounterMode:
    """A ``FlopCounterMode`` that also counts SDPA on CPU.

    torch registers formulas for the CUDA SDPA kernels only, so on CPU the attention scores of
    ``F.scaled_dot_product_attention`` (HF "sdpa" models, our cross-attention) silently count as zero.
    Still uncounted: ``nn.MultiheadAttention``'s inference fast path (open_clip towers under ``no_grad``);
    disable it with ``torch.backends.mha.set_fastpath_enabled(False)`` while counting.
    """
    cpu_sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return FlopCounterMode(display=False, custom_mapping={cpu_sdpa: _sdpa_formula})


def _sdpa_formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)
