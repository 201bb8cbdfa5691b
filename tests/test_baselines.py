"""Token-reduction baselines (crosslmm/baselines, docs/baselines.md): budget, determinism, each
method's defining property on constructed inputs, cached generation, training and save/load."""

from __future__ import annotations

import pytest
import torch
from helpers import check_cached_generation, coloured_frames, greedy, set_gates, video_prompt
from transformers import AutoModelForCausalLM, AutoProcessor
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # Qwen2 shares the formula

from crosslmm.baselines import REDUCERS as REGISTRY
from crosslmm.baselines import RandomDrop, SalientSelect, ToMeMerge
from crosslmm.baselines.fastv import FastVModel, attention_row, keep_mask, query_positions
from crosslmm.baselines.merge_model import MergeCache, MergeModel
from crosslmm.baselines.salient import context_tokens
from crosslmm.data.dataset import IGNORE_INDEX
from crosslmm.model.build import save_model_dir
from crosslmm.model.cache import CrossLMMCache
from crosslmm.model.configuration import VISUAL_REDUCERS
from crosslmm.model.modeling import CrossLMMModel
from crosslmm.model.tiny import TinySpec, make_tiny
from crosslmm.streaming import StreamingSession

PATCHES = 64  # TinySpec: 32 px / 4 px patches = an 8x8 grid
# One budget per reducer, none of them square: equal-FLOPs matching needs any k.
REDUCERS = {
    "random": dict(visual_reducer="random", tokens_per_frame=3),
    "salient": dict(visual_reducer="salient", tokens_per_frame=5),
    "merge": dict(visual_reducer="merge", tokens_per_frame=2),
}
FASTV = dict(
    visual_reducer="fastv", tokens_per_frame=PATCHES, fastv_layer=2, fastv_keep=3, v2v=False, t2v=False
)
ALL = {**REDUCERS, "fastv": FASTV}


def _model(fields: dict, gates: float = 3.0):
    """A tiny model whose answers depend on the video (open gates where there are cross layers)."""
    cross = {} if fields.get("visual_reducer") == "fastv" else {"v2v": True, "t2v": True}
    model, processor = make_tiny(TinySpec(), seed=0, **(cross | fields))
    set_gates(model, gates)
    return model.eval(), processor


def _inputs(processor, videos=((3, 1), (2, 7)), questions=("What colour is it?", "Which frame is red?")):
    prompts = [video_prompt(processor, q) for q in questions[: len(videos)]]
    return processor(
        text=prompts, videos=[coloured_frames(n, seed) for n, seed in videos], padding_side="left"
    )


# --- config -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(visual_reducer="topk"), "visual_reducer must be one of"),
        (dict(visual_reducer="pool", tokens_per_frame=3), "positive square"),
        (dict(visual_reducer="random", tokens_per_frame=PATCHES + 1), "positive int <= 64"),
        (dict(visual_reducer="merge", tokens_per_frame=0), "positive int <= 64"),
        (dict(visual_reducer="salient", tokens_per_frame=4, tokens_per_frame_choices=[1, 4]), "one fixed"),
        (dict(visual_reducer="random", tokens_per_frame=4, fastv_keep=2), "FastV's"),
        (FASTV | dict(tokens_per_frame=16), "must be 64"),
        (FASTV | dict(fastv_layer=0), "fastv_layer"),
        (FASTV | dict(fastv_layer=4), "fastv_layer"),  # TinySpec has 4 decoder layers: none left to prune
        (FASTV | dict(fastv_keep=65), "fastv_keep"),
        (FASTV | dict(v2v=True), "without cross-attention"),
        (
            dict(visual_reducer="random", tokens_per_frame=3, merge_proportional_attention=False),
            "merge reduc",
        ),
        (dict(visual_reducer="merge", tokens_per_frame=2, merge_proportional_attention=1), "must be a bool"),
    ],
)
def test_bad_reducer_configs_raise(fields, match):
    with pytest.raises(ValueError, match=match):
        make_tiny(TinySpec(), **fields)


def test_config_names_every_reducer_of_the_registry():
    """The config spells the reducer names as a Literal (it does not import the baselines): the same names."""
    assert VISUAL_REDUCERS == REGISTRY


