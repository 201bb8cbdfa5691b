"""Tests for the reader's side of issue 26: frames resized at decode time by the processor's rule, the
memory that saves, keyframe-only decoding, ``auto``'s choice and torchcodec's availability and errors."""

from __future__ import annotations

import sys
import tracemalloc
import types
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from crosslmm.data import video as video_mod
from crosslmm.data.sampling import FrameSampling
from crosslmm.data.video import (
    TORCHCODEC_INSTALL,
    VideoError,
    auto_order,
    available_backends,
    backend_unavailable,
    load_frames,
    load_video,
    nearest_keyframes,
    resize_frames,
    write_video,
)

N, FPS, H, W, GOP = 30, 10.0, 48, 64, 5


def make_frames(n: int = N, h: int = H, w: int = W) -> np.ndarray:
    """Frame t: background brightness 4 + 8t (identifies it), a bright square moving right, vertical
    stripes (detail a resize must handle)."""
    frames = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        frames[t] = 4 + 8 * t
        frames[t, h // 2 :, ::4] = 250
        frames[t, h // 2 : h // 2 + 8, 2 * t : 2 * t + 8] = 255
    return frames


def frame_ids(frames: np.ndarray) -> np.ndarray:
    """Source frame numbers from the background brightness of the top rows."""
    top = frames[:, : frames.shape[1] // 3].reshape(len(frames), -1).mean(1)
    return np.rint((top - 4) / 8).astype(np.int64)


@pytest.fixture(scope="module")
def gop_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 frames at 10 fps with a keyframe exactly every 5 frames (0, 5, ..., 25)."""
    path = tmp_path_factory.mktemp("reader") / "gop5.mp4"
    write_video(path, make_frames(), fps=FPS, gop=GOP)
    return path


@pytest.fixture(scope="module")
def processor(tiny_dir):
    from crosslmm.inference import load_processor

    return load_processor(tiny_dir)


@pytest.fixture
def fresh_backends():
    """Forget the cached availability before and after a test that fakes a module."""
    backend_unavailable.cache_clear()
    yield
    backend_unavailable.cache_clear()


def keyframe_positions(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size > 0]
    pts = sorted(p.pts for p in packets)
    return sorted(pts.index(p.pts) for p in packets if p.is_keyframe)


# ---------------------------------------------------------------- the resize rule


@pytest.mark.parametrize("shape", [(3, 50, 70), (2, 10, 16), (2, 72, 128), (1, 32, 32)])
def test_resize_frames_is_the_processors_resize(processor, shape) -> None:
    """Down, up, non-square and already-sized frames: the reader's rule gives the processor's pixels."""
    frames = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    from_processor = processor.image_processor(
        images=list(torch.from_numpy(frames).permute(0, 3, 1, 2)),
        do_rescale=False,
        do_normalize=False,
        return_tensors="pt",
    )["pixel_values"]
    ours = resize_frames(frames, processor.frame_size)
    assert ours.dtype == np.uint8 and ours.shape == (shape[0], *processor.frame_size, 3)
    np.testing.assert_array_equal(ours, from_processor.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("backend", ["pyav", "decord", "auto"])
def test_reader_side_resize_equals_decode_then_processor(gop_video, processor, backend) -> None:
    """Tolerance 0: resizing in the reader gives exactly today's decode-full-size-then-processor pixels,
    and the processor passes such frames through unchanged (no second resize)."""
    size = processor.frame_size
    assert size != (H, W)
    today = processor.preprocess_frames(load_video(gop_video, num_frames=6, backend=backend).frames)
    clip = load_video(gop_video, num_frames=6, backend=backend, size=size)
    assert clip.frames.shape == (6, *size, 3)
    np.testing.assert_array_equal(torch.from_numpy(clip.frames).permute(0, 3, 1, 2), today)
    np.testing.assert_array_equal(processor.preprocess_frames(clip.frames), today)
    # full-size arrays from a user still work, and give the same pixels
    full = load_video(gop_video, num_frames=6, backend=backend).frames
    np.testing.assert_array_equal(load_frames(full, FrameSampling(num_frames=6), size=size), clip.frames)


def test_processor_does_not_resize_frames_at_its_size(processor, monkeypatch) -> None:
    frames = np.random.default_rng(1).integers(0, 256, (2, *processor.frame_size, 3), dtype=np.uint8)

    class MustNotRun:
        size = processor.image_processor.size

        def __call__(self, *args, **kwargs):
            raise AssertionError("the image processor ran on frames already at frame_size")

    monkeypatch.setattr(processor, "image_processor", MustNotRun())
    out = processor.preprocess_frames(frames)
    np.testing.assert_array_equal(out, torch.from_numpy(frames).permute(0, 3, 1, 2))


def test_apply_chat_template_decodes_at_frame_size(gop_video, processor, monkeypatch) -> None:
    seen = []
    real = video_mod.load_video

    def spy(*args, **kwargs):
        clip = real(*args, **kwargs)
        seen.append(clip.frames.shape)
        return clip

    monkeypatch.setattr(video_mod, "load_video", spy)
    content = [{"type": "video", "path": str(gop_video)}, {"type": "text", "text": "Hi?"}]
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=True, return_dict=True, num_frames=4
    )
    assert seen == [(4, *processor.frame_size, 3)]
    assert tuple(inputs["pixel_values_videos"].shape) == (1, 4, 3, *processor.frame_size)


def test_dataset_decodes_at_frame_size(gop_video, processor, load_video_calls) -> None:
    from crosslmm.data.dataset import VideoChatDataset
    from crosslmm.data.records import Record

    messages = (
        {"role": "user", "content": "<video>\nWhat is it?"},
        {"role": "assistant", "content": "A test."},
    )
    record = Record(source="mem", index=0, id="r0", media=str(gop_video), is_image=False, messages=messages)
    sample = VideoChatDataset([record], processor, 4096, FrameSampling(num_frames=4))[0]
    assert _sizes(load_video_calls) == [processor.frame_size]
    assert tuple(sample["frames"].shape) == (4, 3, *processor.frame_size)


@pytest.mark.parametrize("size", [(0, 8), (8,), (8.0, 8), "8x8", (True, 8)])
def test_bad_size_names_the_file(gop_video, size) -> None:
    with pytest.raises(VideoError, match=r"gop5\.mp4: size must be \(height, width\)"):
        load_video(gop_video, num_frames=2, size=size)


def test_image_resized_too(tmp_path: Path) -> None:
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    clip = load_video(tmp_path / "img.png", num_frames=4, size=(8, 12))
    np.testing.assert_array_equal(clip.frames, resize_frames(rgb[None], (8, 12)))
    assert clip.times.tolist() == [0.0]


# ---------------------------------------------------------------- memory


def _peak_traced(fn) -> int:
    """Peak bytes of numpy buffers (numpy reports its allocations to tracemalloc) while ``fn`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# Peak RSS growth of a fresh process decoding 24 frames (after its libraries are loaded); frames held in
# FFmpeg's or decord's own buffers are invisible to tracemalloc but not to RSS.
_RSS_GROWTH = """
import sys
from crosslmm.data.video import load_video
path, backend, side = sys.argv[1], sys.argv[2], int(sys.argv[3])
size = (side, side) if side else None
load_video(path, num_frames=2, backend=backend, size=(8, 8))  # libraries and first-use buffers
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # peak RSS := current RSS (the imports' peak, or pages reclaimed since, would count otherwise)
before = status("VmRSS:")
clip = load_video(path, num_frames=24, backend=backend, size=size)
print(status("VmHWM:") - before)
"""


@pytest.fixture(scope="module")
def big_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.mp4"
    write_video(path, make_frames(24, 480, 640), fps=FPS)
    return path


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads peak RSS from /proc (Linux)")
@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_peak_rss_tracks_resized_frames(big_video: Path, backend: str) -> None:
    """24 frames of 480x640 (22 MB decoded): resized to 16x16 at decode time, the process grows by a
    fraction of that (one full-size frame at a time, the decoder's own buffers), not by the clip."""
    import subprocess

    def growth(side: int) -> int:
        run = subprocess.run(
            [sys.executable, "-c", _RSS_GROWTH, str(big_video), backend, str(side)],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(run.stdout.strip().splitlines()[-1])

    clip_bytes = 24 * 480 * 640 * 3
    full, small = growth(0), growth(16)
    assert full >= clip_bytes, (full, clip_bytes)
    assert small < clip_bytes / 2, (small, clip_bytes)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_clip_is_filled_in_place(tmp_path: Path, backend: str) -> None:
    """The returned array is the only copy of the clip the reader builds (no list of frames then a stack);
    resized, the frames are the ones sampled."""
    path = tmp_path / "clip.mp4"
    write_video(path, make_frames(24, 96, 128), fps=FPS)
    clip = load_video(path, num_frames=24, backend=backend, size=(16, 16))
    assert clip.frames.shape == (24, 16, 16, 3)
    np.testing.assert_array_equal(frame_ids(clip.frames), np.arange(24))
    full_frame = 96 * 128 * 3
    peak = _peak_traced(lambda: load_video(path, num_frames=24, backend=backend))
    assert peak < 27 * full_frame, (peak, 24 * full_frame)


# ---------------------------------------------------------------- keyframes


def test_write_video_gop_places_keyframes(tmp_path: Path, gop_video: Path, monkeypatch) -> None:
    assert keyframe_positions(gop_video) == [0, 5, 10, 15, 20, 25]
    cut = make_frames(20)
    cut[12:] = np.random.default_rng(0).integers(0, 256, cut[12:].shape, dtype=np.uint8)  # a scene cut
    write_video(tmp_path / "cut.mp4", cut, fps=FPS, gop=GOP)
    assert keyframe_positions(tmp_path / "cut.mp4") == [0, 5, 10, 15]  # no extra keyframe at the cut
    monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"libx264"})
    path = tmp_path / "mpeg4.mp4"
    write_video(path, make_frames(), fps=FPS, gop=7)
    assert keyframe_positions(path) == [0, 7, 14, 21, 28]
    with pytest.raises(ValueError, match="gop must be a positive int"):
        write_video(path, make_frames(4), gop=0)


def test_nearest_keyframes_prefers_earlier_on_ties() -> None:
    keys = np.array([0, 4, 10, 15])
    sampled = np.array([0, 1, 2, 3, 6, 7, 8, 14, 99])  # 2 and 7 are halfway between two keyframes
    np.testing.assert_array_equal(nearest_keyframes(sampled, keys), [0, 0, 0, 4, 4, 4, 10, 15, 15])


def test_keyframes_return_nearest_keyframes_with_real_times(gop_video: Path) -> None:
    # sampled frames 3, 11, 18, 26 -> nearest keyframes 5, 10, 20, 25 (at 0.5, 1.0, 2.0, 2.5 s)
    clip = load_video(gop_video, num_frames=4, backend="pyav-keyframes")
    assert clip.backend == "pyav-keyframes"
    np.testing.assert_array_equal(clip.indices, [5, 10, 20, 25])
    np.testing.assert_array_equal(frame_ids(clip.frames), [5, 10, 20, 25])  # the pixels are those frames
    np.testing.assert_allclose(clip.times, [0.5, 1.0, 2.0, 2.5])
    # sampling on the keyframes themselves: the same frames as an exact backend
    exact = load_video(gop_video, fps=1.0, backend="pyav", size=(24, 32))
    keys = load_video(gop_video, fps=1.0, backend="pyav-keyframes", size=(24, 32))
    np.testing.assert_array_equal(keys.indices, [0, 10, 20])
    np.testing.assert_array_equal(keys.indices, exact.indices)
    np.testing.assert_array_equal(keys.frames, exact.frames)
    np.testing.assert_allclose(keys.times, exact.times)


def test_keyframes_refuse_sampling_denser_than_keyframes(gop_video: Path) -> None:
    """8 samples of 6 keyframes would be fewer frames than asked: an error naming the file, not a shorter clip."""
    with pytest.raises(VideoError, match=r"gop5\.mp4: backend pyav-keyframes: 8 sampled frames but fewer"):
        load_video(gop_video, num_frames=8, backend="pyav-keyframes")


def test_keyframes_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match=r"corrupt\.mp4: cannot decode with pyav-keyframes"):
        load_video(path, num_frames=2, backend="pyav-keyframes")


def decode_every_frame(path: Path) -> np.ndarray:
    """Every frame of ``path`` from a plain PyAV decode: no seeking, no skipped frames."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def sequential_frames(gop_video: Path) -> np.ndarray:
    return decode_every_frame(gop_video)


@pytest.mark.parametrize("num_frames", [2, 4, 7, 12, N])
def test_pyav_equals_a_sequential_decode(
    gop_video: Path, sequential_frames: np.ndarray, num_frames: int
) -> None:
    """The PyAV reader seeks between runs of sampled frames and skips unreferenced frames that were not
    sampled; its pixels must still be a full decode's. libx264 puts B-frames (decoded after the frame that
    follows them) in ``gop_video``: the sparse samplings seek, the dense ones sample B-frames."""
    clip = load_video(gop_video, num_frames=num_frames, backend="pyav")
    assert len(clip.indices) == num_frames
    np.testing.assert_array_equal(clip.frames, sequential_frames[clip.indices])
    np.testing.assert_array_equal(frame_ids(clip.frames), clip.indices)


# (file, encoder, options): containers that index by presentation time (mp4, mkv, webm) and by decode time
# (avi), B-frames and open GOPs (avi's MPEG-4 B-frames before their keyframe), a decoder that reads
# skip_frame only when it opens (libdav1d for AV1).
FORMATS = [
    ("h264.mp4", "libx264", {"x264-params": "keyint=6:min-keyint=6:scenecut=0:bframes=3"}),
    ("h264-open-gop.mp4", "libx264", {"x264-params": "keyint=6:open-gop=1:bframes=3"}),
    ("h264.mkv", "libx264", {"x264-params": "keyint=6:min-keyint=6:scenecut=0"}),
    ("hevc.mp4", "libx265", {"x265-params": "keyint=6:bframes=4:log-level=none"}),
    ("vp9.webm", "libvpx-vp9", {"g": "6"}),
    ("mpeg4.avi", "mpeg4", {"g": "6", "bf": "2"}),
    ("av1.mkv", "libaom-av1", {"g": "6", "cpu-used": "8"}),
]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(("name", "encoder", "options"), FORMATS, ids=[f[0] for f in FORMATS])
def test_pyav_equals_a_sequential_decode_across_formats(
    tmp_path: Path, monkeypatch, name, encoder, options, threads
) -> None:
    """On one thread (a DataLoader worker) and on three, each decoding runs of its own."""
    import av

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)

    if encoder not in av.codecs_available:
        pytest.skip(f"PyAV's FFmpeg has no {encoder} encoder")
    path = tmp_path / name
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=int(FPS))
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.options = options
        for frame in make_frames(N, 64, 96):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    every = decode_every_frame(path)
    runs, stored = [], []
    decode_run, put = video_mod._PyavPlan._decode_run, video_mod._Frames.put

    def count_run(self, container, stream, run, skips) -> None:
        runs.append(run)
        decode_run(self, container, stream, run, skips)

    def count_put(self, at, frames) -> None:
        stored.extend(range(at, at + len(frames)))
        put(self, at, frames)

    monkeypatch.setattr(video_mod._PyavPlan, "_decode_run", count_run)
    monkeypatch.setattr(video_mod._Frames, "put", count_put)
    with av.open(str(path)) as container:
        index = video_mod._packet_index(container, container.streams.video[0])
    for num_frames in (3, 7, 20, N):
        runs.clear()
        stored.clear()
        clip = load_video(path, num_frames=num_frames, backend="pyav")
        np.testing.assert_array_equal(
            clip.frames, every[clip.indices], err_msg=f"{name}, {num_frames} frames"
        )
        # each run decoded once, each frame stored once
        assert sorted(runs, key=lambda r: r.start) == video_mod.pyav_runs(
            clip.indices, index.keyframe_before(clip.indices)
        )
        assert sorted(stored) == list(range(num_frames))


def test_seeks_land_on_the_keyframe_asked_for(gop_video: Path) -> None:
    """In an mp4 (indexed by presentation time) every seek lands exactly on the run's keyframe: not on an
    earlier one, which would decode a whole extra keyframe interval per run (seeking by decode time did)."""
    import av

    with av.open(str(gop_video)) as container:
        stream = container.streams.video[0]
        index = video_mod._packet_index(container, stream)
        assert index.keyframes.tolist() == list(range(0, N, GOP))
        for key in index.keyframes[1:]:
            pts, dts = int(index.pts[key]), int(index.dts[key])
            assert dts < pts  # B-frames: the keyframe is decoded before it is shown
            first = next(video_mod._packets_from(container, stream, pts, dts, int(index.dts.min())))
            assert (first.pts, first.is_keyframe) == (pts, True)


def test_pyav_runs_split_where_the_next_keyframe_is_past_the_run() -> None:
    """A run goes on while the next sampled frame's keyframe is at or before the run's last frame."""
    runs = video_mod.pyav_runs(np.array([0, 1, 2, 10, 11, 20]), np.array([0, 0, 0, 10, 10, 20]))
    assert runs == [range(0, 3), range(3, 5), range(5, 6)]
    assert video_mod.pyav_runs(np.array([6, 7]), np.array([5, 5])) == [range(0, 2)]
    assert video_mod.pyav_runs(np.array([4, 6]), np.array([0, 5])) == [range(0, 1), range(1, 2)]
    assert video_mod.pyav_runs(np.array([4, 6]), np.array([0, 0])) == [range(0, 2)]


@pytest.mark.parametrize(
    ("threads", "num_frames", "decoders", "ffmpeg_threads"),
    [(1, 6, 1, 1), (2, 6, 2, 1), (3, 6, 3, 1), (4, 2, 2, 2), (4, 3, 1, 4), (16, 6, 3, 5)],
    ids=["worker", "3-runs-per-thread", "2-runs-per-thread", "2-runs", "1-run", "capped"],
)
def test_pyav_threads_follow_torch(
    gop_video: Path, sequential_frames, monkeypatch, threads, num_frames, decoders, ffmpeg_threads
) -> None:
    """torch's thread count (1 in a DataLoader worker) decides: with several runs, that many threads (at
    most MAX_DECODERS, here 3) each decode whole runs on a decoder of their own, with threads // decoders
    FFmpeg threads each; the pixels are a sequential decode's either way."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(video_mod, "MAX_DECODERS", 3)
    seen: list[tuple[str, int]] = []
    use_threads = video_mod._use_threads

    def record(stream, count: int) -> None:
        import threading

        seen.append((threading.current_thread().name, count))
        use_threads(stream, count)

    monkeypatch.setattr(video_mod, "_use_threads", record)
    sampling = {6: {"num_frames": 6}, 2: {"num_frames": 2}, 3: {"num_frames": 3, "start": 0.0, "end": 0.45}}
    clip = load_video(gop_video, backend="pyav", **sampling[num_frames])
    np.testing.assert_array_equal(clip.frames, sequential_frames[clip.indices])
    assert len(seen) == decoders and len({name for name, _ in seen}) == decoders
    assert {count for _, count in seen} == {ffmpeg_threads}


def test_a_failing_decoding_thread_stops_the_others(gop_video: Path, monkeypatch) -> None:
    """The first error is raised (naming the file) and no run is handed out after it."""
    import threading
    import time

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    done: list[int] = []
    lock = threading.Lock()

    def decode_run(self, container, stream, run, skips) -> None:
        if run[0] == 0:
            raise RuntimeError("bad packet")
        time.sleep(0.2)
        with lock:
            done.append(run[0])

    monkeypatch.setattr(video_mod._PyavPlan, "_decode_run", decode_run)
    with pytest.raises(VideoError, match="gop5.mp4.*bad packet"):
        load_video(gop_video, num_frames=6, backend="pyav")
    assert len(done) <= 1  # of the 5 other runs


def test_a_seek_that_lands_late_goes_back() -> None:
    """A demuxer whose seek lands after the keyframe asked for (an avi, indexed by decode time, asked by
    presentation time) must not make the reader skip frames: it seeks by decode time, then from the
    stream's first timestamp."""

    class Packet:
        def __init__(self, ts: int) -> None:
            self.pts = self.dts = ts
            self.size = 1

    class Container:
        seeks: list[int] = []

        def seek(self, ts, **kwargs) -> None:
            self.seeks.append(ts)
            self.at = -(-ts // 10) * 10  # keyframes every 10: lands on the next one unless ts is one

        def demux(self, stream):
            return (Packet(t) for t in range(self.at, 50, 10))

    container = Container()
    assert [p.pts for p in video_mod._packets_from(container, None, 10, 10, 0)] == [10, 20, 30, 40]
    assert [p.pts for p in video_mod._packets_from(container, None, 25, 20, 0)] == [20, 30, 40]
    assert [p.pts for p in video_mod._packets_from(container, None, 25, 15, 0)] == [0, 10, 20, 30, 40]
    assert container.seeks == [10, 25, 20, 25, 15, 0]


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_exact_backends_record_times(gop_video: Path, backend: str) -> None:
    clip = load_video(gop_video, num_frames=4, backend=backend)
    assert clip.backend == backend
    np.testing.assert_allclose(clip.times, clip.indices / FPS, atol=1e-6)


# ---------------------------------------------------------------- auto


def test_auto_order() -> None:
    everything = ["decord", "pyav", "torchcodec", "pyav-keyframes"]
    assert auto_order(everything) == ["pyav", "torchcodec", "decord"]  # least CPU first (docs/video.md)
    assert auto_order(["decord", "torchcodec"]) == ["torchcodec", "decord"]  # what runs here
    assert "pyav-keyframes" not in auto_order(everything)  # never changes the frames


def test_auto_decodes_the_sampled_frames_and_falls_back(gop_video: Path, monkeypatch) -> None:
    clip = load_video(gop_video, num_frames=4)
    np.testing.assert_array_equal(clip.indices, [3, 11, 18, 26])
    assert clip.backend == auto_order(available_backends())[0]

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(video_mod, f"_read_{clip.backend}", broken)
    again = load_video(gop_video, num_frames=4)
    assert again.backend != clip.backend
    np.testing.assert_array_equal(again.indices, clip.indices)


# ---------------------------------------------------------------- torchcodec


def test_available_backends_are_concrete() -> None:
    names = available_backends()
    assert "auto" not in names and {"pyav", "pyav-keyframes"} <= set(names)
    assert set(names) <= set(video_mod.BACKENDS[1:])


def test_torchcodec_missing_is_a_clear_error(gop_video: Path, monkeypatch, fresh_backends) -> None:
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # import torchcodec -> ImportError
    assert "torchcodec" not in available_backends()
    with pytest.raises(
        VideoError,
        match=r"gop5\.mp4: backend torchcodec: torchcodec does not import .*pip install torchcodec",
    ):
        load_video(gop_video, num_frames=2, backend="torchcodec")
    assert load_video(gop_video, num_frames=2).backend != "torchcodec"  # auto goes on without it


def test_torchcodec_without_ffmpeg_names_what_to_install(
    gop_video: Path, monkeypatch, fresh_backends
) -> None:
    """torchcodec imports but cannot load FFmpeg's libraries (no system FFmpeg, as on this machine)."""
    fake = types.ModuleType("torchcodec")
    utils = types.ModuleType("torchcodec._internally_replaced_utils")

    def load_core_libraries():
        raise RuntimeError("Could not load libtorchcodec. Likely causes: FFmpeg is not installed")

    utils.load_core_libraries = load_core_libraries
    monkeypatch.setitem(sys.modules, "torchcodec", fake)
    monkeypatch.setitem(sys.modules, "torchcodec._internally_replaced_utils", utils)
    assert "torchcodec" not in available_backends()
    with pytest.raises(VideoError) as info:
        load_video(gop_video, num_frames=2, backend="torchcodec")
    message = str(info.value)
    assert message.startswith(f"{gop_video}: backend torchcodec: torchcodec cannot load")
    assert TORCHCODEC_INSTALL in message and "apt install ffmpeg" in message


def test_torchcodec_matches_pyav_where_it_loads(gop_video: Path) -> None:
    if "torchcodec" not in available_backends():
        pytest.skip(f"torchcodec does not run here: {backend_unavailable('torchcodec')}")
    a = load_video(gop_video, num_frames=4, backend="torchcodec", size=(24, 32))
    b = load_video(gop_video, num_frames=4, backend="pyav", size=(24, 32))
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.times, b.times, atol=1e-6)
    assert np.abs(a.frames.astype(np.int16) - b.frames).max() <= 1


# ---------------------------------------------------------------- every caller passes the processor's size


@pytest.fixture
def load_video_calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every load_video call (load_frames goes through it too)."""
    calls = []
    real = video_mod.load_video

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(video_mod, "load_video", spy)
    return calls


def _sizes(calls: list[dict]) -> list:
    return [call.get("size") for call in calls]


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "chat --stream"])
def test_chat_decodes_at_frame_size(tiny_dir, gop_video, processor, load_video_calls, stream, capsys) -> None:
    from crosslmm.cli import main

    args = ["chat", "--model", tiny_dir, "--video", str(gop_video), "--frames", "2", "--max-new-tokens", "1"]
    args += ["--stream", "--speed", "0", "--ask", "1:Hi?"] if stream else ["--question", "Hi?"]
    assert main(args) == 0
    assert _sizes(load_video_calls) == [processor.frame_size]


def test_answer_web_and_explain_decode_at_frame_size(
    tiny_dir, gop_video, processor, load_video_calls, tmp_path
):
    from crosslmm.cli import main
    from crosslmm.inference import answer, load
    from crosslmm.web.app import _load_clip

    model, _ = load(tiny_dir)
    answer(model, processor, gop_video, "Hi?", num_frames=2, max_new_tokens=1)
    clip = _load_clip(str(gop_video), 2, 0.0, processor.frame_size)
    assert clip.frames.shape == (2, *processor.frame_size, 3)
    args = ["explain", "--model", tiny_dir, "--video", str(gop_video), "--question", "Hi?", "--frames", "2"]
    assert main([*args, "--max-new-tokens", "1", "--out", str(tmp_path / "maps")]) == 0
    assert _sizes(load_video_calls) == [processor.frame_size] * 3


def test_training_passes_the_configured_backend_to_the_reader(gop_video, processor, load_video_calls) -> None:
    """``data.video_backend`` reaches every decode of the training dataset; an unknown name is refused when
    the config is validated, naming the key."""
    from crosslmm.data.dataset import VideoChatDataset
    from crosslmm.data.records import Record
    from crosslmm.training.config import DataConfig, TrainConfig

    messages = ({"role": "user", "content": "<video>\nWhat?"}, {"role": "assistant", "content": "A test."})
    record = Record(source="mem", index=0, id="r0", media=str(gop_video), is_image=False, messages=messages)
    VideoChatDataset([record], processor, 4096, FrameSampling(num_frames=2), backend="pyav")[0]
    assert [call.get("backend") for call in load_video_calls] == ["pyav"]
    config = TrainConfig(model="m", output_dir="o", data=DataConfig(mixture="x.yaml", video_backend="ffmpeg"))
    with pytest.raises(ValueError, match="data.video_backend must be one of"):
        config.validate()
