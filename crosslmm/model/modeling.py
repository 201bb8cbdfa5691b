"""CrossLMM: vision tower -> per-frame pooling projector -> HF decoder with interleaved dual cross-attention.

The decoder is composed explicitly from a stock ``Qwen2Model``/``LlamaModel`` (its embeddings, layers,
rotary embedding and norm); a ``DualCrossAttentionLayer`` runs after each chosen layer. Nothing in
transformers is patched, so the LLM weights keep their HF names under ``model.language_model``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, DynamicCache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from crosslmm.baselines import decoder_model_class
from crosslmm.model.cache import CrossLMMCache
from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.connector import PoolingProjector
from crosslmm.model.cross_attention import CrossAttention, DualCrossAttentionLayer, GatedMLP
from crosslmm.model.frames import encode_frames, normalize_frames, unpad_frames
from crosslmm.model.layout import VisualLayout, decode_layout, prefill_layout, tokens_per_frame_of
from crosslmm.model.vision import build_vision_tower

IGNORE_INDEX = -100  # label of positions without a target, as in transformers' losses


def _left_padding_order(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a (B, L) mask: the index (B, L) that rotates each row so its trailing padding comes first (for
    ``gather(1, index)``), and each row's shift (B,), its trailing padded positions (0: row unchanged)."""
    length = attention_mask.shape[1]
    shift = (attention_mask.flip(1).cumsum(1) == 0).sum(1) % length  # an all-padding row stays as it is
    index = (torch.arange(length, device=shift.device)[None] - shift[:, None]) % length
    return index, shift


class CrossLMMPreTrainedModel(PreTrainedModel):
    config: CrossLMMConfig
    config_class = CrossLMMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "Qwen2DecoderLayer",
        "LlamaDecoderLayer",
        "DualCrossAttentionLayer",
        "SiglipEncoderLayer",
        "CLIPEncoderLayer",
    ]
    _skip_keys_device_placement = "cache"
    _supports_sdpa = True
    _supports_flash_attn = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CrossAttention | GatedMLP):
            init.zeros_(module.gate)
        if isinstance(module, CrossLMMModel) and module.video_end_embedding is not None:
            init.normal_(module.video_end_embedding, std=module.video_end_embedding.shape[0] ** -0.5)


