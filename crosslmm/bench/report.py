"""Output shared by the benchmarks: a plain-text table, a JSON file and a log-log plot per run."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Right-aligned columns; floats get 4 significant digits, without exponents below 10^4."""
    cells = [list(header)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e3 else f"{value:.0f}"
    return str(value)


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y on log x: 1.0 means linear growth, 2.0 quadratic."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def loglog_panels(
    path: Path,
    panels: Sequence[tuple[str, str, dict[str, tuple[Sequence[float], Sequence[float]]]]],
    suptitle: str,
) -> None:
    """One log-log panel per (title, y label, {series: (frames, values)}); the "vision tower" series is drawn
    dashed: it is the floor every other line is compared with.

    A bare ``Figure`` (no pyplot) renders with Agg when saved, so no backend is switched globally and the
    benchmarks run headless on servers and in tests."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    names = list(dict.fromkeys(name for _, _, series in panels for name in series))
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}  # one colour per series across panels
    fig = Figure(figsize=(5.5 * len(panels), 4.5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, ylabel, series) in zip(axes[0], panels):
        frames = sorted({x for xs, _ in series.values() for x in xs})
        for name, (xs, ys) in series.items():
            style = "--" if name == "vision tower" else "-"
            ax.plot(xs, ys, style, color=colors[name], marker="o", markersize=3, label=name)
        ax.set(xscale="log", yscale="log", xlabel="frames", ylabel=ylabel, title=title)
        ax.set_xticks(frames, [str(x) for x in frames], minor=False)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(suptitle)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The same cells as ``format_table``, as a GitHub Markdown table; columns without text right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    text = [any(isinstance(r[i], str | bool) for r in rows) for i in range(len(header))]
    align = ["---" if t else "---:" for t in text]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
