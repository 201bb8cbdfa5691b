"""Video/image loading for long-video LMMs, under a :class:`~crosslmm.data.sampling.FrameSampling`.

decord is fast (keyframe seeking, batched decode) but fails or miscounts frames on some files, so
``backend="auto"`` falls back to PyAV, which decodes sequentially and keeps only the sampled frames.
Failures are raised as :class:`VideoError` (never replaced by a blank or different sample) so that a
broken file is visible instead of silently degrading training or evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from PIL import Image

from crosslmm.data.sampling import FrameSampling, check_sampling_args, sample_indices

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"})
# Still-image formats PIL may sniff from content; restricting the list keeps PIL from claiming video files
# (it "identifies" MPEG-1 streams without being able to decode them).
_PIL_STILL_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF")

_fallback_logged: set[str] = set()


class VideoError(ValueError):
    """A video/image could not be loaded; carries the path and the reason so dataset errors are traceable."""

    def __init__(self, path: str | os.PathLike, reason: str = "") -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if reason else self.path)

    def __reduce__(self):  # keep path/reason across pickling (DataLoader workers)
        return (type(self), (self.path, self.reason))


@dataclass
class VideoClip:
    """Sampled frames plus where they came from (indices/fps let callers compute timestamps)."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    indices: np.ndarray  # (T,) int64 source frame indices that were sampled
    fps: float  # source average fps (0.0 for an image)
    duration: float  # seconds (0.0 for an image)


# A picker maps (total_frames, src_fps) to the indices to decode; it raises VideoError for argument/window
# problems, which must propagate instead of triggering a backend fallback.
Picker = Callable[[int, float], np.ndarray]


def _read_decord(path: str, pick: Picker) -> VideoClip:
    import decord

    # One thread: loaders run many workers, and decord's auto threading oversubscribes the CPU.
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    total, src_fps = len(vr), float(vr.get_avg_fps())
    if total <= 0:
        raise RuntimeError("decord reports zero frames")
    indices = pick(total, src_fps)
    batch = vr.get_batch(indices.tolist())
    # Another library may have switched decord's global bridge to torch, in which case there is no asnumpy.
    frames = np.asarray(batch.asnumpy() if hasattr(batch, "asnumpy") else batch)
    if frames.shape[0] != len(indices) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise RuntimeError(f"decord returned frames of shape {frames.shape} for {len(indices)} indices")
    return VideoClip(np.ascontiguousarray(frames, dtype=np.uint8), indices, src_fps, total / src_fps)


def _count_packets(path: str) -> int:
    """Frame count for containers that do not store it (e.g. mkv/webm/some avi): count packets, no decoding."""
    import av

    with av.open(path) as container:
        return sum(1 for p in container.demux(video=0) if p.size > 0)


