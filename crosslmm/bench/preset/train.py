"""One stage-1 training step of a preset at its real size (``crosslmm bench speed --preset``): milliseconds,
peak memory above the weights and the AdamW state."""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from crosslmm.bench.preset.device import Clock, PeakMemory, release
from crosslmm.bench.preset.setup import PresetSettings
from crosslmm.bench.variants import make_inputs
from crosslmm.data.dataset import IGNORE_INDEX
from crosslmm.model.modeling import CrossLMMForCausalLM

STAGE1_TRAINABLE = ["projector", "v2v"]  # configs/train/crosslmm-7b-stage1.yaml


def measure_train_step(
    model: CrossLMMForCausalLM, settings: PresetSettings, clock: Clock, memory: PeakMemory
) -> dict[str, Any]:
    """One stage-1 step on one sample: projector + V2V trainable, captions (the text after the video)
    labelled, AdamW; ``warmup`` steps first (they allocate the optimizer state), then ``repeats`` timed."""
    from crosslmm.training.params import set_trainable

    frames, after = settings.train_frames, settings.text_tokens - settings.text_before
    inputs = make_inputs(
        model.config, frames, after, text_before=settings.text_before, device=model.device, uint8_frames=True
    )
    labels = inputs["input_ids"].clone()
    labels[:, : labels.shape[1] - after] = IGNORE_INDEX
    flags = {p: p.requires_grad for p in model.parameters()}
    counts = set_trainable(model, STAGE1_TRAINABLE, lora=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step() -> torch.Tensor:
        loss = model(**inputs, labels=labels, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    model.train()
    try:
        for _ in range(max(settings.warmup, 1)):
            step()
        release(model.device)
        memory.reset()
        runs, losses = [], []
        for _ in range(settings.repeats):
            ms, loss = clock(step)
            runs.append(ms)
            losses.append(float(loss))
        state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values())
        return {
            "frames": frames,
            "trainable": STAGE1_TRAINABLE,
            "trainable_params": sum(counts.values()),
            "step_ms": statistics.median(runs),
            "step_ms_runs": runs,
            "peak_mb": memory.peak_mb(),
            "optimizer_state_mb": state / 2**20,
            "finite": all(math.isfinite(x) for x in losses),
        }
    finally:
        model.eval()
        for p, flag in flags.items():
            p.requires_grad_(flag)
