"""Cross-attention gates train in their own optimizer group when asked, and every training log carries
tanh(gate) per block and layer."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

from crosslmm.model.tiny import TinySpec, make_tiny
from crosslmm.training.config import TrainConfig
from crosslmm.training.params import close_gates, gate_values, is_gate, set_trainable
from crosslmm.training.trainer import CrossLMMTrainer

STEPS, WARMUP = 10, 2


def trainer_for(tmp_path, **config) -> CrossLMMTrainer:
    """A trainer over a tiny model (V2V and T2V after layers 0 and 2) with its optimizer and schedule."""
    model, _ = make_tiny(TinySpec(), seed=0)
    train_config = TrainConfig(lr=1e-3, weight_decay=0.1, train=["projector", "v2v", "t2v", "llm"], **config)
    set_trainable(model, train_config.train, lora=False)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=train_config.lr,
        weight_decay=train_config.weight_decay,
        lr_scheduler_type="linear",
        warmup_steps=WARMUP,
        report_to=[],
        use_cpu=True,
    )
    trainer = CrossLMMTrainer(model=model, args=args, train_config=train_config)
    trainer.create_optimizer_and_scheduler(num_training_steps=STEPS)
    return trainer


def rates_after(trainer: CrossLMMTrainer, steps: int) -> dict[str, list[float]]:
    """The learning rate of the gates' group and of every other group after ``steps`` scheduler steps."""
    for _ in range(steps):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    gates = {id(p) for n, p in trainer.model.named_parameters() if is_gate(n)}
    rates = {}
    for group in trainer.optimizer.param_groups:
        kind = "gate" if all(id(p) in gates for p in group["params"]) else "other"
        assert kind == "other" or not any(id(p) not in gates for p in group["params"])
        rates.setdefault(kind, []).append(group["lr"])
    return rates


def test_paper_recipe_keeps_gates_in_the_new_blocks_group(tmp_path):
    trainer = trainer_for(tmp_path)
    groups = trainer.optimizer.param_groups
    gate_ids = {id(p) for n, p in trainer.model.named_parameters() if is_gate(n)}
    assert len(gate_ids) == 4  # V2V and T2V gates after layers 0 and 2
    assert all(any(id(p) not in gate_ids for p in g["params"]) for g in groups)  # no gate-only group


def test_gates_get_a_scaled_undecayed_rate_without_weight_decay(tmp_path):
    trainer = trainer_for(tmp_path, gate_lr_scale=20.0, gate_lr_decay=False)
    (gate_group,) = [g for g in trainer.optimizer.param_groups if not g["decays"]]
    assert {id(p) for p in gate_group["params"]} == {
        id(p) for n, p in trainer.model.named_parameters() if is_gate(n)
    }
    assert gate_group["weight_decay"] == 0.0
    half = rates_after(trainer, STEPS // 2 + WARMUP // 2)  # step 6 of 10: linear decay is at half
    assert half["gate"] == pytest.approx([20e-3])
    assert max(half["other"]) == pytest.approx(1e-3 * (STEPS - 6) / (STEPS - WARMUP))


def test_scaled_gates_still_follow_the_schedule_when_asked(tmp_path):
    trainer = trainer_for(tmp_path, gate_lr_scale=20.0)
    rates = rates_after(trainer, 1)  # mid-warmup
    assert rates["gate"] == pytest.approx([20e-3 / WARMUP])
    rates = rates_after(trainer, 5)
    assert rates["gate"] == pytest.approx([20e-3 * (STEPS - 6) / (STEPS - WARMUP)])


def test_undecayed_gates_refuse_a_schedule_they_cannot_follow(tmp_path):
    """ReduceLROnPlateau has no per-step multiplier to keep the gates out of: refused, not ignored."""
    trainer = trainer_for(tmp_path, gate_lr_scale=20.0, gate_lr_decay=False)
    trainer.lr_scheduler = None
    trainer.args.lr_scheduler_type = SchedulerType.REDUCE_ON_PLATEAU
    with pytest.raises(ValueError, match="gate_lr_decay: false needs a per-step multiplier schedule"):
        trainer.create_scheduler(STEPS, trainer.optimizer)


def test_training_logs_carry_tanh_of_every_gate(tmp_path):
    trainer = trainer_for(tmp_path)
    layers = trainer.model.model.cross_layers
    with torch.no_grad():
        layers["2"].t2v.gate.fill_(0.5)
        layers["0"].v2v.gate.fill_(-1.0)
    trainer.log({"loss": 1.0})
    logged = trainer.state.log_history[-1]
    assert logged["gate/t2v.2"] == pytest.approx(math.tanh(0.5))
    assert logged["gate/v2v.0"] == pytest.approx(math.tanh(-1.0))
    assert {k for k in logged if k.startswith("gate/")} == {
        f"gate/{block}.{layer}" for block in ("v2v", "t2v") for layer in (0, 2)
    }
    trainer.log({"train_runtime": 1.0})  # the end-of-training summary is not a training step
    assert not any(k.startswith("gate/") for k in trainer.state.log_history[-1])


def test_close_gates_zeroes_only_the_named_blocks():
    """The demo's ablation of a trained model: closing T2V sets its gates to 0 (tanh(0) = 0, the block adds
    nothing) and leaves every other weight as it was."""
    model, _ = make_tiny(TinySpec(), seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_gate(name):
                p.fill_(0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert close_gates(model, ("t2v",)) == 2
    for name, p in model.named_parameters():
        expected = torch.zeros_like(p) if is_gate(name) and ".t2v." in name else before[name]
        assert torch.equal(p, expected), name
    assert gate_values(model) == {"gate/t2v.0": 0.0, "gate/t2v.2": 0.0} | {
        f"gate/v2v.{layer}": pytest.approx(math.tanh(0.5)) for layer in (0, 2)
    }
    assert close_gates(model, ("mlp",)) == 0  # the tiny model has no gated MLP: nothing to close
