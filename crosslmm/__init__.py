"""CrossLMM: long-video LMMs with pooled visual tokens and dual (V2V/T2V) cross-attention.

Importing the package registers CrossLMM with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained(dir)`` works without ``trust_remote_code``.
"""

from crosslmm.model import (
    CrossLMMCache,
    CrossLMMConfig,
    CrossLMMForCausalLM,
    CrossLMMModel,
    CrossLMMProcessor,
)

__version__ = "0.1.0"
__all__ = ["CrossLMMCache", "CrossLMMConfig", "CrossLMMForCausalLM", "CrossLMMModel", "CrossLMMProcessor"]
