"""Make complete model directories: tiny random ones for tests and demos, or composed from local HF checkpoints."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.modeling import CrossLMMForCausalLM
from crosslmm.model.processing import CHATML_TEMPLATE, VIDEO_TOKEN, CrossLMMProcessor, build_image_processor
from crosslmm.model.vision import load_pretrained_vision_tower, tiny_vision_config

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


def make_tiny(
    spec: TinySpec, seed: int = 0, **crosslmm_fields
) -> tuple[CrossLMMForCausalLM, CrossLMMProcessor]:
    """A random tiny CrossLMM and its processor; ``crosslmm_fields`` override CrossLMMConfig fields."""
    tokenizer = train_tiny_tokenizer(spec.vocab_size)
    vision_config = tiny_vision_config(
        spec.vision,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        hidden_size=spec.vision_hidden,
        layers=spec.vision_layers,
    )
    fields = dict(tokens_per_frame=4, cross_attention_every=2) | crosslmm_fields
    config = CrossLMMConfig(
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


def save_model_dir(model: CrossLMMForCausalLM, processor: CrossLMMProcessor, out: str | os.PathLike) -> None:
    """Everything ``from_pretrained`` and the processor need, weights as safetensors."""
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def build_from_pretrained(
    llm_dir: str, vision_dir: str, crosslmm_fields: dict
) -> tuple[CrossLMMForCausalLM, CrossLMMProcessor]:
    """Compose a CrossLMM from a local HF causal LM (Qwen2/Llama) and a local vision tower checkpoint.

    The LLM and vision weights are copied exactly; projector and cross-attention layers are freshly
    initialised (gates at zero). Shapes in ``crosslmm_fields`` (e.g. from ``configs/model/*.yaml``) must
    agree with the checkpoints, otherwise the mismatch is reported instead of silently ignored.
    """
    fields = dict(crosslmm_fields)
    known = set(inspect.signature(CrossLMMConfig.__init__).parameters) - {"self", "kwargs"}
    if unknown := sorted(set(fields) - known):
        raise ValueError(f"unknown model config field(s) {unknown}; known: {sorted(known)}")
    text_config = AutoConfig.from_pretrained(llm_dir)
    vision_tower, vision_config = load_pretrained_vision_tower(
        vision_dir, fields.get("vision_feature_layer", -1)
    )
    for name, loaded in (("text_config", text_config), ("vision_config", vision_config)):
        wanted = fields.pop(name, None) or {}
        clash = {
            k: (v, getattr(loaded, k, None))
            for k, v in wanted.items()
            if k != "model_type" and getattr(loaded, k, None) != v
        }
        if clash:
            raise ValueError(
                f"{name} in the model config contradicts the checkpoint: "
                + ", ".join(f"{k}: config {a!r} vs checkpoint {b!r}" for k, (a, b) in sorted(clash.items()))
            )
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    if VIDEO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
    llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
    if len(tokenizer) > llm.config.vocab_size:  # never shrink: Qwen2.5 pads its vocab for speed
        llm.resize_token_embeddings(len(tokenizer))
    text_config = llm.config
    config = CrossLMMConfig(
        vision_config=vision_config,
        text_config=text_config,
        video_token_id=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **fields,
    )
    model = CrossLMMForCausalLM(config)
    model.model.language_model.load_state_dict(llm.model.state_dict())
    model.lm_head.load_state_dict(llm.lm_head.state_dict())
    model.model.vision_tower.load_state_dict(vision_tower.state_dict())
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHATML_TEMPLATE
    processor = CrossLMMProcessor(
        image_processor=build_image_processor(model.model.vision_tower),
        tokenizer=tokenizer,
        tokens_per_frame=config.tokens_per_frame,
    )
    return model, processor
