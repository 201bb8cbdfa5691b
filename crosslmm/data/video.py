"""Video/image loading for long-video LMMs, under a :class:`~crosslmm.data.sampling.FrameSampling`.

Frames can leave the reader already at the vision tower's input size (``size``, the processor's
``frame_size``): each decoded frame is resized as soon as it is decoded, by :func:`resize_frames` (the
processor's own rule), so memory holds the resized clip plus one full-size frame, not the full-size clip.

Backends (docs/video.md): ``decord`` and ``torchcodec`` seek to the keyframe before each sampled frame;
``pyav`` decodes each run of sampled frames from its keyframe and skips the frames they do not need;
``pyav-keyframes`` decodes only the keyframe nearest to each sampled frame (different frames: opt-in, with
their real indices and times recorded); ``auto`` tries the exact backends that run here in
:data:`AUTO_ORDER` and falls back to the next one if a backend cannot decode the file.
Failures are raised as :class:`VideoError` (never replaced by a blank, shorter or different sample) so that
a broken file is visible instead of silently degrading training or evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from PIL import Image

from crosslmm.data.sampling import FrameSampling, check_sampling_args, sample_indices

logger = logging.getLogger(__name__)

# Exact backends return the frames the sampling rule picked; "pyav-keyframes" returns the nearest keyframes.
EXACT_BACKENDS = ("decord", "pyav", "torchcodec")
KEYFRAME_BACKEND = "pyav-keyframes"
BACKENDS = ("auto", *EXACT_BACKENDS, KEYFRAME_BACKEND)
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"})
# Still-image formats PIL may sniff from content; restricting the list keeps PIL from claiming video files
# (it "identifies" MPEG-1 streams without being able to decode them).
_PIL_STILL_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF")
# Frames torchcodec decodes per call when resizing: bounds the full-size frames alive at once (4 x 6 MB at
# 1080p) while keeping its batched seeking.
_CHUNK = 4

TORCHCODEC_INSTALL = (
    "torchcodec needs FFmpeg's shared libraries (libavutil, libavcodec, ...; FFmpeg 4 or newer), which it "
    "does not bundle: on Debian/Ubuntu `apt install ffmpeg`, with conda `conda install -c conda-forge "
    "ffmpeg`; or use backend 'pyav' or 'decord', which bundle their own"
)

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
    """Sampled frames plus where they came from.

    ``times`` are the frames' own presentation times in seconds from the stream's start, as the backend
    read them; ``indices`` the frames' positions in the stream. An exact backend returns the frames the
    sampling rule picked; ``pyav-keyframes`` returns the keyframe nearest to each of them, and ``indices``
    and ``times`` are then those keyframes' (see ``backend``)."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB; (T, h, w, 3) when load_video was given size=(h, w)
    indices: np.ndarray  # (T,) int64 source frame indices of the returned frames
    fps: float  # source average fps (0.0 for an image)
    duration: float  # seconds (0.0 for an image)
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T,) float64 seconds
    backend: str = ""  # which backend decoded it ("" for an image)


# A picker maps (total_frames, src_fps) to the indices to decode; it raises VideoError for argument/window
# problems, which must propagate instead of triggering a backend fallback.
Picker = Callable[[int, float], np.ndarray]
Size = tuple[int, int]  # (height, width)


def resize_frames(frames: np.ndarray | torch.Tensor, size: Size | None) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, h, w, 3) uint8 with ``size = (h, w)``: the processor's resize rule
    (``CrossLMMProcessor.preprocess_frames``: SiglipImageProcessor's torchvision resize, bicubic,
    antialiased, no crop, aspect ratio not kept), applied here so readers can resize each frame as it is
    decoded. Frames already at ``size`` (or ``size=None``) are returned unchanged; tests check that this
    equals the processor's output exactly."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvF

    if size is None or tuple(frames.shape[1:3]) == tuple(size):
        return frames.numpy() if isinstance(frames, torch.Tensor) else frames
    tensor = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    resized = tvF.resize(
        tensor.permute(0, 3, 1, 2), list(size), interpolation=InterpolationMode.BICUBIC, antialias=True
    )
    if resized.dtype != torch.uint8:
        resized = resized.round().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(resized.permute(0, 2, 3, 1).numpy())


