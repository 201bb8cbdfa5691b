"""``crosslmm bench flops``: the analytic counts of ``analytic.py`` swept over frame counts for CrossLMM and the
full-token baselines, printed as tables and written to ``flops.json`` and ``flops.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crosslmm.bench.flops import (
    PAPER_TFLOPS,
    at_budget,
    full_token_baseline_flops,
    paper_convention_flops,
    prefill_flops,
)
from crosslmm.bench.flops.shapes import grid_tokens
from crosslmm.bench.report import format_table, loglog_panels, write_json
from crosslmm.bench.targets import Target, print_targets

# Full-token baselines of the efficiency comparison: all patches, LLaVA-Video, LLaVA-OneVision.
BASELINE_TOKENS: dict[str, int | None] = {"all patches": None, "LLaVA-Video": 169, "LLaVA-OneVision": 196}
CROSSLMM_TOKENS = (1, 4, 9, 16)  # the elastic budgets; a preset's own trained budgets are added


def flops_sweep(config: Any, frames: list[int], text_tokens: int, paper_column: str) -> dict[str, Any]:
    """Breakdowns of CrossLMM at every budget (1/4/9/16 tokens per frame and the preset's trained ones) and of
    the full-token baselines, all on ``config``'s tower and LLM, plus the paper-convention count against the
    published column (``PAPER_TFLOPS``)."""
    models: dict[str, dict[str, Any]] = {}
    for tokens in sorted({*CROSSLMM_TOKENS, *config.trained_budgets}):
        variant = at_budget(config, tokens)
        models[f"CrossLMM-{tokens}"] = {
            "tokens_per_frame": tokens,
            "flops": {t: prefill_flops(variant, t, text_tokens).as_dict() for t in frames},
        }
    for name, tokens in BASELINE_TOKENS.items():
        models[f"{name} ({tokens or grid_tokens(config.vision_config)})"] = {
            "tokens_per_frame": tokens or grid_tokens(config.vision_config),
            "flops": {
                t: full_token_baseline_flops(config, t, text_tokens, tokens_per_frame=tokens).as_dict()
                for t in frames
            },
        }
    published = PAPER_TFLOPS[paper_column]
    paper = {
        t: {
            "tmac": paper_convention_flops(config, t, text_tokens).total / 1e12,
            "published_tflops": published.get(t),
        }
        for t in frames
    }
    for row in paper.values():
        if row["published_tflops"]:
            row["error_pct"] = 100 * (row["tmac"] / row["published_tflops"] - 1)
    return {"text_tokens": text_tokens, "frames": frames, "models": models, "paper_convention": paper}


def llm_side_target(result: dict[str, Any]) -> Target:
    """Target (docs/efficiency.md): LLM-side FLOPs of CrossLMM-9 at most 1/20 of the 169-token baseline's, at 256 frames
    (or the largest frame count asked for)."""
    frames = 256 if 256 in result["frames"] else result["frames"][-1]
    crosslmm = result["models"]["CrossLMM-9"]["flops"][frames]["llm_side"]
    baseline = result["models"]["LLaVA-Video (169)"]["flops"][frames]["llm_side"]
    return Target(f"LLM-side FLOPs CrossLMM-9 / 169-token at {frames} frames", crosslmm / baseline, 1 / 20)


def bench_flops(config_name: str, frames: list[int], text_tokens: int, paper_column: str, out: Path) -> None:
    """Sweep ``config_name``'s preset over ``frames``; print the breakdown, the paper-convention check and the
    target; write ``out/flops.json`` and ``out/flops.png``."""
    from crosslmm.model.configuration import CrossLMMConfig
    from crosslmm.model.presets import load_config_yaml

    config = CrossLMMConfig(**load_config_yaml(config_name))
    result = {"config": config_name, **flops_sweep(config, frames, text_tokens, paper_column)}
    rows = []
    for t in result["frames"]:
        for name, model in result["models"].items():
            f = model["flops"][t]
            other = f["projector"] + f["lm_head"]
            rows.append(
                [t, name]
                + [v / 1e12 for v in (f["vision"], f["llm"], f["cross_attention"], other, f["total"])]
            )
            rows[-1].append(f["total"] / f["vision"])
    header = [
        "frames",
        "model",
        "vision TF",
        "LLM layers TF",
        "cross-attn TF",
        "proj+head TF",
        "total TF",
        "total/vision",
    ]
    print(f"Analytic prefill FLOPs, {config_name}, {text_tokens} text tokens (2 FLOPs per multiply-add)")
    print(format_table(header, rows))
    paper_rows = [
        [t, p["tmac"], p["published_tflops"], p.get("error_pct")]
        for t, p in result["paper_convention"].items()
    ]
    print(
        f"\nPaper convention (multiply-adds, see flops.paper_convention_flops) vs published {paper_column} column"
    )
    print(format_table(["frames", "ours TMAC", "paper TFLOPs", "error %"], paper_rows))
    result["targets"] = [llm_side_target(result).as_dict()]
    print_targets(result["targets"])
    write_json(out / "flops.json", result)
    models = result["models"]
    xs = result["frames"]
    series = {name: (xs, [m["flops"][t]["total"] / 1e12 for t in xs]) for name, m in models.items()}
    series["vision tower"] = (xs, [next(iter(models.values()))["flops"][t]["vision"] / 1e12 for t in xs])
    llm_side = {name: (xs, [m["flops"][t]["llm_side"] / 1e12 for t in xs]) for name, m in models.items()}
    loglog_panels(
        out / "flops.png",
        [("total prefill", "TFLOPs", series), ("LLM layers + cross-attention", "TFLOPs", llm_side)],
        f"Analytic prefill FLOPs, {config_name}",
    )
    print(f"\nwrote {out / 'flops.json'} and {out / 'flops.png'}")
