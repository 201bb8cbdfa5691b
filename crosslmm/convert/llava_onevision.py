"""LLaVA-OneVision / LLaVA-Video (HF ``LlavaOnevisionForConditionalGeneration``) <-> CrossLMM.

With the source's own video pooling the converted model *is* the source model plus zero-gated cross-attention:
SigLIP ``hidden_states[-1]`` -> projector -> bilinear resize of each frame's g x g grid to ceil(g/2)^2 (no
antialias) -> one ``image_newline`` vector after all frames of a video. The newline becomes CrossLMM's
``video_end_embedding`` behind a ``<video_end>`` token. Images (anyres tiling) are not carried over: CrossLMM
reads a single image as a one-frame video.
"""

from __future__ import annotations

import copy
import math
import os

import torch
from transformers import (
    AutoProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedModel,
    SiglipImageProcessor,
)

from crosslmm.convert.state_dict_adapter import StateDictAdapter
from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.modeling import CrossLMMForCausalLM
from crosslmm.model.processing import CHATML_TEMPLATE, CrossLMMProcessor

VIDEO_END_TOKEN = "<video_end>"

ADAPTER = StateDictAdapter(
    source="LlavaOnevision",
    rules=(
        ("model.vision_tower.", "model.vision_tower.model."),
        ("model.multi_modal_projector.", "model.projector."),
        ("model.language_model.", "model.language_model."),
        ("model.image_newline", "model.video_end_embedding"),
        ("lm_head.", "lm_head."),
    ),
    new_prefixes=("model.cross_layers.",),
)

# Jinja preamble that turns plain-string message content into one text part. LLaVA-OV templates only render
# content lists, and silently drop a string; CrossLMM's data pipeline writes "<video>\nquestion" strings.
# The text part renders the same prompt as a [video, text] list, because the string already holds "<video>\n".
_STRING_CONTENT_AS_PARTS = (
    "{% set ns = namespace(messages=[]) %}{% for m in messages %}{% if m['content'] is string %}"
    "{% set ns.messages = ns.messages + [{'role': m['role'], 'content': [{'type': 'text', 'text': m['content']}]}] %}"
    "{% else %}{% set ns.messages = ns.messages + [m] %}{% endif %}{% endfor %}{% set messages = ns.messages %}"
)

SOURCE_POOLING = dict(pooling_mode="bilinear", pooling_antialias=False, pooling_position="after_projector")