def _check_size(size) -> Size | None:
    if size is None:
        return None
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(n, int | np.integer) and not isinstance(n, bool) and n > 0 for n in size)
    ):
        raise ValueError(f"size must be (height, width) in positive ints or None, got {size!r}")
    return int(size[0]), int(size[1])


# ---------------------------------------------------------------- backends


@functools.cache
def backend_unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine (what to install), or None if it can. Cached per process."""
    if backend in ("pyav", KEYFRAME_BACKEND):
        module, hint = "av", "pip install av"
    elif backend == "decord":
        module, hint = "decord", "pip install decord"
    elif backend == "torchcodec":
        module, hint = "torchcodec", "pip install torchcodec (the release that matches your torch)"
    else:
        return f"unknown backend {backend!r}"
    try:
        __import__(module)
    except Exception as e:  # ImportError, or a broken binary extension
        return f"{module} does not import ({e}): {hint}"
    if backend == "torchcodec":
        return _torchcodec_unloadable()
    return None


def _torchcodec_unloadable() -> str | None:
    """torchcodec imports without FFmpeg and loads its libraries on first use; load them now to know."""
    try:
        from torchcodec._internally_replaced_utils import load_core_libraries  # private, hence the guard
    except ImportError:
        return None  # a later layout: the first decode says whether it loads
    try:
        load_core_libraries()
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"torchcodec cannot load ({first}). {TORCHCODEC_INSTALL}"
    return None


def available_backends() -> list[str]:
    """The concrete backends (never "auto") that run on this machine, in :data:`BACKENDS` order."""
    return [b for b in BACKENDS[1:] if backend_unavailable(b) is None]


class _Frames:
    """A clip's (T, h, w, 3) uint8 frames, allocated once at the first (resized) frame's shape and filled in
    place: no list of frames to stack at the end, which would hold the clip twice."""

    def __init__(self, count: int, size: Size | None) -> None:
        self.count, self.size = count, size
        self.array: np.ndarray | None = None
        self.filled = np.zeros(count, dtype=bool)
        self._allocating = threading.Lock()

    def put(self, at: int, frames: np.ndarray | torch.Tensor) -> None:
        """Resize ``frames`` (n, H, W, 3) and store them as frames ``at`` .. ``at + n - 1`` of the clip.
        One frame at a time: the resize works in float, 4x a uint8 frame."""
        n = len(frames)
        if self.size is None and self.array is None and n == self.count:
            self.array = np.ascontiguousarray(frames)  # the whole clip in one batch: keep it, no copy
            self.filled[:] = True
            return
        for k in range(n):
            resized = resize_frames(frames[k : k + 1], self.size)
            if self.array is None:
                with self._allocating:  # the PyAV reader's threads fill one clip
                    if self.array is None:
                        self.array = np.empty((self.count, *resized.shape[1:]), dtype=np.uint8)
            if resized.shape[1:] != self.array.shape[1:]:
                raise RuntimeError(
                    f"frame size changes mid-stream: {resized.shape[1:3]} after {self.array.shape[1:3]}"
                )
            self.array[at + k] = resized[0]
        self.filled[at : at + n] = True

    def missing(self) -> np.ndarray:
        return np.flatnonzero(~self.filled)


def _clip(frames: _Frames, indices, times, src_fps: float, total: int, backend: str) -> VideoClip:
    if frames.array is None or len(frames.missing()):
        raise RuntimeError(f"{len(frames.missing())} of {frames.count} frames were not decoded")
    return VideoClip(
        frames.array,
        np.asarray(indices, dtype=np.int64),
        src_fps,
        total / src_fps,
        np.asarray(times, dtype=np.float64),
        backend,
    )


def _read_decord(path: str, pick: Picker, size: Size | None) -> VideoClip:
    import decord

    # One thread: loaders run many workers, and decord's auto threading oversubscribes the CPU.
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    total, src_fps = len(vr), float(vr.get_avg_fps())
    if total <= 0:
        raise RuntimeError("decord reports zero frames")
    indices = pick(total, src_fps)
    # One frame per call when resizing (decord's batches allocate about three times their size, and a frame
    # at a time costs no more CPU: measured in docs/video.md), else one batch as before.
    step = 1 if size is not None else len(indices)
    frames = _Frames(len(indices), size)
    for at in range(0, len(indices), step):
        wanted = indices[at : at + step].tolist()
        batch = vr.get_batch(wanted)
        # Another library may have switched decord's global bridge to torch, in which case there is no asnumpy.
        chunk = np.asarray(batch.asnumpy() if hasattr(batch, "asnumpy") else batch)
        if chunk.shape[0] != len(wanted) or chunk.ndim != 4 or chunk.shape[-1] != 3:
            raise RuntimeError(f"decord returned frames of shape {chunk.shape} for {len(wanted)} indices")
        frames.put(at, chunk)
        del batch, chunk
    times = vr.get_frame_timestamp(indices.tolist())[:, 0]
    return _clip(frames, indices, times, src_fps, total, "decord")


def _torchcodec_decoder(path: str, **kwargs):
    if (reason := backend_unavailable("torchcodec")) is not None:
        raise VideoError(path, f"backend torchcodec: {reason}")
    from torchcodec.decoders import VideoDecoder

    try:
        return VideoDecoder(path, **kwargs)
    except RuntimeError as e:
        if "libtorchcodec" in str(e):  # the libraries, not the file
            raise VideoError(path, f"backend torchcodec: cannot load. {TORCHCODEC_INSTALL}") from None
        raise


def _read_torchcodec(path: str, pick: Picker, size: Size | None) -> VideoClip:
    # exact seek mode scans the file once for a frame-accurate index (as decord does on open).
    decoder = _torchcodec_decoder(path, dimension_order="NHWC", num_ffmpeg_threads=1, seek_mode="exact")
    meta = decoder.metadata
    total, src_fps = int(meta.num_frames or 0), float(meta.average_fps or 0.0)
    if total <= 0 or not src_fps > 0:
        raise RuntimeError(f"torchcodec reports {total} frames at {src_fps} fps")
    indices = pick(total, src_fps)
    begin = float(meta.begin_stream_seconds or 0.0)
    frames, times = _Frames(len(indices), size), []
    for at in range(0, len(indices), _CHUNK):
        batch = decoder.get_frames_at(indices[at : at + _CHUNK].tolist())
        frames.put(at, batch.data)
        times.extend((batch.pts_seconds.double() - begin).tolist())
    return _clip(frames, indices, times, src_fps, total, "torchcodec")


def _stream_info(container, path: str):
    """(stream, fps, seconds per pts unit, first pts) of the first video stream."""
    if not container.streams.video:
        raise RuntimeError("no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise RuntimeError("unknown frame rate")
    return stream, float(rate), float(stream.time_base), stream.start_time or 0


@dataclass
class _PacketIndex:
    """A stream's frames in presentation order, from its packets (no decoding): frame ``i`` has timestamp
    ``pts[i]`` and decode timestamp ``dts[i]`` (its pts where the container gives none); ``keyframes`` are
    the frame indices of the keyframes, ascending. ``total`` is the frame count the container lists (the
    packets when it lists none): a truncated file has fewer packets."""

    pts: np.ndarray
    dts: np.ndarray
    keyframes: np.ndarray
    total: int

    def require(self, indices: np.ndarray) -> None:
        """Refuse frames the container lists but the file does not hold (never a shorter sample)."""
        if len(indices) and indices[-1] >= len(self.pts):
            raise RuntimeError(
                f"the file ends after {len(self.pts)} of the {self.total} frames its container lists "
                f"(truncated?), but frame {int(indices[-1])} was requested"
            )

    @functools.cached_property
    def first_dts(self) -> int:
        """The stream's first decode timestamp: where a seek that lands late starts over."""
        return int(self.dts.min())

    def keyframe_before(self, indices: np.ndarray) -> np.ndarray:
        """For each frame index, the last keyframe at or before it (0, the stream's start, if none is)."""
        pos = np.searchsorted(self.keyframes, indices, side="right") - 1
        return np.where(pos >= 0, self.keyframes[np.maximum(pos, 0)], 0)