def test_the_model_core_reaches_baselines_only_through_their_registry():
    """crosslmm/model/ imports no baseline module: the connector and modeling ask ``crosslmm.baselines`` for
    a reducer by the config's name, and the config imports nothing from it."""
    import ast
    from pathlib import Path

    import crosslmm.model

    imports = {}
    for path in Path(crosslmm.model.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imports[path.name] = {m for m in names if m.startswith("crosslmm.baselines")}
    assert {name: found for name, found in imports.items() if found} == {
        "connector.py": {"crosslmm.baselines"},
        "modeling.py": {"crosslmm.baselines"},
    }


def test_fastv_config_builds_the_fastv_model_and_only_it():
    model, _ = _model(FASTV)
    assert type(model.model) is FastVModel and isinstance(model.model, CrossLMMModel)
    assert type(_model(REDUCERS["random"])[0].model) is CrossLMMModel
    with pytest.raises(TypeError, match="FastVModel"):  # the plain model would silently not prune
        CrossLMMModel(model.config)


@pytest.mark.parametrize("name", ALL)
def test_save_load_round_trip(name, tmp_path):
    model, processor = _model(ALL[name])
    save_model_dir(model, processor, tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded.model) is type(model.model)  # FastVModel for FastV, from the config alone
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for field in (
        "visual_reducer",
        "visual_reducer_seed",
        "tokens_per_frame",
        "fastv_layer",
        "fastv_keep",
        "merge_proportional_attention",
    ):
        assert getattr(loaded.config, field) == getattr(model.config, field)
    inputs = _inputs(AutoProcessor.from_pretrained(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


# --- budget and determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_exactly_k_tokens_per_frame_reach_the_llm(name):
    """The processor expands <video> to frames x k slots, and each sample's slots hold exactly what its
    video alone reduces to: frames are reduced per video (random drop seeds from the frame's position in
    its own video, not in the batch)."""
    model, processor = _model(ALL[name])
    k = model.config.tokens_per_frame
    inputs = _inputs(processor)
    assert (inputs["input_ids"] == processor.video_token_id).sum(1).tolist() == [3 * k, 2 * k]
    inner = model.model
    with torch.no_grad():
        embeds, layout, _ = inner.embed_video(
            inputs["input_ids"],
            inner.get_input_embeddings()(inputs["input_ids"]),
            inputs["attention_mask"],
            inputs["pixel_values_videos"],
            inputs["video_frame_counts"],
        )
        in_sequence = embeds.flatten(0, 1)[layout.video_positions].split([3 * k, 2 * k])
        for b, count in enumerate([3, 2]):
            alone, _ = inner.encode_video(inputs["pixel_values_videos"][b, :count])
            assert alone.shape == (count, k, model.config.text_config.hidden_size)
            # Not bit-exact: with 2 intra-op threads a batch of 2 videos and one video alone sum in another
            # order (1e-8 here); a token reduced from the wrong frames differs by its whole size.
            torch.testing.assert_close(in_sequence[b], alone.flatten(0, 1), rtol=1e-5, atol=1e-6)


def test_random_drop_is_a_fixed_function_of_seed_and_frame_position():
    tokens = torch.arange(PATCHES, dtype=torch.float32)[None, :, None].expand(4, -1, 2)  # value = patch
    drop = RandomDrop(5, seed=0)
    kept = drop(tokens, torch.tensor([0, 1, 2, 0]), training=False)[..., 0]  # (4, 5) patch indices
    assert kept.shape == (4, 5)
    for row in kept:
        assert len(set(row.tolist())) == 5 and torch.equal(row, row.sort().values)  # distinct, grid order
    assert torch.equal(kept[0], kept[3])  # frame 0 of two videos: same patches
    assert not torch.equal(kept[0], kept[1])  # the next frame: others, so a video covers every position
    again = drop(tokens, torch.tensor([2, 0]), training=False)[..., 0]
    assert torch.equal(again, kept[[2, 0]])
    assert not torch.equal(RandomDrop(5, seed=1)(tokens, torch.tensor([0]), False)[0, :, 0], kept[0])
    torch.manual_seed(0)
    train = [drop(tokens, torch.tensor([0, 0, 0, 0]), training=True)[..., 0] for _ in range(2)]
    assert not torch.equal(train[0], train[1])  # training redraws


@pytest.mark.parametrize("reducer", [SalientSelect(5), ToMeMerge(3)])
def test_deterministic_reducers_repeat(reducer):
    tokens = torch.randn(3, PATCHES, 16)
    signals = {"saliency": torch.rand(3, PATCHES)} if isinstance(reducer, SalientSelect) else {}
    first = reducer(tokens, torch.arange(3), False, **signals)
    assert first.shape == (3, reducer.tokens_per_frame, 16)
    assert torch.equal(first, reducer(tokens.clone(), torch.arange(3), True, **signals))


# --- defining properties ------------------------------------------------------------------------------------


def test_salient_keeps_the_most_attended_patches_and_merges_the_rest():
    """The dominant tokens are the patches with the highest saliency (not the highest norm: the largest
    tokens here get the least attention), in grid order; the one context token is the rest's mean."""
    torch.manual_seed(0)
    tokens = torch.randn(2, PATCHES, 16)
    saliency = torch.rand(2, PATCHES)
    saliency[0, 40], saliency[1, 7], saliency[1, 50] = 5.0, 4.0, 3.0
    tokens[0, 3] *= 10  # high norm, low attention: not kept
    saliency[0, 3] = 0.0
    assert context_tokens(3) == 1 and context_tokens(1) == 0 and context_tokens(64) == 10
    out = SalientSelect(3)(tokens, torch.arange(2), False, saliency=saliency)  # 2 dominant + 1 context
    for f in range(2):
        top = saliency[f].topk(2).indices.sort().values
        torch.testing.assert_close(out[f, :2], tokens[f, top], rtol=0, atol=0)  # dominant, in grid order
        rest = torch.ones(PATCHES, dtype=torch.bool)
        rest[top] = False
        torch.testing.assert_close(out[f, 2], tokens[f, rest].mean(0))  # one context token: their mean
    assert out[0, 0].equal(tokens[0, 40]) or out[0, 1].equal(tokens[0, 40])
    assert not any(out[0, i].equal(tokens[0, 3]) for i in range(2))
    with pytest.raises(ValueError, match="tower attention"):
        SalientSelect(3)(tokens, torch.arange(2), False)


@pytest.mark.parametrize("vision, layer", [("siglip", 0), ("siglip", -1), ("clip", 0)])
def test_salient_ranks_by_the_attention_captured_from_the_tower(vision, layer):
    """Hand computation from the tower's own attention (HF eager, ``output_attentions``): the attention each
    patch receives in ``salient_layer``, averaged over heads and over every query (SigLIP) or taken from the
    CLS query (CLIP); the model keeps exactly the top patches of that ranking."""
    model, _ = make_tiny(
        TinySpec(vision=vision), seed=0, visual_reducer="salient", tokens_per_frame=5, salient_layer=layer
    )
    model.eval()
    tower = model.model.vision_tower
    frames = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    pixels = model.model.normalize_frames(frames)
    tower.model.config._attn_implementation = "eager"
    with torch.no_grad():
        captured = tower.model(pixels, output_attentions=True).attentions[layer]  # (F, H, L, L)
        if vision == "clip":
            expected = captured[:, :, 0, 1:].mean(1)  # the CLS query's attention to each patch
        else:
            expected = captured.mean(dim=(1, 2))  # mean over heads and queries
        original, saliency = model.model.encode_frames_and_attention(frames)
        pooled, _ = model.model.encode_video(frames)
    torch.testing.assert_close(saliency, expected)
    torch.testing.assert_close(original, model.model.encode_frames(frames))
    projector = model.model.projector
    reference = projector.project(SalientSelect(5)(original, torch.arange(3), False, saliency=expected))
    torch.testing.assert_close(pooled, reference)
    by_norm = projector.project(
        SalientSelect(5)(original, torch.arange(3), False, saliency=original.norm(dim=-1))
    )
    assert not torch.allclose(pooled, by_norm)  # the ranking is the attention's, not the norm's


def test_salient_layer_is_checked():
    with pytest.raises(ValueError, match="salient_layer is the salient reducer's"):
        make_tiny(TinySpec(), visual_reducer="merge", tokens_per_frame=2, salient_layer=0)
    with pytest.raises(ValueError, match="out of range"):
        make_tiny(TinySpec(), visual_reducer="salient", tokens_per_frame=2, salient_layer=2)


def test_salient_context_tokens_partition_the_rest():
    """With several context tokens every non-dominant patch lands in exactly one group."""
    torch.manual_seed(0)
    tokens = torch.randn(1, PATCHES, 16)
    saliency = torch.rand(1, PATCHES)
    reducer = SalientSelect(20)  # 16 dominant + 4 context
    out = reducer(tokens, torch.arange(1), False, saliency=saliency)
    n_context = context_tokens(20)
    assert n_context == 4 and out.shape == (1, 20, 16)
    dominant = saliency[0].topk(16).indices
    rest = torch.ones(PATCHES, dtype=torch.bool)
    rest[dominant] = False
    # each context token is a group mean, so the size-weighted sum of the means can only equal the sum of
    # the remaining patches if the groups partition them; recover the sizes from the assignment
    unit = torch.nn.functional.normalize(tokens[0, rest], dim=-1)
    targets = torch.arange(n_context) * (int(rest.sum()) // n_context)
    assign = (unit @ unit[targets].T).argmax(-1)
    assign[targets] = torch.arange(n_context)
    sizes = torch.bincount(assign, minlength=n_context).float()
    torch.testing.assert_close((out[0, 16:] * sizes[:, None]).sum(0), tokens[0, rest].sum(0))


def test_tome_merges_the_most_similar_pair_first():
    torch.manual_seed(0)
    tokens = torch.randn(1, 16, 64)
    tokens[0, 5] = tokens[0, 2] + 0.01 * torch.randn(64)  # 2 is in set A (even), 5 in set B (odd)
    out = ToMeMerge(15)(tokens, torch.arange(1), False)
    others = [i for i in range(16) if i not in (2, 5)]
    expected = torch.cat(
        [tokens[0, others[:4]], tokens[0, [2, 5]].mean(0, keepdim=True), tokens[0, others[4:]]]
    )
    torch.testing.assert_close(out[0], expected)  # grid order: the merged pair sits at B's position 5


def test_tome_averages_by_size_down_to_k():
    """Repeated steps merge similar tokens only: two interleaved clusters of identical tokens reduce to their
    two values at k=2 (with r = n/2 per step the last step would average the clusters together)."""
    a, b = torch.randn(8), torch.randn(8)
    tokens = torch.stack([a if i % 4 < 2 else b for i in range(16)])[None]
    out = ToMeMerge(2)(tokens, torch.arange(1), False)[0]
    assert any(torch.allclose(row, a) for row in out) and any(torch.allclose(row, b) for row in out)


def test_fastv_keeps_the_tokens_layer_L_minus_1_attends_to_most():
    """What the model keeps (its cache's ``visible_prompt``) is the per-frame top ``fastv_keep`` of the last
    token's eager attention in layer L-1, head mean; layer L's own ranking keeps other tokens here, so ranking
    one layer late fails. The one-row ranking also equals the eager map it avoids computing."""
    model, processor = _model(FASTV)
    lm = model.model.language_model
    lm.config._attn_implementation = "eager"  # materialise the attention map to compare against
    layer = FASTV["fastv_layer"]
    seen = {}
    for i in (layer - 1, layer):
        lm.layers[i].register_forward_pre_hook(
            lambda m, args, kwargs, i=i: seen.update({i: (args[0], kwargs["position_embeddings"])}),
            with_kwargs=True,
        )
    lm.layers[layer - 1].self_attn.register_forward_hook(lambda m, args, out: seen.update(weights=out[1]))
    inputs = _inputs(processor, videos=((2, 3),))
    length = inputs["input_ids"].shape[1]
    video = torch.nonzero(inputs["input_ids"][0] == processor.video_token_id).squeeze(1)
    with torch.no_grad():
        kept = model(**inputs, use_cache=True).cache.visible_prompt  # (1, L)
        last = query_positions(torch.ones(1, length, dtype=torch.bool))
        assert last.tolist() == [length - 1]
        everything = torch.ones(1, length, dtype=torch.bool)
        row = attention_row(lm.layers[layer - 1], *seen[layer - 1], last, everything)
        one_late = attention_row(lm.layers[layer], *seen[layer], last, everything)
    eager = seen["weights"][0, :, -1].mean(0)  # (L,) last token's attention in layer L-1, head mean
    torch.testing.assert_close(row[0], eager, rtol=1e-5, atol=1e-6)
    expected = torch.ones(length, dtype=torch.bool)
    expected[video] = False
    for frame in video.view(2, PATCHES):
        expected[frame[eager[frame].topk(FASTV["fastv_keep"]).indices]] = True
    assert torch.equal(kept[0], expected)
    assert not torch.equal(keep_mask(one_late, video, PATCHES, FASTV["fastv_keep"])[0], expected)
    assert kept[0, inputs["input_ids"][0] != processor.video_token_id].all()  # text is never dropped


def test_fastv_flops_are_what_a_pruning_forward_computes():
    """``prefill_flops`` counts FastV as a pruning implementation computes it (layers < L over every token,
    later layers and the LM head over the kept ones): FlopCounterMode on a forward that really removes the
    tokens the model drops after layer L-1 gives the same decoder + LM head FLOPs, and that forward gives the
    masked model's next-token logits. A count pruned from the wrong layer, keeping the wrong number of
    tokens or running later layers over the full sequence fails here."""
    from crosslmm.bench.flops import decoder_tokens_per_layer, flop_counter, prefill_flops

    model, processor = _model(FASTV)
    inputs = _inputs(processor, videos=((2, 3),))  # one sample, no padding
    ids = inputs["input_ids"]
    lm = model.model.language_model
    layer, frames = FASTV["fastv_layer"], 2
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        visible = out.cache.visible_prompt[0]  # (S,)
        embeds, _, _ = model.model.embed_video(
            ids, lm.embed_tokens(ids), None, inputs["pixel_values_videos"], inputs["video_frame_counts"]
        )
        positions = torch.arange(ids.shape[1])[None]
        with flop_counter() as counter:
            hidden = embeds
            for i, decoder_layer in enumerate(lm.layers):
                if i == layer:  # drop the tokens for good: a shorter sequence, original positions
                    hidden, positions = hidden[:, visible], positions[:, visible]
                rope = lm.rotary_emb(hidden, positions)
                hidden = decoder_layer(
                    hidden, attention_mask=None, position_embeddings=rope, position_ids=positions
                )
            logits = model.lm_head(lm.norm(hidden)[:, -1])
    torch.testing.assert_close(logits, out.logits[:, -1], rtol=1e-5, atol=1e-5)
    video = int((ids == processor.video_token_id).sum())
    prefix = int(torch.nonzero(ids[0] == processor.video_token_id)[0])
    text = ids.shape[1] - prefix - video
    per_layer = decoder_tokens_per_layer(model.config, frames, text, prefix_tokens=prefix)
    assert per_layer == [ids.shape[1]] * layer + [int(visible.sum())] * (len(lm.layers) - layer)
    counted = prefill_flops(model.config, frames, text, prefix_tokens=prefix)
    assert counted.llm + counted.lm_head == counter.get_total_flops()


def test_fastv_multiple_choice_ranks_by_the_prompt_not_the_option():
    """``continuation_nll`` labels the option, so FastV ranks by the prompt's last token, as generation does;
    ranking by the option's last token would let each option choose what the model sees."""
    from crosslmm.inference import _answer_ids, build_prompt, continuation_nll

    model, processor = _model(FASTV)
    prompt, frames = build_prompt(processor, "What colour is it?"), coloured_frames(3, 1)
    ((score, _),) = continuation_nll(model, processor, prompt, [frames], [" red"])
    inputs = processor(text=[prompt], videos=[frames])
    option = torch.tensor([_answer_ids(processor, prompt, " red")])
    ids = torch.cat([inputs["input_ids"], option], dim=1)

    def nll(**query) -> float:
        with torch.no_grad():
            logits = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                pixel_values_videos=inputs["pixel_values_videos"],
                video_frame_counts=inputs["video_frame_counts"],
                logits_to_keep=option.shape[1] + 1,
                **query,
            ).logits[:, :-1]
        return -float(logits.float().log_softmax(-1).gather(-1, option[..., None]).sum())

    prompt_end = torch.tensor([inputs["input_ids"].shape[1] - 1])
    assert score == pytest.approx(nll(fastv_query_positions=prompt_end), abs=1e-5)
    assert abs(score - nll()) > 1e-5  # the option's last token ranks differently


def test_fastv_query_is_the_token_before_the_first_answer_token():
    valid = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    shift = torch.full((2, 6), IGNORE_INDEX)
    shift[0, 2:4] = 5  # position 2 predicts the first answer token
    assert query_positions(valid).tolist() == [4, 5]
    assert query_positions(valid, shift).tolist() == [2, 5]  # sample 1 has no answer: its last token


def test_fastv_pruning_is_exact_masking():
    """Keeping every token is the unpruned model; pruning changes the answer; and layers from fastv_layer on
    ignore the dropped tokens exactly: noise on them there moves nothing, noise on a kept one does."""
    model, processor = _model(FASTV)
    pool = dict(visual_reducer="pool", fastv_layer=None, fastv_keep=None)
    unpruned = make_tiny(TinySpec(), seed=0, **(FASTV | pool))[0].eval()
    keep_all = make_tiny(TinySpec(), seed=0, **(FASTV | dict(fastv_keep=PATCHES)))[0].eval()
    inputs = _inputs(processor)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        pruned, keep = out.logits[:, -1], out.cache.visible_prompt
        full = unpruned(**inputs).logits[:, -1]
        torch.testing.assert_close(keep_all(**inputs).logits[:, -1], full, rtol=0, atol=0)
        assert (pruned - full).abs().max() > 1e-3
        video = inputs["input_ids"] == processor.video_token_id
        assert (keep == ~video | keep).all() and int((video & keep).sum()) == 5 * FASTV["fastv_keep"]

        def with_noise(where: torch.Tensor) -> torch.Tensor:
            def hook(module, args):
                return (args[0] + 10 * where[..., None] * torch.randn_like(args[0]), *args[1:])

            handle = model.model.language_model.layers[FASTV["fastv_layer"]].register_forward_pre_hook(hook)
            try:
                return model(**inputs).logits[:, -1]
            finally:
                handle.remove()

        torch.testing.assert_close(with_noise(video & ~keep), pruned, rtol=1e-5, atol=1e-5)
        assert (with_noise(video & keep) - pruned).abs().max() > 1e-3


# --- the model paths -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REDUCERS)
def test_cached_generation_equals_full_forward(name):
    model, processor = _model(REDUCERS[name])
    step_logits = check_cached_generation(model, _inputs(processor))
    assert (step_logits[0] - step_logits[1]).abs().max() > 1e-3  # the answer depends on the video


def test_fastv_cached_generation_equals_full_forward():
    """The full forward over prompt + generated tokens must rank by the same query, the last prompt token."""
    model, processor = _model(FASTV)
    inputs = _inputs(processor)
    prompt = inputs["input_ids"].shape[1]
    step_logits = check_cached_generation(model, inputs, fastv_query_positions=torch.full((2,), prompt - 1))
    assert (step_logits[0] - step_logits[1]).abs().max() > 1e-3


def test_fastv_query_positions_are_refused_with_a_right_padded_batch():
    """``generate`` moves right-padded rows to the left, which would move the positions FastV ranks by."""
    model, processor = _model(FASTV)
    inputs = processor(
        text=[video_prompt(processor, q) for q in ("What colour is it?", "Which?")],
        videos=[coloured_frames(2, 1), coloured_frames(2, 7)],
        padding_side="right",
    )
    with pytest.raises(ValueError, match="right-padded batch with fastv_query_positions"):
        model.generate(**inputs, fastv_query_positions=torch.zeros(2, dtype=torch.long), max_new_tokens=1)


@pytest.mark.parametrize("name", ALL)
def test_training_step_reaches_the_projector(name):
    model, processor = _model(ALL[name])
    model.train()
    inputs = _inputs(processor)
    labels = inputs["input_ids"].clone()
    labels[:, : labels.shape[1] - 3] = IGNORE_INDEX  # the last three tokens are the "answer"
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    grad = model.model.projector.linear_1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_tome_step_is_a_size_weighted_mean_by_hand():
    """One bipartite step on tokens that already carry sizes: A = slots 0, 2; B = 1, 3. Slot 2 (size 3) is
    nearest slot 3 (size 1): the merged token is (3 x2 + 1 x3) / 4 with size 4, not the plain mean."""
    from crosslmm.baselines.merge import bipartite_merge

    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [1.0, 1.0]]])
    size = torch.tensor([[1.0, 2.0, 3.0, 1.0]])
    merged, new_size, position = bipartite_merge(x, size, torch.arange(4)[None], r=1)
    # cos(slot 2, slot 3) = 0.949 > cos(slot 0, slot 3) = 0.707 > the others
    expected = (3 * x[0, 2] + 1 * x[0, 3]) / 4
    assert position.tolist() == [[0, 1, 3]]  # unmerged A (0), then B (1, 3)
    torch.testing.assert_close(merged[0], torch.stack([x[0, 0], x[0, 1], expected]))
    assert new_size.tolist() == [[1.0, 2.0, 4.0]]


