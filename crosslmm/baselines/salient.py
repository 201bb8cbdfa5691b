"""Salient-token selection with merged context tokens, in the style of VisionZip.

VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025)
keeps the k' "dominant" patches that receive the most attention (from CLIP's CLS token, or averaged over
queries for towers without one) and merges the others into k - k' "contextual" tokens: k - k' targets
spread uniformly over the remaining patches, every other remaining patch joins the target whose key it is
most similar to, and a contextual token is the mean of its group,

    c_j = mean({x_t_j} U {x_i : argmax_l cos(x_i, x_t_l) = j}).

Saliency as VisionZip computes it: the softmax attention of one tower layer (``salient_layer`` in the
config; VisionZip uses the layer before LLaVA's feature layer), averaged over heads, taken from the CLS
query for towers with one (CLIP) and averaged over every patch's query for towers without (SigLIP). The
tower computes it (``VisionTower.tokens_and_attention``, run by
:class:`crosslmm.baselines.salient_model.SalientModel`) and passes it here with the tokens. Simplified here: (1) similarity for the context merge is the cosine of
the features themselves, not of the layer's keys; (2) it runs on the tokens pooling would see (encoder
features before the projector, projected ones after it).

Sizes keep VisionZip's 54 : 10 split of 64 tokens: k_context = min(k - 1, ceil(10 k / 64)), so k = 1 keeps
one dominant patch, k = 2..6 one dominant less than k plus one context token, k = 64 keeps 54 + 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def context_tokens(tokens_per_frame: int) -> int:
    """Merged context tokens among ``tokens_per_frame`` (VisionZip's 10 of 64, at least one dominant)."""
    return min(tokens_per_frame - 1, math.ceil(10 * tokens_per_frame / 64))


@dataclass(frozen=True)
class SalientSelect:
    """(F, N, C) -> (F, k, C): the k' patches that receive the most tower attention, in grid order, then
    k - k' context tokens."""

    tokens_per_frame: int

    def __call__(
        self,
        tokens: torch.Tensor,
        frame_index: torch.Tensor,
        training: bool,
        saliency: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``saliency`` (F, N): the attention each patch receives in the config's ``salient_layer``."""
        frames, patches, dim = tokens.shape
        if saliency is None or saliency.shape != (frames, patches):
            shape = None if saliency is None else tuple(saliency.shape)
            raise ValueError(
                f"the salient reducer ranks patches by tower attention (F, N) = {(frames, patches)}, "
                f"got {shape}"
            )
        n_context = context_tokens(self.tokens_per_frame)
        n_dominant = self.tokens_per_frame - n_context
        dominant_idx = saliency.float().topk(n_dominant, dim=1).indices.sort(dim=1).values  # (F, k')
        dominant = tokens.gather(1, dominant_idx[..., None].expand(-1, -1, dim))
        if n_context == 0:
            return dominant
        is_dominant = torch.zeros_like(saliency, dtype=torch.bool).scatter(1, dominant_idx, True)
        rest_idx = is_dominant.int().argsort(dim=1, stable=True)[:, : patches - n_dominant]  # grid order
        rest = tokens.gather(1, rest_idx[..., None].expand(-1, -1, dim)).float()  # (F, R, C)
        return torch.cat([dominant, merge_into_targets(rest, n_context).to(tokens.dtype)], dim=1)


def merge_into_targets(rest: torch.Tensor, n_context: int) -> torch.Tensor:
    """rest (F, R, C) -> (F, n_context, C): R // n_context-spaced targets, each the mean of its group of
    most cosine-similar patches (a target always joins its own group)."""
    frames, remaining, dim = rest.shape
    targets = torch.arange(n_context, device=rest.device) * (remaining // n_context)  # (c,)
    unit = F.normalize(rest, dim=-1)
    assign = (unit @ unit[:, targets].transpose(1, 2)).argmax(-1)  # (F, R) group of each patch
    assign[:, targets] = torch.arange(n_context, device=rest.device)
    sums = rest.new_zeros(frames, n_context, dim).scatter_add(1, assign[..., None].expand(-1, -1, dim), rest)
    counts = rest.new_zeros(frames, n_context).scatter_add(
        1, assign, torch.ones_like(assign, dtype=rest.dtype)
    )
    return sums / counts[..., None]
