"""docs/efficiency.md's targets for ``crosslmm bench speed --preset``, from the measured cells."""

from __future__ import annotations

from typing import Any

from crosslmm.bench.targets import Target
from crosslmm.bench.variants import CROSSLMM, FULL, TOWER
from crosslmm.paper import FIG4_CROSSLMM


def _value(cells: dict[str, dict[int, Any]], variant: str, frames: int, key: str) -> float | None:
    cell = cells.get(variant, {}).get(frames)
    return cell.get(key) if isinstance(cell, dict) else None


def preset_targets(cells: dict[str, dict[int, Any]], frames: list[int]) -> list[Target]:
    """docs/efficiency.md's targets for the 7B preset on an H100/H200-class GPU, each at the frame count it names
    (left out where that frame count was not asked for). A cell that did not run (OOM) gives no value."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    targets = [
        Target(
            f"prefill CrossLMM / vision tower at {t} frames",
            ratio(_value(cells, CROSSLMM, t, "prefill_ms"), _value(cells, TOWER, t, "prefill_ms")),
            1.3,
        )
        for t in frames
    ]
    if 256 in frames:
        paper_ms = FIG4_CROSSLMM.prefill_ms[256]
        targets.append(
            Target(
                "prefill ms CrossLMM at 256 frames (paper: 2019)",
                _value(cells, CROSSLMM, 256, "prefill_ms"),
                paper_ms,
            )
        )
    if 128 in frames:
        targets.append(
            Target(
                "prefill CrossLMM / full-token at 128 frames (>= 5x faster)",
                ratio(_value(cells, CROSSLMM, 128, "prefill_ms"), _value(cells, FULL, 128, "prefill_ms")),
                0.2,
            )
        )
    if 256 in frames and _value(cells, TOWER, 256, "peak_mb") is not None:
        targets.append(
            Target(
                "peak MB above weights, CrossLMM at 256 frames (paper: 2530)",
                _value(cells, CROSSLMM, 256, "peak_mb"),
                2500,
            )
        )
    return targets
