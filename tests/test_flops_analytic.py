"""Analytic FLOPs on the real ``CrossLMMConfig`` (presets and tiny configs): the paper's published numbers,
sanity of the components, and exact agreement with ``torch.utils.flop_counter`` on the tiny HF towers,
the HF decoder and the whole CrossLMM prefill."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from crosslmm.bench.flops import (
    PAPER_TFLOPS,
    cache_bytes,
    decode_flops,
    decoder_tokens_per_layer,
    flop_counter,
    full_token_baseline_flops,
    paper_convention_flops,
    prefill_flops,
    vision_tower_flops,
)
from crosslmm.bench.flops.shapes import linear_flops
from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.modeling import CrossLMMForCausalLM
from crosslmm.model.presets import available_presets, load_config_yaml


def _preset(name: str, **overrides) -> CrossLMMConfig:
    """The real config of a preset, as the model and ``crosslmm bench flops`` build it."""
    return CrossLMMConfig(**{**load_config_yaml(name), **overrides})


def _max_rel_error(name: str, column: str, **kwargs) -> float:
    cfg = _preset(name)
    return max(
        abs(paper_convention_flops(cfg, frames, **kwargs).total / 1e12 / tflops - 1)
        for frames, tflops in PAPER_TFLOPS[column].items()
    )


def test_presets_load_by_name_and_path():
    assert available_presets() == sorted(
        f"crosslmm-{size}-{tok}tok" for size in ("2b", "7b") for tok in (1, 9, 16)
    )
    by_name = load_config_yaml("crosslmm-2b-9tok")
    assert load_config_yaml("configs/model/crosslmm-2b-9tok.yaml") == by_name
    assert by_name["text_config"]["tie_word_embeddings"] is True
    assert load_config_yaml("crosslmm-7b-9tok")["text_config"]["tie_word_embeddings"] is False
    with pytest.raises(FileNotFoundError, match="crosslmm-7b-9tok"):
        load_config_yaml("crosslmm-9b")


def test_paper_7b_column_reproduced():
    """One GQA K/V projection per DCAL from raw encoder features hits Fig. 4 within 0.2 %."""
    assert _max_rel_error("crosslmm-7b-9tok", "7b") < 0.0025
    cfg = _preset("crosslmm-7b-9tok")
    assert cfg.resolved_cross_layers() == [0, 4, 8, 12, 16, 20, 24]  # docs/model.md: 7 DCALs for 28 layers
    at_256 = paper_convention_flops(cfg, 256)
    assert 0.82 < at_256.vision / at_256.total < 0.84  # the vision tower dominates, as docs/paper.md says


def test_paper_7b_column_rules_out_other_kv_counts():
    """The K/V term is what the fit hinges on: none, one per block, or MLP-projected memory all miss."""
    assert _max_rel_error("crosslmm-7b-9tok", "7b", kv_sets=0) > 0.012
    assert _max_rel_error("crosslmm-7b-9tok", "7b", kv_sets=2) > 0.014
    projected = _preset("crosslmm-7b-9tok", cross_attention_kv_source="projector")
    at_32 = paper_convention_flops(projected, 32).total / 1e12
    assert at_32 / PAPER_TFLOPS["7b"][32] - 1 > 0.05


def test_paper_2b_table_fits_only_one_token_per_frame():
    """Table 6 does not say its token count; the 7B convention fits it at 1 token, not at 9."""
    assert _max_rel_error("crosslmm-2b-1tok", "2b") < 0.005
    assert _max_rel_error("crosslmm-2b-9tok", "2b") > 0.02


def test_frame_scope_v2v_is_cheaper_than_video_scope():
    frame = prefill_flops(_preset("crosslmm-7b-9tok"), 64, 70)
    video = prefill_flops(_preset("crosslmm-7b-9tok", v2v_scope="video"), 64, 70)
    assert frame.cross_attention < video.cross_attention
    assert frame.llm == video.llm and frame.vision == video.vision


def test_doubling_frames_roughly_doubles_crosslmm():
    cfg = _preset("crosslmm-7b-9tok")
    ratio = prefill_flops(cfg, 256, 70).total / prefill_flops(cfg, 128, 70).total
    assert 1.95 < ratio < 2.05


def test_full_token_baseline_llm_side_dwarfs_crosslmm():
    """At 256 frames, 169 tokens per frame (LLaVA-Video) cost ~32x CrossLMM-9's LLM layers + DCALs."""
    cfg = _preset("crosslmm-7b-9tok")
    crosslmm = prefill_flops(cfg, 256, 70)
    baseline = full_token_baseline_flops(cfg, 256, 70, tokens_per_frame=169)
    assert baseline.cross_attention == 0 and baseline.vision == crosslmm.vision
    assert baseline.as_dict()["llm_side"] / crosslmm.as_dict()["llm_side"] >= 20
    all_patches = full_token_baseline_flops(cfg, 256, 70)
    assert all_patches.llm > baseline.llm


