"""``crosslmm web``: a gradio page over one CrossLMM (docs/explain.md)."""
