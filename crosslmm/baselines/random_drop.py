"""Random token drop: keep ``k`` patches per frame chosen at random, in grid order.

A strong baseline in recent pruning benchmarks (e.g. Wen et al., "Token Pruning in Multimodal Large
Language Models: Are We Solving the Right Problem?", 2025): kept = sort(randperm(N)[:k]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class RandomDrop:
    """(F, N, C) -> (F, k, C): k random patches of each frame, kept in row-major grid order.

    Deterministic at inference: frame ``i`` of a video (its position in the video, counting frames of a
    streamed prefix) keeps the patches ranked highest by N uniform draws of
    ``numpy.random.default_rng([seed, i])`` (a SeedSequence of both numbers), so the same video gives the same tokens whatever its batch or device, while
    consecutive frames keep different patches (over a video every position is seen). In training each call
    redraws from the global RNG (an augmentation; reproducible under ``torch.manual_seed``).
    """

    tokens_per_frame: int
    seed: int = 0

    def scores(self, frame_index: torch.Tensor, patches: int) -> torch.Tensor:
        """(F,) positions of frames in their videos -> (F, N) fixed random scores."""
        rows = [np.random.default_rng([self.seed, i]).random(patches) for i in frame_index.tolist()]
        return torch.from_numpy(np.stack(rows))

    def __call__(self, tokens: torch.Tensor, frame_index: torch.Tensor, training: bool) -> torch.Tensor:
        frames, patches, dim = tokens.shape
        if training:
            scores = torch.rand(frames, patches, device=tokens.device)
        else:
            scores = self.scores(frame_index, patches).to(tokens.device)
        kept = scores.topk(self.tokens_per_frame, dim=1).indices.sort(dim=1).values  # (F, k)
        return tokens.gather(1, kept[..., None].expand(-1, -1, dim))