def test_projector_and_cross_attention_follow_the_config():
    cfg = _preset("crosslmm-2b-9tok")
    base = prefill_flops(cfg, 8, 20)
    after = prefill_flops(_preset("crosslmm-2b-9tok", pooling_position="after_projector"), 8, 20)
    assert after.projector == base.projector * 729 // 9
    no_cross = prefill_flops(_preset("crosslmm-2b-9tok", v2v=False, t2v=False), 8, 20)
    assert no_cross.cross_attention == 0 and no_cross.llm == base.llm
    with_mlp = prefill_flops(_preset("crosslmm-2b-9tok", cross_attention_mlp=True), 8, 20)
    assert with_mlp.cross_attention > base.cross_attention
    shallower = prefill_flops(_preset("crosslmm-2b-9tok", vision_feature_layer=-2), 8, 20)
    assert shallower.vision < base.vision


# --- agreement with torch's FlopCounterMode on tiny HF models ------------------------------------------
# The analytic count and FlopCounterMode count the same matmuls (2 FLOPs per multiply-add, full S x S
# scores, norms/softmax/pooling ignored), so they agree exactly: any tolerance would hide a missing
# projector, LM head or DCAL.


def _counted(module: torch.nn.Module, **inputs) -> int:
    with torch.no_grad(), flop_counter() as counter:
        module(**inputs)
    return counter.get_total_flops()


def _counted_prompt(model, frames: int, per_frame: int, prefix: int, text: int, logits_to_keep: int) -> int:
    """Counted FLOPs of one ``[prefix][frames x per_frame video][text]`` prompt's forward."""
    input_ids = torch.cat(
        [
            torch.randint(10, 500, (1, prefix)),
            torch.full((1, frames * per_frame), _VIDEO_TOKEN_ID),
            torch.randint(10, 500, (1, text)),
        ],
        dim=1,
    )
    size = model.config.vision_config.image_size
    return _counted(
        model,
        input_ids=input_ids,
        pixel_values_videos=torch.randn(1, frames, 3, size, size),
        video_frame_counts=torch.tensor([frames]),
        use_cache=False,
        logits_to_keep=logits_to_keep,
    )


def _tiny_config(vision_config, attn_implementation: str = "eager", **overrides) -> CrossLMMConfig:
    """The 2B preset's CrossLMM fields around a 5-layer Qwen2 and the given tiny vision tower. With K=3 the
    real rule puts DCALs after layers 0 and 3; the off-by-one rule (after K-1, 2K-1) would give one DCAL."""
    text = Qwen2Config(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        attn_implementation=attn_implementation,
    )
    fields = dict(
        text_config=text,
        vision_config=vision_config,
        tokens_per_frame=4,
        cross_attention_every=3,
        video_token_id=_VIDEO_TOKEN_ID,
    )
    return CrossLMMConfig(**{**load_config_yaml("crosslmm-2b-9tok"), **fields, **overrides})


_VIDEO_TOKEN_ID = 7
_VISION = dict(
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=56,
    patch_size=14,
)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "config_class, model_class, extra",
    [
        (SiglipVisionConfig, SiglipVisionModel, {"vision_use_head": False}),  # LLaVA never runs the head
        (CLIPVisionConfig, CLIPVisionModel, {}),  # + class token
    ],
)
def test_vision_tower_matches_flop_counter(config_class, model_class, extra, attn):
    torch.manual_seed(0)
    vision_config = config_class(**_VISION, **extra, attn_implementation=attn)
    frames = 3
    pixels = torch.randn(frames, 3, vision_config.image_size, vision_config.image_size)
    counted = _counted(model_class(vision_config).eval(), pixel_values=pixels)
    analytic = prefill_flops(_tiny_config(vision_config), frames, 10).vision
    assert analytic == counted
    assert analytic == vision_tower_flops(vision_config, frames)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("all_positions", [False, True])
