"""Analytic prefill FLOPs (``crosslmm bench flops``): ``analytic.py`` counts them from the HF configs (layer
shapes in ``shapes.py``), ``decode.py`` the per-token decode FLOPs and the cache bytes, ``report.py`` sweeps
frame counts into tables, JSON and a plot.

The counts are the package's interface (the demo, ``compare`` and ``bench speed`` cost their models with
them), so they are importable from here: ``from crosslmm.bench.flops import prefill_flops``.
"""

from crosslmm.bench.flops.analytic import (
    PAPER_TFLOPS,
    FlopsBreakdown,
    at_budget,
    cross_attention_flops,
    decoder_tokens_per_layer,
    flop_counter,
    full_token_baseline_flops,
    paper_convention_flops,
    prefill_flops,
    salient_ranking_flops,
    vision_tower_flops,
)
from crosslmm.bench.flops.decode import CacheBytes, cache_bytes, decode_flops

__all__ = [
    "PAPER_TFLOPS",
    "CacheBytes",
    "cache_bytes",
    "decode_flops",
    "FlopsBreakdown",
    "at_budget",
    "cross_attention_flops",
    "decoder_tokens_per_layer",
    "flop_counter",
    "full_token_baseline_flops",
    "paper_convention_flops",
    "prefill_flops",
    "salient_ranking_flops",
    "vision_tower_flops",
]
