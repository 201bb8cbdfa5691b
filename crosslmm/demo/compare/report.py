"""The report of ``crosslmm compare``: per-model means over seeds, the equal-compute and frames tables
(prefill FLOPs, per-token decode FLOPs and cache memory side by side, the majority floor of the test
answers), the paired per-seed differences against CrossLMM (:mod:`crosslmm.demo.stats`), and the two
accuracy-vs-FLOPs plots (results.json, results.md, comparisons_equal.png, comparisons_frames.png)."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from crosslmm.demo.compare.plan import LABELS, METHODS, CompareSettings, Planned
from crosslmm.demo.report import RunResult, write_outputs
from crosslmm.demo.stats import paired, verdict
from crosslmm.demo.synth import answer_of

COLOURS = {
    "full": "#555555",
    "pool": "#d62728",
    "random": "#ff7f0e",
    "salient": "#8c564b",
    "merge": "#e377c2",
    "fastv": "#1f77b4",
    "crosslmm": "#2ca02c",
}

MARKERS = {
    "full": "o",
    "pool": "s",
    "random": "v",
    "salient": "^",
    "merge": "D",
    "fastv": "P",
    "crosslmm": "*",
}


def floors(data_dir: Path) -> dict:
    """The majority floor of a study's test split: each question answered with its type's most common answer
    in the train split (the question names its type, so this is the strongest answer that ignores the
    video), per question type and over all test questions. With one question type it is
    :func:`crosslmm.demo.report.majority_floor`."""
    train, test = (json.loads((Path(data_dir) / f"{split}.json").read_text()) for split in ("train", "test"))
    majority = {}
    for kind in {r["question_type"] for r in test}:
        answers = Counter(answer_of(r) for r in train if r["question_type"] == kind)
        majority[kind] = answers.most_common(1)[0][0] if answers else None
    hit = [(r["question_type"], answer_of(r) == majority[r["question_type"]]) for r in test]
    by_type = {k: statistics.fmean(h for kind, h in hit if kind == k) for k in sorted(majority)}
    return dict(all=statistics.fmean(h for _, h in hit), by_type=by_type)


def summarise(
    runs: list[RunResult], planned: list[Planned], settings: CompareSettings, study_floors: dict[str, dict]
) -> dict:
    """One row per planned row (a run may fill two, when two budgets chose it): its plan, the accuracy mean,
    spread and per-seed values (seed order), the cost measured on the test prompts and the mean training
    time; each study's majority floors; the paired per-seed differences of CrossLMM against every other
    model it is compared with (:func:`pairs`)."""
    rows = []
    runs = sorted(runs, key=lambda r: r.seed)
    for p in planned:
        mine = [r for r in runs if r.variant == p.name]
        accs = [r.accuracy for r in mine]
        kinds = sorted(mine[0].accuracy_by_type)
        rows.append(
            asdict(p)
            | dict(
                label=LABELS[p.method],
                ratio=p.ratio if p.budget else None,  # reference rows are matched to nothing
                accuracy=statistics.fmean(accs),
                accuracy_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                accuracy_per_seed=accs,
                accuracy_by_type={k: statistics.fmean(r.accuracy_by_type[k] for r in mine) for k in kinds},
                accuracy_by_type_std={
                    k: statistics.stdev(r.accuracy_by_type[k] for r in mine) if len(mine) > 1 else 0.0
                    for k in kinds
                },
                seq_len=mine[0].seq_len,
                prefill_flops=mine[0].prefill_flops,
                train_seconds=statistics.fmean(r.train_seconds for r in mine),
                seeds=[r.seed for r in mine],
            )
        )
    return dict(
        rows=rows,
        floors=study_floors,
        paired=pairs(rows),
        settings=asdict(settings),
        runs=[asdict(r) for r in runs],
    )


def pairs(rows: list[dict]) -> list[dict]:
    """CrossLMM minus each other model, seed by seed (the same seeds: the seed varies the training, not the
    data or the frozen tower). Equal compute: each method's row against the CrossLMM budget it was matched
    to, and the references (full tokens, pooling at CrossLMM's k) against every budget. More frames: CrossLMM
    at each frame count against every other model of the study."""
    out = []
    for study in ("equal", "frames"):
        mine = [r for r in rows if r["study"] == study]
        crosslmm = [r for r in mine if r["method"] == "crosslmm"]
        for cross in crosslmm:
            name_a = f"CrossLMM ({cross['knob']}, {cross['frames']} frames)"
            matched = f"CrossLMM {cross['knob']}"
            for other in mine:
                if other["method"] == "crosslmm" or (
                    study == "equal" and other["budget"] not in ("", matched)
                ):
                    continue
                if other["seeds"] != cross["seeds"]:
                    raise ValueError(f"{other['name']} and {cross['name']} were run on different seeds")
                result = paired(cross["accuracy_per_seed"], other["accuracy_per_seed"])
                name_b = f"{other['label']} ({other['knob']}, {other['frames']} frames)"
                out.append(
                    dict(study=study, a=cross["name"], b=other["name"], name_a=name_a, name_b=name_b)
                    | result.as_dict()
                    | dict(verdict=verdict(result, name_a, name_b))
                )
    return out


def _acc(row: dict, kind: str | None = None) -> str:
    mean, std = (
        (row["accuracy"], row["accuracy_std"])
        if kind is None
        else (row["accuracy_by_type"][kind], row["accuracy_by_type_std"][kind])
    )
    return f"{mean:.3f} ± {std:.3f}"


def _table(head: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(c) + " |" for c in lines
    ]


def _costs(row: dict) -> list[str]:
    """Prefill MFLOPs, decode kFLOPs per generated token, T2V cache KiB and decoder K/V cache KiB."""
    return [
        f"{row['prefill_flops'] / 1e6:.1f}",
        f"{row['decode_flops'] / 1e3:.0f}",
        f"{row['cross_cache_bytes'] / 1024:.1f}",
        f"{row['decoder_cache_bytes'] / 1024:.1f}",
    ]


COST_HEAD = ["prefill MFLOPs", "decode kFLOPs/token", "T2V cache KiB", "decoder KV KiB"]


def _floor_line(report: dict, study: str, head: list[str], kinds: list[str]) -> list[str]:
    """The majority floor of the study's test answers, under the accuracy columns."""
    floor = report["floors"][study]
    line = ["majority floor (test answers)"] + [""] * (len(head) - len(kinds) - 3)
    return line + [f"{floor['by_type'][k]:.3f}" for k in kinds] + [f"{floor['all']:.3f}", ""]


def equal_table(report: dict) -> str:
    """Methods at CrossLMM's prefill FLOPs: one line per (method, budget), grouped by the budget matched."""
    rows = [r for r in report["rows"] if r["study"] == "equal"]
    kinds = sorted(rows[0]["accuracy_by_type"])
    band = report["settings"]["band"]
    seeds = report["settings"]["seeds"]
    head = ["method", "k / L", "matched to", "LLM seq len", *COST_HEAD, "prefill vs CrossLMM"]
    head += [f"{k} acc" for k in kinds] + [f"accuracy (mean ± sd, {seeds} seed(s))", "train s"]
    lines = []
    for r in sorted(rows, key=lambda r: (r["budget"] or "~", r["prefill_flops"])):
        ratio = (
            "reference"
            if not r["budget"]
            else f"{r['ratio']:.2f}" + ("" if r["in_band"] else " (out of band)")
        )
        lines.append(
            [
                r["label"],
                r["knob"],
                r["budget"] or "-",
                f"{r['seq_len']:.0f}",
                *_costs(r),
                ratio,
                *(_acc(r, k) for k in kinds),
                _acc(r),
                f"{r['train_seconds']:.0f}",
            ]
        )
    lines.append(_floor_line(report, "equal", head, kinds))
    note = (
        f"\nBand: prefill FLOPs within ±{100 * band:.0f} % of CrossLMM's at the budget a row is matched to. "
        "Decode: the first generated token; caches: one sample after its prefill, bf16.\n"
    )
    return "\n".join(_table(head, lines)) + "\n" + note


def frames_table(report: dict) -> str:
    """Full tokens at few frames, pooling and CrossLMM at many, on the long videos; costs relative to
    CrossLMM at the most frames."""
    rows = [r for r in report["rows"] if r["study"] == "frames"]
    seeds = report["settings"]["seeds"]
    most = max((r for r in rows if r["method"] == "crosslmm"), key=lambda r: r["frames"])
    head = ["method", "frames", "k", "LLM seq len", *COST_HEAD, f"prefill vs CrossLMM at {most['frames']}"]
    head += [f"accuracy (mean ± sd, {seeds} seed(s))", "train s"]
    lines = [
        [
            r["label"],
            str(r["frames"]),
            r["knob"],
            f"{r['seq_len']:.0f}",
            *_costs(r),
            f"{r['prefill_flops'] / most['prefill_flops']:.2f}",
            _acc(r),
            f"{r['train_seconds']:.0f}",
        ]
        for r in sorted(rows, key=lambda r: (METHODS.index(r["method"]), r["frames"]))
    ]
    lines.append(_floor_line(report, "frames", head, []))
    return "\n".join(_table(head, lines)) + "\n"


def paired_table(report: dict, study: str) -> str:
    """CrossLMM minus each other model, per seed, with the bootstrap interval, the sign test and a verdict."""
    head = ["CrossLMM", "minus", "per-seed differences", "mean", "95% interval", "wins/losses", "sign p"]
    lines = [
        [
            p["name_a"],
            p["name_b"],
            " ".join(f"{d:+.3f}" for d in p["differences"]),
            f"{p['mean']:+.3f}",
            f"{p['low']:+.3f} to {p['high']:+.3f}",
            f"{p['wins']}/{p['losses']}",
            f"{p['sign_p']:.3f}",
        ]
        for p in report["paired"]
        if p["study"] == study
    ]
    verdicts = "".join(f"- {p['verdict']}\n" for p in report["paired"] if p["study"] == study)
    return "\n".join(_table(head, lines)) + "\n\n" + verdicts


def markdown(report: dict) -> str:
    """Both tables and their paired differences under third-level headings (they sit inside
    docs/comparisons.md's Results section)."""
    equal, frames = equal_table(report), frames_table(report)
    return (
        f"### Equal compute\n\n{equal}\nPaired per-seed differences (accuracy, all questions):\n\n"
        f"{paired_table(report, 'equal')}\n### More frames for the same compute\n\n{frames}\n"
        f"Paired per-seed differences (accuracy):\n\n{paired_table(report, 'frames')}"
    )


def _curves(ax, rows: list[dict], key, annotate, floor: float) -> None:
    """One line per method through its points, sorted by FLOPs; ``key(row)`` gives (accuracy, spread).
    Random, salient and merging cost the same at one k: distinct markers keep coinciding points visible."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    for method in dict.fromkeys(r["method"] for r in rows):
        mine = {r["name"]: r for r in rows if r["method"] == method}.values()  # a run may fill two rows
        mine = sorted(mine, key=lambda r: r["prefill_flops"])
        x = [r["prefill_flops"] / 1e6 for r in mine]
        y, err = zip(*(key(r) for r in mine))
        ax.errorbar(
            x, y, yerr=err, fmt=MARKERS[method] + "-", color=COLOURS[method], capsize=3, label=LABELS[method]
        )
        for r, xi, yi in zip(mine, x, y):
            ax.annotate(
                annotate(r),
                (xi, yi),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=COLOURS[method],
            )
    ax.axhline(floor, ls="--", color="k", lw=1, label="majority floor")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("prefill MFLOPs per sample (analytic)")
    ax.set_ylabel("test accuracy")


def plot_equal(report: dict, path: Path) -> None:
    """Accuracy vs FLOPs per method, one panel per question type and one for all; CrossLMM's bands shaded.

    A bare ``Figure`` (no pyplot) renders with Agg when saved: no global backend switch."""
    from matplotlib.figure import Figure

    rows = [r for r in report["rows"] if r["study"] == "equal"]
    kinds = sorted(rows[0]["accuracy_by_type"])
    band = report["settings"]["band"]
    floor = report["floors"]["equal"]
    panels = [
        (k, lambda r, k=k: (r["accuracy_by_type"][k], r["accuracy_by_type_std"][k]), floor["by_type"][k])
        for k in kinds
    ]
    panels.append(("all questions", lambda r: (r["accuracy"], r["accuracy_std"]), floor["all"]))
    fig = Figure(figsize=(5.5 * len(panels), 5))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, key, panel_floor) in zip(axes, panels):
        for r in rows:
            if r["method"] == "crosslmm":
                ax.axvspan(
                    r["prefill_flops"] * (1 - band) / 1e6,
                    r["prefill_flops"] * (1 + band) / 1e6,
                    color="#2ca02c",
                    alpha=0.1,
                )
        _curves(ax, rows, key, lambda r: r["knob"], panel_floor)
        ax.set_title(f"{title}: accuracy vs. prefill cost")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)


def plot_frames(report: dict, path: Path) -> None:
    """Accuracy vs FLOPs across frame counts for full tokens, pooling and CrossLMM."""
    from matplotlib.figure import Figure

    rows = [r for r in report["rows"] if r["study"] == "frames"]
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    _curves(
        ax,
        rows,
        lambda r: (r["accuracy"], r["accuracy_std"]),
        lambda r: f"{r['frames']} frames",
        report["floors"]["frames"]["all"],
    )
    long = report["settings"]["long"]
    ax.set_title(f"target in {long['marker_frames']} of {long['frames']} frames: accuracy vs. prefill cost")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(root: Path, report: dict) -> dict[str, Path]:
    """results.json, results.md and the two plots in the output dir."""
    return write_outputs(
        root, report, markdown, {"comparisons_equal.png": plot_equal, "comparisons_frames.png": plot_frames}
    )


BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
PLOTS = {
    "comparisons_equal.png": "accuracy vs prefill FLOPs per method and question type",
    "comparisons_frames.png": "accuracy vs prefill FLOPs across frame counts",
}


def split_docs(doc: Path) -> tuple[str, str]:
    """``doc``'s text before its compare block and after it; checked before a run, so a bad page fails fast."""
    text = doc.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{doc}: needs one {BEGIN} line followed by one {END} line to hold the tables")
    head, rest = text.split(BEGIN)
    return head, rest.split(END, 1)[1]


def update_docs(root: Path, doc: Path, command: str) -> None:
    """Put the run's tables between ``doc``'s compare markers and copy its plots next to ``doc``, so the
    committed page is exactly what a run wrote."""
    head, tail = split_docs(doc)
    body = f"Measured by `{command}`:\n\n" + (root / "results.md").read_text()
    for name, caption in PLOTS.items():
        (doc.parent / name).write_bytes((root / name).read_bytes())
        body += f"\n![{caption}]({name})\n"
    doc.write_text(f"{head}{BEGIN}\n{body}{END}{tail}")
