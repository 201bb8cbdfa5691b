"""The speed benchmark's own CPU-sized model (``MiniSpec``) and its three LLM-running variants."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crosslmm.bench.variants import CROSSLMM, FULL, POOLED, share_weights
from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.modeling import CrossLMMForCausalLM

VIDEO_TOKEN_ID = 511  # last id of the 512-token mini vocabulary


@dataclass(frozen=True)
class MiniSpec:
    """A CPU-sized CrossLMM keeping the 7B's proportions where they decide the ratios.

    Kept: SigLIP-like tower with 27x27 = 729 patches per frame; LLM cost per token / tower cost per patch
    ~13 (7B: 14.3), so 9 pooled tokens cost ~0.17 of encoding their frame (7B: 0.18); decoder attention
    scores / dense work per layer at equal sequence length (q width 32 against a 384-wide, 1408-inner
    decoder) close to the 7B's (3584 against 3584/18944), so the quadratic term of the full-token baseline
    grows as it would at 7B; DCAL K/V projections ~2.5 % of the tower (7B: 3.6 %). Not kept: absolute
    widths, so the tower's own attention scores are ~55 % of its work (7B: ~11 %).
    """

    image_size: int = 108
    patch_size: int = 4
    vision_width: int = 96
    vision_mlp: int = 384
    vision_layers: int = 2
    vision_heads: int = 2
    hidden: int = 384
    intermediate: int = 1408
    layers: int = 4
    heads: int = 2
    kv_heads: int = 1
    head_dim: int = 16
    cross_attention_every: int = 2
    tokens_per_frame: int = 9
    text_tokens: int = 70
    vision_chunk_size: int = 32

    @classmethod
    def quick(cls) -> MiniSpec:
        """Seconds-scale shapes for smoke tests: the same code paths, nothing proportional."""
        return cls(
            image_size=54,
            patch_size=2,
            vision_width=16,
            vision_mlp=32,
            vision_layers=1,
            vision_heads=1,
            hidden=32,
            intermediate=64,
            layers=2,
            heads=2,
            kv_heads=1,
            head_dim=16,
            text_tokens=8,
            vision_chunk_size=4,
        )

    @property
    def grid_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def config(self, tokens_per_frame: int, cross_attention_every: int) -> CrossLMMConfig:
        return CrossLMMConfig.from_fields(
            "MiniSpec.config",
            vision_config=dict(
                model_type="siglip_vision_model",
                hidden_size=self.vision_width,
                intermediate_size=self.vision_mlp,
                num_hidden_layers=self.vision_layers,
                num_attention_heads=self.vision_heads,
                image_size=self.image_size,
                patch_size=self.patch_size,
                vision_use_head=False,
            ),
            text_config=dict(
                model_type="qwen2",
                vocab_size=VIDEO_TOKEN_ID + 1,
                hidden_size=self.hidden,
                intermediate_size=self.intermediate,
                num_hidden_layers=self.layers,
                num_attention_heads=self.heads,
                num_key_value_heads=self.kv_heads,
                head_dim=self.head_dim,
                max_position_embeddings=1 << 20,
            ),
            tokens_per_frame=tokens_per_frame,
            cross_attention_every=cross_attention_every,
            video_token_id=VIDEO_TOKEN_ID,
            vision_chunk_size=self.vision_chunk_size,
        )


def build_models(spec: MiniSpec, seed: int = 0) -> dict[str, CrossLMMForCausalLM]:
    """CrossLMM, the same without its DCALs, and the full-token baseline (all patches, no DCALs), all
    running CrossLMM's tower, projector and LLM weights."""
    torch.manual_seed(seed)
    crosslmm = CrossLMMForCausalLM(spec.config(spec.tokens_per_frame, spec.cross_attention_every)).eval()
    models = {CROSSLMM: crosslmm}
    for name, tokens in ((POOLED, spec.tokens_per_frame), (FULL, spec.grid_tokens)):
        models[name] = share_weights(crosslmm, spec.config(tokens, 0))
    return models
