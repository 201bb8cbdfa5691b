"""The elastic demo's report: accuracy per model and budget (mean over seeds, and per seed), the targets,
the paired per-seed differences they rest on, the train-time cost of elastic training, and the table and plot
(results.json, results.md, elastic.png)."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path

from crosslmm.demo.report import accuracy_table, write_outputs
from crosslmm.demo.stats import paired, verdict
from crosslmm.demo.variants import Variant

TOLERANCE_POINTS = (
    2.0  # elastic may trail the fixed-budget model by at most this; the pool curve may dip by it
)
RISE_POINTS = 10.0  # pool-only at the largest budget must beat its smallest by this much to count as rising


def summarise(scores: list[dict], compared: list[Variant], settings, floor: float) -> dict:
    """One row per (model, budget): mean and spread over seeds; then the targets and the train-time cost.
    ``floor``: the data's majority floor (:func:`crosslmm.demo.report.majority_floor`), drawn in the plot."""
    rows = []
    for variant in compared:
        budgets = sorted({s["budget"] for s in scores if s["variant"] == variant.name})
        for budget in budgets:
            mine = [s for s in scores if s["variant"] == variant.name and s["budget"] == budget]
            accs = [s["accuracy"] for s in mine]
            rows.append(
                dict(
                    variant=variant.name,
                    label=variant.label,
                    elastic=bool(variant.fields.get("tokens_per_frame_choices")),
                    tokens_per_frame=budget,
                    accuracy=statistics.fmean(accs),
                    accuracy_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    accuracy_per_seed=accs,
                    accuracy_by_type={
                        k: statistics.fmean(s["accuracy_by_type"][k] for s in mine)
                        for k in sorted(mine[0]["accuracy_by_type"])
                    },
                    seq_len=mine[0]["seq_len"],
                    prefill_flops=mine[0]["prefill_flops"],
                    train_seconds=statistics.fmean(s["train_seconds"] for s in mine),
                )
            )
    pairs = comparisons(rows, settings.budgets)
    return dict(
        rows=rows,
        floor=floor,
        claims=claims(rows, settings.budgets, pairs),
        paired=pairs,
        settings=asdict(settings),
        scores=scores,
    )


def comparisons(rows: list[dict], budgets: tuple[int, ...]) -> dict[str, dict]:
    """The targets' comparisons, paired per seed (every model trains on the same seeds and frozen tower):
    each as ``a - b`` with its bootstrap interval, sign test and verdict (:mod:`crosslmm.demo.stats`)."""
    low, high = min(budgets), max(budgets)
    per_seed = {(r["variant"], r["tokens_per_frame"]): r["accuracy_per_seed"] for r in rows}
    label = {r["variant"]: r["label"] for r in rows}
    pairs = {
        f"fixed_minus_elastic_{low}": ((f"fixed_crosslmm_{low}", low), ("elastic_crosslmm", low)),
        f"fixed_minus_elastic_{high}": ((f"fixed_crosslmm_{high}", high), ("elastic_crosslmm", high)),
        "pool_rise": (("elastic_pool", high), ("elastic_pool", low)),
        "crosslmm_low_minus_pool_high": (("elastic_crosslmm", low), ("elastic_pool", high)),
    }
    out = {}
    for key, (a, b) in pairs.items():
        test = paired(per_seed[a], per_seed[b])
        names = [label[v] + (f" at {k}" if v.startswith("elastic") else "") for v, k in (a, b)]
        out[key] = dict(a=list(a), b=list(b), **test.as_dict(), verdict=verdict(test, *names))
    return out


def claims(rows: list[dict], budgets: tuple[int, ...], pairs: dict[str, dict]) -> dict:
    """The three targets, each decided on its paired interval (``pairs``, from :func:`comparisons`), so a
    difference the seeds cannot resolve is never called met: elastic no worse than fixed by more than
    ``TOLERANCE_POINTS`` (the interval's upper end), pool-only rising by ``RISE_POINTS`` and CrossLMM at the
    smallest budget above pool-only at the largest (the interval's lower end)."""
    low, high = min(budgets), max(budgets)
    acc = {(r["variant"], r["tokens_per_frame"]): r["accuracy"] for r in rows}
    seconds = {r["variant"]: r["train_seconds"] for r in rows}
    pool = [acc["elastic_pool", b] for b in sorted(budgets)]
    ends = {b: pairs[f"fixed_minus_elastic_{b}"] for b in (low, high)}
    rise, beats = pairs["pool_rise"], pairs["crosslmm_low_minus_pool_high"]
    out = dict(
        elastic_gap_points={str(b): 100 * p["mean"] for b, p in ends.items()},  # fixed minus elastic
        elastic_gap_upper_points={str(b): 100 * p["high"] for b, p in ends.items()},
        elastic_matches_fixed=all(100 * p["high"] <= TOLERANCE_POINTS for p in ends.values()),
        pool_rise_points=100 * rise["mean"],
        pool_rises=bool(
            100 * rise["low"] >= RISE_POINTS
            and all(100 * (b - a) >= -TOLERANCE_POINTS for a, b in zip(pool, pool[1:]))
        ),
        crosslmm_low_vs_pool_high_points=100 * beats["mean"],
        crosslmm_low_beats_pool_high=beats["low"] > 0,
        # train-time cost of one elastic model against one fixed model at each end (same steps)
        train_time_vs_fixed={
            str(b): seconds["elastic_crosslmm"] / seconds[f"fixed_crosslmm_{b}"] for b in (low, high)
        },
    )
    out["target_met"] = bool(
        out["elastic_matches_fixed"] and out["pool_rises"] and out["crosslmm_low_beats_pool_high"]
    )
    return out


