"""Benchmarks: smoke runs of the ``crosslmm bench`` commands (no timing thresholds in tests: their verdicts
and ratios are checked against the measured numbers). The analytic FLOPs against ``FlopCounterMode`` on
the real CrossLMM are in test_flops_analytic.py."""

from __future__ import annotations

import json

import pytest
import torch

from crosslmm.bench.flops import prefill_flops
from crosslmm.bench.report import loglog_slope
from crosslmm.cli import main


def test_bench_flops_writes_table_json_and_plot(tmp_path, capsys):
    assert main(["bench", "flops", "--frames", "32,256", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "flops.json").read_text())
    assert (tmp_path / "flops.png").stat().st_size > 0
    assert set(result["models"]) == {
        "CrossLMM-1",
        "CrossLMM-4",
        "CrossLMM-9",
        "CrossLMM-16",
        "all patches (729)",
        "LLaVA-Video (169)",
        "LLaVA-OneVision (196)",
    }
    row = result["models"]["CrossLMM-9"]["flops"]["256"]
    assert {"vision", "llm", "cross_attention", "llm_side", "total"} <= set(row)
    llm = [result["models"][f"CrossLMM-{k}"]["flops"]["256"]["llm"] for k in (1, 4, 9, 16)]
    assert llm == sorted(llm) and len(set(llm)) == 4  # every elastic budget counted at its own sequence
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
    prefill = result["prefill_s"]
    assert all(set(times) == {"2", "4"} for times in prefill.values())
    crosslmm_times = [prefill["CrossLMM"]["2"], prefill["CrossLMM"]["4"]]
    assert result["slope"]["CrossLMM"] == pytest.approx(loglog_slope([2, 4], crosslmm_times))
    targets = {t["name"]: t for t in result["targets"]}
    assert len(targets) == 6  # the last: streaming ingest (test_bench_speed_quick_measures_streaming_ingest)
    full_ratio = targets["prefill CrossLMM / full-token at 4 frames"]
    assert full_ratio["value"] == pytest.approx(prefill["CrossLMM"]["4"] / prefill["full-token"]["4"])
    assert targets["prefill time slope, 2-4 frames"]["value"] == result["slope"]["CrossLMM"]
    _assert_verdicts_follow_values(result["targets"])


def test_bench_speed_quick_measures_streaming_ingest(tmp_path, capsys):
    """One frame added to a StreamingSession at the first and at the last --frames count seen: medians,
    their ratio, the row and the target (its verdict follows the measured ratio; no time is asserted)."""
    argv = ["bench", "speed", "--quick", "--no-memory", "--frames", "2,6", "--out", str(tmp_path)]
    assert main(argv) == 0
    ingest = json.loads((tmp_path / "speed.json").read_text())["streaming_ingest"]
    assert ingest["frames_seen"] == [2, 6] and ingest["repeats"] == 3
    assert ingest["timed_frames_seen"] == {"2": [1, 3], "6": [5, 7]}
    runs, medians = ingest["add_frame_runs_s"], ingest["add_frame_s"]
    for n in ("2", "6"):
        assert len(runs[n]) == 3 and medians[n] == sorted(runs[n])[1] > 0
    assert ingest["ratio"] == pytest.approx(medians["6"] / medians["2"])
    result = json.loads((tmp_path / "speed.json").read_text())
    target = result["targets"][-1]
    assert target["name"] == "streaming ingest of one frame at 6 / at 2 frames seen"
    assert (target["value"], target["limit"]) == (ingest["ratio"], 1.2)
    _assert_verdicts_follow_values(result["targets"])
    out = capsys.readouterr().out
    assert "Streaming ingest" in out and "add 1 frame ms" in out


def _assert_verdicts_follow_values(targets: list[dict]) -> None:
    """Each target's verdict is its measured value against its limit (no value: not met)."""
    for target in targets:
        assert target["met"] == (target["value"] is not None and target["value"] <= target["limit"]), target


