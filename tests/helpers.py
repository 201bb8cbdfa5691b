"""Helpers the tests import (``from helpers import ...``): generated inputs, tiny model dirs, launchers.

Fixtures live in ``conftest.py``; plain functions live here, so a test's imports say where they come from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch


def random_frames(n: int, size: int = 40, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8 frames, as the video reader returns them."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def coloured_frames(n: int, seed: int, size: int = 40) -> np.ndarray:
    """(n, size, size, 3) uint8 frames of one random colour plus mild noise. Unlike uniform noise, whose
    frames all look alike to a vision tower, different seeds give videos a random model tells apart."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-20, 20, (n, size, size, 3))
    return np.clip(rng.integers(0, 256, (1, 1, 1, 3)) + noise, 0, 255).astype(np.uint8)


def video_dependent_model(**config):
    """A tiny CrossLMM with every gate open (tanh(3) ~ 1): greedy answers differ between
    :func:`coloured_frames` videos, so tests of batching, caching and the plugin can fail."""
    from crosslmm.model.tiny import TinySpec, make_tiny

    model, processor = make_tiny(TinySpec(), seed=0, **({"v2v": True, "t2v": True} | config))
    set_gates(model, 3.0)
    return model.eval(), processor


def greedy(model, inputs, steps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly ``steps`` greedy tokens (B, steps) and their step logits (B, steps, V)."""
    out = model.generate(
        **inputs,
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return out.sequences[:, -steps:], torch.stack(out.logits, dim=1)


def check_cached_generation(model, inputs, steps: int = 4, **forward_kwargs) -> torch.Tensor:
    """Greedy generation with the cache (T2V keys/values cached at prefill) gives the step logits of one
    full forward over prompt + generated tokens (``forward_kwargs`` go to that forward only); returns the
    step logits (B, steps, V)."""
    tokens, step_logits = greedy(model, inputs, steps)
    with torch.no_grad():
        full = model(
            input_ids=torch.cat([inputs["input_ids"], tokens[:, :-1]], dim=1),
            attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(tokens[:, :-1])], dim=1),
            pixel_values_videos=inputs["pixel_values_videos"],
            video_frame_counts=inputs["video_frame_counts"],
            use_cache=False,
            **forward_kwargs,
        ).logits
    torch.testing.assert_close(step_logits, full[:, -steps:], rtol=1e-4, atol=1e-4)
    return step_logits


def video_prompt(processor, question: str = "What colour is the marker?") -> str:
    return processor.apply_chat_template(
        [{"role": "user", "content": f"<video>\n{question}"}], add_generation_prompt=True
    )


def set_gates(model, value: float) -> None:
    """Open every cross-attention gate, so tests can see what the blocks compute."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gate"):
                p.fill_(value)


def make_tiny_dir(out) -> str:
    """``crosslmm init-tiny`` with its final norm negated. A random model with tied embeddings greedily
    echoes the last prompt token (the "\\n" after "assistant"), so its answers would be blank; negated, it
    prints visible (meaningless) text, which is what the chat and lmms-eval tests need to see."""
    from transformers import AutoModelForCausalLM

    from crosslmm.cli import main

    assert main(["init-tiny", str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        model.model.language_model.norm.weight.neg_()
    model.save_pretrained(out)
    return str(out)


def write_train_config(path, model, output_dir, mixture, **overrides) -> str:
    """A small CPU stage-1 style train config (projector + V2V, constant LR) written as YAML; returns its path."""
    import yaml

    config = {
        "model": str(model),
        "output_dir": str(output_dir),
        "data": {"mixture": mixture, "num_frames": 2, "max_length": 128, "num_workers": 0},
        "train": ["projector", "v2v"],
        "lr": 1e-3,
        "warmup_ratio": 0.0,
        "lr_scheduler": "constant",
        "max_steps": 4,
        "per_device_batch_size": 2,
        "save_steps": 2,
        "report_to": "none",
    } | overrides
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return str(path)


def run_lmms_eval(model_args: str, tasks: str, include: str, out: Path, hf_home: Path) -> dict:
    """``python -m lmms_eval`` with our plugin, offline; returns the results file's ``results``. lmms-eval
    exits 0 even when evaluation fails, so a missing results file fails here with its output attached."""
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "crosslmm", "--model_args", model_args]
    cmd += ["--tasks", tasks, "--include_path", include, "--batch_size", "2", "--output_path", str(out)]
    done = subprocess.run([*cmd, "--log_samples"], env=env, capture_output=True, text=True, timeout=600)
    found = list(out.rglob("*_results.json"))
    assert len(found) == 1, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(found[0].read_text())["results"]


def losses(output_dir: str | os.PathLike) -> dict[int, float]:
    """step -> training loss from metrics.jsonl (a resumed run's entries win)."""
    out = {}
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        for line in f:
            entry = json.loads(line)
            if "loss" in entry:
                out[entry["step"]] = entry["loss"]
    return out
