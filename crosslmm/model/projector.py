"""Vision-to-LLM projector (LLaVA's ``mlp2x_gelu`` or a single linear map)."""

from __future__ import annotations

from torch import nn


def build_projector(kind: str, vision_dim: int, text_dim: int) -> nn.Module:
    """Linear(Dv, D) -> GELU -> Linear(D, D) for ``mlp2x_gelu``, as in LLaVA; names ``linear_1``/``linear_2``
    match transformers' LLaVA projectors so converted checkpoints map one-to-one."""
    if kind == "linear":
        return nn.Sequential(nn.Linear(vision_dim, text_dim))
    if kind == "mlp2x_gelu":
        return MLP2xGelu(vision_dim, text_dim)
    raise ValueError(f"unknown projector_type {kind!r}; expected mlp2x_gelu or linear")


class MLP2xGelu(nn.Module):
    def __init__(self, vision_dim: int, text_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(vision_dim, text_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_dim, text_dim)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))