def _speed_preset(tmp_path, *extra: str) -> dict:
    argv = ["bench", "speed", "--device", "cpu", "--preset", "mini-quick", "--frames", "1,2"]
    assert main([*argv, "--train-frames", "1", "--out", str(tmp_path), *extra]) == 0
    return json.loads((tmp_path / "speed.json").read_text())


def test_bench_speed_preset_records_every_cell_and_survives_an_oom(tmp_path, monkeypatch, capsys):
    """The real-size path on CPU with the bench's tiny shapes (27x27 patches like SigLIP @ 384/14): every
    (variant, frames) cell, one of them out of memory, the training step, and the files."""
    from crosslmm.bench.preset import run
    from crosslmm.bench.preset.setup import VARIANTS
    from crosslmm.bench.variants import CROSSLMM, FULL, POOLED, TOWER

    measure = run.measure_cell

    def full_token_at_2_frames_ooms(models, variant, frames, *args):
        if (variant, frames) == (FULL, 2):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return measure(models, variant, frames, *args)

    monkeypatch.setattr(run, "measure_cell", full_token_at_2_frames_ooms)
    result = _speed_preset(tmp_path)
    cells = result["cells"]
    assert set(cells) == set(VARIANTS) and all(set(c) == {"1", "2"} for c in cells.values())
    assert cells[FULL]["2"] == "OOM"
    done = [(v, t, c) for v, by_frames in cells.items() for t, c in by_frames.items() if c != "OOM"]
    assert len(done) == 7
    for variant, frames, cell in done:
        assert cell["finite"] and cell["prefill_ms"] > 0 and len(cell["prefill_ms_runs"]) == 5
        assert cell["peak_mb"] is None  # not measured on a CPU
        # times are only compared within this run, as ratios
        tower = cells[TOWER][frames]["prefill_ms"]
        assert cell["ratio_to_tower"] == pytest.approx(cell["prefill_ms"] / tower)
        if variant != TOWER:
            assert cell["decode_step_ms"] > 0 and cell["cache_mb"] > 0
    crosslmm, full = cells[CROSSLMM]["1"], cells[FULL]["1"]
    assert (crosslmm["tokens_per_frame"], full["tokens_per_frame"]) == (9, 196)  # LLaVA-OV: 27x27 -> 14x14
    assert full["llm_tokens"] - crosslmm["llm_tokens"] == 196 - 9
    assert crosslmm["cross_cache_mb"] > 0 and full["cross_cache_mb"] == 0
    assert result["variants"][POOLED]["cross_attention_layers"] == []
    train = result["train_step"]
    assert train["finite"] and train["step_ms"] > 0 and train["trainable"] == ["projector", "v2v"]
    targets = {t["name"]: t for t in result["targets"]}
    assert set(targets) == {f"prefill CrossLMM / vision tower at {t} frames" for t in (1, 2)}
    for t in ("1", "2"):
        ratio = cells[CROSSLMM][t]["prefill_ms"] / cells[TOWER][t]["prefill_ms"]
        assert targets[f"prefill CrossLMM / vision tower at {t} frames"]["value"] == pytest.approx(ratio)
    _assert_verdicts_follow_values(result["targets"])
    out = capsys.readouterr().out
    assert "OOM" in out and "2019" in out and "20208" in out  # the paper's Fig. 4 beside ours
    assert (tmp_path / "speed.png").stat().st_size > 0
    assert "| 256 |" in (tmp_path / "speed.md").read_text()


def test_oom_is_recorded_and_other_errors_raise():
    from crosslmm.bench.preset.device import OOM, guarded, is_oom

    cpu = torch.device("cpu")
    for message in (
        "CUDA error: out of memory",
        "DefaultCPUAllocator: can't allocate memory: you tried 9 GB",
    ):
        assert is_oom(RuntimeError(message))

        def fails(message=message):
            raise RuntimeError(message)

        assert guarded(fails, cpu) == OOM
    assert not is_oom(ValueError("out of memory"))
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        guarded(lambda: torch.ones(2, 3) @ torch.ones(2, 3), cpu)


