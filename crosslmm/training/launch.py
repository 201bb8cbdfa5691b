"""Launch a training stage from a validated config: set up the process (logging, CPU DeepSpeed), hand the
config to :func:`crosslmm.training.run.train`, and exit cleanly.

Two entry points parse the config and call it: ``torchrun --nproc_per_node N -m crosslmm.train --config
configs/train/X.yaml [key=value ...]`` (``crosslmm/train.py``, a thin ``__main__``) and ``crosslmm train
--config ...`` in one process (``crosslmm.training.commands``); neither is imported here, so the imports
run one way. One entry point for both stages; a stage is a config (which components train, learning rates,
frames). Checkpoints go to ``<output_dir>/checkpoint-<step>`` (complete once marked, see
crosslmm.training.checkpoint) and the trained model to ``<output_dir>/final``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import PartialState

from crosslmm.training.config import TrainConfig
from crosslmm.training.run import train


def configure_cpu_deepspeed() -> None:
    """Set up the distributed state for DeepSpeed over gloo on CPU (tests, debugging).

    accelerate only picks a backend for DeepSpeed on accelerators; on CPU it would silently run each rank
    as a world of one. A pre-configured state with an explicit gloo backend is its supported way around.
    """
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]


def launch(config: TrainConfig) -> Path:
    """Set up this process for ``config`` and train; returns the final model dir."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if int(os.environ.get("RANK", 0)) == 0 else logging.WARNING,
    )
    cpu_deepspeed = (
        bool(config.deepspeed) and not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", 1)) > 1
    )
    if cpu_deepspeed:
        configure_cpu_deepspeed()
    return train(config, use_configured_state=cpu_deepspeed)


def exit_cleanly(code: int) -> None:
    """Finish wandb and the process group, then leave without running exit handlers: CPU gloo workers can
    abort in them after a clean run."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
