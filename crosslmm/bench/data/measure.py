"""The measurements of ``crosslmm bench data``: one sample decoded in a fresh process (seconds and peak RSS), a
DataLoader's samples/s over the same ``load_video`` calls, and the samples/s a stage-2 job needs (from FLOPs).

A training worker decodes one sample at a time, so the decode of one sample in a fresh process stands for a
worker: its peak RSS above the process's resident memory before the call (interpreter, torch, the decoders
imported) is what every sample adds to every worker. ``crosslmm.bench.rss`` measures it.
"""

from __future__ import annotations

import inspect
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

MB = 2**20  # RSS and frame sizes in MiB, as crosslmm.bench.rss reports them


def backends() -> list[str]:
    """The concrete backends that import here, then "auto". ``crosslmm.data.video.available_backends`` where it
    exists; before it did, decord and PyAV were the only backends."""
    import crosslmm.data.video as video

    concrete = (
        list(video.available_backends()) if hasattr(video, "available_backends") else ["decord", "pyav"]
    )
    return [*concrete, "auto"]


def reader_resizes() -> bool:
    """Whether ``load_video`` takes ``size=(height, width)`` (frames resized while decoding)."""
    from crosslmm.data.video import load_video

    return "size" in inspect.signature(load_video).parameters


def _load_kwargs(frames: int, backend: str, size: tuple[int, int] | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_frames": frames, "backend": backend}
    if size is not None:
        kwargs["size"] = size
    return kwargs


def _decode(path: str, frames: int, backend: str, size: tuple[int, int] | None) -> dict[str, Any]:
    from crosslmm.data.video import load_video

    started, cpu = time.perf_counter(), time.process_time()
    clip = load_video(path, **_load_kwargs(frames, backend, size))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu  # CPU: all threads
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "shape": list(clip.frames.shape),
        "frames_mb": clip.frames.nbytes / MB,
    }


def _decode_child(
    path: str, frames: int, backend: str, size: tuple[int, int] | None, warmup: str | None, threads: int
) -> dict[str, Any]:
    """Runs in the fresh process. A worker pays its imports once, not per sample: the decoders are imported
    and, with ``warmup`` (a tiny clip), one 2-frame ``load_video`` with the same backend and size runs first,
    so what the reader imports lazily (torchvision for the resize) is in the baseline, not in the sample.
    A backend that refuses the sampling (``VideoError``) gives a row with its ``error``."""
    import torch

    from crosslmm.bench.rss import peak_rss
    from crosslmm.data.video import VideoError, load_video

    torch.set_num_threads(threads)  # 1: as in a DataLoader worker (torch sets it there); readers follow it
    for module in ("av", "decord", "torchcodec"):
        try:
            __import__(module)
        except ImportError:
            pass
    if warmup is not None:
        load_video(warmup, **_load_kwargs(2, backend, size))
    try:
        peak, before, result = peak_rss(_decode, path, frames, backend, size)
    except VideoError as e:
        return {"error": e.reason or str(e)}
    peaks = {"peak_mb": peak, "baseline_mb": before, "worker_peak_mb": before + peak}
    return {**result, **peaks, "torch_threads": torch.get_num_threads()}