def source_tokens_per_frame(vision_config) -> int:
    """LLaVA-OV's ``apply_pooling``: a g x g patch grid becomes ceil(g/2) x ceil(g/2) (27 -> 14, 196 tokens)."""
    return math.ceil(vision_config.image_size // vision_config.patch_size / 2) ** 2


def _check_source(config: LlavaOnevisionConfig) -> None:
    """Reject variants whose video path our model does not compute the same way, naming the field."""
    problems = []
    if config.vision_config.model_type != "siglip_vision_model":
        problems.append(f"vision tower {config.vision_config.model_type!r} (only siglip_vision_model)")
    if not isinstance(config.vision_feature_layer, int):
        problems.append(f"vision_feature_layer={config.vision_feature_layer} (only a single layer)")
    if config.vision_feature_select_strategy != "full":
        problems.append(
            f"vision_feature_select_strategy={config.vision_feature_select_strategy!r} (only 'full')"
        )
    if config.projector_hidden_act != "gelu":
        problems.append(f"projector_hidden_act={config.projector_hidden_act!r} (only 'gelu')")
    if problems:
        raise ValueError("unsupported LLaVA-OneVision checkpoint: " + "; ".join(problems))


def _plain_string_template(tokenizer, template: str, video_token: str) -> str:
    """The source template if it renders string content, else the same template behind the preamble."""

    def renders_strings(candidate: str) -> bool:
        probe = [{"role": "user", "content": f"{video_token}\nPROBE"}]
        text = tokenizer.apply_chat_template(probe, chat_template=candidate, tokenize=False)
        return "PROBE" in text and video_token in text

    if renders_strings(template):
        return template
    wrapped = _STRING_CONTENT_AS_PARTS + template
    if not renders_strings(wrapped):
        raise ValueError(
            "the source chat template renders neither plain-string nor text-part message content"
        )
    return wrapped


def _source_video_processor(source_processor):
    return getattr(source_processor, "video_processor", None) or source_processor.image_processor


def _frame_processor(source_processor, image_size: int) -> SiglipImageProcessor:
    """The source's video resize as CrossLMM's frame processor; its mean/std go to the vision config (the
    model normalises), and its rescale must be CrossLMM's x/255."""
    video = _source_video_processor(source_processor)
    size = dict(video.size)
    if size != {"height": image_size, "width": image_size}:
        raise ValueError(f"source video processor resizes to {size}, expected {image_size}x{image_size}")
    if abs(video.rescale_factor * 255 - 1) > 1e-12:
        raise ValueError(
            f"source video processor rescales by {video.rescale_factor}; "
            "CrossLMM normalises uint8 frames as x/255"
        )
    return SiglipImageProcessor(size=size, resample=video.resample, do_rescale=False, do_normalize=False)


def _expected_keys(model_cls: type[PreTrainedModel], config) -> list[str]:
    with torch.device("meta"):
        return list(model_cls(config).state_dict())


def _pad_vocab(state: dict[str, torch.Tensor], vocab_size: int) -> None:
    """Zero rows for token ids beyond the source vocab (only ``<video_end>``, whose input row is never read and
    whose output column generation suppresses); usually a no-op, as Qwen2 checkpoints have spare rows."""
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        rows = state[key]
        if rows.shape[0] < vocab_size:
            state[key] = torch.cat([rows, rows.new_zeros(vocab_size - rows.shape[0], rows.shape[1])])


def convert_llava_onevision(
    src: str | os.PathLike,
    tokens_per_frame: int | None = None,
    **crosslmm_fields,
) -> tuple[CrossLMMForCausalLM, CrossLMMProcessor]:
    """Load a local HF LLaVA-OneVision dir as a CrossLMM with fresh zero-gated cross-attention.

    ``tokens_per_frame`` defaults to the source's ceil(g/2)^2 and ``crosslmm_fields`` (CrossLMMConfig fields:
    pooling, cross-attention placement, ...) default to the source's pooling, so the result starts out equal
    to the source. Weights keep the source dtype.
    """
    source = LlavaOnevisionForConditionalGeneration.from_pretrained(src, dtype="auto")
    source_processor = AutoProcessor.from_pretrained(src)
    src_config = source.config
    _check_source(src_config)
    tokenizer = source_processor.tokenizer
    if VIDEO_END_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_END_TOKEN]})
    text_config = src_config.text_config
    text_config.vocab_size = max(text_config.vocab_size, len(tokenizer))
    frame_processor = _frame_processor(source_processor, src_config.vision_config.image_size)
    # The processor only resizes; the model normalises uint8 frames with its tower's mean/std, so the tower
    # carries the source's (saved in the vision config).
    src_config.vision_config.image_mean = list(_source_video_processor(source_processor).image_mean)
    src_config.vision_config.image_std = list(_source_video_processor(source_processor).image_std)
    video_end_id = tokenizer.convert_tokens_to_ids(VIDEO_END_TOKEN)
    fields = dict(SOURCE_POOLING) | crosslmm_fields
    config = CrossLMMConfig(
        vision_config=src_config.vision_config,
        text_config=text_config,
        tokens_per_frame=tokens_per_frame or source_tokens_per_frame(src_config.vision_config),
        vision_feature_layer=src_config.vision_feature_layer,
        projector_type="mlp2x_gelu",
        video_token_id=src_config.video_token_id,
        video_end_token_id=video_end_id,
        tie_word_embeddings=src_config.tie_word_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **fields,
    )
    state = ADAPTER.from_hf(source.state_dict(), _expected_keys(CrossLMMForCausalLM, config))
    _pad_vocab(state, text_config.vocab_size)
    model = CrossLMMForCausalLM.from_pretrained(None, config=config, state_dict=state, dtype=source.dtype)
    model.generation_config = copy.deepcopy(source.generation_config)
    model.generation_config.suppress_tokens = [video_end_id]
    template = source_processor.chat_template or tokenizer.chat_template or CHATML_TEMPLATE
    processor = CrossLMMProcessor(
        image_processor=frame_processor,
        tokenizer=tokenizer,
        tokens_per_frame=config.tokens_per_frame,
        video_token=source_processor.video_token,
        video_end_token=VIDEO_END_TOKEN,
        chat_template=_plain_string_template(tokenizer, template, source_processor.video_token),
    )
    return model.eval(), processor


