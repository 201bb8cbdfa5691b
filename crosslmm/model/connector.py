"""The connector between vision tower and LLM: per-frame parameter-free pooling plus the projector.

It owns three choices that only make sense together: how each frame's patch grid is pooled to
``tokens_per_frame`` tokens (or reduced by a baseline of ``crosslmm.baselines``), whether pooling runs
before or after the projector, and which tensor the cross-attention blocks read as memory (the raw encoder
tokens or the projected ones).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from crosslmm.baselines import build_frame_reducer
from crosslmm.model.configuration import CrossLMMConfig


def pool_frames(tokens: torch.Tensor, out_grid: int, mode: str, antialias: bool = True) -> torch.Tensor:
    """Pool each frame's ``g x g`` grid to ``out_grid x out_grid``.

    tokens: (frames, g*g, D) in row-major grid order -> (frames, out_grid*out_grid, D).
    ``avg``/``max`` are adaptive (exact blocks when g is a multiple of out_grid, e.g. 27 -> 3 or 1);
    ``bilinear`` resamples, with antialiasing when shrinking (without it 27 -> 3 would read only a few
    patches); LLaVA-OneVision's video pooling is ``bilinear`` without antialias.
    """
    frames, n, dim = tokens.shape
    grid = math.isqrt(n)
    if grid * grid != n:
        raise ValueError(f"cannot pool {n} tokens per frame: not a square grid")
    if out_grid == grid:
        return tokens
    x = tokens.transpose(1, 2).reshape(frames, dim, grid, grid)  # (F, D, g, g)
    if mode == "avg":
        x = F.adaptive_avg_pool2d(x, out_grid)
    elif mode == "max":
        x = F.adaptive_max_pool2d(x, out_grid)
    elif mode == "bilinear":
        x = F.interpolate(
            x, size=(out_grid, out_grid), mode="bilinear", align_corners=False, antialias=antialias
        )
    else:
        raise ValueError(f"unknown pooling mode {mode!r}; expected avg, max or bilinear")
    return x.flatten(2).transpose(1, 2)  # (F, s*s, D)


class PoolingProjector(nn.Sequential):
    """Original patch tokens (F, N, Dv) -> pooled LLM tokens (F, k, D) and the cross-attention memory.

    The sequence's layers are the projector and its only weights: ``linear_1 -> GELU -> linear_2`` for
    ``mlp2x_gelu`` (transformers' LLaVA names, so converted checkpoints map one-to-one) or one linear map.
    Being that ``nn.Sequential`` keeps the state-dict keys ``model.projector.*`` of checkpoints saved before
    pooling and projector became one module.
    """

    def __init__(self, config: CrossLMMConfig, vision_dim: int, text_dim: int):
        if config.projector_type == "mlp2x_gelu":
            super().__init__(
                OrderedDict(
                    linear_1=nn.Linear(vision_dim, text_dim),
                    act=nn.GELU(),
                    linear_2=nn.Linear(text_dim, text_dim),
                )
            )
        elif config.projector_type == "linear":
            super().__init__(nn.Linear(vision_dim, text_dim))
        else:
            raise ValueError(
                f"unknown projector_type {config.projector_type!r}; expected mlp2x_gelu or linear"
            )
        self.tokens_per_frame = config.tokens_per_frame  # the default budget; a call may ask for another
        # A baseline reducer instead of pooling (a plain callable, no weights: not one of the layers).
        self.reducer = build_frame_reducer(
            config.visual_reducer, config.tokens_per_frame, config.visual_reducer_seed
        )
        self.pooling_mode = config.pooling_mode
        self.pooling_antialias = config.pooling_antialias
        self.pool_first = config.pooling_position == "before_projector"
        self.memory_source = config.cross_attention_kv_source if config.resolved_cross_layers() else None
        self.memory_dim = vision_dim if self.memory_source == "encoder" else text_dim  # Dm

    def pool(
        self,
        tokens: torch.Tensor,
        tokens_per_frame: int | None = None,
        frame_index: torch.Tensor | None = None,
        saliency: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(F, N, C) -> (F, k, C), k = ``tokens_per_frame`` (None: the config's; a pooled grid s*s unless a
        reducer runs, whose budget is fixed). ``frame_index`` (F,): each frame's position in its video
        (None: one video), which random drop seeds from; ``saliency`` (F, N): the tower attention the
        salient reducer ranks by (given by its model, ``crosslmm.baselines.salient_model``)."""
        if self.reducer is not None:
            if frame_index is None:
                frame_index = torch.arange(tokens.shape[0])
            if saliency is not None:
                return self.reducer(tokens, frame_index, self.training, saliency=saliency)
            return self.reducer(tokens, frame_index, self.training)
        grid = math.isqrt(tokens_per_frame or self.tokens_per_frame)
        return pool_frames(tokens, grid, self.pooling_mode, self.pooling_antialias)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(F, n, Dv) -> (F, n, D)"""
        return super().forward(tokens)

    def forward(
        self,
        original: torch.Tensor,
        tokens_per_frame: int | None = None,
        frame_index: torch.Tensor | None = None,
        saliency: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """original (F, N, Dv) -> pooled (F, k, D), memory (F, N, Dm) or None without cross-attention.

        ``tokens_per_frame`` k: this call's budget (an elastic model's inputs choose it; None: the config's);
        ``frame_index`` and ``saliency`` as for :meth:`pool`."""
        projected = None
        if self.pool_first:
            pooled = self.project(self.pool(original, tokens_per_frame, frame_index, saliency))  # (F, k, D)
        else:
            projected = self.project(original)  # (F, N, D)
            pooled = self.pool(projected, tokens_per_frame, frame_index, saliency)  # (F, k, D)
        return pooled, self.memory(original, projected)

    def memory(self, original: torch.Tensor, projected: torch.Tensor | None = None) -> torch.Tensor | None:
        """The cross-attention memory of original (F, N, Dv): itself (F, N, Dv), its projection (F, N, D)
        (``projected`` if already computed) or None without cross-attention."""
        if self.memory_source is None:
            return None
        if self.memory_source == "encoder":
            return original
        return projected if projected is not None else self.project(original)
