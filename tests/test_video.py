"""Tests for crosslmm.data.video: sampling rules, both decode backends, fallback, images and every error path."""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from crosslmm.data import video as video_mod
from crosslmm.data.sampling import DEFAULT_SAMPLING, FrameSampling, sample_indices
from crosslmm.data.video import VideoClip, VideoError, load_video, write_video

N_FRAMES, SRC_FPS, H, W = 30, 10.0, 48, 64


def make_frames(n: int = N_FRAMES) -> np.ndarray:
    """Frame t: background brightness 4 + 8t (identifies the frame) plus a square moving right."""
    frames = np.empty((n, H, W, 3), np.uint8)
    for t in range(n):
        frames[t] = 4 + 8 * t
        frames[t, 32:40, 2 * t : 2 * t + 8] = 255 if t % 2 else 0
    return frames


def frame_ids(clip: VideoClip) -> np.ndarray:
    """Recover source frame numbers from the background brightness of the top rows."""
    return np.rint((clip.frames[:, :16].reshape(len(clip.frames), -1).mean(1) - 4) / 8).astype(np.int64)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, make_frames(), fps=SRC_FPS)
    return path


# ---------------------------------------------------------------- sample_indices


def test_uniform_centres_exact() -> None:
    # 30 frames in 4 segments of 7.5 frames: centres 3.75, 11.25, 18.75, 26.25.
    np.testing.assert_array_equal(sample_indices(30, 10.0, num_frames=4), [3, 11, 18, 26])
    # window [1s, 2s) = frames 10..19, 4 segments of 2.5 frames.
    np.testing.assert_array_equal(
        sample_indices(30, 10.0, num_frames=4, start=1.0, end=2.0), [11, 13, 16, 18]
    )
    assert sample_indices(30, 10.0, num_frames=4).dtype == np.int64


def test_uniform_fewer_frames_than_requested_returns_all_without_duplicates() -> None:
    np.testing.assert_array_equal(sample_indices(5, 10.0, num_frames=8), np.arange(5))
    np.testing.assert_array_equal(sample_indices(30, 10.0, num_frames=8, start=2.5), np.arange(25, 30))


def test_max_frames_caps_num_frames() -> None:
    np.testing.assert_array_equal(sample_indices(30, 10.0, num_frames=8, max_frames=4), [3, 11, 18, 26])


def test_fps_sampling_and_max_frames() -> None:
    np.testing.assert_array_equal(sample_indices(30, 10.0, fps=2.0), [0, 5, 10, 15, 20, 25])
    np.testing.assert_array_equal(sample_indices(30, 10.0, fps=3.0), [0, 3, 6, 10, 13, 16, 20, 23, 26])
    # 6 samples resampled uniformly down to 4: centres of 4 segments of 1.5 samples -> samples 0, 2, 3, 5.
    np.testing.assert_array_equal(sample_indices(30, 10.0, fps=2.0, max_frames=4), [0, 10, 15, 25])
    np.testing.assert_array_equal(sample_indices(30, 10.0, fps=2.0, max_frames=10), [0, 5, 10, 15, 20, 25])
    np.testing.assert_array_equal(sample_indices(30, 10.0, fps=50.0), np.arange(30))  # never duplicates
    np.testing.assert_array_equal(
        sample_indices(300, 29.97, fps=1.0), [0, 29, 59, 89, 119, 149, 179, 209, 239, 269, 299]
    )


def test_fps_sampling_window() -> None:
    np.testing.assert_array_equal(sample_indices(30, 10.0, fps=2.0, start=0.5, end=2.0), [5, 10, 15])
    np.testing.assert_array_equal(sample_indices(30, 10.0, fps=2.0, start=2.0, end=99.0), [20, 25])


