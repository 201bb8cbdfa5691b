"""Checkpoints on disk: compose a CrossLMM from local pretrained checkpoints (an HF Qwen2/Llama causal LM and a
SigLIP/CLIP/open_clip vision tower) and write the model directory that ``from_pretrained`` reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig

from crosslmm.model.configuration import CrossLMMConfig, check_fields
from crosslmm.model.modeling import CrossLMMForCausalLM
from crosslmm.model.processing import CHATML_TEMPLATE, VIDEO_TOKEN, CrossLMMProcessor, build_image_processor
from crosslmm.model.vision import CLIPTower, OpenCLIPTower, OpenCLIPVisionConfig, SiglipTower, VisionTower

# model_type in a local HF checkpoint's config.json -> tower; full dual-encoder dirs load only the vision part.
_HF_CHECKPOINT_TOWERS: dict[str, type[SiglipTower | CLIPTower]] = {
    "siglip": SiglipTower,
    "siglip_vision_model": SiglipTower,
    "clip": CLIPTower,
    "clip_vision_model": CLIPTower,
}


def _open_clip_visual_weights(path: Path) -> dict[str, torch.Tensor]:
    """``visual.*`` weights of a hub-layout open_clip checkpoint, prefix stripped; the text tower is not read."""
    safetensors_file = path / "open_clip_model.safetensors"
    if safetensors_file.is_file():
        with safe_open(str(safetensors_file), framework="pt") as f:
            return {k.removeprefix("visual."): f.get_tensor(k) for k in f.keys() if k.startswith("visual.")}
    bin_file = path / "open_clip_pytorch_model.bin"
    if bin_file.is_file():
        state = torch.load(bin_file, map_location="cpu", weights_only=True)
        return {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    raise FileNotFoundError(
        f"{path} has open_clip_config.json but neither {safetensors_file.name} nor {bin_file.name}"
    )


def _load_open_clip(path: Path, feature_layer: int) -> tuple[OpenCLIPTower, OpenCLIPVisionConfig]:
    raw = json.loads((path / "open_clip_config.json").read_text())
    model_cfg, preprocess_cfg = raw["model_cfg"], raw.get("preprocess_cfg", {})
    config = OpenCLIPVisionConfig(
        embed_dim=model_cfg["embed_dim"],
        vision_cfg=model_cfg["vision_cfg"],
        quick_gelu=model_cfg.get("quick_gelu", False),
        image_mean=preprocess_cfg.get("mean"),
        image_std=preprocess_cfg.get("std"),
    )
    tower = OpenCLIPTower(config, feature_layer)
    tower.visual.load_state_dict(_open_clip_visual_weights(path))
    return tower, config


def _load_hf(path: Path, feature_layer: int) -> tuple[SiglipTower | CLIPTower, PreTrainedConfig]:
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type not in _HF_CHECKPOINT_TOWERS:
        raise ValueError(
            f"Unsupported HF vision checkpoint model_type {model_type!r}; supported: {sorted(_HF_CHECKPOINT_TOWERS)}"
        )
    tower_cls = _HF_CHECKPOINT_TOWERS[model_type]
    model = tower_cls.model_cls.from_pretrained(path)
    # Normalisation lives in the image processor's file, not the model config; carry it in the config so it
    # survives a to_dict() round trip.
    processor_file = path / "preprocessor_config.json"
    if processor_file.is_file():
        processor = json.loads(processor_file.read_text())
        for key in ("image_mean", "image_std"):
            if key in processor:
                setattr(model.config, key, list(processor[key]))
    return tower_cls(model, feature_layer), model.config


def load_pretrained_vision_tower(path: str, feature_layer: int) -> tuple[VisionTower, PreTrainedConfig]:
    """Load a tower from a local dir: an open_clip hub layout (``open_clip_config.json``) or an HF checkpoint
    (SiglipVisionModel/SiglipModel/CLIPVisionModel/CLIPModel; full models load only their vision part).

    Returns the tower and the vision config to store in the parent config (rebuild with ``build_vision_tower``).
    """
    directory = Path(path)
    if (directory / "open_clip_config.json").is_file():
        return _load_open_clip(directory, feature_layer)
    if (directory / "config.json").is_file():
        return _load_hf(directory, feature_layer)
    raise FileNotFoundError(f"{path} contains neither open_clip_config.json nor config.json")


def save_model_dir(model: CrossLMMForCausalLM, processor: CrossLMMProcessor, out: str | os.PathLike) -> None:
    """Everything ``from_pretrained`` and the processor need, weights as safetensors."""
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def _llm_source(llm: str) -> tuple[str, dict]:
    """(directory, extra from_pretrained kwargs) of an LLM given as an HF dir or a single ``.gguf`` file,
    which transformers reads with the ``gguf`` package, dequantised to fp32."""
    path = Path(llm)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {llm!r} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    return llm, {}


def build_from_pretrained(
    llm_dir: str, vision_dir: str, crosslmm_fields: dict
) -> tuple[CrossLMMForCausalLM, CrossLMMProcessor]:
    """Compose a CrossLMM from a local HF causal LM (Qwen2/Llama; an HF dir or a ``.gguf`` file) and a
    local vision tower checkpoint.

    The LLM and vision weights are copied exactly; projector and cross-attention layers are freshly
    initialised (gates at zero). Shapes in ``crosslmm_fields`` (e.g. from ``configs/model/*.yaml``) must
    agree with the checkpoints, otherwise the mismatch is reported instead of silently ignored.
    """
    fields = dict(crosslmm_fields)
    check_fields(fields, "the model config")  # before loading any checkpoint
    llm_dir, llm_kwargs = _llm_source(llm_dir)
    text_config = AutoConfig.from_pretrained(llm_dir, **llm_kwargs)
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
    tokenizer = AutoTokenizer.from_pretrained(llm_dir, **llm_kwargs)
    if VIDEO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
    llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32, **llm_kwargs)
    if len(tokenizer) > llm.config.vocab_size:  # never shrink: Qwen2.5 pads its vocab for speed
        llm.resize_token_embeddings(len(tokenizer))
    text_config = llm.config
    if llm_kwargs.get("gguf_file"):
        # The weights are dequantised fp32 now; the GGUF note left in the config would make every later load
        # a "quantized" model, which the Trainer refuses to fine-tune.
        text_config.__dict__.pop("quantization_config", None)
    config = CrossLMMConfig.from_fields(
        "the model config",
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
