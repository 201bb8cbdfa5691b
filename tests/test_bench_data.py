"""``crosslmm bench data`` (crosslmm/bench/data): one --quick run checked for its outputs and for measurements
that follow what was decoded (no timing thresholds: verdicts are checked against the measured numbers)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from crosslmm.bench.data import videos
from crosslmm.bench.data.measure import MB, Throughput, frames_mb, reader_resizes
from crosslmm.bench.data.report import DataBenchSpec, _loader, targets
from crosslmm.bench.flops import prefill_flops
from crosslmm.cli import main
from crosslmm.data.video import KEYFRAME_BACKEND


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_data")
    argv = ["bench", "data", "--quick", "--backends", "pyav,auto", "--no-progress"]
    argv += ["--videos", str(root / "videos"), "--out", str(root / "out"), "--mfu", "0.5"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # capsys is function-scoped; one run serves the module
        assert main(argv) == 0
    return root, json.loads((root / "out" / "data.json").read_text()), out.getvalue()


def test_quick_writes_table_json_and_plot(quick):
    root, result, printed = quick
    assert (root / "out" / "data.png").stat().st_size > 0
    assert {"machine", "videos", "decode", "loader", "needed", "targets", "seconds"} <= set(result)
    assert result["machine"]["cores"] >= 1 and f"{result['machine']['cores']} cores" in printed
    sizes = {"full", "resized"} if reader_resizes() else {"full"}
    assert set(result["sizes"]) == sizes
    cells = {(r["backend"], r["frames"], r["size"]) for r in result["decode"]}
    assert cells == {(b, f, s) for b in ("pyav", "auto") for f in (4, 64) for s in sizes}
    for heading in ("Test videos", "One sample", "DataLoader", "What a stage-2 job needs", "Targets"):
        assert heading in printed
    for assumption in ("MFU (assumed)", "GPUs", "text tokens per sample (assumed)", "H100"):
        assert assumption in printed
    assert [r["workers"] for r in result["loader"]] == [1, 2]


def test_peak_rss_follows_the_decoded_frames(quick):
    """At full resolution 64 frames hold 16x the pixels of 4. Each call's peak must hold at least the frames it
    returns (they are alive at return), and the 64-frame peak must exceed the 4-frame peak by most of the
    frames' growth: the decoder's own buffers differ by a few MB between the two samplings (seek vs. dense
    decode), so the growth is not exact; a broken RSS measurement reads flat or zero and fails both."""
    _, result, _ = quick
    for backend in ("pyav", "auto"):
        rows = {r["frames"]: r for r in result["decode"] if (r["backend"], r["size"]) == (backend, "full")}
        assert rows[64]["frames_mb"] == pytest.approx(64 * 240 * 320 * 3 / MB)
        for frames in (4, 64):
            assert rows[frames]["peak_mb"] >= rows[frames]["frames_mb"], (backend, frames, rows)
        grown = rows[64]["peak_mb"] - rows[4]["peak_mb"]
        assert grown >= 0.5 * (rows[64]["frames_mb"] - rows[4]["frames_mb"]), (backend, rows)
        assert rows[64]["worker_peak_mb"] == pytest.approx(rows[64]["baseline_mb"] + rows[64]["peak_mb"])


def test_cpu_seconds_are_the_decoding_process_own(quick):
    """CPU seconds of the call (all its threads): more than nothing, at most the wall time on every core."""
    _, result, printed = quick
    cores = result["machine"]["cores"]
    for r in result["decode"]:
        assert 0 < r["cpu_seconds"] <= r["seconds"] * cores + 0.05, r
    assert "CPU s" in printed


def test_needed_samples_per_second_is_the_flops_formula(quick):
    _, result, _ = quick
    from crosslmm.model.configuration import CrossLMMConfig
    from crosslmm.model.presets import load_config_yaml

    config = CrossLMMConfig(**load_config_yaml("crosslmm-7b-9tok"))
    forward = prefill_flops(config, 512, 256, lm_head_all_positions=True).total
    needed = result["needed"]
    assert needed["frames"] == 512  # the stage-2 recipe's max_frames
    assert needed["assumptions"]["mfu"] == 0.5  # --mfu reached the formula
    assert needed["per_gpu"] == pytest.approx(989e12 * 0.5 / (3 * forward))
    assert needed["job"] == pytest.approx(8 * needed["per_gpu"])


def test_loader_rate_and_targets_follow_the_measurements(quick):
    _, result, _ = quick
    for row in result["loader"]:
        assert row["samples"] == 2 * row["workers"]
        assert row["samples_per_s"] == pytest.approx(row["samples"] / row["seconds"])
        assert row["worker_peak_mb"] > 0
    found = {t["name"]: t for t in result["targets"]}
    assert len(found) == 4  # RSS per backend (pyav, auto), the 720p time, auto vs best
    for t in found.values():
        assert t["met"] == (t["value"] is not None and t["value"] <= t["limit"])
    seconds = {(r["backend"], r["frames"], r["size"]): r["seconds"] for r in result["decode"]}
    ratio = found["auto s / best backend's s, worst point"]["value"]
    points = [(f, s) for f in (4, 64) for s in result["sizes"]]
    assert ratio == pytest.approx(max(seconds["auto", f, s] / seconds["pyav", f, s] for f, s in points))
    path = "resized" if reader_resizes() else "full"  # the RSS target reads the resized path where it exists
    rss = found[f"peak RSS / resized frames, pyav, {path}, 64 frames"]["value"]
    pyav_peak = next(
        r["peak_mb"] for r in result["decode"] if (r["backend"], r["frames"], r["size"]) == ("pyav", 64, path)
    )
    assert rss == pytest.approx(pyav_peak / frames_mb(64, (64, 64)))
    assert (
        found["s per 64-frame sample on 1 thread, fastest backend, 720p"]["value"] is None
    )  # no 720p clip in --quick
    assert all(r["seconds"] is not None for r in result["decode"])  # pyav and auto take any sampling


def _row(video: str, backend: str, seconds: float | None, peak_mb: float | None) -> dict:
    return {
        "video": video,
        "size": "full",
        "frames": 512,
        "backend": backend,
        "seconds": seconds,
        "peak_mb": peak_mb,
    }


def test_targets_pick_the_long_720p_video_and_the_fastest_backend():
    spec = DataBenchSpec(frames=(512,), size=(384, 384))
    video = {"name": "long", "label": "720p 10 min", "spec": {"height": 720, "seconds": 600}}
    short = {"name": "short", "label": "720p 2 min", "spec": {"height": 720, "seconds": 120}}
    rows = [
        _row("long", "decord", 30.0, 400.0),
        _row("long", "pyav", 8.0, 300.0),
        _row("long", "auto", 8.5, 320.0),
        _row("short", "pyav", 1.0, 1.0),
        _row("short", "decord", None, None),  # refused: left out, not a crash
    ]
    backends = ["decord", "pyav", "auto"]
    result = {"decode": rows, "sizes": ["full"], "backends": backends, "videos": [video, short]}
    found = {t.name: t for t in targets(result, spec)}
    assert found["s per 512-frame sample on 1 thread, fastest backend (pyav), 720p 10 min"].value == 8.0
    assert found["auto s / best backend's s, worst point"].value == pytest.approx(8.5 / 8.0)
    assert found["auto s / best backend's s, worst point"].met
    assert found["peak RSS / resized frames, decord, full, 512 frames"].value == pytest.approx(
        400 / frames_mb(512, (384, 384))
    )
    # The keyframe-only reader counts for the fastest sample, not as auto's rival (it returns other frames).
    result["decode"] = rows + [_row("long", KEYFRAME_BACKEND, 4.0, 50.0)]
    result["backends"] = backends + [KEYFRAME_BACKEND]
    found = {t.name: t for t in targets(result, spec)}
    assert (
        found[f"s per 512-frame sample on 1 thread, fastest backend ({KEYFRAME_BACKEND}), 720p 10 min"].value
        == 4.0
    )
    assert found[f"peak RSS / resized frames, {KEYFRAME_BACKEND}, full, 512 frames"].value is not None
    # A backend that refused the sampling everywhere gets no RSS target (it is not a memory failure).
    result["decode"] = rows + [_row("long", KEYFRAME_BACKEND, None, None)]
    names = [t.name for t in targets(result, spec)]
    assert not any(KEYFRAME_BACKEND in n for n in names) and len(names) == 5
    assert found["auto s / best backend's s, worst point"].value == pytest.approx(8.5 / 8.0)


def test_targets_per_thread_count():
    """Each thread count measured gets its own time target; the RSS target reads a worker's rows (one
    thread); auto is held against the best backend at its own thread count."""
    spec = DataBenchSpec(frames=(512,), size=(384, 384), threads=(1, 2))
    video = {"name": "long", "label": "720p 10 min", "spec": {"height": 720, "seconds": 600}}
    rows = [
        {**_row("long", "pyav", 20.0, 300.0), "threads": 1},
        {**_row("long", "auto", 21.0, 300.0), "threads": 1},
        {**_row("long", "pyav", 9.0, 900.0), "threads": 2},
        {**_row("long", "auto", 9.9, 900.0), "threads": 2},
    ]
    result = {"decode": rows, "sizes": ["full"], "backends": ["pyav", "auto"], "videos": [video]}
    found = {t.name: t for t in targets(result, spec)}
    assert found["s per 512-frame sample on 1 thread, fastest backend (pyav), 720p 10 min"].value == 20.0
    assert found["s per 512-frame sample on 2 threads, fastest backend (pyav), 720p 10 min"].met
    assert found["auto s / best backend's s, worst point"].value == pytest.approx(9.9 / 9.0)
    rss = found["peak RSS / resized frames, pyav, full, 512 frames"].value
    assert rss == pytest.approx(300 / frames_mb(512, (384, 384)))


def test_decode_sample_runs_on_the_threads_asked_for(tmp_path):
    from crosslmm.bench.data.measure import decode_sample

    (record,) = videos.ensure_videos(tmp_path, (videos.WARMUP_VIDEO,), progress=False)
    for threads in (1, 2):
        assert decode_sample(record["path"], 2, "pyav", None, threads=threads)["torch_threads"] == threads


def test_videos_are_cached_and_have_the_stated_keyframes(tmp_path, monkeypatch):
    spec = videos.VideoSpec(128, 96, 3, 10, 1, 300, "ultrafast")
    (record,) = videos.ensure_videos(tmp_path, (spec,), progress=False)
    assert record["frames"] == 30 and record["keyframes"] == 3  # GOP 1 s at 10 fps, no scene-cut keyframes
    assert record["duration_s"] == pytest.approx(3.0)
    assert not list(tmp_path.glob("*.partial.mp4"))

    def no_encode(*args):
        raise AssertionError("a cached video was encoded again")

    monkeypatch.setattr(videos, "encode_video", no_encode)
    assert videos.ensure_videos(tmp_path, (spec,), progress=False) == [record]


def test_loader_cells_that_would_not_fit_are_skipped(tmp_path):
    spec = DataBenchSpec(videos=videos.QUICK_VIDEOS, workers=(1, 2), memory_fraction=0.0, loader_frames=4)
    record = {"name": "v", "path": str(tmp_path / "never_read.mp4"), "frames": 100}
    record["spec"] = {"height": 240, "width": 320}
    rows = _loader(spec, [record], ["full"], {"max_frames": 512}, progress=False)
    assert [r["workers"] for r in rows] == [1, 2]
    assert all("skipped" in r and "samples_per_s" not in r for r in rows)


def test_throughput_assumptions_are_the_stated_defaults():
    assume = Throughput()
    assert (assume.gpus, assume.peak_tflops, assume.mfu, assume.train_factor) == (8, 989.0, 0.4, 3.0)


def test_only_picks_test_videos_by_name_and_refuses_a_name_that_matches_none(tmp_path, capsys, monkeypatch):
    picked = []
    monkeypatch.setattr("crosslmm.bench.data.report.bench_data", lambda spec, *a, **k: picked.append(spec))
    assert main(["bench", "data", "--only", "1080p_,720p_120s", "--out", str(tmp_path)]) == 0
    assert [v.name for v in picked[0].videos] == [videos.FULL_VIDEOS[1].name, videos.FULL_VIDEOS[2].name]
    assert main(["bench", "data", "--only", "480p", "--out", str(tmp_path)]) == 2
    assert "matches none of the test videos" in capsys.readouterr().err


def test_loader_video_must_name_one_video(tmp_path, capsys):
    argv = [
        "bench",
        "data",
        "--quick",
        "--loader-video",
        "nope",
        "--videos",
        str(tmp_path),
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert "--loader-video 'nope' must match one of the videos: 240p_4s" in capsys.readouterr().err
