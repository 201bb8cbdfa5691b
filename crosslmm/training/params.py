"""Which parameters train, and with which learning rate.

Parameters are named by component (see ``COMPONENTS``) from their module path in CrossLMMForCausalLM, with
or without a peft wrapper. Learning-rate groups follow the paper's split: new blocks (projector and
cross-attention) at ``lr``, the LLM at ``llm_lr``, the vision tower at ``vision_lr``.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from crosslmm.training.config import COMPONENTS, TrainConfig

_PEFT_PREFIX = "base_model.model."
_CROSS = re.compile(r"^model\.cross_layers\.\d+\.(v2v|t2v|mlp)\.")
_GATE = re.compile(r"^model\.cross_layers\.(\d+)\.(v2v|t2v|mlp)\.gate$")


def component_of(name: str) -> str:
    """The component a parameter belongs to, e.g. ``model.cross_layers.3.t2v.q_proj.weight`` -> ``t2v``."""
    name = name.removeprefix(_PEFT_PREFIX)
    if name.startswith("model.vision_tower."):
        return "vision"
    if name.startswith(("model.projector.", "model.video_end_embedding")):  # both map vision into the LLM
        return "projector"
    cross = _CROSS.match(name)
    if cross:
        return {"mlp": "cross_mlp"}.get(cross.group(1), cross.group(1))
    if name.startswith(("model.language_model.", "lm_head.")):
        return "llm"
    raise ValueError(f"parameter {name!r} belongs to no known component {COMPONENTS}")


def set_trainable(model: nn.Module, train: list[str], lora: bool) -> dict[str, int]:
    """Freeze everything outside ``train``; with LoRA the LLM trains only through its adapters.

    Returns trainable parameter counts per component, for the log.
    """
    counts = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():
        part = component_of(name)
        p.requires_grad_(part in train and not (lora and part == "llm" and "lora_" not in name))
        if p.requires_grad:
            counts[part] += getattr(p, "ds_numel", p.numel())  # ZeRO-3 partitions hold 0 elements
    return counts


def gate_of(name: str) -> tuple[int, str] | None:
    """(layer, block) of a cross-attention block's tanh gate (block: v2v, t2v or mlp), with or without a
    peft wrapper; None for any other parameter."""
    gate = _GATE.match(name.removeprefix(_PEFT_PREFIX))
    return (int(gate.group(1)), gate.group(2)) if gate else None


def is_gate(name: str) -> bool:
    return gate_of(name) is not None


def separate_gates(config: TrainConfig) -> bool:
    """Whether gates get their own optimizer group (the paper's recipe keeps them with the other new blocks)."""
    return config.gate_lr_scale != 1.0 or not config.gate_lr_decay


def lr_groups(model: nn.Module, config: TrainConfig, decay_names: set[str]) -> list[dict]:
    """Optimizer parameter groups: (new blocks | llm | vision) x (weight decay | none), and the gates on their
    own (``gate_lr_scale``, no weight decay; ``decays`` False when they skip the schedule's decay) when
    :func:`separate_gates`; empty groups dropped."""
    rates = {"llm": config.llm_lr or config.lr, "vision": config.vision_lr or config.lr}
    gates = separate_gates(config)
    groups: dict[tuple[float, float, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if gates and is_gate(name):
            key = (config.lr * config.gate_lr_scale, 0.0, config.gate_lr_decay)
        else:
            key = (
                rates.get(component_of(name), config.lr),
                config.weight_decay if name in decay_names else 0.0,
                True,
            )
        groups.setdefault(key, []).append(p)
    return [
        {"params": ps, "lr": lr, "weight_decay": wd, "decays": decays}
        for (lr, wd, decays), ps in groups.items()
    ]


def gate_values(model: nn.Module) -> dict[str, float]:
    """``gate/<block>.<layer>`` -> tanh(gate) of every cross-attention gate, e.g. ``gate/t2v.0``, for the logs.

    Under ZeRO-3 the gates are gathered first (a collective: every rank must call this)."""
    named = [(name, p) for name, p in model.named_parameters() if is_gate(name)]
    if named and hasattr(named[0][1], "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named]):
            return gate_values_of(named)
    return gate_values_of(named)


def gate_values_of(named: list[tuple[str, nn.Parameter]]) -> dict[str, float]:
    values = {}
    for name, p in named:
        layer, block = gate_of(name)
        values[f"gate/{block}.{layer}"] = float(p.detach().float().tanh().reshape(-1)[0])
    return values


def close_gates(model: nn.Module, blocks: tuple[str, ...]) -> int:
    """Set every gate of the named blocks (v2v, t2v, mlp) to 0 in place: tanh(0) = 0 removes the block's
    update exactly, the ablation of a trained model without it. Returns how many gates were closed."""
    closed = 0
    for name, p in model.named_parameters():
        gate = gate_of(name)
        if gate and gate[1] in blocks:
            with torch.no_grad():
                p.zero_()
            closed += 1
    return closed
