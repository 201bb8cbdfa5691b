"""The needle test's report: accuracy heatmaps (depth x frames) per variant, mean and per seed, against the
majority floor, and paired per-seed comparisons per video length (results.json, results.md, needle.png)."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path

from crosslmm.demo.report import write_outputs
from crosslmm.demo.stats import paired, verdict

# What CrossLMM is compared with, seed by seed, at each length (accuracy averaged over the depths).
PAIRS = (("crosslmm", "pool"), ("crosslmm", "full"))
NAMES = {
    "full": "full tokens",
    "pool": "pool-only",
    "pool_v2v": "pool + V2V",
    "pool_t2v": "pool + T2V",
    "crosslmm": "CrossLMM",
}


def summarise(
    scored: list[dict],
    skipped: list[dict],
    floors: dict[int, tuple[str, float]],
    settings,
    source: Path,
    seconds: float,
) -> dict:
    """Per variant: the mean and per-seed accuracy of every (depth, frames) cell (None where the model was
    skipped), the per-seed accuracy of each length averaged over depths, how well-formed the answers were,
    and the paired comparisons. ``floors``: frames -> (the most common answer, its share)."""
    depths, lengths = list(settings.depths), list(settings.frames)
    variants = [v for v in settings.variants if any(s["variant"] == v for s in scored + skipped)]
    heatmaps, by_length, form = {}, {}, {}
    for name in variants:
        mine = {(s["seed"], s["frames"], s["depth"]): s["accuracy"] for s in scored if s["variant"] == name}
        seeds = sorted({s["seed"] for s in scored + skipped if s["variant"] == name})
        per_seed = {
            seed: [[mine.get((seed, f, d)) for f in lengths] for d in depths] for seed in seeds
        }  # [depth][frames]
        mean = [
            [_mean([per_seed[seed][i][j] for seed in seeds]) for j in range(len(lengths))]
            for i in range(len(depths))
        ]
        heatmaps[name] = dict(seeds=seeds, mean=mean, per_seed={str(k): v for k, v in per_seed.items()})
        form[name] = {
            key: {
                str(f): _mean([s[key] for s in scored if s["variant"] == name and s["frames"] == f])
                for f in lengths
            }
            for key in ("well_formed", "lenient_accuracy")
        }
        by_length[name] = {
            str(f): {str(seed): _mean([per_seed[seed][i][j] for i in range(len(depths))]) for seed in seeds}
            for j, f in enumerate(lengths)
        }
    comparisons = []
    for a, b in PAIRS:
        if a not in by_length or b not in by_length:
            continue
        for f in lengths:
            sa, sb = by_length[a][str(f)], by_length[b][str(f)]
            seeds = [s for s in sa if sa[s] is not None and sb.get(s) is not None]
            if not seeds:
                comparisons.append(dict(a=a, b=b, frames=f, seeds=[], verdict="no common seed scored"))
                continue
            p = paired([sa[s] for s in seeds], [sb[s] for s in seeds])
            said = (  # one seed gives a point, not an interval: verdict() would call it a result
                verdict(p, NAMES[a], NAMES[b])
                if len(seeds) > 1
                else f"one seed only ({100 * p.mean:+.1f} points): no interval, no test"
            )
            comparisons.append(
                dict(a=a, b=b, frames=f, seeds=[int(s) for s in seeds], **p.as_dict()) | dict(verdict=said)
            )
    return dict(
        source=str(source),
        settings=asdict(settings),
        floor={str(f): share for f, (_, share) in floors.items()},
        majority_answer={str(f): answer for f, (answer, _) in floors.items()},
        heatmaps=heatmaps,
        by_length=by_length,
        answer_form=form,
        paired=comparisons,
        skipped=skipped,
        cells=scored,
        seconds=seconds,
    )


def _mean(values: list[float | None]) -> float | None:
    """Mean of the scored values; None when the cell was skipped (for any seed: a partial mean would mislead)."""
    return None if not values or any(v is None for v in values) else statistics.fmean(values)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def heatmap_table(report: dict, name: str) -> list[str]:
    """Markdown lines: depth rows x frames columns, each cell the mean over seeds and the per-seed values,
    then the mean over depths and the majority floor of each length."""
    settings, heat = report["settings"], report["heatmaps"][name]
    lengths, seeds = settings["frames"], heat["seeds"]
    head = ["depth \\ frames", *(str(f) for f in lengths)]
    lines = [
        f"**{NAMES.get(name, name)}** (mean of seeds {', '.join(map(str, seeds))}; per seed in brackets)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]

    def cell(mean: float | None, values: list[float | None]) -> str:
        per = "/".join(_fmt(v) for v in values)
        return _fmt(mean) if len(values) == 1 or all(v is None for v in values) else f"{_fmt(mean)} ({per})"

    for i, depth in enumerate(settings["depths"]):
        row = [f"{100 * depth:.0f}%"]
        for j in range(len(lengths)):
            row.append(cell(heat["mean"][i][j], [heat["per_seed"][str(s)][i][j] for s in seeds]))
        lines.append("| " + " | ".join(row) + " |")
    row = ["mean over depths"]
    for f in lengths:
        values = [report["by_length"][name][str(f)][str(s)] for s in seeds]
        row.append(cell(_mean(values), values))
    lines.append("| " + " | ".join(row) + " |")
    lines.append("| majority floor | " + " | ".join(f"{report['floor'][str(f)]:.2f}" for f in lengths) + " |")
    return lines


def markdown_table(report: dict) -> str:
    """The tables printed by ``crosslmm demo --needle`` and pasted into docs/needle.md."""
    lines = []
    for name in report["heatmaps"]:
        lines += heatmap_table(report, name) + [""]
    if report["skipped"]:
        stops = sorted({(s["variant"], s["frames"], s["tokens"], s["limit"]) for s in report["skipped"]})
        lines += [
            f"- n/a: {NAMES.get(v, v)} at {f} frames needs {t} LLM positions, more than its {lim}"
            for v, f, t, lim in stops
        ]
    lines += [
        "- majority floor: the share of the most common answer among a length's needle videos (the best any "
        "one fixed answer scores); strict accuracy: the demo's scoring (the first word is the answer)",
        "",
        "How the answers fail (mean over seeds and depths): well-formed = the first word is a colour; lenient ="
        " the answer starts with the right colour (e.g. 'greengreen' for green), not the demo's scoring:",
        "",
        "| variant | " + " | ".join(f"{f} frames" for f in report["settings"]["frames"]) + " |",
        "|---|" + "---|" * len(report["settings"]["frames"]),
        *(
            f"| {NAMES.get(name, name)} {label} | "
            + " | ".join(_fmt(report["answer_form"][name][key][str(f)]) for f in report["settings"]["frames"])
            + " |"
            for name in report["heatmaps"]
            for key, label in (("well_formed", "well-formed"), ("lenient_accuracy", "lenient accuracy"))
        ),
        "",
        "Paired per-seed differences of the accuracy averaged over depths:",
        "",
        "| frames | compared | per-seed differences | verdict |",
        "|---|---|---|---|",
    ]
    for c in report["paired"]:
        diffs = "/".join(f"{d:+.2f}" for d in c.get("differences", [])) or "-"
        lines.append(f"| {c['frames']} | {NAMES[c['a']]} - {NAMES[c['b']]} | {diffs} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """One heatmap per variant (mean accuracy over seeds; grey where skipped), the floor in each title.

    A bare ``Figure`` (no pyplot) renders with Agg when saved: no global backend switch."""
    import numpy as np
    from matplotlib.figure import Figure

    settings, names = report["settings"], list(report["heatmaps"])
    floors = [report["floor"][str(f)] for f in settings["frames"]]
    fig = Figure(figsize=(3.6 * len(names) + 1, 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    for k, (ax, name) in enumerate(zip(axes, names)):
        heat = report["heatmaps"][name]
        grid = np.array([[np.nan if v is None else v for v in row] for row in heat["mean"]], dtype=float)
        image = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_facecolor("#cccccc")
        for (i, j), value in np.ndenumerate(grid):
            text = "n/a" if np.isnan(value) else f"{value:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="w" if value < 0.6 else "k")
        ax.set_xticks(range(len(settings["frames"])), [str(f) for f in settings["frames"]])
        ax.set_yticks(range(len(settings["depths"])), [f"{100 * d:.0f}%" for d in settings["depths"]])
        ax.set_xlabel("frames per video")
        if k == 0:
            ax.set_ylabel("needle depth (start of the marked frames)")
        ax.set_title(
            f"{NAMES.get(name, name)} ({len(heat['seeds'])} seed(s))\nmajority floor "
            f"{min(floors):.2f}-{max(floors):.2f}",
            fontsize=9,
        )
    fig.colorbar(image, ax=list(axes), label="accuracy (mean over seeds)")
    fig.savefig(path, dpi=120)


def write_report(root: Path, report: dict) -> dict[str, Path]:
    """results.json, results.md and needle.png in the output dir."""
    return write_outputs(root, report, markdown_table, {"needle.png": plot})
