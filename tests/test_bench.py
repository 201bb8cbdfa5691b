"""Benchmarks: the analytic FLOPs against ``FlopCounterMode`` on the real CrossLMM, and smoke runs of both
``crosslmm bench`` commands (keys and files only: no timing thresholds in tests)."""

from __future__ import annotations

import json

import pytest
import torch

from crosslmm.bench.flops import flop_counter, prefill_flops
from crosslmm.cli import main
from crosslmm.model.factory import TinySpec, make_tiny


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"v2v_scope": "video", "cross_attention_mlp": True},
        {"cross_attention_kv_source": "projector", "t2v": False},
        {"pooling_position": "after_projector", "projector_type": "linear", "vision_feature_layer": -2},
    ],
    ids=["default", "video-scope+mlp", "projector-kv+v2v-only", "pool-after+linear+layer-2"],
)
@pytest.mark.parametrize("all_positions", [False, True])
def test_analytic_flops_match_counted_forward(fields, all_positions):
    """Every component of ``prefill_flops`` (tower, projector, decoder, DCALs, LM head) against a counted
    forward pass of the real model with a [prefix][video][text] prompt."""
    model, _ = make_tiny(TinySpec(), **fields)
    cfg = model.config
    frames, prefix, text = 3, 5, 7
    input_ids = torch.cat(
        [
            torch.randint(10, 100, (prefix,)),
            torch.full((frames * cfg.tokens_per_frame,), cfg.video_token_id),
            torch.randint(10, 100, (text,)),
        ]
    )[None]
    size = cfg.vision_config.image_size
    with torch.no_grad(), flop_counter() as counter:
        model(
            input_ids=input_ids,
            pixel_values_videos=torch.randn(1, frames, 3, size, size),
            use_cache=False,
            logits_to_keep=0 if all_positions else 1,
        )
    analytic = prefill_flops(cfg, frames, text, prefix_tokens=prefix, lm_head_all_positions=all_positions)
    assert analytic.total == pytest.approx(counter.get_total_flops(), rel=0.02)


def test_bench_flops_writes_table_json_and_plot(tmp_path, capsys):
    assert main(["bench", "flops", "--frames", "32,256", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "flops.json").read_text())
    assert (tmp_path / "flops.png").stat().st_size > 0
    assert set(result["models"]) == {
        "CrossLMM-1",
        "CrossLMM-9",
        "CrossLMM-16",
        "all patches (729)",
        "LLaVA-Video (169)",
        "LLaVA-OneVision (196)",
    }
    row = result["models"]["CrossLMM-9"]["flops"]["256"]
    assert {"vision", "llm", "cross_attention", "llm_side", "total"} <= set(row)
    assert abs(result["paper_convention"]["32"]["error_pct"]) < 2
    assert result["targets"][0]["met"]
    assert "LLaVA-OneVision (196)" in capsys.readouterr().out


def test_bench_speed_quick_writes_table_json_and_plot(tmp_path):
    assert main(["bench", "speed", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "speed.json").read_text())
    assert (tmp_path / "speed.png").stat().st_size > 0
    variants = {"vision tower", "CrossLMM", "pooled, no cross-attn", "full-token"}
    assert set(result["prefill_s"]) == variants
    assert set(result["peak_activation_mb"]) == variants
    assert set(result["decode_step_s"]) == variants - {"vision tower"}
    assert set(result["slope"]) == variants
    assert len(result["targets"]) == 5 and all("met" in t for t in result["targets"])
    assert result["prefill_s"]["CrossLMM"]["4"] > 0
