"""``crosslmm bench data``: the test videos, each backend's seconds and peak RSS per sample, DataLoader
samples/s, and the samples/s a stage-2 job needs; printed as tables with the targets, written to ``data.json``
and ``data.png``."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crosslmm.bench.data import measure
from crosslmm.bench.data.videos import FULL_VIDEOS, QUICK_VIDEOS, WARMUP_VIDEO, VideoSpec, ensure_videos
from crosslmm.bench.report import format_table, write_json
from crosslmm.bench.targets import Target, print_targets

RECIPE = "crosslmm-7b-stage2"  # configs/train/: stage 2's frames and workers
MODEL = "crosslmm-7b-9tok"  # configs/model/: the model stage 1 builds and stage 2 trains
RSS_LIMIT = 1.5  # peak worker RSS / resized uint8 frames, at the largest frame count
SECONDS_LIMIT = 10.0  # one 512-frame sample of a 10-min 720p video, fastest backend, one worker
WORKER_THREADS = 1  # torch's thread count in a DataLoader worker: the RSS target reads these rows
AUTO_SPEED = 0.9  # auto at least 0.9x the best backend's speed at every measured point
FULL = "full"  # the size column of today's full-resolution path


@dataclass(frozen=True)
class DataBenchSpec:
    """What ``bench data`` measures. ``size`` is the processor's (height, width): the resized path decodes to
    it and the RSS target is relative to 512 frames of it."""

    videos: tuple[VideoSpec, ...] = FULL_VIDEOS
    frames: tuple[int, ...] = (64, 256, 512)
    backends: tuple[str, ...] | None = None  # None: measure.backends() (what imports, then auto)
    sizes: tuple[str, ...] | None = None  # FULL and/or "resized"; None: both where the reader resizes
    size: tuple[int, int] = (384, 384)
    repeats: int = 1
    threads: tuple[int, ...] = (WORKER_THREADS,)  # torch threads of the process decoding one sample
    workers: tuple[int, ...] = (1, 4, 8)
    loader_video: int = 0  # index into videos: the clip the DataLoader reads (10-min 720p: a stage-2 video)
    loader_frames: int | None = None  # None: the recipe's max_frames
    loader_backend: str = "auto"
    samples_per_worker: int = 2
    memory_fraction: float = 0.5  # skip loader cells whose frames would need more of MemAvailable
    assume: measure.Throughput = field(default_factory=measure.Throughput)

    @classmethod
    def quick(cls) -> DataBenchSpec:
        return cls(videos=QUICK_VIDEOS, frames=(4, 64), workers=(1, 2), loader_frames=16, size=(64, 64))


def bench_data(spec: DataBenchSpec, videos_dir: Path, out: Path, progress: bool = True) -> dict[str, Any]:
    """Run ``spec``; print the tables and targets; write ``out/data.json`` and ``out/data.png``."""
    from tqdm import tqdm

    started = time.perf_counter()
    machine = _machine()
    records = ensure_videos(videos_dir, spec.videos, progress)
    (warmup,) = ensure_videos(videos_dir, (WARMUP_VIDEO,), progress=False)
    backends = list(spec.backends or measure.backends())
    resizes = measure.reader_resizes()
    sizes = list(spec.sizes or ([FULL, "resized"] if resizes else [FULL]))
    if "resized" in sizes and not resizes:
        raise ValueError("load_video takes no size= here (the reader does not resize yet): use --sizes full")
    recipe = _recipe()
    cells = [
        (v, s, f, b, t)
        for v in records
        for s in sizes
        for f in spec.frames
        for b in backends
        for t in spec.threads
    ]
    decode = []
    for video, size, frames, backend, threads in tqdm(cells, desc="decode one sample", disable=not progress):
        if frames > video["frames"]:
            continue
        runs = [
            measure.decode_sample(video["path"], frames, backend, _size(size, spec), warmup["path"], threads)
            for _ in range(spec.repeats)
        ]
        row = {"video": video["name"], "size": size, "frames": frames, "backend": backend, "threads": threads}
        if any("error" in r for r in runs):
            error = next(r["error"] for r in runs if "error" in r)
            decode.append({**row, "seconds": None, "peak_mb": None, "error": error})
            continue
        decode.append(
            {
                **row,
                "seconds": measure.median([r["seconds"] for r in runs]),
                "seconds_runs": [r["seconds"] for r in runs],
                "cpu_seconds": measure.median([r["cpu_seconds"] for r in runs]),
                "peak_mb": max(r["peak_mb"] for r in runs),
                "baseline_mb": runs[0]["baseline_mb"],
                "worker_peak_mb": max(r["worker_peak_mb"] for r in runs),
                "frames_mb": runs[0]["frames_mb"],
                "shape": runs[0]["shape"],
            }
        )
    loader = _loader(spec, records, sizes, recipe, progress)
    needed = measure.needed_samples_per_s(_model_config(), recipe["max_frames"], spec.assume)
    result = {
        "machine": machine,
        "spec": {**asdict(spec), "videos": [asdict(v) for v in spec.videos]},
        "size": list(spec.size),
        "backends": backends,
        "sizes": sizes,
        "videos": records,
        "decode": decode,
        "loader": loader,
        "needed": {
            **needed,
            "frames": recipe["max_frames"],
            "recipe": f"configs/train/{RECIPE}.yaml",
            "model": f"configs/model/{MODEL}.yaml",
            "assumptions": asdict(spec.assume),
        },
    }
    result["targets"] = [t.as_dict() for t in targets(result, spec)]
    result["seconds"] = time.perf_counter() - started
    _print(result)
    write_json(out / "data.json", result)
    plot(out / "data.png", result)
    print(f"\n{result['seconds']:.0f} s; wrote {out / 'data.json'} and {out / 'data.png'}")
    return result


def _size(size: str, spec: DataBenchSpec) -> tuple[int, int] | None:
    return None if size == FULL else spec.size


def _loader(
    spec: DataBenchSpec,
    records: list[dict[str, Any]],
    sizes: list[str],
    recipe: dict[str, Any],
    progress: bool,
) -> list[dict[str, Any]]:
    """DataLoader samples/s at each worker count on one video, one backend, the smallest frames path
    measured (the resized one where the reader resizes). A cell whose frames alone would not fit in
    ``memory_fraction`` of MemAvailable is skipped and says so."""
    from tqdm import tqdm

    video = records[spec.loader_video]
    frames = min(spec.loader_frames or recipe["max_frames"], video["frames"])
    size = "resized" if "resized" in sizes else FULL
    height, width = spec.size if size == "resized" else (video["spec"]["height"], video["spec"]["width"])
    # A worker holds a sample's decoded frames and, while stacking, a copy; the queue holds up to
    # prefetch_factor (2) finished samples per worker.
    need_mb = 4 * measure.frames_mb(frames, (height, width)) + 300
    rows = []
    for workers in tqdm(spec.workers, desc="DataLoader", disable=not progress):
        row = {"video": video["name"], "backend": spec.loader_backend, "size": size, "frames": frames}
        row["cores"] = measure.cores()
        budget = spec.memory_fraction * measure.available_memory_mb()
        if workers * need_mb > budget:
            rows.append({**row, "workers": workers, "skipped": f"needs ~{workers * need_mb / 1024:.1f} GiB"})
            continue
        dataset = measure.DecodeDataset(
            [video["path"]], frames, spec.loader_backend, _size(size, spec), spec.samples_per_worker * workers
        )
        rows.append({**row, **measure.loader_throughput(dataset, workers)})
    return rows


def _recipe() -> dict[str, Any]:
    import yaml

    from crosslmm.model.presets import CONFIG_DIR

    data = yaml.safe_load((CONFIG_DIR / "train" / f"{RECIPE}.yaml").read_text())
    return {
        "max_frames": int(data["data"]["max_frames"]),
        "num_workers": int(data["data"]["num_workers"]),
        "gradient_checkpointing": bool(data.get("gradient_checkpointing", False)),
    }


def _model_config() -> Any:
    from crosslmm.model.configuration import CrossLMMConfig
    from crosslmm.model.presets import load_config_yaml

    return CrossLMMConfig(**load_config_yaml(MODEL))


def _machine() -> dict[str, Any]:
    model = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    busy = subprocess.run(["pgrep", "-f", "crosslmm.cli"], capture_output=True, text=True).stdout.split()
    others = [pid for pid in busy if int(pid) != os.getpid()]
    return {
        "cores": measure.cores(),
        "cpu": model or platform.processor(),
        "memory_gib": measure.available_memory_mb() / 1024,
        "load_1min": os.getloadavg()[0],
        "other_crosslmm_processes": len(others),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _threads(row: dict[str, Any]) -> int:
    return row.get("threads", WORKER_THREADS)  # rows measured before the bench had --threads: one thread


def _best(decode: list[dict[str, Any]], **where: Any) -> dict[str, Any] | None:
    rows = [
        r
        for r in decode
        if r["seconds"] is not None
        and all((_threads(r) if k == "threads" else r[k]) == v for k, v in where.items())
    ]
    return min(rows, key=lambda r: r["seconds"]) if rows else None


def targets(result: dict[str, Any], spec: DataBenchSpec) -> list[Target]:
    """The issue's three targets, on the rows measured (a target without its rows is ``None``: not met).

    * RSS: peak RSS a sample adds to a worker (one thread, ``WORKER_THREADS``) / the resized uint8 frames at
      the largest frame count, on the resized path (the full-resolution one where the reader does not
      resize), worst video, per backend (none for a backend that refused that sampling on every video).
    * Time: the fastest backend's seconds for the largest frame count on the longest 720p video, one target
      per thread count measured.
    * auto: auto's seconds / the best exact backend's (``measure.exact_backends``: what auto chooses from) at
      the same point and thread count, at the worst measured point (<= 1/0.9). Rows whose backend refused
      the sampling are left out."""
    decode, frames = result["decode"], max(spec.frames)
    path = "resized" if "resized" in result["sizes"] else FULL
    resized_mb = measure.frames_mb(frames, spec.size)
    found = []
    for backend in result["backends"]:
        rows = [
            r
            for r in decode
            if (r["backend"], r["size"], r["frames"], _threads(r)) == (backend, path, frames, WORKER_THREADS)
        ]
        if rows and all(r["peak_mb"] is None for r in rows):
            continue  # the backend refused this sampling on every video: nothing to hold to the limit
        worst = max((r["peak_mb"] / resized_mb for r in rows if r["peak_mb"] is not None), default=None)
        found.append(
            Target(f"peak RSS / resized frames, {backend}, {path}, {frames} frames", worst, RSS_LIMIT)
        )
    long720 = [v for v in result["videos"] if v["spec"]["height"] == 720]
    video = max(long720, key=lambda v: v["spec"]["seconds"]) if long720 else None
    label = video["label"] if video else "720p"
    for threads in sorted({_threads(r) for r in decode} or {WORKER_THREADS}):
        best = (
            _best(decode, video=video["name"], frames=frames, size=path, threads=threads) if video else None
        )
        winner = f" ({best['backend']})" if best else ""
        name = (
            f"s per {frames}-frame sample on {_plural(threads, 'thread')}, fastest backend{winner}, {label}"
        )
        found.append(Target(name, best and best["seconds"], SECONDS_LIMIT))
    ratios = []
    exact = measure.exact_backends(result["backends"])
    for r in decode:
        if r["backend"] == "auto" and r["seconds"] is not None:
            where = {"video": r["video"], "size": r["size"], "frames": r["frames"], "threads": _threads(r)}
            rivals = [b for b in (_best(decode, backend=name, **where) for name in exact) if b is not None]
            if rivals:
                ratios.append(r["seconds"] / min(b["seconds"] for b in rivals))
    found.append(Target("auto s / best backend's s, worst point", max(ratios, default=None), 1 / AUTO_SPEED))
    return found


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _print(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(
        f"\nMachine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']:.1f} GiB available, load {m['load_1min']:.2f}, "
        f"{m['other_crosslmm_processes']} other crosslmm processes running, {m['date']}"
    )
    print("\nTest videos (H.264, yuv420p, libx264 in bitrate mode; encode time of the run that made each)")
    rows = [
        [
            v["label"],
            f"{v['spec']['width']}x{v['spec']['height']}",
            v["frames"],
            v["keyframes"],
            v["kbps"],
            v["megabytes"],
            v["encode_s"],
        ]
        for v in result["videos"]
    ]
    print(format_table(["video", "size", "frames", "keyframes", "kb/s", "MB", "encode s"], rows))
    labels = {v["name"]: v["label"] for v in result["videos"]}
    height, width = result["size"]
    print(
        f"\nOne sample (uniform frames over the whole video) decoded in a fresh process with the torch threads "
        f"shown (1: a DataLoader worker's): wall and CPU seconds (all threads), and peak RSS above the process "
        f"before the call (MiB); 'resized' = load_video(size=({height}, {width}))"
    )
    header = [
        "video",
        "size",
        "frames",
        "backend",
        "threads",
        "s/sample",
        "CPU s",
        "peak MiB",
        "worker MiB",
        "frames MiB",
        "peak/frames",
    ]
    rows = []
    for r in result["decode"]:
        row = [labels[r["video"]], r["size"], r["frames"], r["backend"], _threads(r)]
        if r["seconds"] is None:
            rows.append(row + ["refused", None, None, None, None, r["error"][:70]])
            continue
        row += [
            r["seconds"],
            r.get("cpu_seconds"),
            r["peak_mb"],
            r["worker_peak_mb"],
            r["frames_mb"],
            r["peak_mb"] / r["frames_mb"],
        ]
        rows.append(row)
    print(format_table(header, rows))
    print(
        "\nDataLoader (batch of one video, default prefetch), timed from the workers' start to the last sample"
    )
    header = [
        "video",
        "backend",
        "size",
        "frames",
        "workers",
        "cores",
        "samples",
        "samples/s",
        "worker peak MiB",
    ]
    rows = [
        [
            labels[r["video"]],
            r["backend"],
            r["size"],
            r["frames"],
            r["workers"],
            r["cores"],
            r.get("samples"),
            r.get("samples_per_s"),
            r.get("worker_peak_mb") or r.get("skipped"),
        ]
        for r in result["loader"]
    ]
    print(format_table(header, rows))
    n = result["needed"]
    print(f"\nWhat a stage-2 job needs ({n['model']}, {n['recipe']}), against this machine's loader")
    print(format_table(["quantity", "value"], needed_rows(result)))
    print_targets(result["targets"])


def needed_rows(result: dict[str, Any]) -> list[list[Any]]:
    """The stage-2 requirement with every assumption, and the loader's best rate here beside it."""
    n, a = result["needed"], result["needed"]["assumptions"]
    measured = [r for r in result["loader"] if "samples_per_s" in r]
    best = max(measured, key=lambda r: r["samples_per_s"], default=None)
    rows = [
        ["frames per sample (recipe max_frames)", n["frames"]],
        ["text tokens per sample (assumed)", a["text_tokens"]],
        ["forward TFLOPs per sample (analytic, LM head on all positions)", n["forward_tflops"]],
        ["training = x forward (backward 2x; recompute of checkpointing not counted)", a["train_factor"]],
        ["training TFLOPs per sample", n["train_tflops"]],
        ["GPU bf16 dense peak TFLOP/s (H100 SXM)", a["peak_tflops"]],
        ["MFU (assumed)", a["mfu"]],
        ["GPUs", a["gpus"]],
        ["needed samples/s per GPU (one rank's loader)", n["per_gpu"]],
        ["needed samples/s, whole job", n["job"]],
    ]
    if best is not None:
        busy = min(best["workers"], best["cores"])
        per_core = best["samples_per_s"] / busy
        rows += [
            [
                f"loader here: best samples/s ({best['workers']} workers, {best['cores']} cores, {best['size']})",
                best["samples_per_s"],
            ],
            ["loader here: samples/s per busy core", per_core],
            ["cores per rank to keep up (per-core rate x cores: an extrapolation)", n["per_gpu"] / per_core],
        ]
    return rows


