"""Parameter-free per-frame pooling of a square patch grid to ``tokens_per_frame`` tokens."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
    x = tokens.transpose(1, 2).reshape(frames, dim, grid, grid)
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
    return x.flatten(2).transpose(1, 2)