class CrossLMMModel(CrossLMMPreTrainedModel):
    cache_class = CrossLMMCache  # what generation and ``use_cache`` start; a subclass may extend it
    position_inputs = ("position_ids",)  # forward inputs that index sequence positions (generate checks them)

    def __init__(self, config: CrossLMMConfig):
        super().__init__(config)
        variant = decoder_model_class(config.visual_reducer)
        if variant is not None and not isinstance(self, variant):
            raise TypeError(
                f"visual_reducer={config.visual_reducer!r} has its own model class: build {variant.__name__} "
                "(CrossLMMForCausalLM picks it from the config)"
            )
        if config.vision_config is None:
            raise ValueError("CrossLMMConfig.vision_config is required to build a model")
        if config.video_token_id is None:
            raise ValueError("CrossLMMConfig.video_token_id is required (the tokenizer's <video> token id)")
        self.vision_tower = build_vision_tower(config.vision_config, config.vision_feature_layer)
        vision_dim, text_dim = self.vision_tower.hidden_size, config.text_config.hidden_size
        self.projector = PoolingProjector(config, vision_dim, text_dim)
        self.language_model = AutoModel.from_config(config.text_config)
        memory_dim = self.projector.memory_dim
        self.cross_layers = nn.ModuleDict(
            {str(i): DualCrossAttentionLayer(config, i, memory_dim) for i in config.resolved_cross_layers()}
        )
        # One learned vector per video end marker (LLaVA-OneVision's image_newline), not a vocabulary row, so
        # it trains with the connector while the embeddings stay frozen.
        self.video_end_embedding = (
            nn.Parameter(torch.empty(text_dim)) if config.video_end_token_id is not None else None
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.embed_tokens = value

    def normalize_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (F, 3, S, S) -> fp32 frames normalised with the vision tower's mean/std."""
        return normalize_frames(frames, self.vision_tower.image_mean, self.vision_tower.image_std)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (F, 3, H, W), uint8 or normalised float -> original patch tokens (F, N, Dv), encoded
        ``vision_chunk_size`` frames at a time (:func:`crosslmm.model.frames.encode_frames`)."""
        return encode_frames(self.vision_tower, frames, self.config.vision_chunk_size)

    def encode_video(
        self,
        frames: torch.Tensor,
        tokens_per_frame: int | None = None,
        frame_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """frames (F, 3, H, W) -> pooled LLM embeddings (F, tokens_per_frame, D) and the cross-attention
        memory (F, N, Dm) of original tokens (None without cross-attention layers). ``tokens_per_frame``:
        the budget (None: the config's default); ``frame_index`` (F,): each frame's position in its video
        (None: the frames are one video), read by the random-drop baseline."""
        return self.projector(self.encode_frames(frames), tokens_per_frame, frame_index)

    def encode_video_with_sizes(
        self,
        frames: torch.Tensor,
        tokens_per_frame: int | None = None,
        frame_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """:meth:`encode_video` plus the patches each pooled token stands for, (F, k), or None from a reducer that
        keeps no sizes (pooling, selection). A merging reducer's model returns its sizes, which ``embed_video``
        puts in the layout (``VisualLayout.token_sizes``) for its decoder loop."""
        return (*self.encode_video(frames, tokens_per_frame, frame_index), None)

    def embed_video(
        self,
        input_ids: torch.LongTensor,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        pixel_values_videos: torch.Tensor,
        video_frame_counts: torch.Tensor | None,
        frames_before: int = 0,
    ) -> tuple[torch.Tensor, VisualLayout, torch.Tensor | None]:
        """Write the pooled frames into the ``<video>`` slots of ``inputs_embeds`` (B, L, D); also return the
        layout and the cross-attention memory. This is the whole visual input of the LLM sequence.
        ``frames_before``: frames already in the cache this input continues (streaming, one sample)."""
        frames, counts = unpad_frames(pixel_values_videos, video_frame_counts)
        # The budget comes from the inputs (the processor expanded each <video> for it), never from state.
        budget = tokens_per_frame_of(input_ids, counts, self.config.video_token_id)
        self.config.check_budget(budget)
        layout = prefill_layout(
            input_ids, attention_mask, counts, self.config.video_token_id, budget, frames_before
        )
        first_frame = torch.repeat_interleave(layout.frame_offsets, layout.frame_counts)  # (F,)
        frame_index = torch.arange(len(first_frame), device=first_frame.device) - first_frame + frames_before
        pooled, memory, sizes = self.encode_video_with_sizes(frames, budget, frame_index)
        if sizes is not None:
            layout.token_sizes = sizes.reshape(-1)  # the order of pooled's rows, i.e. of video_positions
        flat = inputs_embeds.reshape(-1, inputs_embeds.shape[-1])
        pooled = pooled.reshape(-1, flat.shape[-1]).to(flat.dtype)
        embeds = flat.index_copy(0, layout.video_positions, pooled).view_as(inputs_embeds)
        return embeds, layout, memory

    def embed_text(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Token embeddings, with every ``<video_end>`` slot as the learned end embedding: whether the frames
        come in the same forward or were cached before it (streaming), the slot reads the same vector."""
        embeds = self.get_input_embeddings()(input_ids)
        if self.video_end_embedding is not None:
            is_end = (input_ids == self.config.video_end_token_id).unsqueeze(-1)
            embeds = torch.where(is_end, self.video_end_embedding.to(embeds.dtype), embeds)
        return embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: CrossLMMCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_frame_counts: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_text(input_ids)
        if use_cache and cache is None:
            cache = self.cache_class(config=self.config.text_config)
        if self.cross_layers and cache is not None and not isinstance(cache, CrossLMMCache):
            raise TypeError(
                f"CrossLMM needs a CrossLMMCache to keep cross-attention keys/values, got {type(cache)}"
            )
        past = cache.get_seq_length() if cache is not None else 0
        mask_2d = (
            attention_mask if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 else None
        )

        layout, memory = None, None
        if pixel_values_videos is not None:
            if input_ids is None:
                raise ValueError("pixel_values_videos needs input_ids to locate the <video> tokens")
            frames_before = self._frames_before(cache, past, input_ids.shape[0])
            inputs_embeds, layout, memory = self.embed_video(
                input_ids, inputs_embeds, mask_2d, pixel_values_videos, video_frame_counts, frames_before
            )
            if isinstance(cache, CrossLMMCache) and memory is not None:
                cache.set_visual_memory(layout.frame_counts + frames_before, memory.shape[1])
        elif input_ids is not None and not past and bool((input_ids == self.config.video_token_id).any()):
            raise ValueError("input_ids contain <video> tokens but no pixel_values_videos were given")
        elif isinstance(cache, CrossLMMCache) and cache.has_visual_memory:
            layout = decode_layout(inputs_embeds.shape[:2], mask_2d, cache.frame_counts)

        hidden = self._run_decoder(
            inputs_embeds, attention_mask, position_ids, cache, use_cache, layout, memory, past, **kwargs
        )
        return BaseModelOutputWithPast(last_hidden_state=hidden, cache=cache if use_cache else None)

    def inputs_from_labels(self, shift_labels: torch.Tensor, attention_mask: torch.Tensor | None) -> dict:
        """Forward kwargs that a decoder variant derives from the labels, ``shift_labels`` (B, L) already
        shifted (position t predicts shift_labels[t]); none for CrossLMM (FastV: its ranking query)."""
        return {}

    def _frames_before(self, cache: CrossLMMCache | None, past: int, batch: int) -> int:
        """Frames already cached when videos come with a continuation of a cached prefix (streaming)."""
        if not past:
            return 0
        if not isinstance(cache, CrossLMMCache) or batch != 1:
            raise ValueError(
                "videos after the prompt (a streamed continuation) need a CrossLMMCache and a batch of one"
            )
        if self.config.v2v and self.config.v2v_scope == "video":
            raise ValueError("v2v_scope='video' cannot stream: a pooled token would need frames not yet seen")
        return int(cache.frame_counts[0]) if cache.has_visual_memory else 0

    def _run_decoder(
        self, inputs_embeds, attention_mask, position_ids, cache, use_cache, layout, memory, past, **kwargs
    ) -> torch.Tensor:
        """The stock decoder loop of Qwen2Model/LlamaModel with a cross-attention layer after chosen layers.

        Runs the prompt (prefill, ``memory`` given) and each generation step (``memory`` None, T2V keys and
        values from ``cache``) alike."""
        lm = self.language_model
        if position_ids is None:
            length = inputs_embeds.shape[1]
            position_ids = torch.arange(past, past + length, device=inputs_embeds.device)[None]  # (1, L)
        mask_map = attention_mask
        if not isinstance(mask_map, dict):
            mask_map = self._mask_map(inputs_embeds, attention_mask, cache, position_ids)
        hidden = inputs_embeds
        position_embeddings = lm.rotary_emb(hidden, position_ids)
        for i, decoder_layer in enumerate(lm.layers[: lm.config.num_hidden_layers]):
            hidden = decoder_layer(
                hidden,
                attention_mask=mask_map[self.layer_types[i]],
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )
            if str(i) in self.cross_layers and layout is not None:
                hidden = self.cross_layers[str(i)](hidden, layout, memory, cache)
        return lm.norm(hidden)

    @property
    def layer_types(self) -> list[str]:
        """Each decoder layer's attention type, the key of its mask in ``_mask_map``."""
        config = self.language_model.config
        return getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers

    def _mask_map(self, inputs_embeds, attention_mask, cache, position_ids) -> dict:
        """The decoder's masks per layer type, as Qwen2Model/LlamaModel build them."""
        lm = self.language_model
        mask_kwargs = dict(
            config=lm.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        mask_map = {"full_attention": create_causal_mask(**mask_kwargs)}
        if getattr(lm, "has_sliding_layers", False):
            mask_map["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
        return mask_map


class CrossLMMForCausalLM(CrossLMMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: CrossLMMConfig):
        super().__init__(config)
        # CrossLMM's model, or the subclass of a baseline that needs it (FastV's decoder, salient's tower)
        self.model = (decoder_model_class(config.visual_reducer) or CrossLMMModel)(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: CrossLMMCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_frame_counts: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """``pixel_values_videos`` (B, F_max, 3, H, W) with ``video_frame_counts`` (B,) real frames per
        sample; each sample's ``<video>`` tokens (frames x tokens_per_frame) receive its pooled frames; the
        budget is read from them (video tokens / frames, one per batch, one of ``config.trained_budgets``). Frames
        are uint8 (resized, not normalised; the model normalises them chunk by chunk) or float (normalised).

        With ``labels`` (B, L) the LM head runs only at positions whose next token has a label (position t
        predicts ``labels[t + 1]``), and ``logits`` holds just those rows, (N_labelled, V) in batch order:
        at 8k positions x 152k vocab the full logits would cost ~2.5 GB (bf16) plus ~5 GB (fp32) in the loss,
        while most positions are video or prompt. The loss is unchanged: ``loss_function`` (transformers'
        ``ForCausalLMLoss``) over the labelled tokens, a mean, or a sum divided by ``num_items_in_batch`` when
        the Trainer passes it. Without labels, logits are (B, L', V) for the last ``logits_to_keep``
        positions (0: all). ``kwargs`` go to the model (a decoder variant's own inputs) and to the loss."""
        if use_cache is None:
            use_cache = self.config.text_config.use_cache and not self.training
        shift_labels = kwargs.pop("shift_labels", None)  # (B, L) already shifted, as HF collators may give
        if labels is not None and shift_labels is None:
            shift_labels = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
        if labels is not None:
            kwargs = self.model.inputs_from_labels(shift_labels, attention_mask) | kwargs
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            pixel_values_videos=pixel_values_videos,
            video_frame_counts=video_frame_counts,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if labels is None:
            logits = self.lm_head(slice_logits_to_keep(hidden, logits_to_keep))
            return CausalLMOutputWithPast(logits=logits, cache=outputs.cache)
        scored = shift_labels != IGNORE_INDEX
        logits = self.lm_head(hidden[scored.to(hidden.device)])  # (N_labelled, V)
        loss = self.loss_function(
            logits=logits,
            labels=None,
            shift_labels=shift_labels[scored],
            vocab_size=self.config.text_config.vocab_size,
            **kwargs,
        )
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)

    def generate(self, inputs: torch.Tensor | None = None, *args, **kwargs):
        """transformers' ``generate``, with right-padded prompts moved to the left first.

        ``generate`` appends every row's next token after the batch's last position, so a right-padded row
        would be continued from its padding: a wrong answer, about which transformers only warns. Each such
        row is rotated so its padding comes first (same tokens, same mask), as the processor pads by default.
        The returned sequences hold the prompts left-padded, still ``input_ids.shape[1]`` long, so
        ``out[:, prompt_length:]`` is the answer. Per-position inputs other than the mask are refused with
        right padding rather than guessed at."""
        ids = inputs if inputs is not None else kwargs.get("input_ids")
        mask = kwargs.get("attention_mask")
        if isinstance(ids, torch.Tensor) and isinstance(mask, torch.Tensor) and ids.dim() == mask.dim() == 2:
            index, shift = _left_padding_order(mask.to(ids.device))
            if bool(shift.any()):
                positional = [k for k in self.model.position_inputs if kwargs.get(k) is not None]
                if positional:
                    raise ValueError(
                        f"a right-padded batch with {', '.join(positional)}: pad on the left (the processor's "
                        "default) so these positions are the ones generation continues from"
                    )
                ids, kwargs["attention_mask"] = ids.gather(1, index), mask.gather(1, index.to(mask.device))
                if inputs is not None:
                    inputs = ids
                else:
                    kwargs["input_ids"] = ids
        return super().generate(inputs, *args, **kwargs)

    def prepare_inputs_for_generation(
        self,
        input_ids,
        cache=None,
        pixel_values_videos=None,
        video_frame_counts=None,
        is_first_iteration=False,
        **kwargs,
    ):
        """Videos go in with the prompt only; later steps read the cached cross-attention keys/values."""
        inputs = super().prepare_inputs_for_generation(
            input_ids, cache=cache, is_first_iteration=is_first_iteration, **kwargs
        )
        if is_first_iteration or cache is None or cache.get_seq_length() == 0:
            inputs["pixel_values_videos"] = pixel_values_videos
            inputs["video_frame_counts"] = video_frame_counts
        return inputs

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """Swap generate's default DynamicCache for one that also holds the cross-attention memory."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get("cache")
        if type(cache) is DynamicCache:
            model_kwargs["cache"] = self.model.cache_class(config=self.config.text_config)
