"""Checkpoint conversion between CrossLMM and other video LMMs (one state-dict adapter per source).

The names below load on first access, so the CLI builds ``crosslmm.convert.commands``' parser without torch.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "KeyMismatchError": "crosslmm.convert.state_dict_adapter",
    "StateDictAdapter": "crosslmm.convert.state_dict_adapter",
    "convert_llava_onevision": "crosslmm.convert.llava_onevision",
    "export_llava_onevision": "crosslmm.convert.llava_onevision",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'crosslmm.convert' has no attribute {name!r}")