def decode_sample(
    path: str,
    frames: int,
    backend: str,
    size: tuple[int, int] | None,
    warmup: str | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """One sample of ``frames`` uniform frames (``load_video(num_frames=...)``, as stage 2 samples a video
    longer than ``max_frames`` seconds) in a fresh process with ``threads`` torch threads (1: a DataLoader
    worker's): wall and CPU seconds (``cpu_seconds``, all threads), the call's peak RSS above the process's
    resident memory before it (``peak_mb``), that memory (``baseline_mb``), the frames' own size and the
    thread count the process ran (``torch_threads``); or ``error`` when the backend refuses the sampling
    (``pyav-keyframes`` on frames denser than keyframes)."""
    from crosslmm.bench.rss import in_fresh_process

    return in_fresh_process(_decode_child, path, frames, backend, size, warmup, threads)


def exact_backends(names: list[str]) -> list[str]:
    """The backends among ``names`` that return the frames the sampling picked: not "auto", not the
    keyframe-only reader (``KEYFRAME_BACKEND``, nearest keyframes instead), which auto never picks."""
    import crosslmm.data.video as video

    inexact = {"auto", getattr(video, "KEYFRAME_BACKEND", None)}
    return [n for n in names if n not in inexact]


class DecodeDataset:
    """``samples`` items, each one ``load_video`` of the videos in turn: what a training Dataset does per item
    before the processor. An item is (uint8 frames as a tensor, the worker's peak RSS in MiB so far)."""

    def __init__(
        self, paths: list[str], frames: int, backend: str, size: tuple[int, int] | None, samples: int
    ) -> None:
        self.paths, self.samples = paths, samples
        self.kwargs = _load_kwargs(frames, backend, size)

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> tuple[Any, float]:
        import torch

        from crosslmm.data.video import load_video

        clip = load_video(self.paths[index % len(self.paths)], **self.kwargs)
        return torch.from_numpy(clip.frames), _status_mb("VmHWM")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) / 1024


def _reset_peak(_worker_id: int) -> None:
    """DataLoader worker_init_fn: a forked worker starts with its parent's peak-RSS mark; reset it to the
    worker's own resident memory so ``VmHWM`` is the worker's peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def loader_throughput(dataset: DecodeDataset, workers: int) -> dict[str, Any]:
    """Samples/s of a ``torch.utils.data.DataLoader`` over ``dataset`` (batch of one video, default prefetch),
    timed from the iterator's creation (workers forked) to the last sample: start-up included, as each epoch
    of a real job pays it. Also the largest peak RSS any worker reported (MiB, shared pages included)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=None, num_workers=workers, worker_init_fn=_reset_peak)
    started = time.perf_counter()
    worker_peak = 0.0
    for frames, peak in loader:
        worker_peak = max(worker_peak, float(peak))
        del frames
    seconds = time.perf_counter() - started
    return {
        "workers": workers,
        "samples": len(dataset),
        "seconds": seconds,
        "samples_per_s": len(dataset) / seconds,
        "worker_peak_mb": worker_peak,
    }


def available_memory_mb() -> float:
    """MemAvailable of the machine (MiB): the loader cells that would not fit are skipped, not run into the
    OOM killer."""
    with open("/proc/meminfo") as f:
        return int(re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.M).group(1)) / 1024


def cores() -> int:
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Throughput:
    """The assumptions behind the samples/s a stage-2 job needs; every one is printed with the result."""

    gpus: int = 8
    peak_tflops: float = 989.0  # H100 SXM bf16 dense (no sparsity)
    mfu: float = 0.40
    train_factor: float = (
        3.0  # forward + backward = 3x forward (backward ~2x); activation recompute not counted
    )
    text_tokens: int = (
        256  # instruction + answer text per sample (an assumption; stage 2 allows 8192 - video)
    )


def needed_samples_per_s(config: Any, frames: int, assume: Throughput) -> dict[str, float]:
    """Samples/s that keep ``assume.gpus`` GPUs busy: each GPU does ``peak_tflops x mfu`` of useful work, and a
    training sample costs ``train_factor`` x the analytic forward FLOPs (``crosslmm.bench.flops.prefill_flops``
    with the LM head on every position, as training computes it)."""
    from crosslmm.bench.flops import prefill_flops

    forward = prefill_flops(config, frames, assume.text_tokens, lm_head_all_positions=True).total
    train = assume.train_factor * forward
    per_gpu = assume.peak_tflops * 1e12 * assume.mfu / train
    return {
        "forward_tflops": forward / 1e12,
        "train_tflops": train / 1e12,
        "per_gpu": per_gpu,
        "job": per_gpu * assume.gpus,
    }


def frames_mb(frames: int, size: tuple[int, int]) -> float:
    """MiB of ``frames`` uint8 RGB frames of ``size`` (height, width)."""
    return frames * size[0] * size[1] * 3 / MB


def median(values: list[float]) -> float:
    return float(np.median(values))
