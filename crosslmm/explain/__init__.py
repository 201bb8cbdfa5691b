"""Attention maps of a CrossLMM answer (``crosslmm explain``, docs/explain.md)."""
