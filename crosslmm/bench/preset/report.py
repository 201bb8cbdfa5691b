"""``crosslmm bench speed --preset``: the cells of ``run.py`` as tables (ours, and the paper's Fig. 4 beside
them), ``STEM.json``, ``STEM.md`` and a log-log plot ``STEM.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from crosslmm.bench.preset.run import run_preset
from crosslmm.bench.preset.setup import VARIANTS, PresetSettings, load_preset
from crosslmm.bench.report import format_table, loglog_panels, markdown_table, write_json
from crosslmm.bench.targets import TARGET_HEADER, print_targets, target_rows
from crosslmm.bench.variants import CROSSLMM, FULL, TOWER
from crosslmm.paper import FIG4_CROSSLMM, FIG4_LLAVA_OV


def bench_preset(preset: str, settings: PresetSettings, threads: int, out: Path, stem: str) -> None:
    """Run ``preset`` at its real size with ``settings``; print the tables and the targets; write
    ``out/STEM.json``, ``.md`` and ``.png``."""
    if settings.device.startswith("cpu"):
        torch.set_num_threads(threads)
    result = run_preset(load_preset(preset), settings)
    result["preset"] = preset
    tables = _preset_tables(result)
    title = (
        f"{preset} on {result['device_name']} ({settings.dtype}, torch {result['torch']}, transformers "
        f"{result['transformers']}): one sample, {settings.text_tokens} text tokens "
        f"({settings.text_before} before the video), median of {settings.repeats}"
    )
    print(title)
    for heading, header, rows in tables:
        print(f"\n{heading}\n{format_table(header, rows)}")
    if result["weights_mb"] is None:
        print("\n(the targets are for the 7B preset on an H100/H200-class GPU: a CPU run checks the command)")
    print_targets(result["targets"])
    write_json(out / f"{stem}.json", result)
    _preset_plot(result, out / f"{stem}.png", f"{preset}, {result['device_name']}, {settings.dtype}")
    command = (
        f"crosslmm bench speed --preset {preset} --device {settings.device} --dtype {settings.dtype} "
        f"--frames {','.join(map(str, settings.frames))} --repeats {settings.repeats} "
        + (f"--train-frames {settings.train_frames}" if settings.train_frames else "--no-train")
    )
    md = [f"# Speed and memory: {title}", "", f"`{command}`", ""]
    for heading, header, rows in tables:
        md += [f"## {heading}", "", markdown_table(header, rows), ""]
    md += ["## Targets (7B preset on an H100/H200-class GPU)", ""]
    md += [markdown_table(TARGET_HEADER, target_rows(result["targets"])), "", f"![plot]({stem}.png)", ""]
    (out / f"{stem}.md").write_text("\n".join(md))
    print(f"\nwrote {out / stem}.json, .md and .png")


def _preset_tables(result: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    """(heading, header, rows) of the measured cells, the paper's Fig. 4 beside ours, and the training step."""
    cells = result["cells"]
    rows = []
    for frames in result["frames"]:
        for variant in VARIANTS:
            cell = cells[variant][frames]
            if isinstance(cell, str):  # OOM or skipped
                rows.append([frames, variant] + [None] * 2 + [cell] + [None] * 6)
                continue
            rows.append(
                [frames, variant, cell["tokens_per_frame"], cell["llm_tokens"], cell["prefill_ms"]]
                + [cell.get(k) for k in ("ratio_to_tower", "analytic_tflops", "achieved_tflop_s")]
                + [cell.get(k) for k in ("decode_step_ms", "peak_mb", "cache_mb")]
            )
    measured = (
        f"Measured ({result['device_name']}; peak MB: "
        + ("above the weights" if result["weights_mb"] is not None else "not measured on a CPU")
        + ")"
    )
    header = ["frames", "model", "tok/frame", "LLM tokens", "prefill ms", "/ tower", "TFLOPs", "TFLOP/s"]
    header += ["decode ms", "peak MB", "KV cache MB"]

    def ours(variant: str, frames: int, key: str) -> Any:
        cell = cells[variant].get(frames)
        return cell.get(key) if isinstance(cell, dict) else cell

    paper_rows = [
        [t, ours(CROSSLMM, t, "prefill_ms"), FIG4_CROSSLMM.prefill_ms[t], ours(FULL, t, "prefill_ms")]
        + [FIG4_LLAVA_OV.prefill_ms[t], ours(CROSSLMM, t, "peak_mb"), FIG4_CROSSLMM.memory_mb[t]]
        + [ours(FULL, t, "peak_mb"), FIG4_LLAVA_OV.memory_mb[t], ours(TOWER, t, "prefill_ms")]
        for t in FIG4_CROSSLMM.prefill_ms
    ]
    paper_header = ["frames", "CrossLMM ms", "paper", "full-token ms", "paper LLaVA-OV"]
    paper_header += ["CrossLMM MB", "paper", "full-token MB", "paper LLaVA-OV", "tower ms"]
    tables = [
        (measured, header, rows),
        ("The paper's Fig. 4 (8 H800s) beside ours (- : not measured here)", paper_header, paper_rows),
    ]
    train = result["train_step"]
    if isinstance(train, str):  # OOM
        tables.append(
            ("Stage-1 training step", ["frames", "step"], [[result["settings"]["train_frames"], train]])
        )
    elif train is not None:
        keys = ("frames", "trainable_params", "step_ms", "peak_mb", "optimizer_state_mb")
        row = [train[k] / 1e6 if k == "trainable_params" else train[k] for k in keys]
        header = [
            "frames",
            "M params (" + "+".join(train["trainable"]) + ")",
            "step ms",
            "peak MB",
            "AdamW state MB",
        ]
        tables.append(("Stage-1 training step (one sample, AdamW)", header, [row]))
    return tables


def _preset_plot(result: dict[str, Any], path: Path, title: str) -> None:
    """Prefill, decode step and peak memory against frames; the paper's Fig. 4 curves where we measured
    at its frame counts."""

    def series(key: str) -> dict[str, tuple[list[int], list[float]]]:
        out = {}
        for variant, cells in result["cells"].items():
            points = [(t, c[key]) for t, c in cells.items() if isinstance(c, dict) and c.get(key) is not None]
            if points:
                out[variant] = ([t for t, _ in points], [v for _, v in points])
        return out

    prefill, peak = series("prefill_ms"), series("peak_mb")
    if set(result["frames"]) & set(FIG4_CROSSLMM.prefill_ms):
        for paper in (FIG4_CROSSLMM, FIG4_LLAVA_OV):
            prefill[f"paper: {paper.model}"] = (list(paper.prefill_ms), list(paper.prefill_ms.values()))
            if peak:
                peak[f"paper: {paper.model}"] = (list(paper.memory_mb), list(paper.memory_mb.values()))
    panels = [("prefill", "ms", prefill), ("decode step", "ms", series("decode_step_ms"))]
    if peak:
        panels.append(("peak memory above the weights", "MB", peak))
    loglog_panels(path, panels, title)