def test_frame_sampling_defaults_and_errors():
    assert (
        FrameSampling.resolve() == DEFAULT_SAMPLING == FrameSampling(fps=1.0, min_frames=64, max_frames=512)
    )
    assert FrameSampling.resolve(max_frames=16) == FrameSampling(num_frames=16, max_frames=16)
    assert FrameSampling.resolve(min_frames=8) == FrameSampling(fps=1.0, min_frames=8, max_frames=512)
    assert FrameSampling.resolve(fps=2.0).budget == 512  # an hour at 2 fps is not 7200 frames
    assert FrameSampling(fps=1.0).budget is None  # uncapped only when built so explicitly
    assert FrameSampling.resolve(fps=1.0, max_frames=8).budget == 8
    for kwargs, message in [
        (dict(num_frames=8, fps=1.0), "exactly one of num_frames or fps"),
        (dict(max_frames=0), "max_frames must be > 0"),
        (dict(num_frames=8, min_frames=4), "min_frames applies to fps sampling only"),
        (dict(fps=1.0, min_frames=8, max_frames=4), "min_frames .8. must be <= max_frames .4."),
    ]:
        with pytest.raises(ValueError, match=message):
            FrameSampling.resolve(**kwargs)


def test_fps_sampling_floor_gives_short_clips_enough_frames():
    """16 s at 10 fps sampled at 1 fps is 16 frames; the stage-2 floor of 64 takes 64 uniform frames instead,
    a floor above the clip's frame count takes all of them, and the cap still subsamples long clips."""
    clip = FrameSampling(fps=1.0, min_frames=64, max_frames=512)
    np.testing.assert_array_equal(clip.indices(160, 10.0), sample_indices(160, 10.0, num_frames=64))
    np.testing.assert_array_equal(clip.indices(40, 10.0), np.arange(40))
    assert len(clip.indices(36000, 10.0)) == 512  # an hour at 1 fps: 3600 frames, capped
    assert len(FrameSampling(fps=1.0, min_frames=8).indices(600, 10.0)) == 60  # the floor only lifts


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({}, "exactly one"),
        ({"num_frames": 4, "fps": 1.0}, "exactly one"),
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": -3}, "num_frames"),
        ({"fps": 0.0}, "fps"),
        ({"fps": -1.0}, "fps"),
        ({"num_frames": 4, "max_frames": 0}, "max_frames"),
        ({"num_frames": 4, "start": 2.0, "end": 1.0}, "must be < end"),
        ({"num_frames": 4, "start": 1.0, "end": 1.0}, "must be < end"),
        ({"num_frames": 4, "start": 3.0}, "beyond the video duration"),
        ({"num_frames": 4, "start": -1.0}, "start"),
        ({"num_frames": 4, "start": 0.91, "end": 0.95}, "contains no frames"),
    ],
)
def test_sample_indices_rejects(kwargs: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        sample_indices(30, 10.0, **kwargs)


def test_sample_indices_zero_frames() -> None:
    with pytest.raises(ValueError, match="zero frames"):
        sample_indices(0, 10.0, num_frames=4)


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_load_video_frames_match_indices(video: Path, backend: str) -> None:
    clip = load_video(video, num_frames=4, backend=backend)
    assert clip.frames.shape == (4, H, W, 3) and clip.frames.dtype == np.uint8
    assert clip.indices.dtype == np.int64
    np.testing.assert_array_equal(clip.indices, [3, 11, 18, 26])
    np.testing.assert_array_equal(frame_ids(clip), clip.indices)
    assert clip.fps == pytest.approx(SRC_FPS) and clip.duration == pytest.approx(N_FRAMES / SRC_FPS)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_load_video_fps_and_window(video: Path, backend: str) -> None:
    clip = load_video(str(video), fps=2.0, max_frames=4, backend=backend)
    np.testing.assert_array_equal(frame_ids(clip), [0, 10, 15, 25])
    clip = load_video(video, fps=2.0, start=0.5, end=2.0, backend=backend)
    np.testing.assert_array_equal(clip.indices, [5, 10, 15])
    np.testing.assert_array_equal(frame_ids(clip), [5, 10, 15])
    clip = load_video(video, num_frames=100, start=2.5, backend=backend)
    np.testing.assert_array_equal(frame_ids(clip), np.arange(25, 30))


def test_backends_agree(video: Path) -> None:
    a = load_video(video, num_frames=N_FRAMES, backend="decord")
    b = load_video(video, num_frames=N_FRAMES, backend="pyav")
    np.testing.assert_array_equal(a.indices, b.indices)
    assert np.abs(a.frames.astype(np.float32) - b.frames).mean() < 1.0
    # and both are close to what was encoded
    assert np.abs(a.frames.astype(np.float32) - make_frames()).mean() < 3.0


def test_fallback_when_pyav_cannot_open(video: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    """auto's first backend failing on a file: the next one decodes the same frames, and the log names the
    file and the first one's reason."""
    path = tmp_path / "copy.mp4"
    shutil.copy(video, path)
    expected = load_video(path, num_frames=5, backend="decord")

    def broken(*args, **kwargs):
        raise RuntimeError("simulated PyAV failure")

    monkeypatch.setattr(av, "open", broken)
    with caplog.at_level(logging.INFO, logger=video_mod.__name__):
        clip = load_video(path, num_frames=5)
    assert clip.backend != "pyav"
    np.testing.assert_array_equal(clip.indices, expected.indices)
    np.testing.assert_array_equal(clip.frames, expected.frames)
    assert "copy.mp4" in caplog.text and "simulated PyAV failure" in caplog.text
    with pytest.raises(VideoError, match="copy.mp4.*simulated PyAV failure"):
        load_video(path, num_frames=5, backend="pyav")


def test_decord_miscounting_frames_fails_loudly(video: Path, monkeypatch) -> None:
    """decord overestimating the frame count makes get_batch fail: an error naming the file, never frames
    from a wrong count; auto (PyAV first) decodes with PyAV's own count."""
    import decord

    real = decord.VideoReader

    class Overcounting(real):
        def __len__(self) -> int:
            return super().__len__() + 20

    monkeypatch.setattr(decord, "VideoReader", Overcounting)
    with pytest.raises(VideoError, match=r"clip\.mp4: cannot decode with decord"):
        load_video(video, num_frames=4, backend="decord")
    clip = load_video(video, num_frames=4)
    np.testing.assert_array_equal(frame_ids(clip), [3, 11, 18, 26])


def test_pyav_counts_frames_when_container_does_not(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"  # Matroska stores no frame count
    write_video(path, make_frames(20), fps=SRC_FPS)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    for backend in ("decord", "pyav"):
        clip = load_video(path, num_frames=4, backend=backend)
        np.testing.assert_array_equal(frame_ids(clip), [2, 7, 12, 17])
        assert clip.duration == pytest.approx(2.0)


def test_mpeg4_fallback_when_libx264_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"libx264"})
    path = tmp_path / "mpeg4.mp4"
    write_video(path, make_frames(24), fps=8.0)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    for backend in ("decord", "pyav"):
        np.testing.assert_array_equal(frame_ids(load_video(path, num_frames=3, backend=backend)), [4, 12, 20])


def test_write_video_rejects_bad_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 33, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 32, 32, 3), np.float32))


