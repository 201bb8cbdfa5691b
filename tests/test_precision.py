"""The precisions researchers run in: fp32, bf16 weights, and fp32 weights under bf16 autocast (what the HF
Trainer does without DeepSpeed). Forward, backward and generate, with every gate open so the
cross-attention blocks run and their updates meet the residual stream."""

from __future__ import annotations

import contextlib

import pytest
import torch
from helpers import coloured_frames, greedy, video_dependent_model, video_prompt

MODES = ["fp32", "bf16 weights", "fp32 weights + bf16 autocast"]


def _setup(mode: str):
    model, processor = video_dependent_model(cross_attention_mlp=True)
    if mode == "bf16 weights":
        model = model.to(torch.bfloat16)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if "autocast" in mode else contextlib.nullcontext()
    inputs = processor(
        text=[video_prompt(processor), video_prompt(processor, "Is it red?")],
        videos=[coloured_frames(3, seed=0), coloured_frames(2, seed=1)],
        padding_side="left",
    )
    return model, processor, inputs, autocast


@pytest.fixture(scope="module")
def fp32_logits():
    model, _, inputs, _ = _setup("fp32")
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("mode", MODES)
def test_forward_backward(mode, fp32_logits):
    model, _, inputs, autocast = _setup(mode)
    model.train()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    with autocast:
        out = model(**inputs, labels=labels)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    cross = model.model.cross_layers
    for name, p in cross.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(bool(p.grad.abs().sum() > 0) for n, p in cross.named_parameters() if n.endswith("gate"))
    # bf16 rounding, not a different computation: close to fp32 where it matters (the greedy token)
    with autocast, torch.no_grad():
        logits = model(**inputs).logits.float()
    assert (logits.argmax(-1) == fp32_logits.argmax(-1)).float().mean() > 0.9
    torch.testing.assert_close(logits, fp32_logits, rtol=0.1, atol=0.15)


@pytest.fixture(scope="module")
def fp32_first_tokens():
    model, _, inputs, _ = _setup("fp32")
    with torch.no_grad():
        return greedy(model, inputs, steps=1)[0]


@pytest.mark.parametrize("mode", MODES)
@torch.no_grad()
def test_generate(mode, fp32_first_tokens):
    """Cached generation runs in every precision (the cross-attention cache included) and the first greedy
    token of each row is fp32's: bf16 rounds, it does not compute something else."""
    model, processor, inputs, autocast = _setup(mode)
    with autocast:
        tokens, _ = greedy(model, inputs, steps=4)
    assert tokens.shape == (2, 4)
    assert torch.equal(tokens[:, :1], fp32_first_tokens)
    assert all(processor.tokenizer.decode(row) for row in tokens)
