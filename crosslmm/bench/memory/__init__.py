"""``crosslmm bench memory``: ``measure.py`` (peak memory of one training step) and ``report.py``."""
