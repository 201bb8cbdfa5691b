"""Streaming ingest cost on the CPU mini model: the time of ``StreamingSession.add_frames`` for one frame
when few frames came before and when many did (docs/streaming.md; the target is within 20 %).

Two sessions on the same weights, one filled to ``few`` frames and one to ``many``, then one frame at a
time added to each, alternately, ``repeats`` times: machine load hits both alike, and each number is a
median. The timed frames sit around ``few`` and ``many`` frames seen (half before, half after). The mini
model has no tokenizer of its own, so the session runs it with the tiny BPE tokenizer (same 512-token
vocabulary; the model's ``<video>`` id is set to that tokenizer's).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch

from crosslmm.bench.mini import MiniSpec
from crosslmm.bench.targets import Target

FILL_CHUNK = 32  # frames per add_frames while filling a session (not timed)


def _mini_session(spec: MiniSpec, seed: int):
    from crosslmm.model.modeling import CrossLMMForCausalLM
    from crosslmm.model.processing import VIDEO_TOKEN, CrossLMMProcessor, build_image_processor
    from crosslmm.model.tiny import train_tiny_tokenizer
    from crosslmm.streaming import StreamingSession

    config = spec.config(spec.tokens_per_frame, spec.cross_attention_every)
    tokenizer = train_tiny_tokenizer(config.text_config.vocab_size)
    config.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    torch.manual_seed(seed)
    model = CrossLMMForCausalLM(config).eval()
    processor = CrossLMMProcessor(
        image_processor=build_image_processor(model.model.vision_tower),
        tokenizer=tokenizer,
        tokens_per_frame=config.tokens_per_frame,
    )
    return lambda: StreamingSession(model, processor)


def run_streaming_ingest(
    spec: MiniSpec, few: int, many: int, *, repeats: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Median seconds of one ``add_frames`` (one frame) around ``few`` and ``many`` frames seen, and their
    ratio; JSON-ready."""
    if not 0 < few < many:
        raise ValueError(f"streaming ingest needs 0 < few < many frames seen, got {few} and {many}")
    new_session = _mini_session(spec, seed)
    size = spec.image_size
    pool = np.random.default_rng(seed).integers(0, 256, (FILL_CHUNK, size, size, 3), dtype=np.uint8)
    sessions = {}
    for n in (few, many):
        session, start = new_session(), max(n - repeats // 2, 1)
        while session.frames_seen < start - 1:
            session.add_frames(pool[: min(FILL_CHUNK, start - 1 - session.frames_seen)])
        session.add_frames(pool[:1])  # untimed: the first single-frame call pays for lazy initialisation
        sessions[n] = session
    first_seen = {n: s.frames_seen for n, s in sessions.items()}
    samples: dict[int, list[float]] = {few: [], many: []}
    for i in range(repeats):
        for n in (few, many) if i % 2 == 0 else (many, few):
            start = time.perf_counter()
            sessions[n].add_frames(pool[i % FILL_CHUNK][None])
            samples[n].append(time.perf_counter() - start)
    for session in sessions.values():
        session.close()
    median = {n: statistics.median(s) for n, s in samples.items()}
    return {
        "frames_seen": [few, many],
        "timed_frames_seen": {n: [first_seen[n], first_seen[n] + repeats - 1] for n in (few, many)},
        "repeats": repeats,
        "add_frame_s": median,
        "add_frame_runs_s": samples,
        "ratio": median[many] / median[few],
    }


def ingest_target(ingest: dict[str, Any]) -> Target:
    few, many = ingest["frames_seen"]
    return Target(f"streaming ingest of one frame at {many} / at {few} frames seen", ingest["ratio"], 1.2)


def ingest_rows(ingest: dict[str, Any]) -> list[list[Any]]:
    """Rows under ``INGEST_HEADER``: frames seen, median ms of one frame, ratio to the first."""
    times = ingest["add_frame_s"]
    first = times[ingest["frames_seen"][0]]
    return [[n, 1e3 * times[n], times[n] / first] for n in ingest["frames_seen"]]


INGEST_HEADER = ["frames seen", "add 1 frame ms", "/ first"]
