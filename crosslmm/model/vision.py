"""Vision towers that turn video frames into a square grid of patch tokens.

Every backend returns ``(N, grid_size**2, hidden_size)`` tokens in row-major grid order with no CLS token, taken
from the LLaVA-style ``feature_layer``: an index into the tower's hidden states, where index 0 is the encoder
input (embeddings) and ``-1`` the output of the last transformer layer *before* any post-layernorm. For HF towers
this is exactly ``model(pixel_values, output_hidden_states=True).hidden_states[feature_layer]`` (what transformers'
LlavaOnevision selects), but layers after ``feature_layer`` are never run and no other hidden state is kept, which
matters when encoding hundreds of frames.

Backends are picked by the config's ``model_type`` through dispatch tables:

* ``siglip_vision_model``: transformers ``SiglipVisionModel`` (also SigLIP2 fixed-resolution checkpoints).
* ``clip_vision_model``: transformers ``CLIPVisionModel``; the CLS token is dropped.
* ``open_clip_vision``: an open_clip ``VisionTransformer`` described by ``OpenCLIPVisionConfig``. Tokens have the
  transformer width (before ``ln_post`` and the final projection). open_clip is imported lazily because importing
  it pulls in timm, which is slow.

Parameters that the selected feature never reaches (post-layernorm, pooling heads, projection, layers after
``feature_layer``) are kept so checkpoints load strictly and keep stable names; freeze them or use
``find_unused_parameters`` when training the tower under DDP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, TypeVar

import torch
from torch import nn
from transformers import (
    AutoConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedConfig,
    PreTrainedModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

Triple = tuple[float, float, float]
_T = TypeVar("_T")


class OpenCLIPVisionConfig(PreTrainedConfig):
    """Enough of an open_clip model config to rebuild its ViT image tower without downloads.

    A ``PreTrainedConfig`` (not a plain dict) so it can sit nested in a parent config and round-trip through
    ``to_dict()`` / JSON like the HF vision configs. ``vision_cfg`` uses open_clip's ``CLIPVisionCfg`` keys (width,
    layers, patch_size, image_size, head_width, mlp_ratio, ...); ``embed_dim`` and ``quick_gelu`` come from the
    open_clip model config; ``image_mean``/``image_std`` from its ``preprocess_cfg`` (None = open_clip defaults).
    """

    model_type = "open_clip_vision"

    embed_dim: int = 512
    vision_cfg: dict | None = None
    quick_gelu: bool = False
    image_mean: list[float] | None = None
    image_std: list[float] | None = None


# Lets ``AutoConfig``-based sub-config specs of a parent config resolve ``open_clip_vision`` too.
AutoConfig.register(OpenCLIPVisionConfig.model_type, OpenCLIPVisionConfig, exist_ok=True)


def _square(value: int | Sequence[int], name: str) -> int:
    """Side length of a square size given as an int or an (h, w) pair; the token grid must be square."""
    if isinstance(value, int):
        return value
    height, width = value
    if height != width:
        raise ValueError(f"{name} must be square to give a square patch grid, got {tuple(value)}")
    return int(height)


def _triple(values: Sequence[float] | None, default: Sequence[float]) -> Triple:
    r, g, b = default if values is None else values
    return (float(r), float(g), float(b))


class VisionTower(nn.Module):
    """Base class: per-frame patch tokens on a square grid, selected by LLaVA-style ``feature_layer``.

    Subclasses implement ``from_config`` and ``_patch_tokens``; this class validates geometry, the feature
    layer and the input shape so every backend fails the same way.
    """

    hidden_size: int
    grid_size: int
    image_size: int
    image_mean: Triple
    image_std: Triple

    def __init__(
        self,
        config: PreTrainedConfig,
        *,
        hidden_size: int,
        image_size: int | Sequence[int],
        patch_size: int | Sequence[int],
        num_layers: int,
        feature_layer: int,
        image_mean: Triple,
        image_std: Triple,
    ) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size
        self.image_size = _square(image_size, "image_size")
        # Floor division like the stride-``patch_size`` conv: SigLIP so400m/14 @ 384 gives a 27x27 grid.
        self.grid_size = self.image_size // _square(patch_size, "patch_size")
        self.image_mean = image_mean
        self.image_std = image_std
        num_states = num_layers + 1  # embeddings + one per transformer layer, as in HF hidden_states
        if not -num_states <= feature_layer < num_states:
            raise ValueError(
                f"feature_layer={feature_layer} is out of range for a {num_layers}-layer tower "
                f"(valid: {-num_states}..{num_layers})"
            )
        self.feature_layer = feature_layer
        self.num_layers_to_run = feature_layer % num_states

    @classmethod
    def from_config(cls, config: PreTrainedConfig, feature_layer: int) -> VisionTower:
        """Build the tower with random weights."""
        raise NotImplementedError

    def _patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, grid_size**2, hidden_size); input already validated."""
        raise NotImplementedError

    def tokens_and_attention(
        self, pixel_values: torch.Tensor, layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The patch tokens and the attention each patch receives in ``layer`` (salient's ranking)."""
        raise ValueError(
            f"{type(self).__name__} does not expose its attention: visual_reducer='salient' needs a CLIP or "
            "SigLIP tower"
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (N, 3, H, W) -> patch tokens (N, grid_size*grid_size, hidden_size), row-major, no CLS."""
        self._check_input(pixel_values)
        return self._patch_tokens(pixel_values)

    def _check_input(self, pixel_values: torch.Tensor) -> None:
        expected = (3, self.image_size, self.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects pixel_values of shape (N, {', '.join(map(str, expected))}), "
                f"got {tuple(pixel_values.shape)}"
            )


class _HFTower(VisionTower):
    """Wraps a transformers ViT (held as ``self.model``) and runs its encoder layers only up to feature_layer.

    Reuses the model's own embedding and layer modules, so results equal ``hidden_states[feature_layer]``
    bit-for-bit (tested) while skipping later layers, the post-layernorm and the pooling head.
    """

    model_cls: ClassVar[type[PreTrainedModel]]
    num_prefix_tokens: ClassVar[int]  # CLS-like tokens in front of the patch tokens
    default_mean: ClassVar[Triple]
    default_std: ClassVar[Triple]

    def __init__(self, model: PreTrainedModel, feature_layer: int) -> None:
        config = model.config
        super().__init__(
            config,
            hidden_size=config.hidden_size,
            image_size=config.image_size,
            patch_size=config.patch_size,
            num_layers=config.num_hidden_layers,
            feature_layer=feature_layer,
            image_mean=_triple(getattr(config, "image_mean", None), self.default_mean),
            image_std=_triple(getattr(config, "image_std", None), self.default_std),
        )
        self.model = model

    @classmethod
    def from_config(cls, config: PreTrainedConfig, feature_layer: int) -> _HFTower:
        # HF embeddings fail with a bare TypeError on (h, w) sizes; reject non-square ones clearly first.
        _square(config.image_size, "image_size")
        _square(config.patch_size, "patch_size")
        return cls(cls.model_cls(config), feature_layer)

    def _encoder_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, prefix + grid**2, D): what the model feeds its first encoder layer."""
        raise NotImplementedError

    def _patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self._encoder_input(pixel_values)
        for layer in self.model.encoder.layers[: self.num_layers_to_run]:
            hidden = layer(hidden, None)  # same call as the HF encoder loop (no attention mask for images)
        return hidden[:, self.num_prefix_tokens :]

    def tokens_and_attention(
        self, pixel_values: torch.Tensor, layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values (N, 3, S, S) -> the patch tokens of :meth:`forward` and the attention each patch
        receives in encoder layer ``layer`` (index into the layers, negative from the end) (N, grid**2):
        from the CLS query with a CLS token (CLIP), else the mean over every patch's query (SigLIP), averaged
        over heads. One pass, up to the deeper of ``feature_layer`` and ``layer`` (VisionZip's ranking)."""
        self._check_input(pixel_values)
        blocks = self.model.encoder.layers
        if not -len(blocks) <= layer < len(blocks):
            raise ValueError(f"salient_layer={layer} is out of range for a {len(blocks)}-layer tower")
        layer %= len(blocks)
        hidden = self._encoder_input(pixel_values)
        tokens = hidden if self.num_layers_to_run == 0 else None
        received = None
        for index, block in enumerate(blocks[: max(self.num_layers_to_run, layer + 1)]):
            if index == layer:
                received = self._attention_received(block, hidden)
            hidden = block(hidden, None)
            if index + 1 == self.num_layers_to_run:
                tokens = hidden
        return tokens[:, self.num_prefix_tokens :], received

    def _attention_received(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The softmax attention of ``block`` (an HF CLIP/SigLIP encoder layer) on its input ``hidden``
        (N, L, D), recomputed from its own projections -> (N, patches) attention received per patch."""
        attn, batch, length = block.self_attn, hidden.shape[0], hidden.shape[1]
        normed = block.layer_norm1(hidden)
        q = attn.q_proj(normed).view(batch, length, attn.num_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(normed).view(batch, length, attn.num_heads, attn.head_dim).transpose(1, 2)
        probs = torch.softmax((q @ k.transpose(-1, -2)).float() * attn.scale, dim=-1)  # (N, H, L, L)
        prefix = self.num_prefix_tokens
        if prefix:  # the CLS query's attention to the patches
            return probs[:, :, 0, prefix:].mean(1)
        return probs.mean(dim=(1, 2))  # mean over heads and queries


class SiglipTower(_HFTower):
    """transformers ``SiglipVisionModel`` (SigLIP / SigLIP2 fixed resolution); no CLS token."""

    model_cls = SiglipVisionModel
    num_prefix_tokens = 0
    default_mean = (0.5, 0.5, 0.5)
    default_std = (0.5, 0.5, 0.5)

    def _encoder_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(pixel_values)


class CLIPTower(_HFTower):
    """transformers ``CLIPVisionModel``; its CLS token (position 0) is dropped from the output."""

    model_cls = CLIPVisionModel
    num_prefix_tokens = 1
    default_mean = tuple(OPENAI_CLIP_MEAN)
    default_std = tuple(OPENAI_CLIP_STD)

    def _encoder_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.pre_layrnorm(self.model.embeddings(pixel_values))


class OpenCLIPTower(VisionTower):
    """open_clip ``VisionTransformer`` (held as ``self.visual``, so weights keep open_clip's ``visual.*`` names).

    Built with open_clip's own ``_build_vision_tower`` (what ``open_clip.CLIP`` uses; there is no public
    equivalent) so every ``vision_cfg`` option maps exactly as in open_clip. ``patch_dropout`` is forced to 0
    because the grid must stay complete. Only plain ViTs are supported (no timm or ModifiedResNet trunks), and
    ``feature_layer`` must select a transformer layer output: open_clip's public ``forward_intermediates`` does
    not expose the embeddings.
    """

    def __init__(self, config: OpenCLIPVisionConfig, feature_layer: int) -> None:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
        from open_clip.model import _build_vision_tower

        vision_cfg = dict(config.vision_cfg or {})
        if vision_cfg.get("timm_model_name") or isinstance(vision_cfg.get("layers"), (list, tuple)):
            raise ValueError(
                "OpenCLIPTower supports open_clip's native ViT only, not timm or ModifiedResNet towers"
            )
        vision_cfg.update(patch_dropout=0.0, output_tokens=False)
        visual = _build_vision_tower(config.embed_dim, vision_cfg, quick_gelu=config.quick_gelu)
        super().__init__(
            config,
            hidden_size=visual.transformer.width,
            image_size=visual.image_size,
            patch_size=visual.patch_size,
            num_layers=len(visual.transformer.resblocks),
            feature_layer=feature_layer,
            image_mean=_triple(config.image_mean, OPENAI_DATASET_MEAN),
            image_std=_triple(config.image_std, OPENAI_DATASET_STD),
        )
        if self.num_layers_to_run == 0:
            raise ValueError(
                f"feature_layer={feature_layer} selects the embeddings, which OpenCLIP towers do not expose"
            )
        self.visual = visual

    @classmethod
    def from_config(cls, config: PreTrainedConfig, feature_layer: int) -> OpenCLIPTower:
        return cls(config, feature_layer)

    def _patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.visual.forward_intermediates(
            pixel_values.to(self.visual.conv1.weight.dtype),
            indices=[self.num_layers_to_run - 1],
            stop_early=True,
            intermediates_only=True,
            output_fmt="NLC",
        )
        return out["image_intermediates"][0]  # open_clip already strips the class token


# model_type -> config class. "open_clip" is accepted as an alias for hand-written dicts.
_CONFIG_CLASSES: dict[str, type[PreTrainedConfig]] = {
    "siglip_vision_model": SiglipVisionConfig,
    "clip_vision_model": CLIPVisionConfig,
    OpenCLIPVisionConfig.model_type: OpenCLIPVisionConfig,
    "open_clip": OpenCLIPVisionConfig,
}
# Canonical config model_type -> tower class.
_TOWERS: dict[str, type[VisionTower]] = {
    "siglip_vision_model": SiglipTower,
    "clip_vision_model": CLIPTower,
    OpenCLIPVisionConfig.model_type: OpenCLIPTower,
}


def _lookup(table: dict[str, _T], model_type: str | None, what: str) -> _T:
    if model_type not in table:
        raise ValueError(f"Unsupported {what} model_type {model_type!r}; supported: {sorted(table)}")
    return table[model_type]


def vision_config_from_dict(d: dict) -> PreTrainedConfig:
    """Rebuild a vision config from its ``to_dict()`` form (e.g. the nested ``vision_config`` of a saved config)."""
    config_cls = _lookup(_CONFIG_CLASSES, d.get("model_type"), "vision config")
    return config_cls.from_dict({k: v for k, v in d.items() if k != "model_type"})


def vision_grid_size(config: PreTrainedConfig) -> int:
    """Patches per side, read from the config without building the tower (for config validation)."""
    sizes = config.vision_cfg if config.model_type == OpenCLIPVisionConfig.model_type else vars(config)
    return _square(sizes["image_size"], "image_size") // _square(sizes["patch_size"], "patch_size")


def build_vision_tower(vision_config: dict | PreTrainedConfig, feature_layer: int) -> VisionTower:
    """Randomly initialised tower for a config object or its dict form."""
    config = vision_config_from_dict(vision_config) if isinstance(vision_config, dict) else vision_config
    return _lookup(_TOWERS, config.model_type, "vision tower").from_config(config, feature_layer)