def _packet_index(container, stream) -> _PacketIndex:
    """One pass over the packets (a 10-min 720p file: about 0.3 s). Frame-accurate like decord's and
    torchcodec's exact index, as long as every packet carries a distinct timestamp; else it refuses."""
    pts, dts, key = [], [], []
    for packet in container.demux(stream):
        if packet.size > 0:
            if packet.pts is None:
                raise RuntimeError(
                    "a packet has no timestamp, so frames cannot be located: use backend decord"
                )
            pts.append(packet.pts)
            dts.append(_decode_ts(packet))
            key.append(packet.is_keyframe)
    if not pts:
        raise RuntimeError("video has zero frames")
    pts = np.asarray(pts, dtype=np.int64)
    order = np.argsort(pts, kind="stable")
    sorted_pts = pts[order]
    if np.any(np.diff(sorted_pts) == 0):
        raise RuntimeError("two packets share a timestamp, so frames cannot be located: use backend decord")
    keyframes = np.flatnonzero(np.asarray(key, dtype=bool)[order])
    total = max(stream.frames or 0, len(sorted_pts))
    return _PacketIndex(sorted_pts, np.asarray(dts, dtype=np.int64)[order], keyframes, total)


def _decode_ts(packet) -> int:
    return packet.dts if packet.dts is not None else packet.pts