def markdown_table(report: dict) -> str:
    """The table printed by ``crosslmm demo --elastic`` and pasted into docs/elastic.md."""
    lines = accuracy_table(report["rows"], report["settings"]["demo"]["seeds"], "model")
    lines += ["", f"Majority floor (always the train split's most common answer): {report['floor']:.3f}.", ""]
    seeds = range(len(report["rows"][0]["accuracy_per_seed"]))
    head = ["model", "tokens/frame", *(f"seed {s}" for s in seeds)]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        cells = [row["label"], str(row["tokens_per_frame"]), *(f"{a:.3f}" for a in row["accuracy_per_seed"])]
        lines.append("| " + " | ".join(cells) + " |")
    c = report["claims"]
    budgets = report["settings"]["budgets"]
    low, high = min(budgets), max(budgets)
    gaps, upper = c["elastic_gap_points"], c["elastic_gap_upper_points"]
    cost = c["train_time_vs_fixed"]
    level = f"{100 * report['paired']['pool_rise']['level']:.0f}%"
    lines += [
        "",
        f"Each target is decided on the {level} bootstrap interval of its paired per-seed difference:",
        "",
        f"- elastic CrossLMM vs fixed (fixed minus elastic): {gaps[str(low)]:+.1f} points at {low} (interval up to "
        f"{upper[str(low)]:+.1f}), {gaps[str(high)]:+.1f} at {high} (up to {upper[str(high)]:+.1f}); target: the "
        f"interval's upper end <= {TOLERANCE_POINTS:.0f} at both: {_verdict(c['elastic_matches_fixed'])}",
        f"- elastic pool-only rises by {c['pool_rise_points']:.1f} points from {low} to {high} tokens/frame "
        f"(target: the interval's lower end >= {RISE_POINTS:.0f}, no step down by more than "
        f"{TOLERANCE_POINTS:.0f}): {_verdict(c['pool_rises'])}",
        f"- CrossLMM at {low} minus pool-only at {high}: {c['crosslmm_low_vs_pool_high_points']:+.1f} points "
        f"(target: the interval's lower end > 0): {_verdict(c['crosslmm_low_beats_pool_high'])}",
        f"- training one elastic CrossLMM took {cost[str(low)]:.2f}x the time of the fixed model at {low} and "
        f"{cost[str(high)]:.2f}x the one at {high} (same steps); it replaces {len(budgets)} fixed models",
        f"- target {'met' if c['target_met'] else 'NOT met'}",
        "",
        "Paired per seed (a minus b):",
        "",
        *(f"- {p['verdict']}" for p in report["paired"].values()),
    ]
    return "\n".join(lines) + "\n"


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def plot(report: dict, path: Path) -> None:
    """Accuracy against tokens per frame and against prefill FLOPs: elastic models as lines, fixed as points."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    by_budget, by_flops = fig.subplots(1, 2)
    style = {
        "elastic_crosslmm": ("#2ca02c", "-o"),
        "elastic_pool": ("#d62728", "-s"),
    }
    for name in dict.fromkeys(r["variant"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["variant"] == name]
        colour, fmt = style.get(name, ("#1f77b4", "D"))
        for axis, x in (
            (by_budget, [r["tokens_per_frame"] for r in rows]),
            (by_flops, [r["prefill_flops"] / 1e6 for r in rows]),
        ):
            axis.errorbar(
                x,
                [r["accuracy"] for r in rows],
                yerr=[r["accuracy_std"] for r in rows],
                fmt=fmt,
                color=colour,
                capsize=3,
                markersize=8 if not rows[0]["elastic"] else 5,
                label=rows[0]["label"],
            )
    for axis, label in ((by_budget, "tokens per frame"), (by_flops, "prefill MFLOPs per sample (analytic)")):
        axis.axhline(report["floor"], ls="--", color="k", lw=1)
        axis.set_xscale("log")
        axis.set_ylim(0, 1.05)
        axis.set_xlabel(label)
        axis.set_ylabel("test accuracy")
    by_budget.set_xticks(report["settings"]["budgets"], [str(b) for b in report["settings"]["budgets"]])
    by_budget.legend(fontsize=8, loc="lower right")
    by_budget.set_title(
        f"one checkpoint, any budget (mean ± std of {report['settings']['demo']['seeds']} seeds)"
    )
    by_flops.set_title("accuracy vs. prefill cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(root: Path, report: dict) -> dict[str, Path]:
    """results.json, results.md and elastic.png in the output dir."""
    return write_outputs(root, report, markdown_table, {"elastic.png": plot})
