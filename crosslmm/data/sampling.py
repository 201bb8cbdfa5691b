"""Which frames of a video the model sees: :class:`FrameSampling`, the one rule for training, chat, the
lmms-eval plugin and the demo, and :func:`sample_indices`, its arithmetic on frame indices.

Pure arithmetic on frame counts and rates; decoding lives in :mod:`crosslmm.data.video`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

_EPS = 1e-6


@dataclass(frozen=True)
class FrameSampling:
    """Which frames of a video the model sees; the one rule for training, chat, the lmms-eval plugin and
    the demo (see docs/evaluation.md).

    ``num_frames`` uniformly spaced frames, or one every ``1/fps`` seconds clamped to
    ``[min_frames, max_frames]``: a clip too short for ``min_frames`` at that rate gets ``min_frames``
    uniform frames instead (all of its frames if it has fewer), a long one is subsampled uniformly to
    ``max_frames``. Frames are never duplicated. Validated on construction.
    """

    num_frames: int | None = None
    fps: float | None = None
    min_frames: int | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if (self.num_frames is None) == (self.fps is None):
            raise ValueError("give exactly one of num_frames or fps")
        for name in ("max_frames", "min_frames", "num_frames", "fps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.min_frames is not None and self.fps is None:
            raise ValueError("min_frames applies to fps sampling only; with num_frames it has no meaning")
        if self.min_frames is not None and self.max_frames is not None and self.min_frames > self.max_frames:
            raise ValueError(f"min_frames ({self.min_frames}) must be <= max_frames ({self.max_frames})")

    @classmethod
    def resolve(
        cls,
        num_frames: int | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        min_frames: int | None = None,
    ) -> FrameSampling:
        """Fill the default from what a user gave: nothing means :data:`DEFAULT_SAMPLING` (the stage-2
        training rule); ``max_frames`` alone means that many uniform frames; fps sampling is capped at
        ``DEFAULT_SAMPLING.max_frames`` unless ``max_frames`` says otherwise (an hour at 2 fps would
        otherwise be 7200 frames)."""
        if num_frames is None and fps is None:
            if max_frames is None and min_frames is None:
                return DEFAULT_SAMPLING
            if min_frames is None:
                return cls(num_frames=max_frames, max_frames=max_frames)
            fps = DEFAULT_SAMPLING.fps
        if fps is not None and max_frames is None:
            max_frames = max(DEFAULT_SAMPLING.max_frames, min_frames or 0)
        return cls(num_frames=num_frames, fps=fps, min_frames=min_frames, max_frames=max_frames)

    @property
    def budget(self) -> int | None:
        """Most frames this sampling can yield, if bounded (an fps without a cap is not)."""
        counts = [n for n in (self.num_frames, self.max_frames) if n is not None]
        return min(counts) if counts else None

    def indices(
        self, total_frames: int, src_fps: float, start: float | None = None, end: float | None = None
    ) -> np.ndarray:
        return sample_indices(total_frames, src_fps, start=start, end=end, **dataclasses.asdict(self))


# The paper's SFT rule (Table 3: 64-512 frames; docs/paper.md section 3), also the evaluation default, so a
# model is evaluated on the frame counts it was trained on.
DEFAULT_SAMPLING = FrameSampling(fps=1.0, min_frames=64, max_frames=512)


def check_sampling_args(
    num_frames: int | None,
    fps: float | None,
    min_frames: int | None,
    max_frames: int | None,
    start: float | None,
    end: float | None,
) -> None:
    """Validate arguments that do not depend on the video, raising ValueError with the reason."""
    FrameSampling(num_frames=num_frames, fps=fps, min_frames=min_frames, max_frames=max_frames)
    if start is not None and start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if start is not None and end is not None and start >= end:
        raise ValueError(f"start ({start}) must be < end ({end})")


def _uniform(count: int, n: int) -> np.ndarray:
    """Positions of the centres of ``n`` equal segments of ``range(count)``, in exact integer arithmetic."""
    k = np.arange(n, dtype=np.int64)
    return (2 * k + 1) * count // (2 * n)


def sample_indices(
    total_frames: int,
    src_fps: float,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    min_frames: int | None = None,
) -> np.ndarray:
    """Choose sorted, unique source frame indices (int64) inside the ``[start, end)`` window (seconds).

    - ``num_frames``: centres of ``num_frames`` equal segments of the window (LLaVA-Video/lmms-eval style
      uniform sampling), capped by ``max_frames``. If the window holds fewer frames than requested, all of
      its frames are returned: frames are never duplicated, so the result may be shorter than asked.
    - ``fps``: one frame every ``src_fps / fps`` source frames from the window start (all frames if
      ``fps >= src_fps``); if ``max_frames`` is exceeded the result is uniformly subsampled down to it,
      and if it has fewer than ``min_frames`` frames, ``min_frames`` uniform frames are taken instead.

    Frame ``i`` is taken to be shown at ``i / src_fps`` seconds; ``end`` beyond the video is clipped.
    Raises ValueError with the reason for bad arguments, zero frames or an empty window.
    """
    check_sampling_args(num_frames, fps, min_frames, max_frames, start, end)
    if total_frames <= 0:
        raise ValueError("video has zero frames")
    if not (math.isfinite(src_fps) and src_fps > 0):
        raise ValueError(f"invalid source fps {src_fps}")
    duration = total_frames / src_fps
    if start is not None and start >= duration:
        raise ValueError(f"start {start}s is beyond the video duration {duration:.3f}s")
    first = math.ceil(start * src_fps - _EPS) if start is not None else 0
    stop = min(total_frames, math.ceil(end * src_fps - _EPS)) if end is not None else total_frames
    count = stop - first
    if count <= 0:
        raise ValueError(f"window [{start}, {end}) contains no frames")

    if num_frames is not None:
        n = min(num_frames, max_frames) if max_frames is not None else num_frames
        pos = np.arange(count, dtype=np.int64) if count <= n else _uniform(count, n)
    else:
        step = src_fps / fps
        n = math.ceil(count / step - _EPS)
        pos = np.unique(np.floor(np.arange(n) * step + _EPS).astype(np.int64))
        pos = pos[pos < count]
        if min_frames is not None and len(pos) < min_frames:
            pos = np.arange(count, dtype=np.int64) if count <= min_frames else _uniform(count, min_frames)
        if max_frames is not None and len(pos) > max_frames:
            pos = pos[_uniform(len(pos), max_frames)]
    return (first + pos).astype(np.int64)