def _packets_from(container, stream, pts: int, dts: int, start: int) -> Iterator:
    """The stream's packets (size > 0) from a keyframe at or before the keyframe with timestamps ``pts``,
    ``dts``. Demuxers index by presentation time (mp4, mkv) or by decode time (avi), so the seek goes by
    ``pts``, and where it lands after that keyframe (a later decode timestamp), by ``dts``, and last from
    ``start``, the stream's first decode timestamp: more decoding, never a missed frame."""
    for target in dict.fromkeys((pts, dts, start)):
        container.seek(target, stream=stream, backward=True, any_frame=False)
        packets = (p for p in container.demux(stream) if p.size > 0)
        first = next(packets, None)
        if first is None:
            return iter(())
        if _decode_ts(first) <= dts:
            break
    return itertools.chain([first], packets)


def _keep_frames(
    decoded, slot: dict[int, int], frames: _Frames, times: np.ndarray, first_pts, seconds
) -> None:
    """Store each decoded PyAV frame whose pts is in ``slot`` (pts -> position in the clip) with its time."""
    for frame in decoded:
        at = slot.get(frame.pts)
        if at is not None and not frames.filled[at]:
            frames.put(at, frame.to_ndarray(format="rgb24")[None])
            times[at] = (frame.pts - first_pts) * seconds


def _use_threads(stream, count: int) -> None:
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = count


# FFmpeg decoders that read ``skip_frame`` for each frame, so it can change from packet to packet (libdav1d,
# for one, reads it once when it opens and would then drop sampled frames too).
SKIPS_PER_PACKET = frozenset({"h264", "hevc", "mpeg4", "vp9"})


def pyav_runs(indices: np.ndarray, key_before: np.ndarray) -> list[range]:
    """Split the sampled positions into runs that the PyAV reader decodes each from one keyframe: a run ends
    where the next sampled frame's keyframe (``key_before[k]``, the one before ``indices[k]``) lies beyond
    the run's last frame, so the stretch in between is skipped by a seek."""
    ends = np.flatnonzero(key_before[1:] > indices[:-1]) + 1
    bounds = [0, *ends.tolist(), len(indices)]
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


# At most this many decoders per clip: each holds its own file and decoder (14-30 MiB more peak RSS per
# sample at 720p-1080p, docs/video.md) and its resizes run on torch's threads; measured on 2 cores only.
MAX_DECODERS = 8


@dataclass
class _PyavPlan:
    """What every decoding thread of one :func:`_read_pyav` call shares: the sampled frames, their
    keyframes and the clip being filled."""

    path: str
    index: _PacketIndex
    indices: np.ndarray
    key_before: np.ndarray  # the keyframe before each sampled frame (``index.keyframe_before``)
    frames: _Frames
    times: np.ndarray
    first_pts: int
    seconds: float

    def decode(self, runs: Iterator[range], ffmpeg_threads: int) -> None:
        """Decode runs from ``runs`` on a container of its own (``runs`` is shared between threads: each
        takes the next one)."""
        import av

        with av.open(self.path) as container:
            self.decode_on(container, runs, ffmpeg_threads)

    def decode_on(self, container, runs: Iterator[range], ffmpeg_threads: int) -> None:
        stream = container.streams.video[0]
        _use_threads(stream, ffmpeg_threads)
        skips = stream.codec_context.name in SKIPS_PER_PACKET
        for run in runs:
            self._decode_run(container, stream, run, skips)

    def _decode_run(self, container, stream, run: range, skips: bool) -> None:
        """Decode from the run's keyframe until every frame it samples is out. Only the run's own frames
        are kept: a seek can land on an earlier keyframe (an mkv without a cue for every keyframe), and a
        decoder may put out an open GOP's leading frames without their references; such frames belong to
        an earlier run, which another thread may be decoding."""
        index, context = self.index, stream.codec_context
        slot = {int(index.pts[self.indices[k]]): k for k in run}
        pending = set(slot)  # packets come in decode order
        key = self.key_before[run[0]]
        packets = _packets_from(container, stream, int(index.pts[key]), int(index.dts[key]), index.first_dts)

        def keep(decoded) -> None:
            _keep_frames(decoded, slot, self.frames, self.times, self.first_pts, self.seconds)

        for packet in packets:
            if skips:  # per packet: FFmpeg's frame threads take the setting with each packet
                context.skip_frame = "DEFAULT" if packet.pts in slot else "NONREF"
            keep(stream.decode(packet))
            pending.discard(packet.pts)
            if not pending:
                break
        keep(stream.decode(None))  # the frames the decoder still holds; the next seek resets it


