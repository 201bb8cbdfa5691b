"""Golden references: numbers recorded from a known-good tree, compared at tight tolerance.

Every other test checks a property (equivalence to HF, loss drops, shapes); none notices a change that keeps
the properties but shifts the numbers: a transformers or torch upgrade that changes an attention kernel, a
refactor that reorders a pooling or drops a scale. These tests do, as open_clip's recorded inference
outputs and torchtitan's loss-curve comparison do:

- ``tests/data/golden_logits.safetensors``: a seeded tiny CrossLMM (V2V and T2V, gates fixed open, final norm
  negated so that greedy decoding does not repeat one token) on a fixed prompt and fixed frames: the prompt's
  token ids, a slice of the prefill logits (last 8 positions x first 64 vocab entries), the sum and mean of all
  prefill logits, and the 6 greedy tokens with their step logits (the cached cross-attention path).
- ``tests/data/golden_stage1_losses.json``: the per-step losses of a 6-step stage-1 run (projector + V2V)
  of ``python -m crosslmm.train`` on the toy dataset committed in ``tests/data/golden_toy/`` (written once
  by ``make_toy_dataset``; the recorder keeps it, delete it to write a new one).

A failure here means the numbers moved. If that is intended (a deliberate change of the computation or an
accepted library upgrade), re-record from the repository root with

    python tests/test_golden.py --record

and state the reason in the commit message. The recorder runs the training twice and refuses to write a
curve that is not bit-identical between the runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import coloured_frames, greedy, set_gates, video_prompt, write_train_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
LOGITS_FILE = DATA / "golden_logits.safetensors"
LOSSES_FILE = DATA / "golden_stage1_losses.json"
# The training input, committed: make_toy_dataset's mp4s are not byte-reproducible (the encoder's threads), and
# a re-encoded video moves the losses by ~1e-5 relative, so the curve would compare the encoder, not the code.
TOY = DATA / "golden_toy"
RECORD = "python tests/test_golden.py --record"

GATE = 3.0  # tanh(3) ~ 1: the cross blocks shape the logits (at 0 they are the identity)
FRAMES, FRAME_SEED = 4, 7
LAST_POSITIONS, FIRST_VOCAB = 8, 64
NEW_TOKENS = 6
TRAIN_STEPS = 6
ENV = dict(
    os.environ, DS_BUILD_OPS="0", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1"
)


def versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def compute_logits() -> dict[str, torch.Tensor]:
    """The recorded tensors of the logits reference (see the module docstring)."""
    from crosslmm.model.tiny import TinySpec, make_tiny

    model, processor = make_tiny(TinySpec(), seed=0, v2v=True, t2v=True)
    set_gates(model, GATE)
    with torch.no_grad():  # as in helpers.make_tiny_dir: greedy tokens that vary, not one echoed token
        model.model.language_model.norm.weight.neg_()
    model.eval()
    inputs = processor(text=[video_prompt(processor)], videos=[coloured_frames(FRAMES, seed=FRAME_SEED)])
    with torch.no_grad():
        logits = model(**inputs).logits.float()  # (1, L, V)
        tokens, step_logits = greedy(model, inputs, steps=NEW_TOKENS)  # (1, n), (1, n, V)
    return {
        "input_ids": inputs["input_ids"][0].clone(),
        "logits_slice": logits[0, -LAST_POSITIONS:, :FIRST_VOCAB].contiguous(),
        "logits_sum": logits.double().sum().reshape(1),
        "logits_mean": logits.double().mean().reshape(1),
        "greedy_tokens": tokens[0].clone(),
        "greedy_step_logits": step_logits[0, :, :FIRST_VOCAB].float().contiguous(),
    }


def train_losses(root: Path, name: str) -> dict[int, float]:
    """Run the 6-step stage-1 training in a fresh process; returns step -> loss from its metrics.jsonl."""
    from crosslmm.model.build import save_model_dir
    from crosslmm.model.tiny import TinySpec, make_tiny

    mixture = TOY / "mixture.yaml"
    assert mixture.exists(), f"missing {TOY} (the committed training input); record it with `{RECORD}`"
    if not (root / "model").exists():
        model, processor = make_tiny(TinySpec(), seed=0)
        save_model_dir(model, processor, root / "model")
    out = root / name
    config = write_train_config(
        root / f"{name}.yaml", root / "model", out, str(mixture), max_steps=TRAIN_STEPS, save_steps=1000
    )
    cmd = [sys.executable, "-m", "crosslmm.train", "--config", config]
    done = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    curve = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "loss" in entry:
            curve[int(entry["step"])] = float(entry["loss"])
    return curve


def test_logits_match_golden():
    assert LOGITS_FILE.exists(), f"missing {LOGITS_FILE}; record it with `{RECORD}`"
    golden = load_file(str(LOGITS_FILE))
    with safe_open(str(LOGITS_FILE), "pt") as f:
        recorded = f.metadata()
    got = compute_logits()
    hint = f"recorded with {recorded}, running {versions()}; if the change is intended, re-record: `{RECORD}`"
    assert torch.equal(got["input_ids"], golden["input_ids"]), f"tokenisation changed; {hint}"
    for key in ("logits_slice", "logits_sum", "logits_mean", "greedy_step_logits"):
        torch.testing.assert_close(
            got[key], golden[key], rtol=1e-5, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}\n{hint}"
        )
    assert got["greedy_tokens"].tolist() == golden["greedy_tokens"].tolist(), hint


@pytest.mark.slow  # a training subprocess (~10 s); CI runs it
def test_stage1_loss_curve_matches_golden(tmp_path):
    assert LOSSES_FILE.exists(), f"missing {LOSSES_FILE}; record it with `{RECORD}`"
    golden = json.loads(LOSSES_FILE.read_text())
    expected = {int(step): loss for step, loss in golden["losses"].items()}
    got = train_losses(tmp_path, "stage1")
    assert sorted(got) == sorted(expected), got
    steps = sorted(expected)
    torch.testing.assert_close(
        torch.tensor([got[s] for s in steps], dtype=torch.float64),
        torch.tensor([expected[s] for s in steps], dtype=torch.float64),
        rtol=1e-4,
        atol=0,
        msg=lambda m: (
            f"{m}\ngot {got} with {versions()}\nrecorded {expected} with {golden['versions']}\n"
            f"if the change is intended, re-record: `{RECORD}`"
        ),
    )


def record() -> None:
    """Write both references; the curve only if two runs agree bit for bit."""
    import tempfile

    DATA.mkdir(exist_ok=True)
    first, second = compute_logits(), compute_logits()
    for key in first:
        if not torch.equal(first[key], second[key]):
            sys.exit(f"logits reference is not deterministic ({key}); nothing written")
    save_file(first, str(LOGITS_FILE), metadata=versions())
    if not (TOY / "mixture.yaml").exists():  # kept across re-recordings: the curve's fixed input
        from crosslmm.data.synthetic import make_toy_dataset

        make_toy_dataset(str(TOY), num_videos=6, num_frames=4)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [train_losses(Path(tmp), name) for name in ("run1", "run2")]
    if runs[0] != runs[1]:
        sys.exit(f"loss curve is not deterministic: {runs}; nothing written")
    LOSSES_FILE.write_text(json.dumps({"versions": versions(), "losses": runs[0]}, indent=1) + "\n")
    print(
        f"wrote {LOGITS_FILE} and {LOSSES_FILE}: losses {runs[0]}, greedy {first['greedy_tokens'].tolist()}"
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit(f"usage: {RECORD}   (or run the tests with `python -m pytest tests/test_golden.py`)")
    os.environ.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    torch.manual_seed(0)
    record()