def test_tome_sizes_count_the_patches_and_weight_the_means():
    """Down to k from 64 patches: sizes sum to the patches per frame, and the size-weighted sum of the merged
    tokens is the sum of the patches (each token is the mean of exactly the patches it holds)."""
    torch.manual_seed(0)
    tokens = torch.randn(2, PATCHES, 8)
    merged, size = ToMeMerge(5).merge(tokens)
    assert merged.shape == (2, 5, 8) and size.shape == (2, 5)
    assert size.sum(1).tolist() == [PATCHES, PATCHES] and (size > 1).any()
    torch.testing.assert_close((merged * size[..., None]).sum(1), tokens.sum(1))
    assert torch.equal(merged, ToMeMerge(5)(tokens, torch.arange(2), False))


# --- merge: ToMe's proportional attention in the decoder ----------------------------------------------------

MERGE = REDUCERS["merge"]


def _merge_pair(fields: dict, gates: float = 3.0):
    """The same tiny merge model (same seed, same weights) with and without proportional attention."""
    model, processor = _model(fields, gates)
    plain = _model(fields | dict(merge_proportional_attention=False), gates)[0]
    assert type(model.model) is type(plain.model) is MergeModel
    return model, plain, processor


def _expected_log_sizes(model, inputs) -> torch.Tensor:
    """(B, L): log of the patches each position stands for, from ToMe run on the frames here (0 at text)."""
    inner = model.model
    frames = [v[:n] for v, n in zip(inputs["pixel_values_videos"], inputs["video_frame_counts"].tolist())]
    with torch.no_grad():
        _, sizes = ToMeMerge(inner.config.tokens_per_frame).merge(inner.encode_frames(torch.cat(frames)))
    log_size = torch.zeros(inputs["input_ids"].shape)
    log_size[inputs["input_ids"] == inner.config.video_token_id] = sizes.flatten().log()
    return log_size