def plot(path: Path, result: dict[str, Any]) -> None:
    """Seconds per sample against frames (a panel per video), the peak RSS a sample adds against frames, and
    the DataLoader's samples/s against workers with the rate one GPU needs."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg when saved, no global backend

    videos = result["videos"]
    fig = Figure(figsize=(4.6 * (len(videos) + 2), 4.2))
    axes = fig.subplots(1, len(videos) + 2, squeeze=False)[0]
    measured = [r for r in result["decode"] if r["seconds"] is not None]  # not the refused cells
    series = sorted({(r["backend"], r["size"], _threads(r)) for r in measured})
    colors = {s: f"C{i % 10}" for i, s in enumerate(series)}

    def label(backend: str, size: str, threads: int) -> str:
        return f"{backend}, {size}" + ("" if threads == WORKER_THREADS else f", {threads} threads")

    def rows_of(video: dict[str, Any], *key: Any) -> list[dict[str, Any]]:
        return [
            r for r in measured if (r["video"], r["backend"], r["size"], _threads(r)) == (video["name"], *key)
        ]

    for ax, video in zip(axes, videos):
        for key in series:
            if rows := rows_of(video, *key):
                ax.plot(
                    [r["frames"] for r in rows],
                    [r["seconds"] for r in rows],
                    "-" if key[1] == FULL else "--",
                    marker="o",
                    color=colors[key],
                    label=label(*key),
                )
        ax.set(xscale="log", yscale="log", xlabel="frames", ylabel="s per sample", title=video["label"])
        _ticks(ax, sorted({r["frames"] for r in result["decode"] if r["video"] == video["name"]}))
    rss = axes[len(videos)]
    for key in series:
        if rows := rows_of(videos[0], *key):
            rss.plot(
                [r["frames"] for r in rows],
                [r["peak_mb"] for r in rows],
                "-" if key[1] == FULL else "--",
                marker="o",
                color=colors[key],
                label=label(*key),
            )
    height, width = result["size"]
    frames = sorted({r["frames"] for r in result["decode"]})
    if frames:
        rss.plot(
            frames,
            [measure.frames_mb(f, (height, width)) for f in frames],
            ":k",
            label=f"{height}x{width} uint8 frames",
        )
    rss.set(
        xscale="log",
        yscale="log",
        xlabel="frames",
        ylabel="peak MiB a sample adds",
        title=f"peak RSS, {videos[0]['label']}",
    )
    _ticks(rss, frames)
    ax = axes[-1]
    rows = [r for r in result["loader"] if "samples_per_s" in r]
    if rows:
        ax.plot(
            [r["workers"] for r in rows],
            [r["samples_per_s"] for r in rows],
            marker="o",
            label=f"{rows[0]['backend']}, {rows[0]['size']}, {rows[0]['frames']} frames, {rows[0]['cores']} cores",
        )
    ax.axhline(result["needed"]["per_gpu"], color="r", linestyle="--", label="needed per GPU (stage 2)")
    ax.set(yscale="log", xlabel="DataLoader workers", ylabel="samples/s", title="DataLoader")
    _ticks(ax, [r["workers"] for r in result["loader"]])
    fig.suptitle(f"crosslmm bench data ({result['machine']['cores']} cores, {result['machine']['date']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _ticks(ax: Any, xs: list[int]) -> None:
    """Ticks at the measured x values, plain numbers on both axes, a grid and the legend."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    if xs:
        ax.set_xticks(xs, [str(x) for x in xs], minor=False)
    ax.xaxis.set_minor_formatter(NullFormatter())
    if ax.get_yscale() == "log":  # labelled ticks within a decade too, not only at powers of 10
        low, high = ax.get_ylim()
        subs = range(1, 10) if high < 10 * low else (1.0, 2.0, 5.0)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
