"""The paper's numbers that the code prints beside its own (arXiv 2505.17020 v1), in the order of
docs/paper.md: section 4, Table 1 (the benchmarks we evaluate on and the CrossLMM rows); section 5, Fig. 4 and
Table 6 (efficiency).

Benchmarks are data: the lmms-eval 0.7.3 task, the metric its aggregation reports and the factor that
turns it into a percentage. The paper reports no EgoSchema number, so that column has none.

The efficiency numbers were measured by the authors on 8 H800s at 32/64/128/256 frames; the model size and
tokens per frame of the CrossLMM column in Fig. 4 are not stated (the FLOPs fit the 7B at 9 tokens per frame,
see ``crosslmm.bench.flops.paper_convention_flops``).
"""

from __future__ import annotations

from dataclasses import dataclass

# Section 4: evaluation (Table 1)


@dataclass(frozen=True)
class Benchmark:
    column: str  # table header
    task: str  # lmms-eval task or group name
    metric: str  # metric name in the results JSON (before the ",<filter>" suffix)
    scale: float  # multiply by this to get a percentage (some tasks report fractions)


BENCHMARKS = (
    # A group without an aggregate metric of its own: its score is the mean over its 20 subtasks.
    Benchmark("MVBench", "mvbench", "mvbench_accuracy", 1.0),
    Benchmark("PerceptionTest (val)", "perceptiontest_val_mc", "accuracy", 100.0),
    Benchmark("LongVideoBench (val)", "longvideobench_val_v", "lvb_acc", 100.0),
    Benchmark("MLVU (dev, M-avg)", "mlvu_dev", "mlvu_percetion_score", 1.0),  # sic: lmms-eval's spelling
    Benchmark("Video-MME (w/o subs)", "videomme", "videomme_perception_score", 1.0),
    Benchmark("Video-MME (w/ subs)", "videomme_w_subtitle", "videomme_perception_score", 1.0),
    # The full EgoSchema is scored by an online server; its 500-question subset ships with answers.
    Benchmark("EgoSchema (subset)", "egoschema_subset", "score", 100.0),
)

# Table 1, CrossLMM rows, in BENCHMARKS order (None: not reported).
PAPER_ROWS: dict[str, tuple[float | None, ...]] = {
    "CrossLMM-2B, 1 tok/frame": (58.6, 58.1, 47.3, 57.6, 55.5, 58.9, None),
    "CrossLMM-2B, 9 tok/frame": (63.5, 63.5, 51.8, 61.0, 59.1, 61.3, None),
    "CrossLMM-7B, 1 tok/frame": (62.7, 64.8, 54.5, 64.0, 61.3, 63.7, None),
    "CrossLMM-7B, 9 tok/frame": (68.2, 68.4, 56.0, 67.2, 62.6, 64.7, None),
    "CrossLMM-7B (ViT-G), 16 tok/frame": (68.8, 71.4, 60.4, 70.7, 65.4, 67.6, None),
}


# Section 5: efficiency (Fig. 4, Table 6)


@dataclass(frozen=True)
class PaperEfficiency:
    """One model's curve in a figure or table: values per frame count."""

    model: str
    memory_mb: dict[int, float]
    tflops: dict[int, float]
    prefill_ms: dict[int, float]


# Fig. 4. The text gives 2531 MB and 1975 ms for CrossLMM at 256 frames; the figure's numbers are kept.
FIG4_LLAVA_OV = PaperEfficiency(
    model="LLaVA-OneVision-7B",
    memory_mb={32: 4858, 64: 8640, 128: 16206, 256: 20208},
    tflops={32: 57, 64: 113.56, 128: 226.67, 256: 316.88},
    prefill_ms={32: 554, 64: 1129, 128: 2504, 256: 3978},
)
FIG4_CROSSLMM = PaperEfficiency(
    model="CrossLMM-7B",
    memory_mb={32: 1753, 64: 1864, 128: 2087, 256: 2530},
    tflops={32: 13.17, 64: 25.92, 128: 51.43, 256: 102.42},
    prefill_ms={32: 335, 64: 578, 128: 1063, 256: 2019},
)
# Table 6 (tokens per frame not stated; the FLOPs fit only 1: crosslmm.bench.flops.paper_convention_flops).
TABLE6_CROSSLMM_2B = PaperEfficiency(
    model="CrossLMM-2B",
    memory_mb={32: 715.61, 64: 825.21, 128: 1046.68, 256: 1490.25},
    tflops={32: 10.93, 64: 21.77, 128: 43.46, 256: 86.82},
    prefill_ms={32: 264.06, 64: 505.50, 128: 909.77, 256: 1698.12},
)
