"""CrossLMM model: config, modeling, processor.

The classes load on first access (``from crosslmm.model import CrossLMMForCausalLM``), so the CLI builds
``crosslmm.model.commands``' parser without importing torch. Registration with transformers' Auto classes:
crosslmm/registration.py.
"""

from __future__ import annotations

__all__ = ["CrossLMMCache", "CrossLMMConfig", "CrossLMMForCausalLM", "CrossLMMModel", "CrossLMMProcessor"]


def __getattr__(name: str):
    if name in __all__:
        import crosslmm

        return getattr(crosslmm, name)  # crosslmm.__getattr__ imports the defining module
    raise AttributeError(f"module 'crosslmm.model' has no attribute {name!r}")
