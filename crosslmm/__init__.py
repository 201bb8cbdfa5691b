"""CrossLMM: long-video LMMs with pooled visual tokens and dual (V2V/T2V) cross-attention.

Importing the package registers CrossLMM with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained(dir)`` works without ``trust_remote_code``. The import itself stays
light (no torch, no transformers: ``crosslmm --help`` answers at once): registration happens as soon as
transformers is imported (crosslmm/registration.py), and the model classes below load on first use.
"""

from __future__ import annotations

import importlib

from crosslmm.registration import register_when_transformers_loads

__version__ = "0.1.0"
__all__ = ["CrossLMMCache", "CrossLMMConfig", "CrossLMMForCausalLM", "CrossLMMModel", "CrossLMMProcessor"]

_CLASSES = {
    "CrossLMMCache": "crosslmm.model.cache",
    "CrossLMMConfig": "crosslmm.model.configuration",
    "CrossLMMForCausalLM": "crosslmm.model.modeling",
    "CrossLMMModel": "crosslmm.model.modeling",
    "CrossLMMProcessor": "crosslmm.model.processing",
}


def __getattr__(name: str):
    """``crosslmm.CrossLMMForCausalLM`` and the other model classes, imported on first access."""
    if name in _CLASSES:
        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module 'crosslmm' has no attribute {name!r}")


register_when_transformers_loads()