def _read_pyav(path: str, pick: Picker) -> VideoClip:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise RuntimeError("no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise RuntimeError("unknown frame rate")
        src_fps = float(rate)
        total = stream.frames or _count_packets(path)
        if total <= 0:
            raise RuntimeError("video has zero frames")
        indices = pick(total, src_fps)
        stream.thread_type = "AUTO"
        # Sequential decode, converting and keeping only the sampled frames so memory stays bounded; stop
        # at the last wanted index. Frame-accurate, unlike pts-based seeking on odd timestamps.
        frames: list[np.ndarray] = []
        last = int(indices[-1])
        decoded = 0
        for i, frame in enumerate(container.decode(stream)):
            decoded = i + 1
            if i == indices[len(frames)]:
                frames.append(frame.to_ndarray(format="rgb24"))
                if i == last:
                    break
    if len(frames) != len(indices):
        raise RuntimeError(
            f"stream ended after {decoded} frames but frame {last} was requested ({total} expected)"
        )
    return VideoClip(np.stack(frames), indices, src_fps, total / src_fps)


def _image_format(path: str) -> str | None:
    """PIL format name if the file is a still image (checked by header only), else None."""
    try:
        with Image.open(path, formats=_PIL_STILL_FORMATS) as img:
            return img.format
    except Exception:
        return None


def _read_image(path: str) -> VideoClip:
    try:
        with Image.open(path) as img:  # GIF/WebP animations: PIL opens the first frame
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as e:
        raise VideoError(path, f"cannot read image: {e}") from e
    return VideoClip(rgb[None].copy(), np.zeros(1, dtype=np.int64), 0.0, 0.0)


def load_video(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    backend: str = "auto",
    min_frames: int | None = None,
) -> VideoClip:
    """Decode the frames chosen by :func:`sample_indices` (see there for the sampling rules).

    Images (by extension or content) are one-frame clips: indices ``[0]``, fps/duration 0, start/end ignored.
    ``backend``: "decord", "pyav", or "auto" (decord, falling back to PyAV if it cannot open/decode).
    Every failure raises :class:`VideoError` naming the file and the reason.
    """
    path = os.fspath(path)
    if backend not in BACKENDS:
        raise VideoError(path, f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    try:
        check_sampling_args(num_frames, fps, min_frames, max_frames, start, end)
    except ValueError as e:
        raise VideoError(path, str(e)) from None
    if not os.path.exists(path):
        raise VideoError(path, "no such file")
    if os.path.isdir(path):
        raise VideoError(path, "is a directory, not a file")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "empty file")
    if os.path.splitext(path)[1].lower() in IMAGE_EXTS or _image_format(path) is not None:
        return _read_image(path)

    def pick(total: int, src_fps: float) -> np.ndarray:
        try:
            return sample_indices(total, src_fps, num_frames, fps, max_frames, start, end, min_frames)
        except ValueError as e:
            raise VideoError(path, str(e)) from None

    readers = {"decord": _read_decord, "pyav": _read_pyav}
    if backend != "auto":
        try:
            return readers[backend](path, pick)
        except VideoError:
            raise
        except Exception as e:
            raise VideoError(path, f"cannot decode with {backend}: {e}") from e

    try:
        return _read_decord(path, pick)
    except VideoError:
        raise
    except Exception as e:
        decord_error = e
    if path not in _fallback_logged:
        _fallback_logged.add(path)
        logger.info("decord failed on %s (%s); falling back to PyAV", path, decord_error)
    try:
        return _read_pyav(path, pick)
    except VideoError:
        raise
    except Exception as e:
        raise VideoError(path, f"unreadable video (decord: {decord_error}; pyav: {e})") from e


# What a caller may hand over as one video: a video/image file, decoded (T, H, W, 3) uint8 frames, or PIL
# images (one image = a one-frame video; a list = the frames of one video).
VideoLike = str | os.PathLike | np.ndarray | torch.Tensor | Image.Image | Sequence[Image.Image]


def load_frames(video: VideoLike, sampling: FrameSampling) -> np.ndarray:
    """Any :data:`VideoLike` -> (T, H, W, 3) uint8 frames under ``sampling``.

    Files are decoded by :func:`load_video` (which names the file in every error).
    Already decoded frames have no known frame rate, so only the frame budget applies to them: they are
    subsampled uniformly to ``sampling.budget``. Anything else raises TypeError saying what is accepted.
    """
    if isinstance(video, (str, os.PathLike)):
        return load_video(video, **dataclasses.asdict(sampling)).frames
    if isinstance(video, Image.Image):
        video = [video]
    if isinstance(video, (list, tuple)) and video and all(isinstance(im, Image.Image) for im in video):
        size = video[0].size  # the processor takes one array per video, so frames must share a size
        frames = np.stack([np.asarray(im.convert("RGB").resize(size)) for im in video])
    elif isinstance(video, (np.ndarray, torch.Tensor)):
        frames = video.cpu().numpy() if isinstance(video, torch.Tensor) else video
        if frames.ndim == 3:
            frames = frames[None]  # one (H, W, 3) image
    else:
        raise TypeError(
            f"cannot use a {type(video).__name__} as a video: give a video/image file path, (T, H, W, 3) "
            "uint8 frames, a PIL image or a non-empty list of PIL images"
        )
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be non-empty (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if sampling.budget is not None and len(frames) > sampling.budget:
        frames = frames[sample_indices(len(frames), 1.0, num_frames=sampling.budget)]
    return frames


def write_video(
    path: str | os.PathLike, frames: np.ndarray, fps: float = 8.0, crf: int | None = None
) -> None:
    """Write (T, H, W, 3) uint8 RGB frames as an mp4 (H.264/yuv420p, or MPEG-4 Part 2 without libx264).

    Used by tests and demos to make videos that both decord and PyAV can read. yuv420p needs even H and W.
    ``crf`` sets libx264's quality (0: lossless planes; the chroma is still subsampled by yuv420p).
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(
            f"frames must be a non-empty (T, H, W, 3) uint8 array, got {frames.shape} {frames.dtype}"
        )
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even height and width, got {height}x{width}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if crf is not None and codec == "libx264":
            stream.options = {"crf": str(crf)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
