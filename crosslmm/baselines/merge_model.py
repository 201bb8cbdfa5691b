"""The merge baseline's model: ToMe's proportional attention in the LLM's self-attention.

ToMe (Bolya et al., ICLR 2023, Sec. 3, "Proportional attention") lets a token that holds s patches weigh as
s tokens in every attention it is a key of,

    A = softmax(q k^T / sqrt(d) + log s),

s the key's size: one key with bias log s gets exactly the weight of s identical keys. Here the merged
tokens are read by the decoder, so every decoder self-attention layer adds log s_j at the key position j of
each visual token (text tokens and unmerged visual tokens: s = 1, bias 0), at the prompt and at every
cached decoding step. The bias travels in the attention mask, a float (B, 1, L, S) mask that eager and SDPA
attention add to the logits, so the stock HF decoder runs unpatched; flash-attention takes no such mask and
is refused. The cache keeps each position's log s (``MergeCache.key_log_size``), so decoding steps see the
cached visual keys with their bias.

Built when ``visual_reducer="merge"`` (``crosslmm.baselines.decoder_model_class``); same modules and weight
names as ``CrossLMMModel``. ``merge_proportional_attention=False`` runs the plain decoder loop (the merged
tokens then weigh as one token each).
"""

from __future__ import annotations

import torch
from transformers.masking_utils import create_causal_mask

from crosslmm.model.cache import CrossLMMCache
from crosslmm.model.layout import VisualLayout
from crosslmm.model.modeling import CrossLMMModel

BIAS_KERNELS = ("eager", "sdpa")  # attention implementations that add a float mask to the logits


class MergeCache(CrossLMMCache):
    """A ``CrossLMMCache`` that also keeps ``key_log_size`` (B, S), float32: log of the patches each cached
    position stands for (0 at text and unmerged tokens), the key bias of later decoding steps."""

    sample_state = ("key_log_size",)


class MergeModel(CrossLMMModel):
    """``CrossLMMModel`` whose decoder attends to each merged visual token in proportion to its size."""

    cache_class = MergeCache

    def __init__(self, config):
        super().__init__(config)
        self.proportional_attention = config.merge_proportional_attention
        if self.proportional_attention:
            self._check_attention()

    def _check_attention(self) -> None:
        """Refuse what would drop or misplace the bias: kernels without float masks, sliding-window layers."""
        kernel = self.language_model.config._attn_implementation
        if kernel not in BIAS_KERNELS:
            raise ValueError(
                f"merge_proportional_attention adds log(size) to the attention logits through a float mask, "
                f"which {kernel!r} attention does not take: use attn_implementation 'sdpa' or 'eager', or set "
                "merge_proportional_attention=False"
            )
        if "sliding_attention" in self.layer_types:
            raise ValueError(
                "merge_proportional_attention is not implemented for sliding-window decoder layers: "
                "set merge_proportional_attention=False"
            )

    def encode_video_with_sizes(
        self,
        frames: torch.Tensor,
        tokens_per_frame: int | None = None,
        frame_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """As ``CrossLMMModel.encode_video``, plus the merged tokens' sizes (F, k) (``ToMeMerge.merge``),
        merging where the projector pools (before or after its layers)."""
        original = self.encode_frames(frames)  # (F, N, Dv)
        projector = self.projector
        if projector.pool_first:
            merged, sizes = projector.reducer.merge(original)
            return projector.project(merged), projector.memory(original), sizes
        projected = projector.project(original)  # (F, N, D)
        merged, sizes = projector.reducer.merge(projected)
        return merged, projector.memory(original, projected), sizes

    def _run_decoder(
        self, inputs_embeds, attention_mask, position_ids, cache, use_cache, layout, memory, past, **kwargs
    ) -> torch.Tensor:
        """The stock decoder loop with every layer's mask carrying log(size) at the keys (prompt and cache)."""
        if not self.proportional_attention:
            return super()._run_decoder(
                inputs_embeds, attention_mask, position_ids, cache, use_cache, layout, memory, past, **kwargs
            )
        self._check_attention()  # again: the kernel may have been switched after construction
        if isinstance(attention_mask, dict):
            raise ValueError(
                "merge_proportional_attention builds its own masks: pass a 2D attention_mask, not a dict"
            )
        if cache is not None and not isinstance(cache, MergeCache):
            raise TypeError(
                "merge_proportional_attention keeps the cached tokens' sizes in a MergeCache "
                f"(model.model.cache_class), got {type(cache).__name__}"
            )
        if position_ids is None:
            length = inputs_embeds.shape[1]
            position_ids = torch.arange(past, past + length, device=inputs_embeds.device)[None]  # (1, L)
        key_log_size = self._key_log_size(inputs_embeds, layout, cache, past)  # (B, past + L)
        mask = create_causal_mask(
            config=self.language_model.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
            allow_is_causal_skip=False,  # always a mask (SDPA's is_causal path would have no bias)
        )  # (B, 1, L, past + L): bool (SDPA, True = attend) or float (eager, 0 / min)
        if mask.dtype == torch.bool:
            zero = torch.zeros((), dtype=inputs_embeds.dtype, device=mask.device)
            mask = torch.where(mask, zero, torch.finfo(inputs_embeds.dtype).min)
        mask = mask + key_log_size[:, None, None, :].to(mask.device, mask.dtype)
        hidden = super()._run_decoder(
            inputs_embeds,
            {"full_attention": mask},
            position_ids,
            cache,
            use_cache,
            layout,
            memory,
            past,
            **kwargs,
        )
        if cache is not None:
            cache.key_log_size = key_log_size  # the layers have cached these positions' keys
        return hidden

    def _key_log_size(
        self, inputs_embeds: torch.Tensor, layout: VisualLayout | None, cache: MergeCache | None, past: int
    ) -> torch.Tensor:
        """(B, past + L) float32: the cached positions' log sizes, then this input's (log s at its merged
        visual tokens, 0 elsewhere)."""
        batch, length = inputs_embeds.shape[:2]
        new = torch.zeros(batch * length, device=inputs_embeds.device)
        if layout is not None and layout.token_sizes is not None:
            positions = layout.video_positions.to(new.device)
            new[positions] = layout.token_sizes.to(new.device, torch.float32).log()
        new = new.view(batch, length)
        if not past:
            return new
        cached = cache.key_log_size if cache is not None else None
        if cached is None or cached.shape[1] < past:
            raise ValueError(
                f"the cache holds {past} positions but the sizes of only "
                f"{0 if cached is None else cached.shape[1]}: continue a cache with the model that filled it"
            )
        return torch.cat([cached[:, :past].to(new.device), new], dim=1)  # a cropped cache keeps its first
