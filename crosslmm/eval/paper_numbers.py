"""The benchmarks we evaluate on and the paper's CrossLMM numbers for them (arXiv 2505.17020 v1, Table 1).

Benchmarks are data: the lmms-eval 0.7.3 task, the metric its aggregation reports and the factor that
turns it into a percentage. The paper reports no EgoSchema number, so that column has none.
"""

from __future__ import annotations

from dataclasses import dataclass


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