def test_llm_matches_flop_counter(all_positions, attn):
    torch.manual_seed(0)
    cfg = _tiny_config(SiglipVisionConfig(**_VISION), attn)
    frames, text, prefix = 3, 10, 5
    analytic = prefill_flops(cfg, frames, text, prefix_tokens=prefix, lm_head_all_positions=all_positions)
    seq = prefix + frames * cfg.tokens_per_frame + text
    input_ids = torch.randint(0, cfg.text_config.vocab_size, (1, seq))
    model = Qwen2ForCausalLM(cfg.text_config).eval()
    counted = _counted(model, input_ids=input_ids, use_cache=False, logits_to_keep=0 if all_positions else 1)
    assert analytic.llm + analytic.lm_head == counted


@pytest.mark.parametrize(
    "overrides, all_positions",
    [
        ({}, False),
        ({}, True),
        ({"pooling_position": "after_projector"}, False),
        ({"cross_attention_kv_source": "projector"}, False),
        ({"v2v_scope": "video"}, False),
        ({"projector_type": "linear"}, False),
        ({"vision_feature_layer": -2}, False),
        ({"v2v": False}, False),
        ({"t2v": False, "cross_attention_kv_source": "projector"}, False),
        ({"cross_attention_mlp": True}, False),
        ({"cross_attention_mlp": True, "v2v_scope": "video"}, True),
        ({"visual_reducer": "random", "tokens_per_frame": 3}, False),
        ({"visual_reducer": "salient", "tokens_per_frame": 5}, True),
        ({"visual_reducer": "salient", "tokens_per_frame": 3, "vision_feature_layer": 0}, False),
        ({"visual_reducer": "salient", "tokens_per_frame": 3, "salient_layer": 0}, False),
        ({"visual_reducer": "merge", "tokens_per_frame": 2}, False),
        ({"visual_reducer": "merge", "tokens_per_frame": 6, "pooling_position": "after_projector"}, False),
    ],
)
def test_whole_model_matches_flop_counter(overrides, all_positions):
    """CrossLMMForCausalLM's whole prefill (tower, projector, decoder, DCALs, LM head) on the real config,
    with a [prefix][video][text] prompt. SDPA everywhere (eager is covered per component above). A baseline
    reducer's own matmuls (salient's and ToMe's similarities) are counted alone and taken out: the analytic
    count ignores them, as it ignores pooling."""
    torch.manual_seed(0)
    vision_config = SiglipVisionConfig(**_VISION, vision_use_head=False, attn_implementation="sdpa")
    cfg = _tiny_config(vision_config, "sdpa", **overrides)
    assert cfg.resolved_cross_layers() == [0, 3]
    model = CrossLMMForCausalLM(cfg).eval()
    frames, prefix, text = 3, 5, 10
    counted = _counted_prompt(model, frames, cfg.tokens_per_frame, prefix, text, 0 if all_positions else 1)
    analytic = prefill_flops(cfg, frames, text, prefix_tokens=prefix, lm_head_all_positions=all_positions)
    assert analytic.total == counted - _reducer_flops(model, frames)


def _reducer_flops(model: CrossLMMForCausalLM, frames: int) -> int:
    """What FlopCounterMode counts for the model's frame reducer alone (0 for pooling)."""
    projector = model.model.projector
    if projector.reducer is None:
        return 0
    width = projector[0].in_features if projector.pool_first else projector[-1].out_features
    tokens = torch.randn(frames, _VISION_PATCHES, width)
    signals = (
        {"saliency": torch.rand(frames, _VISION_PATCHES)} if model.config.visual_reducer == "salient" else {}
    )
    with flop_counter() as counter:
        projector.reducer(tokens, torch.arange(frames), False, **signals)
    return counter.get_total_flops()


