"""Which parameters train, and with which learning rate.

Parameters are named by component (see ``COMPONENTS``) from their module path in CrossLMMForCausalLM, with
or without a peft wrapper. Learning-rate groups follow the paper's split: new blocks (projector and
cross-attention) at ``lr``, the LLM at ``llm_lr``, the vision tower at ``vision_lr``.
"""

from __future__ import annotations

import re

from torch import nn

from crosslmm.training.config import COMPONENTS, TrainConfig

_PEFT_PREFIX = "base_model.model."
_CROSS = re.compile(r"^model\.cross_layers\.\d+\.(v2v|t2v|mlp)\.")


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


def lr_groups(model: nn.Module, config: TrainConfig, decay_names: set[str]) -> list[dict]:
    """Optimizer parameter groups: (new blocks | llm | vision) x (weight decay | none), empty ones dropped."""
    rates = {"llm": config.llm_lr or config.lr, "vision": config.vision_lr or config.lr}
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (
                rates.get(component_of(name), config.lr),
                config.weight_decay if name in decay_names else 0.0,
            )
            groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