def test_merge_bias_is_zero_when_every_token_is_one_patch():
    """k = 64 of 64 patches merges nothing (every size 1): the biased float masks give the plain model's
    logits, on a left-padded batch."""
    model, plain, processor = _merge_pair(MERGE | dict(tokens_per_frame=PATCHES))
    inputs = _inputs(processor)
    valid = inputs["attention_mask"].bool()
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        assert isinstance(out.cache, MergeCache) and torch.equal(
            out.cache.key_log_size, torch.zeros(valid.shape)
        )
        torch.testing.assert_close(out.logits[valid], plain(**inputs).logits[valid], rtol=0, atol=1e-6)


def test_merge_attention_weights_are_softmax_of_logits_plus_log_size_by_hand():
    """Every decoder layer's attention weights (eager, which returns them) equal
    softmax(q k^T / sqrt(d) + log s_key) computed here from the layer's own projections, s from ToMe run on
    the frames by this test; SDPA gives the eager model's logits; and the bias moves the weights."""
    model, plain, processor = _merge_pair(MERGE)
    inputs = _inputs(processor)
    log_size = _expected_log_sizes(model, inputs)
    assert log_size.max() > 1  # some token holds 3 or more patches
    with torch.no_grad():
        sdpa_logits = model(**inputs).logits
    model.set_attn_implementation("eager")
    plain.set_attn_implementation("eager")
    seen = {}

    def capture(name):
        def pre(module, args, kwargs):
            seen[name, "in"] = (kwargs["hidden_states"], kwargs["position_embeddings"])

        def post(module, args, kwargs, output):
            seen[name, "weights"] = output[1]

        return pre, post

    layers = model.model.language_model.layers
    handles = []
    for i, layer in enumerate(layers):
        pre, post = capture(i)
        handles.append(layer.self_attn.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.self_attn.register_forward_hook(post, with_kwargs=True))
    try:
        with torch.no_grad():
            eager_logits = model(**inputs).logits
    finally:
        for handle in handles:
            handle.remove()
    valid = inputs["attention_mask"].bool()  # (B, L)
    torch.testing.assert_close(sdpa_logits[valid], eager_logits[valid], rtol=0, atol=1e-5)
    length = valid.shape[1]
    allowed = torch.ones(length, length).tril().bool()[None] & valid[:, None, :]  # (B, Lq, Lk)
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        hidden, (cos, sin) = seen[i, "in"]
        batch = hidden.shape[0]
        q = attn.q_proj(hidden).view(batch, length, -1, attn.head_dim).transpose(1, 2)  # (B, H, L, hd)
        k = attn.k_proj(hidden).view(batch, length, -1, attn.head_dim).transpose(1, 2)  # (B, KVH, L, hd)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = k.repeat_interleave(attn.num_key_value_groups, dim=1)
        logits = q @ k.transpose(2, 3) * attn.head_dim**-0.5  # (B, H, L, L)
        logits = (logits + log_size[:, None, None, :]).masked_fill(~allowed[:, None], float("-inf"))
        expected = logits.softmax(-1).transpose(1, 2)[valid]  # (valid queries, H, L)
        weights = seen[i, "weights"].transpose(1, 2)[valid]
        torch.testing.assert_close(weights, expected, rtol=0, atol=1e-6)
        without_bias = (logits - log_size[:, None, None, :]).softmax(-1).transpose(1, 2)[valid]
        assert (weights - without_bias).abs().max() > 1e-2  # the sizes matter: a positive control