_VISION_PATCHES = (_VISION["image_size"] // _VISION["patch_size"]) ** 2  # 16


def test_fastv_counts_the_later_layers_over_the_kept_tokens():
    """FastV (masking: the counted forward does not shrink) checked by two other routes: (1) its analytic
    decoder + LM head equal FlopCounterMode on stock Qwen2 decoders, ``fastv_layer`` layers over the full
    prompt plus the remaining layers over the kept tokens; (2) the masked forward counts exactly the
    unpruned model plus the ranking (layer L-1's keys for every position, one query row and its scores)."""
    torch.manual_seed(0)
    vision_config = SiglipVisionConfig(**_VISION, vision_use_head=False, attn_implementation="sdpa")
    fields = dict(v2v=False, t2v=False, tokens_per_frame=_VISION_PATCHES)
    fastv = _tiny_config(vision_config, "sdpa", visual_reducer="fastv", fastv_layer=2, fastv_keep=3, **fields)
    unpruned_config = _tiny_config(vision_config, "sdpa", **fields)
    frames, prefix, text = 3, 5, 10
    seq, kept = prefix + frames * _VISION_PATCHES + text, prefix + frames * 3 + text
    assert decoder_tokens_per_layer(fastv, frames, text, prefix_tokens=prefix) == [seq] * 2 + [kept] * 3
    analytic = prefill_flops(fastv, frames, text, prefix_tokens=prefix)
    unpruned = prefill_flops(unpruned_config, frames, text, prefix_tokens=prefix)
    assert (analytic.vision, analytic.projector) == (unpruned.vision, unpruned.projector)
    assert analytic.llm < unpruned.llm

    text_config = fastv.text_config
    stock = []
    for layers, tokens in ((2, seq), (3, kept)):
        decoder = Qwen2Config(**{**text_config.to_dict(), "num_hidden_layers": layers, "layer_types": None})
        decoder._attn_implementation = "sdpa"
        input_ids = torch.randint(0, text_config.vocab_size, (1, tokens))
        stock.append(
            _counted(Qwen2ForCausalLM(decoder).eval(), input_ids=input_ids, use_cache=False, logits_to_keep=1)
        )
    lm_head = linear_flops(1, text_config.hidden_size, text_config.vocab_size)
    assert analytic.llm + analytic.lm_head == sum(stock) - lm_head

    model = CrossLMMForCausalLM(fastv).eval()
    counted = _counted_prompt(model, frames, _VISION_PATCHES, prefix, text, 1)
    q_dim = text_config.num_attention_heads * (text_config.hidden_size // text_config.num_attention_heads)
    kv_dim = text_config.num_key_value_heads * q_dim // text_config.num_attention_heads
    ranking = linear_flops(seq, text_config.hidden_size, kv_dim) + linear_flops(
        1, text_config.hidden_size, q_dim
    )
    ranking += 2 * seq * q_dim  # one query row of scores
    assert counted == unpruned.total + ranking


# --- decode: per-token FLOPs and cache bytes -------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"cross_attention_mlp": True},
        {"t2v": False},
        {"v2v": False, "t2v": False},
        {"visual_reducer": "merge", "tokens_per_frame": 2, "v2v": False, "t2v": False},
    ],
)
def test_decode_flops_and_cache_bytes_match_a_cached_generation_step(overrides):
    """One generated token after a cached prefill: FlopCounterMode on the model's one-token forward equals
    ``decode_flops``, at the first token and after two more; the cache the prefill left holds exactly
    ``cache_bytes`` (decoder K/V and T2V K/V, at the cache's dtype)."""
    torch.manual_seed(0)
    vision_config = SiglipVisionConfig(**_VISION, vision_use_head=False, attn_implementation="sdpa")
    cfg = _tiny_config(vision_config, "sdpa", **overrides)
    model = CrossLMMForCausalLM(cfg).eval()
    frames, prefix, text = 3, 5, 10
    per_frame = cfg.tokens_per_frame
    input_ids = torch.cat(
        [
            torch.randint(10, 500, (1, prefix)),
            torch.full((1, frames * per_frame), _VIDEO_TOKEN_ID),
            torch.randint(10, 500, (1, text)),
        ],
        dim=1,
    )
    size = cfg.vision_config.image_size
    with torch.no_grad():
        out = model(
            input_ids=input_ids,
            pixel_values_videos=torch.randn(1, frames, 3, size, size),
            video_frame_counts=torch.tensor([frames]),
            use_cache=True,
            logits_to_keep=1,
        )
    cache = out.past_key_values
    element = next(model.parameters()).element_size()
    tensors = [layer.keys for layer in cache.layers] + [layer.values for layer in cache.layers]
    cross = [t for pair in cache.cross_kv.values() for t in pair]
    expected = cache_bytes(cfg, frames, text, prefix_tokens=prefix, dtype_bytes=element)
    assert sum(t.numel() * t.element_size() for t in tensors) == expected.decoder
    assert sum(t.numel() * t.element_size() for t in cross) == expected.cross_attention
    assert (expected.cross_attention > 0) == bool(cfg.t2v and cfg.resolved_cross_layers())
    for generated in range(3):
        with torch.no_grad(), flop_counter() as counter:
            model(input_ids=torch.randint(10, 500, (1, 1)), cache=cache, use_cache=True)
        analytic = decode_flops(cfg, frames, text, prefix_tokens=prefix, generated=generated)
        assert counter.get_total_flops() == analytic, generated
