"""Draw an :class:`~crosslmm.explain.maps.Explanation` over its frames (matplotlib, no display needed).

Heatmaps are drawn blocky, one square per patch, over the whole frame: the processor resizes frames to the
tower's square input without cropping, so patch (r, c) covers the same share of every frame.
"""

from __future__ import annotations

import os
import textwrap

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend, safe in the web app's worker threads

from crosslmm.explain.maps import Explanation

CELL = 1.3  # inches per frame
MAX_WIDTH = 26.0  # inches: long videos get smaller frames, never a wider figure
ALPHA = 0.55
DPI = 110


def _overlay(ax, frame: np.ndarray, heat: np.ndarray | None, vmax: float) -> None:
    """One frame (H, W, 3) with an optional (g, g) heatmap stretched over it."""
    ax.imshow(frame, extent=(0, 1, 1, 0))
    if heat is not None:
        ax.imshow(heat, cmap="inferno", alpha=ALPHA, vmin=0, vmax=vmax, extent=(0, 1, 1, 0))
    ax.set_xticks([])
    ax.set_yticks([])


def _grid_figure(rows: int, frames: int, extra: int = 0) -> tuple[Figure, np.ndarray, float]:
    """A figure of ``rows`` x ``frames`` image cells plus ``extra`` full-width rows; returns the cell size."""
    cell = min(CELL, MAX_WIDTH / max(frames, 1))
    fig = Figure(figsize=(cell * frames + 1.2, cell * rows + 2.0 * extra + 0.9), layout="constrained")
    spec = fig.add_gridspec(rows + extra, frames, height_ratios=[cell] * rows + [2.0] * extra)
    axes = np.array([[fig.add_subplot(spec[r, f]) for f in range(frames)] for r in range(rows)])
    return fig, axes, cell


def _title(expl: Explanation, what: str) -> str:
    text = f"{what} | Q: {expl.question} | A: {expl.answer or '(nothing)'}"
    return "\n".join(textwrap.wrap(text, 160))


def _frame_labels(axes_row: np.ndarray, expl: Explanation) -> None:
    for ax, index in zip(axes_row, expl.frame_indices):
        ax.set_title(f"#{index}", fontsize=7)


def t2v_figure(expl: Explanation, frames: np.ndarray, token: int = 0) -> Figure:
    """Frames on top, then one row per layer and the layer average of the T2V map of answer token
    ``token``; below, the attention mass per frame (bars: layer average, dots: each layer)."""
    maps = expl.t2v[token]  # (L, F, g, g)
    rows = [(f"layer {layer}", m) for layer, m in zip(expl.layers, maps)]
    if len(rows) > 1:
        rows.append(("mean", maps.mean(0)))
    fig, axes, _ = _grid_figure(len(rows) + 1, len(frames), extra=1)
    for f, frame in enumerate(frames):
        _overlay(axes[0, f], frame, None, 1.0)
    _frame_labels(axes[0], expl)
    axes[0, 0].set_ylabel("frames", fontsize=8)
    for r, (label, heat) in enumerate(rows, start=1):
        vmax = float(heat.max()) or 1.0  # one scale per row, so frames compare
        for f, frame in enumerate(frames):
            _overlay(axes[r, f], frame, heat[f], vmax)
        axes[r, 0].set_ylabel(label, fontsize=8)
    mass = expl.frame_mass()[token]  # (L, F)
    bars = fig.add_subplot(fig.axes[0].get_gridspec()[-1, :])
    x = np.arange(len(frames))
    bars.bar(x, mass.mean(0), color="tab:orange", label="layer mean")
    for layer, row in zip(expl.layers, mass):
        bars.plot(x, row, "o", ms=3, label=f"layer {layer}")
    bars.set_xticks(x, [str(i) for i in expl.frame_indices], fontsize=7)
    bars.set_xlim(-0.5, len(frames) - 0.5)
    bars.set_xlabel("frame (source index)")
    bars.set_ylabel("T2V mass")
    bars.legend(fontsize=7, loc="upper right")
    token_text = expl.tokens[token] if token < len(expl.tokens) else ""
    fig.suptitle(
        _title(expl, f"T2V of the position predicting answer token {token} {token_text!r}"), fontsize=9
    )
    return fig


def tokens_figure(expl: Explanation, frames: np.ndarray) -> Figure:
    """One row per explained answer token: its layer-averaged T2V map over every frame."""
    maps = expl.t2v.mean(1)  # (tokens, F, g, g)
    fig, axes, _ = _grid_figure(len(maps), len(frames))
    _frame_labels(axes[0], expl)
    for r, heat in enumerate(maps):
        vmax = float(heat.max()) or 1.0
        for f, frame in enumerate(frames):
            _overlay(axes[r, f], frame, heat[f], vmax)
        axes[r, 0].set_ylabel(repr(expl.tokens[r]), fontsize=8)
    fig.suptitle(_title(expl, "T2V per answer token (layer mean)"), fontsize=9)
    return fig


def v2v_figure(expl: Explanation, frames: np.ndarray) -> Figure:
    """One row per layer: each frame's pooled tokens' V2V attention over its own patches (token mean)."""
    maps = expl.v2v.mean(2)  # (L, F, g, g)
    fig, axes, _ = _grid_figure(len(maps), len(frames))
    _frame_labels(axes[0], expl)
    for r, (layer, heat) in enumerate(zip(expl.layers, maps)):
        vmax = float(heat.max()) or 1.0
        for f, frame in enumerate(frames):
            _overlay(axes[r, f], frame, heat[f], vmax)
        axes[r, 0].set_ylabel(f"layer {layer}", fontsize=8)
    fig.suptitle(_title(expl, "V2V: pooled tokens over their frame's patches"), fontsize=9)
    return fig


def gates_figure(expl: Explanation) -> Figure:
    """tanh(gate) of every block, grouped by layer: near 0 a block is closed, near +-1 fully open."""
    kinds = sorted({kind for layer in expl.gates for kind in layer})
    fig = Figure(figsize=(max(3.0, 1.2 * len(expl.layers) + 1.5), 2.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(len(kinds), 1)
    x = np.arange(len(expl.layers))
    for i, kind in enumerate(kinds):
        values = [layer.get(kind, np.nan) for layer in expl.gates]
        ax.bar(x + (i - (len(kinds) - 1) / 2) * width, values, width, label=kind)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylim(-1, 1)
    ax.set_xticks(x, [f"layer {layer}" for layer in expl.layers])
    ax.set_ylabel("tanh(gate)")
    ax.legend(fontsize=7)
    ax.set_title("cross-attention gates", fontsize=9)
    return fig


def write_all(expl: Explanation, frames: np.ndarray, out: str | os.PathLike) -> list[str]:
    """Every figure that applies to this model, plus ``explanation.json``, into ``out``; returns the paths."""
    os.makedirs(out, exist_ok=True)
    figures = {"gates.png": gates_figure(expl)}
    if expl.t2v is not None:
        figures["t2v.png"] = t2v_figure(expl, frames)
        if len(expl.tokens) > 1:
            figures["t2v_tokens.png"] = tokens_figure(expl, frames)
    if expl.v2v is not None:
        figures["v2v.png"] = v2v_figure(expl, frames)
    paths = []
    for name, fig in figures.items():
        fig.savefig(os.path.join(out, name), dpi=DPI)
        paths.append(os.path.join(out, name))
    expl.save(os.path.join(out, "explanation.json"))
    return [*paths, os.path.join(out, "explanation.json")]