@pytest.mark.parametrize("cross", [True, False], ids=["cross", "no_cross"])
def test_merge_cached_generation_keeps_the_size_bias(cross):
    """Greedy decoding with the cache equals one full forward over prompt + answer, both with the bias (the
    cache keeps each position's log size), with and without cross-attention (without, a decode step has no
    layout: the sizes come from the cache alone); the bias changes the step logits."""
    model, plain, processor = _merge_pair(MERGE if cross else MERGE | dict(v2v=False, t2v=False))
    inputs = _inputs(processor)
    step_logits = check_cached_generation(model, inputs)
    tokens, _ = greedy(model, inputs)
    with torch.no_grad():
        full = dict(
            input_ids=torch.cat([inputs["input_ids"], tokens[:, :-1]], dim=1),
            attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(tokens[:, :-1])], dim=1),
            pixel_values_videos=inputs["pixel_values_videos"],
            video_frame_counts=inputs["video_frame_counts"],
        )
        unbiased = plain(**full).logits[:, -step_logits.shape[1] :]
    assert (step_logits - unbiased).abs().max() > 1e-3


def test_merge_streaming_equals_the_offline_model():
    """A streamed session (frames, a question, more frames, a question) decodes as the offline model does on
    the whole sequence: the session's cache (the model's MergeCache) keeps the sizes of frames fed earlier,
    across generated tokens and the tokens fed again."""
    model, processor = _model(MERGE)
    frames = coloured_frames(4, seed=5)
    session = StreamingSession(model, processor)
    assert isinstance(session.cache, MergeCache)
    for chunk, question in ((frames[:2], "What colour is it?"), (frames[2:], "And now?")):
        session.add_frames(chunk)
        session.ask(question, max_new_tokens=3, output_logits=True, return_dict_in_generate=True)
    steps = torch.stack(session.last_output.logits, dim=1)[0]  # (3, V)
    sequence = session.last_output.sequences[0].tolist()
    pixels = processor.preprocess_frames(frames)
    with torch.no_grad():
        offline = model(
            input_ids=torch.tensor([sequence[:-1]]),
            pixel_values_videos=pixels[None],
            video_frame_counts=torch.tensor([len(pixels)]),
            use_cache=False,
        ).logits[0]
    torch.testing.assert_close(steps, offline[-steps.shape[0] :], rtol=0, atol=1e-5)


def test_merge_refuses_what_would_drop_the_bias():
    """A kernel without float masks (flash-attention), sliding-window layers, a cache without the sizes, a
    mask dict: each refused before any attention runs."""
    model, processor = _model(MERGE)
    inputs = _inputs(processor)
    with pytest.raises(TypeError, match="MergeCache"):
        model(**inputs, cache=CrossLMMCache(config=model.config.text_config))
    with pytest.raises(ValueError, match="not a dict"):
        model(**(inputs | dict(attention_mask={"full_attention": None})))
    config = model.model.language_model.config
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    with pytest.raises(ValueError, match="sliding-window"):
        model(**inputs, use_cache=False)  # (a cache for these layer types would need a sliding_window)
    config.layer_types = ["full_attention"] * config.num_hidden_layers
    config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="'flash_attention_2' attention does not take"):
        model(**inputs)
