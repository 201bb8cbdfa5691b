"""The test videos of ``crosslmm bench data``: H.264 files generated with PyAV at a stated size, length, frame
rate, keyframe interval (GOP) and bitrate, cached in a directory so reruns do not re-encode.

The content compresses like video, not like noise: a colour gradient that pans, a few solid shapes that move
and bounce, and a little per-pixel noise (a bank of 8 noise images cycled, +-6 levels). libx264 encodes it in
bitrate mode (``b``, with ``maxrate``/``bufsize`` around it), so the file's bitrate is the stated one whatever
the content; a fixed keyframe interval comes from ``g`` = ``keyint_min`` = GOP x fps with scene-cut keyframes
off (``sc_threshold`` 0). Frames are synthesised and encoded one at a time, so memory stays at a few frames
even for a 10-minute 1080p clip.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class VideoSpec:
    """One generated test video. ``preset`` is libx264's speed preset ("veryfast" has B-frames, as most
    published video does; "ultrafast" has none)."""

    width: int
    height: int
    seconds: float
    fps: int
    gop_seconds: float  # keyframe interval
    kbps: int  # target bitrate
    preset: str = "veryfast"

    @property
    def name(self) -> str:
        """File stem, unique per spec: e.g. ``720p_600s_25fps_gop2s_3000k_veryfast``."""
        return f"{self.height}p_{self.seconds:g}s_{self.fps}fps_gop{self.gop_seconds:g}s_{self.kbps}k_{self.preset}"

    @property
    def label(self) -> str:
        """Short name for tables: ``720p 10 min, GOP 2 s, 3 Mb/s``."""
        length = f"{self.seconds / 60:g} min" if self.seconds >= 60 else f"{self.seconds:g} s"
        rate = f"{self.kbps / 1000:g} Mb/s" if self.kbps >= 1000 else f"{self.kbps} kb/s"
        return f"{self.height}p {length}, GOP {self.gop_seconds:g} s, {rate}"

    @property
    def frames(self) -> int:
        return round(self.seconds * self.fps)

    @property
    def gop_frames(self) -> int:
        return max(1, round(self.gop_seconds * self.fps))


# The full benchmark's videos: 720p at 3 Mb/s (a typical H.264 720p upload is 2-5 Mb/s) and 1080p at 6 Mb/s
# (typical 4-8 Mb/s), keyframes every 1, 2 and 10 s.
FULL_VIDEOS = (
    VideoSpec(1280, 720, 600, 25, 2, 3000),
    VideoSpec(1920, 1080, 120, 25, 10, 6000),
    VideoSpec(1280, 720, 120, 25, 1, 3000),
)
# ``--quick``: one small clip (a smoke test in seconds, not a measurement).
QUICK_VIDEOS = (VideoSpec(320, 240, 4, 25, 1, 400, "ultrafast"),)


# A tiny clip each fresh measuring process decodes once before the measured sample (its imports and the
# decoder's first use); a keyframe every 5 frames so the keyframe-only reader can take 2 frames of it.
WARMUP_VIDEO = VideoSpec(64, 48, 2, 25, 0.2, 100, "ultrafast")


class _Scene:
    """Frame ``i`` of the synthetic content: a panning gradient, moving shapes, a little noise."""

    def __init__(self, width: int, height: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.width, self.height = width, height
        # A gradient twice as wide as the frame; a window slides over it (a slow pan).
        x = np.linspace(0, 4 * np.pi, 2 * width, dtype=np.float32)
        y = np.linspace(0, np.pi, height, dtype=np.float32)[:, None]
        channels = [np.sin(x + phase)[None, :] * np.cos(y + phase) for phase in (0.0, 2.0, 4.0)]
        # Values in [16, 239], so noise of +-6 never wraps around in uint8.
        self.background = (128 + 111 * np.stack(channels, axis=-1)).astype(np.uint8)
        self.noise = rng.integers(0, 13, size=(8, height, width, 3), dtype=np.uint8)  # + 0..12, then - 6
        n = 6
        self.sizes = rng.integers(max(2, height // 10), max(3, height // 4), size=(n, 2))
        self.colors = rng.integers(20, 236, size=(n, 3), dtype=np.uint8)
        self.start = rng.uniform(0, 1, size=(n, 2)) * [width, height]
        self.velocity = rng.uniform(-1, 1, size=(n, 2)) * [width, height] / 200  # pixels per frame

    def frame(self, i: int, out: np.ndarray) -> np.ndarray:
        """Write frame ``i`` (H, W, 3 uint8) into ``out`` and return it."""
        shift = (i * max(1, self.width // 500)) % self.width
        out[:] = self.background[:, shift : shift + self.width]
        for (h, w), color, start, velocity in zip(self.sizes, self.colors, self.start, self.velocity):
            x = _bounce(start[0] + velocity[0] * i, self.width - w)
            y = _bounce(start[1] + velocity[1] * i, self.height - h)
            out[y : y + h, x : x + w] = color
        np.add(out, self.noise[i % len(self.noise)], out=out)
        np.subtract(out, 6, out=out)
        return out


def _bounce(position: float, span: int) -> int:
    """``position`` reflected into [0, span] (a shape bouncing off the frame's edges)."""
    period = 2 * max(span, 1)
    p = position % period
    return int(p if p <= span else period - p)


def encode_video(path: Path, spec: VideoSpec) -> None:
    """Write ``spec``'s video to ``path`` (H.264, yuv420p, mp4), one frame at a time."""
    import av

    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(spec.fps))
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        stream.bit_rate = spec.kbps * 1000
        stream.options = {
            "preset": spec.preset,
            "g": str(spec.gop_frames),
            "keyint_min": str(spec.gop_frames),
            "sc_threshold": "0",
            "maxrate": f"{spec.kbps * 3 // 2}k",
            "bufsize": f"{spec.kbps * 2}k",
        }
        scene = _Scene(spec.width, spec.height)
        buffer = np.empty((spec.height, spec.width, 3), dtype=np.uint8)
        for i in range(spec.frames):
            frame = av.VideoFrame.from_ndarray(scene.frame(i, buffer), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def ensure_videos(
    directory: Path, specs: tuple[VideoSpec, ...], progress: bool = True
) -> list[dict[str, Any]]:
    """Each spec's video in ``directory``, encoded only if missing. Returns one record per video: path, spec,
    encode seconds (of the run that made it) and the measured bitrate and keyframe count.

    A video is written under a temporary name and renamed when complete, with its record beside it
    (``NAME.json``), so an interrupted run never leaves a truncated file that a rerun would reuse."""
    from tqdm import tqdm

    directory.mkdir(parents=True, exist_ok=True)
    records = []
    for spec in tqdm(specs, desc="test videos", disable=not progress):
        path, meta = directory / f"{spec.name}.mp4", directory / f"{spec.name}.json"
        if not (path.exists() and meta.exists()):
            partial = directory / f"{spec.name}.partial.mp4"
            started = time.perf_counter()
            encode_video(partial, spec)
            seconds = time.perf_counter() - started
            record = {"spec": asdict(spec), "encode_s": seconds, **probe(partial)}
            partial.rename(path)
            meta.write_text(json.dumps(record, indent=2) + "\n")
        records.append(
            {"name": spec.name, "label": spec.label, "path": str(path), **json.loads(meta.read_text())}
        )
    return records


def probe(path: Path) -> dict[str, Any]:
    """Frames, keyframes and the bitrate of the video stream, read from the packets (no decoding)."""
    import av

    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        packets = [(p.size, p.is_keyframe) for p in container.demux(stream) if p.size > 0]
        duration = len(packets) / float(stream.average_rate)
    return {
        "frames": len(packets),
        "keyframes": sum(key for _, key in packets),
        "duration_s": duration,
        "kbps": sum(size for size, _ in packets) * 8 / duration / 1000,
        "megabytes": path.stat().st_size / 1e6,
    }
