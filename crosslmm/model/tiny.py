"""Tiny random models for tests, demos and ``crosslmm init-tiny``: a tokenizer trained offline, small configs
of every supported LLM and vision backend, and ``make_tiny`` to put them together. Nothing here is used to build
or load a real model (that is ``build.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import CLIPVisionConfig, PreTrainedConfig, PreTrainedTokenizerFast, SiglipVisionConfig

from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.modeling import CrossLMMForCausalLM
from crosslmm.model.processing import CHATML_TEMPLATE, VIDEO_TOKEN, CrossLMMProcessor, build_image_processor
from crosslmm.model.vision import OpenCLIPVisionConfig

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", VIDEO_TOKEN]

_CORPUS_WORDS = (
    "system user assistant you are a helpful what which where when who how is the of in on at to and or "
    "video frame image question answer describe colour color shape red green blue yellow white black orange "
    "purple square circle triangle marker first second third last quarter half start middle end left right "
    "top bottom center one two three four five six seven eight nine ten yes no it there this that shown "
    "appears appear does do did moves moving small large big bright dark option options choose letter A B C D"
).split()


def train_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained offline in well under a second; any text encodes, common words are one token."""
    corpus = [" ".join(_CORPUS_WORDS[i:] + _CORPUS_WORDS[:i]) for i in range(len(_CORPUS_WORDS))]
    corpus += [f"{i} {i}." for i in range(1000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[VIDEO_TOKEN],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


@dataclass
class TinySpec:
    """Shapes of a tiny random model: small enough for CPU tests, with GQA to exercise the real code paths."""

    llm: str = "qwen2"
    vision: str = "siglip"
    hidden_size: int = 64
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 128
    vision_hidden: int = 32
    vision_layers: int = 2
    image_size: int = 32
    patch_size: int = 4
    vocab_size: int = 512

    def vision_config(self) -> PreTrainedConfig:
        return tiny_vision_config(
            self.vision,
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_size=self.vision_hidden,
            layers=self.vision_layers,
        )


def tiny_text_config(spec: TinySpec, vocab_size: int) -> dict:
    return dict(
        model_type=spec.llm,
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=spec.llm == "qwen2",
    )


def tiny_vision_config(
    kind: str,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
) -> PreTrainedConfig:
    """Small random-init config of each backend ("siglip", "clip", "open_clip") for tests and ``init-tiny``."""
    transformer = dict(
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    if kind == "siglip":
        return SiglipVisionConfig(**transformer, vision_use_head=False)  # LLaVA-OneVision drops the head too
    if kind == "clip":
        return CLIPVisionConfig(**transformer)
    if kind == "open_clip":
        return OpenCLIPVisionConfig(
            embed_dim=hidden_size,
            vision_cfg={
                "image_size": image_size,
                "patch_size": patch_size,
                "width": hidden_size,
                "layers": layers,
                "head_width": hidden_size // heads,
                "mlp_ratio": 4.0,
            },
        )
    raise ValueError(f"Unknown tiny vision tower kind {kind!r}; supported: ['clip', 'open_clip', 'siglip']")


def make_tiny(
    spec: TinySpec, seed: int = 0, **crosslmm_fields
) -> tuple[CrossLMMForCausalLM, CrossLMMProcessor]:
    """A random tiny CrossLMM and its processor; ``crosslmm_fields`` override CrossLMMConfig fields."""
    tokenizer = train_tiny_tokenizer(spec.vocab_size)
    vision_config = spec.vision_config()
    fields = dict(tokens_per_frame=4, cross_attention_every=2) | crosslmm_fields
    config = CrossLMMConfig.from_fields(
        "make_tiny",
        vision_config=vision_config,
        text_config=tiny_text_config(spec, len(tokenizer)),
        video_token_id=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **fields,
    )
    torch.manual_seed(seed)
    model = CrossLMMForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = CrossLMMProcessor(
        image_processor=build_image_processor(model.model.vision_tower),
        tokenizer=tokenizer,
        tokens_per_frame=config.tokens_per_frame,
    )
    return model, processor
