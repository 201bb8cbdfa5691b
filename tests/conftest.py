"""Shared fixtures (no downloads, CPU only); the helper functions they use are in ``helpers.py``."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import make_tiny_dir

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """One visible-text tiny model directory for every test that only reads it."""
    return make_tiny_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
