"""HF Trainer with per-component learning rates, atomic checkpoints and a count of dropped samples."""

from __future__ import annotations

import os

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from crosslmm.training import checkpoint
from crosslmm.training.config import TrainConfig
from crosslmm.training.params import gate_values, lr_groups


class CrossLMMTrainer(Trainer):
    """Given ``labels``, the model computes logits only at labelled positions ((N_labelled, V), see
    ``CrossLMMForCausalLM.forward``): training reads only the loss. ``prediction_step`` would return those
    rows rather than (B, L, V), so metrics over full logits need a forward without labels; with
    ``label_smoothing_factor`` the Trainer pops the labels and gets full logits (and their memory) back."""

    def __init__(self, *args, train_config: TrainConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_config = train_config
        self.dropped = torch.zeros(
            2, dtype=torch.long
        )  # (bad records skipped, over-length dropped) on this rank

    def create_optimizer(self, model=None):
        """The Trainer's optimizer (AdamW), built on our learning-rate groups; DeepSpeed wraps it."""
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = lr_groups(opt_model, self.train_config, set(self.get_decay_parameter_names(opt_model)))
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The configured schedule, except for a group with ``decays`` False (the gates with
        ``gate_lr_decay: false``): it warms up with the others, then keeps its peak rate."""
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        groups = scheduler.optimizer.param_groups
        if all(g.get("decays", True) for g in groups):
            return scheduler
        if not isinstance(scheduler, LambdaLR):
            raise ValueError(
                f"gate_lr_decay: false needs a per-step multiplier schedule (linear, cosine, constant, ...); "
                f"lr_scheduler {self.args.lr_scheduler_type!r} gives a {type(scheduler).__name__}"
            )
        warmup = self.args.get_warmup_steps(num_training_steps)
        decayed = scheduler.lr_lambdas[0]
        for group in groups:  # undo the first step's scaling; LambdaLR scales initial_lr again below
            group["lr"] = group["initial_lr"]
        self.lr_scheduler = LambdaLR(
            scheduler.optimizer,
            [decayed if g.get("decays", True) else _warmup_then_constant(warmup) for g in groups],
        )
        return self.lr_scheduler

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Training logs carry tanh(gate) of every cross-attention gate (``gate/t2v.0``, ...)."""
        if "loss" in logs:
            logs = logs | gate_values(self.model)
        super().log(logs, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.dropped += inputs.pop("dropped").cpu()
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        path = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        checkpoint.fsync_tree(path)  # each rank flushes what it wrote
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            checkpoint.mark_complete(path, self.state.global_step)
            checkpoint.rotate(self._get_output_dir(trial), self.train_config.keep_checkpoints)


def _warmup_then_constant(warmup: int):
    """LR multiplier: linear warmup over ``warmup`` steps, then 1 (transformers' constant_with_warmup)."""
    return lambda step: min(1.0, step / warmup) if warmup else 1.0
