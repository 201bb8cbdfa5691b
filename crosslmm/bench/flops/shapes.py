"""Layer shapes that the analytic FLOP counts (``analytic.py``) read from HF configs: a Qwen2/Llama decoder
and a ViT tower (HF SigLIP/CLIP or open_clip), plus the FLOPs of one linear layer (2 per multiply-add)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DecoderShape:
    """Shapes of a Qwen2/Llama decoder, with head_dim defaulting to hidden/heads as in HF."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, text_config: Any) -> DecoderShape:
        heads = text_config.num_attention_heads
        return cls(
            hidden=text_config.hidden_size,
            intermediate=text_config.intermediate_size,
            layers=text_config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(text_config, "num_key_value_heads", None) or heads,
            head_dim=getattr(text_config, "head_dim", None) or text_config.hidden_size // heads,
            vocab=text_config.vocab_size,
        )

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def dense(self, tokens: int) -> int:
        """All decoder layers' projections and SwiGLU MLPs on ``tokens`` positions."""
        attn = linear_flops(tokens, self.hidden, self.q_dim) + 2 * linear_flops(
            tokens, self.hidden, self.kv_dim
        )
        attn += linear_flops(tokens, self.q_dim, self.hidden)
        return self.layers * (attn + self.swiglu(tokens))

    def swiglu(self, tokens: int) -> int:
        return 3 * linear_flops(tokens, self.hidden, self.intermediate)

    def scores(self, queries: int, keys: int) -> int:
        """QK^T and AV; GQA shares K/V across query heads but not the work, so it is ``heads`` wide."""
        return 2 * 2 * queries * keys * self.q_dim


def linear_flops(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


@dataclass(frozen=True)
class ViTShape:
    """Shapes of a ViT tower, read from an HF SigLIP/CLIP vision config or an ``open_clip_vision`` one."""

    width: int
    mlp: int
    layers: int
    grid: int  # patch tokens per frame
    patch_inputs: int  # channels * patch^2, the patch-embedding conv's fan-in
    class_tokens: int  # run through the tower, dropped before pooling

    @classmethod
    def from_config(cls, vision_config: Any) -> ViTShape:
        if vision_config.model_type == "open_clip_vision":
            from open_clip.model import CLIPVisionCfg  # lazy: open_clip imports timm, which is slow

            cfg = CLIPVisionCfg(**(vision_config.vision_cfg or {}))
            patch = _side(cfg.patch_size)
            return cls(
                width=cfg.width,
                mlp=int(cfg.width * cfg.mlp_ratio),
                layers=cfg.layers,
                grid=(_side(cfg.image_size) // patch) ** 2,
                patch_inputs=3 * patch * patch,
                class_tokens=1,
            )
        patch = vision_config.patch_size
        return cls(
            width=vision_config.hidden_size,
            mlp=vision_config.intermediate_size,
            layers=vision_config.num_hidden_layers,
            grid=(vision_config.image_size // patch) ** 2,
            patch_inputs=vision_config.num_channels * patch * patch,
            class_tokens=1 if vision_config.model_type == "clip_vision_model" else 0,
        )

    def layers_run(self, vision_feature_layer: int) -> int:
        """Layers needed to reach ``hidden_states[vision_feature_layer]`` (index 0 = embeddings)."""
        if not -self.layers - 1 <= vision_feature_layer <= self.layers:
            raise ValueError(
                f"vision_feature_layer={vision_feature_layer} is out of range for a {self.layers}-layer tower"
            )
        return vision_feature_layer % (self.layers + 1)


def _side(size: int | tuple[int, int]) -> int:
    return size if isinstance(size, int) else size[0]


def grid_tokens(vision_config: Any) -> int:
    """Patch tokens per frame, (image_size / patch_size)^2: the originals that DCALs attend to."""
    return ViTShape.from_config(vision_config).grid
