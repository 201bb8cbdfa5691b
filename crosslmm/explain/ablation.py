"""Attention ablations for the checks of :mod:`crosslmm.explain.check`: the model as it is, but with one kind of
cross-attention block attending uniformly.

:func:`uniform_attention` zeroes the projected queries of every block of one kind (``q_proj``'s output,
through a PyTorch forward hook that lives only inside the ``with`` block). With every query zero, every
score ``q . k / sqrt(d)`` is zero, so the softmax is uniform over exactly the keys the block reads (for T2V:
the original tokens of the frames each text position may see; padding is never among them) and the block
returns ``tanh(gate) * o_proj(mean of those values)``. Keys, values, ``o_proj`` and the gate are untouched,
SDPA and the eager capture path alike, and no module's code changes: outside the block the model is
bit-for-bit what it was.

Why it is the control of the marker check: a model that still answers under uniform T2V weights reads the
answer from an average of the memory, so where its attention peaks says nothing about what it needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

KINDS = ("v2v", "t2v")


def _zero_queries(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(output)


@contextmanager
def uniform_attention(model: nn.Module, kind: str = "t2v") -> Iterator[int]:
    """Inside the ``with`` block, every ``kind`` ("t2v" or "v2v") cross-attention block of ``model`` attends
    with uniform weights; yields how many blocks that is. Raises when the model has none of that kind."""
    from crosslmm.explain.maps import dual_layers

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    blocks = [getattr(layer, kind) for layer in dual_layers(model) if getattr(layer, kind) is not None]
    if not blocks:
        raise ValueError(f"this model has no {kind} cross-attention to make uniform")
    handles = [block.q_proj.register_forward_hook(_zero_queries) for block in blocks]
    try:
        yield len(blocks)
    finally:
        for handle in handles:
            handle.remove()
