"""Token merging in the style of ToMe: bipartite soft matching, repeated down to ``k`` tokens per frame.

ToMe (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023) removes r tokens per step: split the
tokens alternately into sets A and B, give each a in A its most similar b in B (cosine of keys),
keep the r most similar edges and merge each such a into its b by a size-weighted mean,

    x_b <- (s_b x_b + sum_{a -> b} s_a x_a) / (s_b + sum_{a -> b} s_a),   s_b <- s_b + sum s_a.

Simplified here: ToMe merges inside every ViT block (r per block, on attention keys); we run it after the
tower on the tokens pooling would see (features, not keys), repeating the step with
r = min(n - k, max(1, floor(n / 4))) until k tokens are left (729 -> 4: 20 steps). Sizes are kept through
every step, so each output token is the size-weighted mean of exactly the patches it holds
(:meth:`ToMeMerge.merge` returns them). ToMe's proportional attention (log s added to the attention logits
of a merged key) is the merge baseline's model, :mod:`crosslmm.baselines.merge_model`, which reads them.
A quarter per step, not ToMe's ceiling of half: r = n / 2 would merge every A token, similar or not (on two
alternating clusters it averages them). Between steps tokens go back to grid order (of the position each
kept: an unmerged token's own, a merged group's B token's), so A and B stay interleaved in space as in ToMe's
first step; the output is in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def bipartite_merge(
    x: torch.Tensor, size: torch.Tensor, position: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ToMe step: x (F, n, C) means, size (F, n) patches per token, position (F, n) grid index of each
    token -> the same with n - r tokens (r <= n // 2). A = even, B = odd slots."""
    a, b = x[:, ::2], x[:, 1::2]
    size_a, size_b = size[:, ::2], size[:, 1::2]
    similarity = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(1, 2)  # (F, nA, nB)
    best, partner = similarity.max(-1)  # (F, nA)
    order = best.argsort(dim=1, descending=True, stable=True)
    merged, unmerged = order[:, :r], order[:, r:]  # slots of A
    dst = partner.gather(1, merged)  # (F, r) slots of B
    dim = x.shape[-1]
    src_size = size_a.gather(1, merged)
    src_sum = a.gather(1, merged[..., None].expand(-1, -1, dim)) * src_size[..., None]
    b_sum = (b * size_b[..., None]).scatter_add(1, dst[..., None].expand(-1, -1, dim), src_sum)
    size_b = size_b.scatter_add(1, dst, src_size)
    keep_a = a.gather(1, unmerged[..., None].expand(-1, -1, dim))
    x = torch.cat([keep_a, b_sum / size_b[..., None]], dim=1)
    size = torch.cat([size_a.gather(1, unmerged), size_b], dim=1)
    position = torch.cat([position[:, ::2].gather(1, unmerged), position[:, 1::2]], dim=1)
    return x, size, position


@dataclass(frozen=True)
class ToMeMerge:
    """(F, N, C) -> (F, k, C): bipartite soft matching repeated until k tokens per frame remain."""

    tokens_per_frame: int

    def __call__(self, tokens: torch.Tensor, frame_index: torch.Tensor, training: bool) -> torch.Tensor:
        return self.merge(tokens)[0]

    def merge(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (F, N, C) -> merged tokens (F, k, C), each the size-weighted mean of the patches it holds,
        and their sizes (F, k): patches per token, summing to N per frame."""
        frames, patches, _ = tokens.shape
        x = tokens.float()
        size = x.new_ones(frames, patches)
        position = torch.arange(patches, device=tokens.device).expand(frames, -1)
        while x.shape[1] > self.tokens_per_frame:
            r = min(x.shape[1] - self.tokens_per_frame, max(1, x.shape[1] // 4))
            x, size, position = bipartite_merge(x, size, position, r)
            position, order = position.sort(dim=1)
            x, size = x.gather(1, order[..., None].expand_as(x)), size.gather(1, order)
        return x.to(tokens.dtype), size
