"""The ``crosslmm web`` page: ask a CrossLMM about a video, watch the answer stream, see what it looked at.

One gradio Blocks app over one loaded model. The answer comes from :func:`crosslmm.inference.generate`
(``crosslmm chat``'s path) with a streamer; the maps from :func:`crosslmm.explain.maps.explain` and
:mod:`crosslmm.explain.render`, as ``crosslmm explain`` draws them. A video that cannot be read shows its
error in the page; the server keeps serving.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from threading import Thread

import gradio as gr
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Where `crosslmm demo` leaves its trained CrossLMM (crosslmm.demo.run: <out>/runs/<variant>-seed<k>/final).
DEMO_MODEL = Path("runs/demo/runs/crosslmm-seed0/final")
SAMPLES = 4
RANDOM_NOTICE = (
    "**No trained model given and none in runs/demo: a tiny random model answers. Its answers and maps are "
    "meaningless**; run `crosslmm demo` or pass `--model DIR`."
)


@dataclass
class WebModel:
    """The model the page serves and what to tell its users about it."""

    model: object
    processor: object
    name: str
    notice: str = ""


def load_web_model(model_dir: str | None) -> WebModel:
    """``model_dir``, else the demo's trained CrossLMM when ``runs/demo`` has one, else a tiny random model."""
    from crosslmm.inference import load

    if model_dir is not None or DEMO_MODEL.is_dir():
        path = model_dir if model_dir is not None else str(DEMO_MODEL)
        model, processor = load(path)
        return WebModel(model, processor, path)
    from crosslmm.model.tiny import TinySpec, make_tiny

    model, processor = make_tiny(TinySpec(), seed=0, v2v=True, t2v=True)
    return WebModel(model.eval(), processor, "tiny random CrossLMM", RANDOM_NOTICE)


def write_samples(out: str | os.PathLike, count: int = SAMPLES, seed: int = 1) -> dict[str, str]:
    """``count`` videos of the demo's synthetic marker task -> {label saying where the marker is: path}."""
    from crosslmm.data.video import write_video
    from crosslmm.demo.synth import SynthSpec, make_video

    spec, rng, samples = SynthSpec(), np.random.default_rng(seed), {}
    os.makedirs(out, exist_ok=True)
    for i in range(count):
        frames, truth = make_video(spec, rng)
        start, end = truth["marker_frames"]
        label = f"sample {i + 1}: {truth['colour']} marker at cell {tuple(truth['cell'])}, frames {start}-{end - 1}"
        samples[label] = os.path.join(out, f"sample{i + 1}.mp4")
        write_video(samples[label], frames, spec.fps)
    return samples


def figure_image(fig: Figure) -> np.ndarray:
    """A matplotlib figure -> (H, W, 4) uint8 RGBA, for gr.Image."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def ask(
    web: WebModel,
    video: str,
    question: str,
    frames: int,
    fps: float,
    budget: int | None,
) -> Iterator[tuple[str, np.ndarray | None, np.ndarray | None, str]]:
    """Yields (answer so far, T2V image, V2V image, status) as the answer streams, then with the maps."""
    from transformers import TextIteratorStreamer

    from crosslmm.data.sampling import FrameSampling
    from crosslmm.data.video import load_video
    from crosslmm.explain.maps import explain
    from crosslmm.explain.render import t2v_figure, v2v_figure
    from crosslmm.inference import build_prompt, generate

    if not question.strip() or not frames or frames < 1:
        yield "", None, None, "**Type a question and set frames to 1 or more.**"
        return
    try:
        sampling = FrameSampling.resolve(None, fps, int(frames)) if fps else FrameSampling(int(frames))
        clip = load_video(video, **dataclasses.asdict(sampling))
    except ValueError as err:  # VideoError included: the file and the reason, shown in the page
        yield "", None, None, f"**Cannot use this video:** {err}"
        return
    yield "", None, None, f"{len(clip.frames)} frames; answering…"
    streamer = TextIteratorStreamer(web.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    prompt = build_prompt(web.processor, question)
    result: list = []

    def work() -> None:  # ends the stream even when generation fails, so the page never hangs
        try:
            result.extend(
                generate(
                    web.model,
                    web.processor,
                    [prompt],
                    [[clip.frames]],
                    32,
                    streamer=streamer,
                    tokens_per_frame=budget,
                )
            )
        except Exception as err:
            result.append(err)
            streamer.end()

    worker = Thread(target=work)
    worker.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text, None, None, "answering…"
    worker.join()
    if isinstance(result[0], Exception):
        raise result[0]
    answer = result[0]
    expl = explain(
        web.model,
        web.processor,
        clip.frames,
        question,
        answer,
        tokens_per_frame=budget,
        frame_indices=clip.indices.tolist(),
    )
    t2v = figure_image(t2v_figure(expl, clip.frames)) if expl.t2v is not None else None
    v2v = figure_image(v2v_figure(expl, clip.frames)) if expl.v2v is not None else None
    gates = ", ".join(
        f"layer {layer}: " + " ".join(f"{k} {v:+.2f}" for k, v in g.items())
        for layer, g in zip(expl.layers, expl.gates)
    )
    yield answer, t2v, v2v, f"{len(clip.frames)} frames. Gates (tanh): {gates}"


def build_app(web: WebModel, samples: dict[str, str]) -> gr.Blocks:
    """The page: video (a sample or an upload), sampling, budget, question; answer, status and maps."""
    budgets = web.model.config.trained_budgets
    with gr.Blocks(title="CrossLMM: what did it look at?") as app:
        gr.Markdown(f"## CrossLMM: ask about a video, see what it looked at\nModel: `{web.name}`")
        if web.notice:
            gr.Markdown(web.notice, elem_id="notice")
        with gr.Row():
            with gr.Column(scale=1):
                sample = gr.Dropdown(
                    list(samples), value=next(iter(samples)), label="Sample video", elem_id="sample"
                )
                upload = gr.File(label="…or upload a video (used instead of the sample)", elem_id="upload")
                with gr.Row():
                    frames = gr.Number(value=20, minimum=1, precision=0, label="frames (max)")
                    fps = gr.Number(value=0, minimum=0, label="fps (0: uniform frames)")
                budget = gr.Dropdown(
                    budgets,
                    value=web.model.config.tokens_per_frame,
                    label="tokens per frame",
                    visible=len(budgets) > 1,
                )
                question = gr.Textbox(
                    value="What colour is the marker?", label="Question", elem_id="question"
                )
                go = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column(scale=2):
                answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                status = gr.Markdown(elem_id="status")
        # Full width: one column per frame, the sampled frames on top of the maps.
        t2v = gr.Image(label="T2V: what the answer's first token attended to", elem_id="t2v")
        v2v = gr.Image(label="V2V: what each pooled frame token pulled back", elem_id="v2v")

        def run(sample_label, upload_path, n_frames, rate, tokens, text):
            video = upload_path or samples[sample_label]
            yield from ask(web, video, text, n_frames, rate, tokens if len(budgets) > 1 else None)

        # A click while the last answer is still finishing runs after it, instead of being dropped.
        go.click(
            run,
            [sample, upload, frames, fps, budget, question],
            [answer, t2v, v2v, status],
            trigger_mode="always_last",
        )
    return app
