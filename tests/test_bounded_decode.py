"""Bounded decode (``decode_memory="topk_frames"``): a generated token's T2V attends to a fixed number of
frames chosen by the prompt's attention, so its cost does not grow with the video; the prompt stays exact."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import coloured_frames, greedy, video_dependent_model, video_prompt

from crosslmm.model.cache import CrossLMMCache
from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.cross_attention import DualCrossAttentionLayer
from crosslmm.model.layout import prefill_layout
from crosslmm.streaming import StreamingSession


@pytest.fixture(scope="module")
def tiny():
    return video_dependent_model(cross_attention_mlp=True)


def _inputs(processor, frames: int, seed: int = 3):
    return processor(text=[video_prompt(processor)], videos=[coloured_frames(frames, seed=seed)])


def _bounded(model, m: int) -> CrossLMMCache:
    """The generate-time override: this cache decodes with the top ``m`` frames whatever the config says."""
    return CrossLMMCache(config=model.config.text_config, decode_memory="topk_frames", decode_frames=m)


class _KeyCounter:
    """Records (queries, keys) lengths of every T2V call; a generation step has one query."""

    def __init__(self, model):
        self.calls: list[tuple[int, int]] = []
        self.handles = [
            layer.t2v.register_forward_pre_hook(
                lambda _, args: self.calls.append((args[0].shape[1], args[1].shape[2]))
            )
            for layer in model.model.cross_layers.values()
        ]

    def step_keys(self) -> set[int]:
        return {keys for queries, keys in self.calls if queries == 1}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def test_invalid_setting_is_a_clear_error():
    with pytest.raises(ValueError, match="decode_memory must be one of"):
        CrossLMMConfig(decode_memory="topk")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="decode_frames must be a positive int"):
            CrossLMMConfig(decode_memory="topk_frames", decode_frames=bad)
    with pytest.raises(ValueError, match="decode_memory must be one of"):
        CrossLMMCache(decode_memory="pooled")


def test_decode_cost_does_not_grow_with_frames(tiny):
    """Attended keys per generated token and the cross cache stay fixed as the video grows (structural)."""
    model, processor = tiny
    patches = model.model.vision_tower.config.image_size // model.model.vision_tower.config.patch_size
    per_frame = patches**2
    keys, nbytes = {}, {}
    for frames in (3, 6, 12):
        counter = _KeyCounter(model)
        cache = _bounded(model, 2)
        with torch.inference_mode():
            model.generate(
                **_inputs(processor, frames), cache=cache, max_new_tokens=3, min_new_tokens=3, do_sample=False
            )
        counter.remove()
        keys[frames] = counter.step_keys()
        nbytes[frames] = cache.cross_nbytes()
        assert not cache.cross_kv, "a one-shot prefill frees the full memory once it has selected"
        assert all(kept.tolist() == [2] for _, _, kept in cache.selected_kv.values())
    assert keys == {f: {2 * per_frame} for f in keys}
    assert len(set(nbytes.values())) == 1
    full = CrossLMMCache(config=model.config.text_config)
    with torch.inference_mode():
        model(**_inputs(processor, 12), cache=full, use_cache=True)
    assert full.cross_nbytes() == 6 * nbytes[12]  # 12 frames kept in full, 2 selected


def test_prompt_is_exact_and_the_setting_changes_only_decoding(tiny):
    model, processor = tiny
    inputs = _inputs(processor, 6)
    with torch.inference_mode():
        exact = model(**inputs, cache=CrossLMMCache(config=model.config.text_config), use_cache=True).logits
        bounded = model(**inputs, cache=_bounded(model, 1), use_cache=True).logits
        _, full_steps = greedy(model, inputs, steps=3)
        _, top1_steps = greedy(model, inputs | {"cache": _bounded(model, 1)}, steps=3)
        _, top6_steps = greedy(model, inputs | {"cache": _bounded(model, 6)}, steps=3)
    assert torch.equal(exact, bounded)
    torch.testing.assert_close(top1_steps[:, 0], full_steps[:, 0], rtol=0, atol=0)  # from the prompt
    assert not torch.allclose(top1_steps[:, 1:], full_steps[:, 1:], atol=1e-3)  # 1 of 6 frames: differs
    torch.testing.assert_close(top6_steps, full_steps)  # every frame kept: the exact decode


def test_first_token_comes_from_the_full_prefill():
    """A model whose config bounds decoding to 1 of 6 frames: its first answer token's logits are the exact
    model's, bit for bit (the prompt's last position attends to every frame at prefill). Sending that token
    through a bounded step instead (the stricter measurement in docs/streaming.md) changes them."""
    exact, processor = video_dependent_model(cross_attention_mlp=True)
    bounded, _ = video_dependent_model(cross_attention_mlp=True, decode_memory="topk_frames", decode_frames=1)
    assert all(torch.equal(a, b) for a, b in zip(exact.state_dict().values(), bounded.state_dict().values()))
    inputs = _inputs(processor, 6)
    with torch.inference_mode():
        _, exact_steps = greedy(exact, inputs, steps=2)
        _, bounded_steps = greedy(bounded, inputs, steps=2)
        assert torch.equal(bounded_steps[:, 0], exact_steps[:, 0])
        # the control: prefill without the prompt's last token (which ranks), then that token as a step
        head = inputs | {
            "input_ids": inputs["input_ids"][:, :-1],
            "attention_mask": inputs["attention_mask"][:, :-1],
        }
        cache = CrossLMMCache(config=bounded.config.text_config)
        bounded(**head, cache=cache, use_cache=True)
        routed = bounded(input_ids=inputs["input_ids"][:, -1:], cache=cache, use_cache=True).logits[:, -1]
    assert not torch.allclose(routed, exact_steps[:, 0], atol=1e-3)


def test_config_field_selects_the_mode():
    model, processor = video_dependent_model(decode_memory="topk_frames", decode_frames=2)
    counter = _KeyCounter(model)
    with torch.inference_mode():
        greedy(model, _inputs(processor, 5), steps=2)
    counter.remove()
    per_frame = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    assert counter.step_keys() == {2 * per_frame}


def test_selection_picks_the_frames_the_prompt_attends_to():
    """Frames 1 and 4 carry keys aligned with every text query, the others keys opposed: those two are kept,
    in time order."""
    config = CrossLMMConfig(
        text_config=dict(
            model_type="qwen2", hidden_size=8, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
            num_hidden_layers=1, intermediate_size=16, vocab_size=32,
        ),
        v2v=False, tokens_per_frame=1, video_token_id=31, decode_memory="topk_frames", decode_frames=2,
    )  # fmt: skip
    frames, patches, width = 6, 3, 4
    layer = DualCrossAttentionLayer(config, layer_idx=0, memory_dim=width)
    pattern = torch.tensor([1.0, -1.0, 1.0, -1.0])  # mean 0, std 1: LayerNorm leaves it as it is
    with torch.no_grad():
        layer.t2v.q_proj.weight.fill_(1.0 / 8)  # q = ones for a hidden state of ones
        layer.t2v.k_proj.weight.copy_(torch.ones(4, 1) * pattern / width * 4)  # k = +-4 * ones
    memory = -pattern.repeat(frames, patches, 1)
    memory[[1, 4]] = pattern
    ids = torch.tensor([[5] + [31] * frames + [6, 7, 8]])
    layout = prefill_layout(ids, None, torch.tensor([frames]), 31, 1)
    cache = CrossLMMCache()
    cache.set_visual_memory(torch.tensor([frames]), patches)
    with torch.no_grad():
        layer(torch.ones(1, ids.shape[1], 8), layout, memory, cache)
        keys, values = layer.t2v.project_memory(memory, 32)
    kept_k, kept_v, kept = cache.selected_kv[0]
    assert kept.tolist() == [2]
    torch.testing.assert_close(kept_k[0].transpose(0, 1), keys[[1, 4]].flatten(0, 1))
    torch.testing.assert_close(kept_v[0].transpose(0, 1), values[[1, 4]].flatten(0, 1))


def test_streaming_reranks_at_each_ask(tiny):
    """Each ask ranks every frame seen so far at its prompt (exact) and its selection ends with its answer;
    the session keeps the full memory for that."""
    model, processor = tiny
    frames = coloured_frames(4, seed=5)
    exact, bounded = StreamingSession(model, processor), StreamingSession(model, processor)
    bounded.cache.decode_memory, bounded.cache.decode_frames = "topk_frames", 3
    counter = _KeyCounter(model)
    for session in (exact, bounded):
        session.add_frames(frames[:2])
        session.ask("What colour?", max_new_tokens=2, output_logits=True, return_dict_in_generate=True)
    per_frame = bounded.cache.patches_per_frame
    assert 2 * per_frame in counter.step_keys()  # both frames kept (m=3 > 2)
    assert not bounded.cache.selected_kv, "an answer's selection ends with it: the next prompt ranks again"
    bounded.add_frames(frames[2:])
    assert all(k.shape[2] == 4 * per_frame for k, _ in bounded.cache.cross_kv.values())
    counter.calls.clear()
    exact.add_frames(frames[2:])
    exact.ask("And now?", max_new_tokens=2, output_logits=True, return_dict_in_generate=True)
    exact_logits = exact.last_output.logits[0]
    bounded.ask("And now?", max_new_tokens=2, output_logits=True, return_dict_in_generate=True)
    counter.remove()
    # the first token comes from the prompt, exact in both sessions
    torch.testing.assert_close(bounded.last_output.logits[0], exact_logits)
    assert 3 * per_frame in counter.step_keys()  # the bounded session's generation steps


def test_bench_speed_writes_bounded_decode_rows(tmp_path, capsys):
    from crosslmm.cli import main

    argv = ["bench", "speed", "--quick", "--no-memory", "--decode-frames", "1,2", "--out", str(tmp_path)]
    assert main(argv) == 0
    result = json.loads((tmp_path / "speed_bounded.json").read_text())
    assert set(result["decode_step_s"]) == {
        "pooled, no cross-attn", "CrossLMM, full", "CrossLMM, top-1 frames", "CrossLMM, top-2 frames"
    }  # fmt: skip
    mb = result["cross_cache_mb"]
    assert mb["CrossLMM, top-1 frames"]["4"] == mb["CrossLMM, full"]["4"] / 4  # 1 of 4 frames kept
    assert len(result["targets"]) == 4
    assert "Bounded decode" in capsys.readouterr().out
    assert main(["bench", "speed", "--quick", "--decode-frames", "0", "--out", str(tmp_path)]) == 2
    assert "--decode-frames must be positive" in capsys.readouterr().err
