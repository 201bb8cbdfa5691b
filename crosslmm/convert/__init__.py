"""Checkpoint conversion between CrossLMM and other video LMMs (one state-dict adapter per source)."""

from crosslmm.convert.llava_onevision import convert_llava_onevision, export_llava_onevision
from crosslmm.convert.state_dict_adapter import KeyMismatchError, StateDictAdapter

__all__ = ["KeyMismatchError", "StateDictAdapter", "convert_llava_onevision", "export_llava_onevision"]
