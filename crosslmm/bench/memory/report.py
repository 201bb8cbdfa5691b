"""``crosslmm bench memory``: every (dtype, vision frozen/trained) case of ``measure.py`` in each mode, as a
table, ``memory.json`` and a bar chart ``memory.png``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from crosslmm.bench.memory.measure import CROSSLMM, LABELLED, MODES, REFERENCE, UINT8, MemorySpec, run_memory
from crosslmm.bench.report import format_table, write_json


def bench_memory(dtypes: list[str], visions: list[str], base: MemorySpec, out: Path) -> None:
    """Run ``base`` at each dtype and vision setting; print the table, write the JSON and the plot."""
    cases = []
    for dtype in dtypes:
        for vision in visions:
            spec = replace(base, dtype=dtype, train_vision=vision == "trained")
            cases.append({"dtype": dtype, "vision": vision, **run_memory(spec)})
    rows = []
    for case in cases:
        r = case["results"]
        rows.append(
            [case["dtype"], case["vision"]]
            + [r[m]["peak_mb"] for m in MODES]
            + [case["peak_ratio"], r[REFERENCE]["pixels_mb"], r[CROSSLMM]["pixels_mb"]]
            + [r[REFERENCE]["logits_mb"], r[CROSSLMM]["logits_mb"], r[REFERENCE]["loss"], r[CROSSLMM]["loss"]]
        )
    spec, first = cases[0]["spec"], cases[0]["results"][REFERENCE]
    print(
        f"Peak memory (MB) of a training step above weights and optimizer state: {spec['frames']} frames at "
        f"{spec['image_size']} px, vocab {spec['vocab_size']}, batch {spec['batch']}, {first['positions']} "
        f"positions, {first['labelled']} labelled"
    )
    header = ["dtype", "vision", "reference", "labelled logits only", "uint8 frames only", "crosslmm"]
    header += ["crosslmm/reference", "pixels MB reference", "crosslmm", "logits MB reference", "crosslmm"]
    header += ["loss reference", "crosslmm"]
    print(format_table(header, rows))
    write_json(out / "memory.json", {"cases": cases})
    _plot(out / "memory.png", cases)
    print(f"\nwrote {out / 'memory.json'} and {out / 'memory.png'}")


_LEGEND = {
    REFERENCE: "reference: full logits, fp32 frames",
    LABELLED: "labelled-only logits, fp32 frames",
    UINT8: "full logits, uint8 frames",
    CROSSLMM: "crosslmm: labelled-only logits, uint8 frames",
}


def _plot(path: Path, cases: list[dict[str, Any]]) -> None:
    from matplotlib.figure import Figure  # no pyplot: renders with Agg when saved, no global backend

    labels = [f"{c['dtype']}\nvision {c['vision']}" for c in cases]
    fig = Figure(figsize=(2.2 * len(cases) + 2, 4))
    ax = fig.subplots()
    width = 0.2
    for k, mode in enumerate(MODES):
        xs = [i + (k - (len(MODES) - 1) / 2) * width for i in range(len(cases))]
        peaks = [c["results"][mode]["peak_mb"] for c in cases]
        bars = ax.bar(xs, peaks, width, label=_LEGEND[mode], color=f"C{k}")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(cases)), labels, fontsize=8)
    ax.set_ylabel("peak MB above weights")
    spec = cases[0]["spec"]
    ax.set_title(
        f"One training step, tiny model, vocab {spec['vocab_size']}, {spec['frames']} frames", fontsize=9
    )
    top = max(c["results"][m]["peak_mb"] for c in cases for m in MODES)
    ax.set_ylim(0, 1.35 * top)  # room for the legend above the bars
    ax.legend(fontsize=8, ncol=2, loc="upper center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