# ---------------------------------------------------------------- images


def test_image_is_one_frame_video(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    (tmp_path / "img.bin").write_bytes((tmp_path / "img.png").read_bytes())  # detected by content
    for name in ("img.png", "img.bin"):
        clip = load_video(tmp_path / name, num_frames=8)
        assert clip.frames.shape == (1, 20, 30, 3)
        np.testing.assert_array_equal(clip.frames[0], rgb)
        np.testing.assert_array_equal(clip.indices, [0])
        assert clip.indices.dtype == np.int64 and clip.fps == 0.0 and clip.duration == 0.0


def test_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    clip = load_video(tmp_path / "anim.gif", fps=1.0)
    assert clip.frames.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(clip.frames[0, 0, 0], [255, 0, 0])


# ---------------------------------------------------------------- errors


def test_error_messages_name_the_file(tmp_path: Path, video: Path) -> None:
    cases: list[tuple[Path, dict, str]] = []
    cases.append((tmp_path / "missing.mp4", {"num_frames": 4}, "no such file"))
    (tmp_path / "adir.mp4").mkdir()
    cases.append((tmp_path / "adir.mp4", {"num_frames": 4}, "directory"))
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases.append((tmp_path / "empty.mp4", {"num_frames": 4}, "empty file"))
    (tmp_path / "empty.png").write_bytes(b"")
    cases.append((tmp_path / "empty.png", {"num_frames": 4}, "empty file"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    cases.append((tmp_path / "bad.png", {"num_frames": 4}, "cannot read image"))
    for kwargs, reason in [
        ({}, "exactly one"),
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": -1}, "num_frames"),
        ({"fps": 0.0}, "fps"),
        ({"fps": -2.0}, "fps"),
        ({"num_frames": 4, "max_frames": 0}, "max_frames"),
        ({"fps": 1.0, "max_frames": -1}, "max_frames"),
        ({"num_frames": 4, "start": 2.0, "end": 1.0}, "must be < end"),
        ({"num_frames": 4, "start": 5.0}, "beyond the video duration"),
        (
            {"num_frames": 4, "backend": "opencv"},
            "unknown backend 'opencv'; choose one of auto, decord, pyav",
        ),
    ]:
        cases.append((video, kwargs, reason))
    for path, kwargs, reason in cases:
        with pytest.raises(VideoError) as info:
            load_video(path, **kwargs)
        msg = str(info.value)
        assert path.name in msg and reason in msg, (path, kwargs, msg)
        assert info.value.path == str(path)


def test_window_errors_do_not_fall_back(video: Path, monkeypatch) -> None:
    def must_not_run(*args, **kwargs):
        raise AssertionError("PyAV fallback used for an argument error")

    monkeypatch.setattr(video_mod, "_read_pyav", must_not_run)
    with pytest.raises(VideoError, match="beyond the video duration"):
        load_video(video, num_frames=4, start=10.0)


def test_corrupt_file_reports_both_backends(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match=r"corrupt\.mp4: unreadable video \(pyav: .+; decord: .+\)"):
        load_video(path, num_frames=4)
    for backend in ("decord", "pyav"):
        with pytest.raises(VideoError, match=rf"corrupt\.mp4: cannot decode with {backend}"):
            load_video(path, num_frames=4, backend=backend)


def test_truncated_video_raises_instead_of_blank_frames(tmp_path: Path) -> None:
    """moov first (faststart) then cut mid-data: metadata says 60 frames but later ones are missing."""
    path = tmp_path / "trunc.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for frame in rng.integers(0, 256, (60, H, W, 3), dtype=np.uint8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        VideoError,
        match=r"trunc\.mp4: unreadable video \(pyav: the file ends after \d+ of the 60 frames.+; decord: ",
    ):
        load_video(path, num_frames=8)
    # the frames that survived are still served (by PyAV; decord rejects the file)
    head = load_video(path, num_frames=2, end=1.0)
    np.testing.assert_array_equal(head.indices, [2, 7])
    np.testing.assert_array_equal(head.frames, load_video(path, num_frames=2, end=1.0, backend="pyav").frames)


def test_zero_frame_video(tmp_path: Path) -> None:
    path = tmp_path / "zero.avi"  # avi keeps a video stream header even with no frames
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        container.start_encoding()
    with pytest.raises(VideoError, match=r"zero\.avi: .*zero frames"):
        load_video(path, num_frames=4)


def test_video_error_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(VideoError("/x/y.mp4", "empty file")))
    assert (err.path, err.reason, str(err)) == ("/x/y.mp4", "empty file", "/x/y.mp4: empty file")
    assert isinstance(err, ValueError)