def _check_exportable(model: CrossLMMForCausalLM) -> None:
    """LLaVA-OV hard-codes its pooling and has no cross-attention; anything else would export another model."""
    cfg = model.config
    problems = []
    if cfg.video_end_token_id is None:
        problems.append("no video_end_embedding (LLaVA-OV's image_newline)")
    wanted = dict(SOURCE_POOLING, tokens_per_frame=source_tokens_per_frame(cfg.vision_config))
    problems += [
        f"{k}={getattr(cfg, k)!r} (LLaVA-OV: {v!r})" for k, v in wanted.items() if getattr(cfg, k) != v
    ]
    open_gates = [n for n, p in model.model.cross_layers.named_parameters() if n.endswith("gate") and p.any()]
    if open_gates:
        problems.append(f"trained cross-attention (non-zero gates: {', '.join(open_gates)}) would be dropped")
    if problems:
        raise ValueError(
            "cannot export as LLaVA-OneVision without changing the model: " + "; ".join(problems)
        )


def export_llava_onevision(
    model: CrossLMMForCausalLM, processor: CrossLMMProcessor
) -> tuple[LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor]:
    """The reverse of ``convert_llava_onevision`` for a model that LLaVA-OV can represent exactly: source
    pooling and closed gates (e.g. after fine-tuning only the LLM/projector). Image preprocessing gets
    transformers' anyres defaults, since CrossLMM never stored the source's image settings."""
    _check_exportable(model)
    cfg = model.config
    tokenizer = processor.tokenizer
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    if image_token_id in (None, tokenizer.unk_token_id):
        raise ValueError("the tokenizer has no '<image>' token, which LlavaOnevisionConfig requires")
    src_config = LlavaOnevisionConfig(
        vision_config=cfg.vision_config.to_dict(),
        text_config=cfg.text_config.to_dict(),
        image_token_id=image_token_id,
        video_token_id=cfg.video_token_id,
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy="full",
        tie_word_embeddings=cfg.tie_word_embeddings,
    )
    state = ADAPTER.to_hf(
        model.state_dict(), _expected_keys(LlavaOnevisionForConditionalGeneration, src_config)
    )
    source = LlavaOnevisionForConditionalGeneration.from_pretrained(
        None, config=src_config, state_dict=state, dtype=model.dtype
    )
    source.generation_config = copy.deepcopy(model.generation_config)
    frames, tower = processor.image_processor, model.model.vision_tower
    preprocessing = dict(
        size=dict(frames.size),
        resample=frames.resample,
        rescale_factor=1 / 255,  # what the model's normalisation assumes
        image_mean=list(tower.image_mean),
        image_std=list(tower.image_std),
    )
    grid = cfg.vision_config.image_size // cfg.vision_config.patch_size
    source_processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(**preprocessing),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(**preprocessing),
        num_image_tokens=grid * grid,
        vision_feature_select_strategy="full",
        chat_template=processor.chat_template,
        video_token=processor.video_token,
    )
    return source.eval(), source_processor
