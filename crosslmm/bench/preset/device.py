"""Measuring on one device, CPU or CUDA: a clock, peak memory above the weights, and a guard that records
running out of memory instead of stopping the benchmark."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

OOM = "OOM"


class Clock:
    """Milliseconds of one call: CUDA events around it on a GPU (the host returns before the GPU is done),
    ``perf_counter`` around it on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
        if not self.cuda:
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            return 1e3 * (time.perf_counter() - start), out
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn(*args, **kwargs)
        end.record()
        end.synchronize()
        return start.elapsed_time(end), out


class PeakMemory:
    """Peak allocated memory above the weights, MB (2^20 bytes); None on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        release(device)
        self.weights = torch.cuda.memory_allocated(device) if self.cuda else None

    @property
    def weights_mb(self) -> float | None:
        return None if self.weights is None else self.weights / 2**20

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float | None:
        return (torch.cuda.max_memory_allocated(self.device) - self.weights) / 2**20 if self.cuda else None


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or an allocator's RuntimeError (CPU: "can't allocate memory")."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def guarded(fn: Callable[..., dict[str, Any]], device: torch.device, *args: Any) -> dict[str, Any] | str:
    """``fn(*args)``, or ``"OOM"`` when it runs out of memory; memory is released either way. The error is
    left before releasing: its traceback holds the frames' tensors."""
    try:
        return fn(*args)
    except RuntimeError as err:
        if not is_oom(err):
            raise
        message = str(err).splitlines()[0]
    release(device)
    log(f"    out of memory: {message}")
    return OOM


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
