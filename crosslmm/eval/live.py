"""``crosslmm chat --stream``: a video file replayed as a live stream into a
:class:`~crosslmm.streaming.StreamingSession`, with questions answered while frames keep arriving.

Frame ``i`` arrives at its video time ``times[i]`` (seconds); the video clock runs at ``speed`` times the
wall clock, and ``speed == 0`` means as fast as possible (every frame is already due). A question asked
at video time ``t`` -- given up front (``--ask t:question``) or typed, stamped when its line was read --
is answered over exactly the frames with ``times[i] <= t``: frames due before it are ingested first, and
later ones wait until the answer is done. End of input (Ctrl-D) ends a typed session; a scripted one ends
after its last question (questions after the video's end see every frame).
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

import numpy as np

MAX_CHUNK = 32  # frames per add_frames when catching up (after an answer, or at speed 0)
EOF = None  # what the stdin reader queues at end of input


def read_questions(stream: TextIO, clock: Callable[[], float]) -> queue.Queue:
    """A daemon thread that queues ``(video time, line)`` for each non-empty line of ``stream``, then
    ``(video time, EOF)``; the main thread stays free to ingest frames while nobody types."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in iter(stream.readline, ""):
            if line.strip():
                lines.put((clock(), line.strip()))
        lines.put((clock(), EOF))

    threading.Thread(target=read, name="crosslmm-chat-stdin", daemon=True).start()
    return lines


def replay(
    session,
    frames: np.ndarray,
    times: np.ndarray,
    *,
    speed: float,
    asks: list[tuple[float, str]] | None = None,
    typed: TextIO | None = None,
    answer: Callable[[str], None],
    out: TextIO | None = None,
) -> None:
    """Feed ``frames`` (T, H, W, 3) uint8 to ``session`` at ``times`` (T,) seconds; answer ``asks`` (video
    time, question) or, without them, the lines of ``typed``. ``answer(question)`` asks the session (and
    streams the answer); before each, one line on ``out`` (default stdout) says which frames it saw."""
    out = out or sys.stdout
    start = time.monotonic()

    def clock() -> float:  # video seconds since the replay began
        return math.inf if speed == 0 else (time.monotonic() - start) * speed

    duration = float(times[-1]) if len(times) else 0.0
    pending = sorted(asks or [])
    lines = read_questions(typed, clock) if typed is not None and not pending else None
    seen = 0
    while True:
        if lines is not None:
            while not lines.empty():
                pending.append(lines.get_nowait())  # typed in order, so already sorted by time
        if pending and pending[0][1] is EOF:
            return
        now = clock()
        asked_at = pending[0][0] if pending else math.inf
        due = min(int(np.searchsorted(times, min(now, asked_at), side="right")), seen + MAX_CHUNK)
        if due > seen:
            session.add_frames(frames[seen:due])
            seen = due
            if seen == len(frames) and lines is not None:
                print(f"end of video: {seen} frames seen; ask more, Ctrl-D to quit", file=sys.stderr)
            continue
        if pending and (asked_at <= now or seen == len(frames)):
            at, question = pending.pop(0)
            last = f"up to {times[seen - 1]:.2f} s" if seen else "none yet"
            print(
                f"[{min(at, duration):.2f} s] {seen} frames seen ({last}) > {question}", file=out, flush=True
            )
            answer(question)
            continue
        if lines is None and not pending:
            return  # every scripted question is answered
        wake = min(float(times[seen]) if seen < len(frames) else math.inf, asked_at)
        wait = max((wake - now) / speed, 0.0) if speed and math.isfinite(wake) else None
        if lines is None:
            time.sleep(wait or 0.0)
            continue
        try:
            pending.append(lines.get(timeout=wait))  # a typed line wakes the loop at once
        except queue.Empty:
            pass