def _read_pyav(path: str, pick: Picker, size: Size | None) -> VideoClip:
    """Decode each run of sampled frames (:func:`pyav_runs`) from the keyframe before its first one, and
    skip the rest. Within a run, frames that no other frame references (``skip_frame="NONREF"``) are not
    decoded unless sampled (:data:`SKIPS_PER_PACKET` codecs). The pixels equal a full sequential decode's
    (tested on H.264 in mp4 and mkv, HEVC, VP9 in webm, MPEG-4 Part 2 with B-frames in avi and AV1 in mkv).

    Threads follow torch's count (1 in a DataLoader worker, where the workers already fill the cores; the
    cores in a process of its own, such as chat or evaluation): with several runs, up to that many threads
    (:data:`MAX_DECODERS`) each decode whole runs on a decoder of their own (PyAV releases the GIL while
    decoding): on 2 cores this halves the wait, where FFmpeg's frame threads cut it by 1.2-1.3x
    (docs/video.md). Each decoder gets ``threads // decoders`` FFmpeg threads: all of them for one run."""
    import av

    with av.open(path) as container:
        stream, src_fps, seconds, first_pts = _stream_info(container, path)
        index = _packet_index(container, stream)
        indices = pick(index.total, src_fps)
        index.require(indices)
        key_before = index.keyframe_before(indices)
        frames = _Frames(len(indices), size)
        plan = _PyavPlan(path, index, indices, key_before, frames, np.zeros(len(indices)), first_pts, seconds)
        runs = pyav_runs(indices, key_before)
        threads = torch.get_num_threads()
        decoders = min(threads, len(runs), MAX_DECODERS)
        if decoders == 1:  # a DataLoader worker: the container that read the index decodes too
            plan.decode_on(container, iter(runs), threads)
        else:
            _decode_in_threads(plan, runs, decoders, threads // decoders)
    return _clip(frames, indices, plan.times, src_fps, index.total, "pyav")


def _decode_in_threads(plan: _PyavPlan, runs: list[range], decoders: int, ffmpeg_threads: int) -> None:
    """``decoders`` threads take runs in order from one queue. After the first failure (in time), or an
    interrupt of the calling thread, no further run is handed out; that first error is raised."""
    queue, lock, failed = iter(runs), threading.Lock(), threading.Event()
    errors: list[BaseException] = []

    def next_runs() -> Iterator[range]:
        while not failed.is_set():
            with lock:
                run = next(queue, None)
            if run is None:
                return
            yield run

    def work() -> None:
        try:
            plan.decode(next_runs(), ffmpeg_threads)
        except BaseException as e:
            with lock:
                errors.append(e)
            failed.set()

    workers = [threading.Thread(target=work, name=f"pyav-{k}") for k in range(decoders)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    except BaseException:  # KeyboardInterrupt while waiting: stop handing out runs, then let them finish
        failed.set()
        raise
    if errors:
        raise errors[0]


def nearest_keyframes(indices: np.ndarray, keyframes: np.ndarray) -> np.ndarray:
    """For each sampled frame index, the nearest keyframe index (the earlier one on a tie)."""
    pos = np.searchsorted(keyframes, indices)
    before = keyframes[np.clip(pos - 1, 0, len(keyframes) - 1)]
    after = keyframes[np.clip(pos, 0, len(keyframes) - 1)]
    return np.where(np.abs(after - indices) < np.abs(indices - before), after, before)


def _read_pyav_keyframes(path: str, pick: Picker, size: Size | None) -> VideoClip:
    """Decode only the keyframe nearest to each sampled frame: one pass over the packets finds the
    keyframes (no decoding), a second feeds the decoder only the chosen keyframes' packets. Refuses (rather
    than returning fewer frames) a sampling so dense that two sampled frames share a nearest keyframe."""
    import av

    with av.open(path) as container:
        stream, src_fps, seconds, first_pts = _stream_info(container, path)
        index = _packet_index(container, stream)
    if not len(index.keyframes):
        raise RuntimeError("the container marks no keyframes")
    indices = pick(index.total, src_fps)
    index.require(indices)
    chosen = nearest_keyframes(indices, index.keyframes)
    if len(np.unique(chosen)) != len(chosen):
        shared = int(indices[np.flatnonzero(np.diff(chosen) == 0)[0]])
        interval = index.total / len(index.keyframes) / src_fps
        raise VideoError(
            path,
            f"backend {KEYFRAME_BACKEND}: {len(indices)} sampled frames but fewer distinct nearest keyframes "
            f"(frame {shared} at {shared / src_fps:.2f}s shares its keyframe with the next sampled frame; "
            f"a keyframe every {interval:.2f}s on average): sample more sparsely or use an exact backend",
        )
    wanted = dict(zip(index.pts[chosen].tolist(), range(len(chosen))))
    frames = _Frames(len(chosen), size)
    times = np.zeros(len(chosen))
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"

        def keep(decoded) -> None:
            _keep_frames(decoded, wanted, frames, times, first_pts, seconds)

        remaining = len(wanted)
        for packet in container.demux(stream):
            if packet.pts in wanted:
                keep(stream.decode(packet))
                remaining -= 1
                if remaining == 0:
                    break
        keep(stream.decode(None))  # frames the decoder still holds (reordering delay)
    if len(missing := frames.missing()):
        raise RuntimeError(f"keyframes {chosen[missing][:5].tolist()} were not decoded")
    return _clip(frames, chosen, times, src_fps, index.total, KEYFRAME_BACKEND)


_READERS = {
    "decord": "_read_decord",
    "pyav": "_read_pyav",
    "torchcodec": "_read_torchcodec",
    KEYFRAME_BACKEND: "_read_pyav_keyframes",
}


def _reader(backend: str):
    return globals()[_READERS[backend]]  # looked up at call time, so tests can replace a reader


def _image_format(path: str) -> str | None:
    """PIL format name if the file is a still image (checked by header only), else None."""
    try:
        with Image.open(path, formats=_PIL_STILL_FORMATS) as img:
            return img.format
    except Exception:
        return None


def _read_image(path: str, size: Size | None) -> VideoClip:
    try:
        with Image.open(path) as img:  # GIF/WebP animations: PIL opens the first frame
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as e:
        raise VideoError(path, f"cannot read image: {e}") from e
    return VideoClip(
        resize_frames(rgb[None].copy(), size), np.zeros(1, dtype=np.int64), 0.0, 0.0, np.zeros(1)
    )


# The exact backends ``auto`` tries, best first: PyAV took the least CPU at every point measured (it skips
# what the sampled frames do not need), then torchcodec, then decord (docs/video.md).
AUTO_ORDER = ("pyav", "torchcodec", "decord")


def auto_order(available: Sequence[str]) -> list[str]:
    """The exact backends ``auto`` tries, best first (:data:`AUTO_ORDER`), among those that run here;
    "pyav-keyframes" is never in the list (it returns other frames: opt-in only)."""
    return [b for b in AUTO_ORDER if b in available]


def load_video(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    backend: str = "auto",
    min_frames: int | None = None,
    size: Size | None = None,
) -> VideoClip:
    """Decode the frames chosen by :func:`sample_indices` (see there for the sampling rules).

    ``size=(height, width)`` (the processor's ``frame_size``) resizes each frame by :func:`resize_frames`
    as soon as it is decoded; None keeps the full-resolution frames.
    Images (by extension or content) are one-frame clips: indices ``[0]``, fps/duration 0, start/end ignored.
    ``backend``: one of :data:`BACKENDS`; "auto" tries the exact backends in :func:`auto_order`'s order,
    falling back to the next when one cannot open or decode it. "pyav-keyframes" (never chosen
    by auto) returns the keyframe nearest to each sampled frame.
    Every failure raises :class:`VideoError` naming the file and the reason.
    """
    path = os.fspath(path)
    if backend not in BACKENDS:
        raise VideoError(path, f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    try:
        check_sampling_args(num_frames, fps, min_frames, max_frames, start, end)
        size = _check_size(size)
    except ValueError as e:
        raise VideoError(path, str(e)) from None
    if not os.path.exists(path):
        raise VideoError(path, "no such file")
    if os.path.isdir(path):
        raise VideoError(path, "is a directory, not a file")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "empty file")
    if os.path.splitext(path)[1].lower() in IMAGE_EXTS or _image_format(path) is not None:
        return _read_image(path, size)

    def pick(total: int, src_fps: float) -> np.ndarray:
        try:
            return sample_indices(total, src_fps, num_frames, fps, max_frames, start, end, min_frames)
        except ValueError as e:
            raise VideoError(path, str(e)) from None

    if backend != "auto":
        if (reason := backend_unavailable(backend)) is not None:
            raise VideoError(path, f"backend {backend}: {reason}")
        try:
            return _reader(backend)(path, pick, size)
        except VideoError:
            raise
        except Exception as e:
            raise VideoError(path, f"cannot decode with {backend}: {e}") from e

    order = auto_order(available_backends())
    if not order:
        raise VideoError(path, f"no video backend runs here: {backend_unavailable('pyav')}")
    errors: list[str] = []
    for name in order:
        try:
            clip = _reader(name)(path, pick, size)
        except VideoError:
            raise
        except Exception as e:
            errors.append(f"{name}: {e}")
            continue
        if errors and path not in _fallback_logged:
            _fallback_logged.add(path)
            logger.info("%s failed on %s (%s); decoded with %s", order[0], path, errors[0], name)
        return clip
    raise VideoError(path, f"unreadable video ({'; '.join(errors)})")


# What a caller may hand over as one video: a video/image file, decoded (T, H, W, 3) uint8 frames, or PIL
# images (one image = a one-frame video; a list = the frames of one video).
VideoLike = str | os.PathLike | np.ndarray | torch.Tensor | Image.Image | Sequence[Image.Image]


def load_frames(
    video: VideoLike, sampling: FrameSampling, size: Size | None = None, backend: str = "auto"
) -> np.ndarray:
    """Any :data:`VideoLike` -> (T, H, W, 3) uint8 frames under ``sampling``, resized to ``size`` =
    (height, width) by :func:`resize_frames` when given (the processor's ``frame_size``; then the processor
    does not resize again).

    Files are decoded by :func:`load_video` (which names the file in every error).
    Already decoded frames have no known frame rate, so only the frame budget applies to them: they are
    subsampled uniformly to ``sampling.budget``, then resized. Anything else raises TypeError saying what is
    accepted.
    """
    if isinstance(video, (str, os.PathLike)):
        return load_video(video, **dataclasses.asdict(sampling), size=size, backend=backend).frames
    size = _check_size(size)
    if isinstance(video, Image.Image):
        video = [video]
    if isinstance(video, (list, tuple)) and video and all(isinstance(im, Image.Image) for im in video):
        first = video[0].size  # the processor takes one array per video, so frames must share a size
        frames = np.stack([np.asarray(im.convert("RGB").resize(first)) for im in video])
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
    return resize_frames(frames, size)


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 8.0,
    crf: int | None = None,
    gop: int | None = None,
) -> None:
    """Write (T, H, W, 3) uint8 RGB frames as an mp4 (H.264/yuv420p, or MPEG-4 Part 2 without libx264).

    Used by tests and demos to make videos that both decord and PyAV can read. yuv420p needs even H and W.
    ``crf`` sets libx264's quality (0: lossless planes; the chroma is still subsampled by yuv420p).
    ``gop``: a keyframe exactly every ``gop`` frames (frames 0, gop, 2 gop, ...; no scene-cut keyframes);
    None keeps the encoder's default (libx264: at most every 250 frames, plus scene cuts).
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
    if gop is not None and (isinstance(gop, bool) or not isinstance(gop, int) or gop < 1):
        raise ValueError(f"gop must be a positive int (frames between keyframes), got {gop!r}")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        options = {"crf": str(crf)} if crf is not None and codec == "libx264" else {}
        if gop is not None:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
            else:
                options["sc_threshold"] = "1000000000"  # mpeg4: no scene-change keyframes
        if options:
            stream.options = options
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
