"""Model core: zero-gate equivalence, V2V locality, cache correctness, save/load, gradients, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import check_cached_generation, random_frames, set_gates, video_prompt
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

import crosslmm  # noqa: F401  (registers the Auto classes)
from crosslmm.model.build import save_model_dir
from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.connector import pool_frames
from crosslmm.model.layout import prefill_layout
from crosslmm.model.tiny import TinySpec, make_tiny


def _inputs(processor, frames=(3,), question="What colour is the marker?"):
    texts = [video_prompt(processor, question) for _ in frames]
    videos = [random_frames(n, seed=i) for i, n in enumerate(frames)]
    return processor(text=texts, videos=videos)


def _reference_lm(model):
    """The same decoder as a stock HF causal LM, without any cross-attention blocks."""
    ref = AutoModelForCausalLM.from_config(model.config.text_config)
    ref.model.load_state_dict(model.model.language_model.state_dict())
    ref.lm_head.load_state_dict(model.lm_head.state_dict())
    return ref.eval()


@pytest.mark.parametrize("llm", ["qwen2", "llama"])
@pytest.mark.parametrize("scope", ["frame", "video"])
def test_zero_gates_equal_base_decoder(llm, scope):
    model, processor = make_tiny(
        TinySpec(llm=llm), v2v=True, t2v=True, v2v_scope=scope, cross_attention_mlp=True
    )
    inputs = _inputs(processor, frames=(3, 2))
    with torch.no_grad():
        ours = model(**inputs).logits
        embeds, _, _ = model.model.embed_video(
            inputs["input_ids"],
            model.get_input_embeddings()(inputs["input_ids"]),
            inputs["attention_mask"],
            inputs["pixel_values_videos"],
            inputs["video_frame_counts"],
        )
        ref = _reference_lm(model)(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
        set_gates(model, 0.5)  # the comparison is not vacuous: open gates change the output
        assert not torch.allclose(model(**inputs).logits, ref)


def _first_cross_layer_output(model, inputs, memory):
    cross = next(iter(model.model.cross_layers.values()))
    layout = prefill_layout(
        inputs["input_ids"],
        inputs["attention_mask"],
        inputs["video_frame_counts"],
        model.config.video_token_id,
        model.config.tokens_per_frame,
    )
    hidden = torch.randn(
        *inputs["input_ids"].shape,
        model.config.text_config.hidden_size,
        generator=torch.Generator().manual_seed(1),
    )
    return cross(hidden, layout, memory)[0], layout


@pytest.mark.parametrize("scope", ["frame", "video"])
def test_v2v_scope_locality(scope):
    model, processor = make_tiny(TinySpec(), v2v=True, t2v=False, v2v_scope=scope)
    set_gates(model, 0.7)
    inputs = _inputs(processor, frames=(4,))
    frames = inputs["pixel_values_videos"][0]
    with torch.no_grad():
        _, memory = model.model.encode_video(frames)
        out, layout = _first_cross_layer_output(model, inputs, memory)
        changed_memory = memory.clone()
        changed_memory[2] += torch.randn_like(memory[2])  # not a constant: memory_norm would remove it
        out2, _ = _first_cross_layer_output(model, inputs, changed_memory)
    tpf = model.config.tokens_per_frame
    diff = (out - out2).abs().sum(-1)
    video = layout.video_positions.view(4, tpf)
    assert diff[video[2]].min() > 0  # frame 2's pooled tokens see the change
    others = video[[0, 1, 3]].flatten()
    text = torch.ones_like(diff, dtype=torch.bool)
    text[layout.video_positions] = False
    assert diff[text].max() == 0  # T2V off: text untouched
    if scope == "frame":
        assert diff[others].max() == 0
    else:
        assert diff[others].min() > 0


def _randomised_first_cross_layer():
    """The first dual cross-attention layer of a tiny model with the MLP, every weight (norms included) drawn
    at a scale where the attention is far from uniform and a 10% error in the output is well above rounding."""
    model, _ = make_tiny(TinySpec(), v2v=True, t2v=True, cross_attention_mlp=True)
    layer = next(iter(model.model.cross_layers.values()))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5 + (parameter.dim() == 1))
    return model, layer


def _rms_norm(x, norm):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight


@torch.no_grad()
def test_cross_attention_block_equals_the_gated_attention_formula():
    """A cross-attention block against the formula written out (not against the model): tanh(gate) *
    o_proj(softmax(q k^T / sqrt(d)) v), q from the RMS-normed queries, k and v from the layer-normed memory,
    each key/value head shared by its query heads (GQA). gate = 0.5 tells tanh(gate) (0.46) from gate."""
    model, layer = _randomised_first_cross_layer()
    block = layer.t2v
    block.gate.fill_(0.5)
    text = model.config.text_config
    heads, kv_heads, head_dim = text.num_attention_heads, text.num_key_value_heads, block.head_dim
    generator = torch.Generator().manual_seed(1)
    queries = torch.randn(2, 5, text.hidden_size, generator=generator)  # (G, Lq, D)
    memory = torch.randn(2, 7, block.k_proj.in_features, generator=generator)  # (G, M, Dm)

    normed = F.layer_norm(memory, memory.shape[-1:], block.memory_norm.weight, block.memory_norm.bias)
    k = (normed @ block.k_proj.weight.T).view(2, 7, kv_heads, head_dim)
    v = (normed @ block.v_proj.weight.T).view(2, 7, kv_heads, head_dim)
    q = (_rms_norm(queries, block.query_norm) @ block.q_proj.weight.T).view(2, 5, heads, head_dim)
    k_per_head, v_per_head = (t.repeat_interleave(heads // kv_heads, dim=2) for t in (k, v))
    weights = (torch.einsum("glhd,gmhd->ghlm", q, k_per_head) / math.sqrt(head_dim)).softmax(-1)
    attended = torch.einsum("ghlm,gmhd->glhd", weights, v_per_head).reshape(2, 5, heads * head_dim)
    expected = math.tanh(0.5) * (attended @ block.o_proj.weight.T)

    keys, values = block.project_memory(memory, vision_chunk_size=32)  # (G, M, KVH, hd)
    torch.testing.assert_close(keys, k, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values, v, rtol=1e-5, atol=1e-5)
    out = block(queries, k.transpose(1, 2), v.transpose(1, 2))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert weights.max() > 2 / 7  # not a uniform average: the keys matter


@torch.no_grad()
def test_gated_mlp_equals_the_gated_swiglu_formula():
    """The optional feed-forward against its formula: tanh(gate) * down(silu(gate_proj(n)) * up(n)), n the
    RMS-normed input; gate = 0.5 tells tanh(gate) from gate."""
    _, layer = _randomised_first_cross_layer()
    mlp = layer.mlp
    mlp.gate.fill_(0.5)
    hidden = torch.randn(6, mlp.norm.weight.shape[0], generator=torch.Generator().manual_seed(2))
    n = _rms_norm(hidden, mlp.norm)
    swiglu = F.silu(n @ mlp.gate_proj.weight.T) * (n @ mlp.up_proj.weight.T)
    expected = math.tanh(0.5) * (swiglu @ mlp.down_proj.weight.T)
    torch.testing.assert_close(mlp(hidden), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("llm", ["qwen2", "llama"])
def test_generate_with_cache_matches_full_forward(llm):
    model, processor = make_tiny(TinySpec(llm=llm), v2v=True, t2v=True)
    set_gates(model, 0.8)
    check_cached_generation(model, _inputs(processor, frames=(3,)), steps=6)


def test_save_load_round_trip_is_exact(tmp_path):
    model, processor = make_tiny(TinySpec(), v2v=True, t2v=True)
    set_gates(model, 0.3)
    save_model_dir(model, processor, tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == "CrossLMMForCausalLM"
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    for name, tensor in saved.items():
        torch.testing.assert_close(restored[name], tensor, rtol=0, atol=0, msg=name)
    proc2 = AutoProcessor.from_pretrained(tmp_path)
    inputs = _inputs(proc2)
    assert proc2.tokens_per_frame == processor.tokens_per_frame
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, loaded(**inputs).logits, rtol=0, atol=0)


def test_gradients_reach_gates_and_cross_weights():
    model, processor = make_tiny(TinySpec(), v2v=True, t2v=True)
    model.train()
    inputs = _inputs(processor)
    labels = inputs["input_ids"].clone()
    model(**inputs, labels=labels).loss.backward()
    cross = model.model.cross_layers
    for block in cross.values():
        assert block.v2v.gate.grad.abs().item() > 0 and block.t2v.gate.grad.abs().item() > 0
    model.zero_grad()
    set_gates(model, 0.5)
    model(**inputs, labels=labels).loss.backward()
    for name, p in cross.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.model.projector.linear_1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("tokens", "grid"), [(1, 1), (4, 2), (9, 3), (16, 4)])
@pytest.mark.parametrize("mode", ["avg", "max", "bilinear"])
def test_pooling_shapes(tokens, grid, mode):
    x = torch.randn(5, 27 * 27, 8)
    out = pool_frames(x, grid, mode)
    assert out.shape == (5, tokens, 8)


def test_avg_pooling_is_exact_block_mean():
    x = torch.randn(2, 27 * 27, 3)
    out = pool_frames(x, 3, "avg")
    blocks = x.view(2, 3, 9, 3, 9, 3).mean(dim=(2, 4)).reshape(2, 9, 3)
    torch.testing.assert_close(out, blocks)


def test_bad_inputs_raise_clear_errors():
    model, processor = make_tiny(TinySpec())
    with pytest.raises(ValueError, match="zero frames"):
        processor(text=[video_prompt(processor)], videos=[random_frames(0)])
    with pytest.raises(ValueError, match="placeholder"):
        processor(text=[video_prompt(processor)], videos=[random_frames(2), random_frames(2)])
    inputs = _inputs(processor, frames=(3,))
    with pytest.raises(ValueError, match="do not match"):
        model(
            input_ids=inputs["input_ids"],
            pixel_values_videos=inputs["pixel_values_videos"][:, :2],
            video_frame_counts=torch.tensor([2]),
        )
    with pytest.raises(ValueError, match="no pixel_values_videos"):
        model(input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match="zero frames"):
        model(
            input_ids=inputs["input_ids"],
            pixel_values_videos=inputs["pixel_values_videos"],
            video_frame_counts=torch.tensor([0]),
        )


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("tokens_per_frame", 5, "square"),
        ("pooling_mode", "median", "pooling_mode"),
        ("v2v_scope", "clip", "v2v_scope"),
        ("cross_attention_layers", [0, 99], "cross_attention_layers"),
        ("tokens_per_frame", 100, "grid"),
    ],
)
def test_bad_config_values_raise(field, value, match):
    model, _ = make_tiny(TinySpec())
    cfg = model.config.to_dict() | {field: value}
    with pytest.raises(ValueError, match=match):
        CrossLMMConfig(**{k: v for k, v in cfg.items() if k not in ("model_type", "transformers_version")})


def test_config_contradicting_checkpoint_raises(tmp_path):
    """A config whose shapes contradict the weights refuses to load instead of re-initialising them
    (transformers prints the mismatched weights with both shapes in its load report)."""
    model, processor = make_tiny(TinySpec())
    save_model_dir(model, processor, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="`ignore_mismatched_sizes` to `False`, thus raising an error"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).text_config.intermediate_size == 96


def test_gradient_checkpointing_gives_same_gradients():
    model, processor = make_tiny(TinySpec(), v2v=True, t2v=True)
    set_gates(model, 0.5)
    model.train()
    inputs = _inputs(processor)
    labels = inputs["input_ids"].clone()

    def grads():
        model.zero_grad()
        model(**inputs, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.model.cross_layers.values())
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], msg=name)
