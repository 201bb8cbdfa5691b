"""The demo's report: per-variant means over seeds, the ratios the paper's claim is stated in, and the
table and plot that show them (results.json, results.md, demo.png)."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from crosslmm.demo.variants import DemoSettings, Variant

CHANCE = 0.25  # every question has four equally likely answers


@dataclass
class RunResult:
    """One trained variant for one seed, scored on the test split."""

    variant: str
    seed: int
    accuracy: float
    accuracy_by_type: dict[str, float]
    seq_len: float  # LLM sequence length of a test prompt (mean over the test split)
    prefill_flops: float  # analytic, per test sample (mean), crosslmm.bench.flops.prefill_flops
    train_seconds: float
    final_loss: float | None


def summarise(runs: list[RunResult], compared: list[Variant], settings: DemoSettings) -> dict:
    """Mean (and spread over seeds) per variant, and the two ratios the target is stated in."""
    rows = []
    for variant in compared:
        mine = [r for r in runs if r.variant == variant.name]
        accs = [r.accuracy for r in mine]
        kinds = sorted(mine[0].accuracy_by_type)
        rows.append(
            dict(
                variant=variant.name,
                label=variant.label,
                tokens_per_frame=variant.fields["tokens_per_frame"],
                accuracy=statistics.fmean(accs),
                accuracy_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                accuracy_per_seed=accs,
                accuracy_by_type={k: statistics.fmean(r.accuracy_by_type[k] for r in mine) for k in kinds},
                seq_len=mine[0].seq_len,
                prefill_flops=mine[0].prefill_flops,
                train_seconds=statistics.fmean(r.train_seconds for r in mine),
                final_loss=statistics.fmean(r.final_loss for r in mine if r.final_loss is not None)
                if any(r.final_loss is not None for r in mine)
                else None,
            )
        )
    by_name = {row["variant"]: row for row in rows}
    full, pool, cross = by_name["full"], by_name["pool"], by_name["crosslmm"]
    claims = dict(
        pool_gap_points=100 * (full["accuracy"] - pool["accuracy"]),
        crosslmm_recovery=cross["accuracy"] / full["accuracy"] if full["accuracy"] else float("nan"),
        seq_shorter=full["seq_len"] / cross["seq_len"],
        flops_lower=full["prefill_flops"] / cross["prefill_flops"],
    )
    # Recovery means nothing if the baseline itself did not learn: require it 20 points above chance.
    claims["full_learned"] = bool(full["accuracy"] >= CHANCE + 0.2)
    claims["target_met"] = bool(
        claims["full_learned"]
        and claims["pool_gap_points"] >= 20
        and claims["crosslmm_recovery"] >= 0.9
        and claims["seq_shorter"] >= 9
    )
    settings_dict = asdict(settings)
    return dict(rows=rows, claims=claims, settings=settings_dict, runs=[asdict(r) for r in runs])


def accuracy_table(rows: list[dict], seeds: int, name: str) -> list[str]:
    """Markdown lines of one row per scored model (``label``, ``tokens_per_frame``, ``seq_len``,
    ``prefill_flops``, ``accuracy`` (± ``accuracy_std``), ``accuracy_by_type``, ``train_seconds``)."""
    kinds = sorted(rows[0]["accuracy_by_type"])
    kinds = kinds if len(kinds) > 1 else []  # one question type: its column would repeat the accuracy
    head = [name, "tokens/frame", "LLM seq len", "prefill MFLOPs", f"accuracy (mean of {seeds} seed(s))"]
    head += [f"{k} acc" for k in kinds] + ["train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        spread = f" ± {row['accuracy_std']:.3f}" if seeds > 1 else ""
        cells = [
            row["label"],
            str(row["tokens_per_frame"]),
            f"{row['seq_len']:.0f}",
            f"{row['prefill_flops'] / 1e6:.1f}",
            f"{row['accuracy']:.3f}{spread}",
            *(f"{row['accuracy_by_type'][k]:.3f}" for k in kinds),
            f"{row['train_seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_table(report: dict) -> str:
    """The table printed by ``crosslmm demo`` and pasted into docs/demo.md."""
    lines = accuracy_table(report["rows"], report["settings"]["seeds"], "variant")
    c = report["claims"]
    lines += [
        "",
        f"- pool-only is {c['pool_gap_points']:.1f} accuracy points below full tokens (target >= 20)",
        f"- CrossLMM (V2V + T2V) reaches {100 * c['crosslmm_recovery']:.1f}% of full-token accuracy (target >= 90%)",
        f"- with a {c['seq_shorter']:.1f}x shorter LLM sequence (target >= 9x) "
        f"and {c['flops_lower']:.1f}x fewer prefill FLOPs",
        f"- target {'met' if c['target_met'] else 'NOT met'}",
    ]
    if not c["full_learned"]:
        lines.append(
            f"- the full-token baseline is within 20 points of chance ({CHANCE:.2f}): it did not learn the task, "
            "so this run says nothing about pooling or cross-attention (train longer: --steps)"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Bar chart of accuracy per variant and accuracy against prefill FLOPs, side by side.

    A bare ``Figure`` (no pyplot) renders with Agg when saved: no global backend switch."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    rows = report["rows"]
    names = [r["variant"] for r in rows]
    acc = [r["accuracy"] for r in rows]
    err = [r["accuracy_std"] for r in rows]
    colours = ["#555555", "#d62728", "#1f77b4", "#9467bd", "#2ca02c"]
    fig = Figure(figsize=(11, 4))
    bars, scatter = fig.subplots(1, 2)
    bars.bar(names, acc, yerr=err, color=colours, capsize=4)
    bars.axhline(CHANCE, ls="--", color="k", lw=1)
    bars.text(len(rows) - 0.5, CHANCE + 0.01, "chance", ha="right", va="bottom", fontsize=8)
    bars.set_ylim(0, 1.05)
    bars.set_ylabel("test accuracy")
    bars.set_title(f"accuracy (mean ± std of {report['settings']['seeds']} seed(s))")
    for i, (r, c) in enumerate(zip(rows, colours)):
        scatter.errorbar(
            r["prefill_flops"] / 1e6, r["accuracy"], yerr=r["accuracy_std"], fmt="o", color=c, capsize=3
        )
        scatter.annotate(  # alternate above/below: the pooled variants sit close together
            f"{r['variant']} (seq {r['seq_len']:.0f})",
            (r["prefill_flops"] / 1e6, r["accuracy"]),
            textcoords="offset points",
            xytext=(8, 6 if i % 2 else -12),
            fontsize=8,
        )
    scatter.set_xscale("log")
    scatter.xaxis.set_minor_formatter(NullFormatter())
    scatter.set_ylim(0, 1.05)
    scatter.set_xlabel("prefill MFLOPs per sample (analytic)")
    scatter.set_ylabel("test accuracy")
    scatter.set_title("accuracy vs. prefill cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(root: Path, report: dict) -> dict[str, Path]:
    """results.json, results.md and demo.png in the output dir."""
    paths = {"json": root / "results.json", "markdown": root / "results.md", "plot": root / "demo.png"}
    paths["json"].write_text(json.dumps(report, indent=1))
    paths["markdown"].write_text(markdown_table(report))
    plot(report, paths["plot"])
    return paths