def test_variants_share_weights_and_match_a_copy():
    """The pooled and full-token cells run CrossLMM's own tensors, and give what a copy of the weights gives."""
    from crosslmm.bench.preset.setup import build_variants, load_preset, variant_configs
    from crosslmm.bench.variants import FULL, POOLED, make_inputs
    from crosslmm.model.modeling import CrossLMMForCausalLM

    models = build_variants(load_preset("mini-quick"), torch.device("cpu"), torch.float32)
    base = models["CrossLMM"]
    for name in (POOLED, FULL):
        model = models[name]
        assert model.lm_head.weight.data_ptr() == base.lm_head.weight.data_ptr()
        copy = CrossLMMForCausalLM(variant_configs(base.config)[name]).eval()
        copy.load_state_dict({k: v for k, v in base.state_dict().items() if ".cross_layers." not in k})
        inputs = make_inputs(model.config, 2, 5, text_before=3)
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).logits, copy(**inputs).logits, rtol=0, atol=0)


def test_full_token_variant_of_the_7b_preset_is_llava_onevision():
    """196 tokens per frame from the projector's output, bilinear without antialias; the analytic count of
    that variant is the full-token baseline's of ``bench flops``."""
    from crosslmm.bench.flops import full_token_baseline_flops
    from crosslmm.bench.preset.setup import load_preset, variant_configs
    from crosslmm.bench.variants import FULL, POOLED

    config = load_preset("crosslmm-7b-9tok")
    full = variant_configs(config)[FULL]
    assert (full.tokens_per_frame, full.pooling_mode, full.pooling_antialias) == (196, "bilinear", False)
    assert full.pooling_position == "after_projector" and not full.resolved_cross_layers()
    assert variant_configs(config)[POOLED].tokens_per_frame == 9 and config.resolved_cross_layers()
    analytic = full_token_baseline_flops(config, 64, 60, tokens_per_frame=196, prefix_tokens=10)
    assert prefill_flops(full, 64, 60, prefix_tokens=10) == analytic


def test_preset_targets_need_a_measured_value():
    from crosslmm.bench.preset.targets import preset_targets
    from crosslmm.bench.variants import CROSSLMM, FULL, TOWER

    cells = {
        TOWER: {128: {"prefill_ms": 100.0}, 256: {"prefill_ms": 200.0, "peak_mb": 900.0}},
        CROSSLMM: {128: {"prefill_ms": 120.0}, 256: {"prefill_ms": 300.0, "peak_mb": 2000.0}},
        FULL: {128: "OOM", 256: "OOM"},
    }
    targets = {t.name: t for t in preset_targets(cells, [128, 256])}
    assert targets["prefill CrossLMM / vision tower at 128 frames"].met
    assert not targets["prefill CrossLMM / vision tower at 256 frames"].met  # 1.5 > 1.3
    assert targets["prefill ms CrossLMM at 256 frames (paper: 2019)"].met
    oom = targets["prefill CrossLMM / full-token at 128 frames (>= 5x faster)"]
    assert oom.value is None and not oom.met
    assert targets["peak MB above weights, CrossLMM at 256 frames (paper: 2530)"].met


def test_bench_speed_preset_only_options_need_a_preset(capsys):
    assert main(["bench", "speed", "--device", "cuda", "--quick"]) == 2
    assert "--device only apply with --preset" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_speed_preset_on_cuda(tmp_path):
    """CUDA events and peak memory above the weights (tiny shapes, so seconds)."""
    argv = ["bench", "speed", "--device", "cuda", "--preset", "mini-quick", "--frames", "1,2"]
    assert main([*argv, "--train-frames", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "speed.json").read_text())
    assert result["weights_mb"] > 0
    for by_frames in result["cells"].values():
        for cell in by_frames.values():
            assert cell["finite"] and cell["peak_mb"] > 0
    assert result["train_step"]["peak_mb"] > result["train_step"]["optimizer_state_mb"]
