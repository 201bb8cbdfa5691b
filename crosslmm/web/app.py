"""The ``crosslmm web`` page: ask a CrossLMM about a video, watch the answer stream, see what it looked at.

One gradio Blocks app over one loaded model. The answer comes from :func:`crosslmm.explain.maps.generate_ids`
(``crosslmm chat``'s inputs, greedy) with a streamer; the maps from :func:`crosslmm.explain.maps.explain` and
:mod:`crosslmm.explain.render`, as ``crosslmm explain`` draws them. Requests from any number of pages queue
on the model (:class:`ModelTurns`, their place shown in the page); a page that goes away stops its
generation. A video that cannot be read shows its error in the page; the server keeps serving.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

# Where `crosslmm demo` leaves its trained CrossLMM (crosslmm.demo.run: <out>/runs/<variant>-seed<k>/final).
DEMO_MODEL = Path("runs/demo/runs/crosslmm-seed0/final")
SAMPLES = 4
MAX_NEW_TOKENS = 32
RANDOM_NOTICE = (
    "**No trained model given and none in runs/demo: a tiny random model answers. Its answers and maps are "
    "meaningless**; run `crosslmm demo` or pass `--model DIR`."
)


class ModelTurns:
    """Requests take the shared model one at a time, in arrival order, and can say how many are ahead.

    A request's worker thread holds its turn for the whole answer and maps: ``capture_attention`` switches
    the shared model's blocks, so a second request's forward passes must never run during it."""

    def __init__(self):
        self._changed = threading.Condition()
        self._next = 0  # the ticket the next request gets
        self._serving = 0  # the ticket whose turn it is

    def take(self) -> int:
        with self._changed:
            self._next += 1
            return self._next - 1

    def ahead(self, ticket: int) -> int:
        return ticket - self._serving

    def wait(self, ticket: int, timeout: float) -> bool:
        """True once it is ``ticket``'s turn; False after ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self._serving == ticket, timeout)

    def done(self, ticket: int) -> None:
        with self._changed:
            assert ticket == self._serving, "a turn ends only after it has started"
            self._serving += 1
            self._changed.notify_all()


@dataclass
class WebModel:
    """The model the page serves, what to tell its users about it, and its queue of requests."""

    model: object
    processor: object
    name: str
    notice: str = ""
    turns: ModelTurns = field(default_factory=ModelTurns)


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
    """``count`` videos of the demo's synthetic task (``SynthSpec()``, what ``crosslmm demo`` trains on) ->
    {label saying which colour has the vertical stripes, where and when: path}."""
    from crosslmm.data.video import write_video
    from crosslmm.demo.synth import SynthSpec, make_video

    spec, rng, samples = SynthSpec(), np.random.default_rng(seed), {}
    os.makedirs(out, exist_ok=True)
    for i in range(count):
        frames, truth = make_video(spec, rng)
        start, end = truth["marker_frames"]
        target = _target_words(spec.design, truth["colour"])
        label = f"sample {i + 1}: {target} at cell {tuple(truth['cell'])}, frames {start}-{end - 1}"
        samples[label] = os.path.join(out, f"sample{i + 1}.mp4")
        write_video(samples[label], frames, spec.fps)
    return samples


def _target_words(design: str, colour: str) -> str:
    """How a sample's label names its target: the design's question asks about it."""
    return f"{colour} marker" if design == "marker" else f"vertical stripes on {colour}"


def default_question() -> str:
    """The colour question of the samples' design, the page's question until the user changes it."""
    from crosslmm.demo.synth import SynthSpec, questions_of

    return questions_of(SynthSpec().design)["colour"]


def figure_image(fig: Figure) -> np.ndarray:
    """A matplotlib figure -> (H, W, 4) uint8 RGBA, for gr.Image."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


class _Cancelled(StoppingCriteria):
    """Stops generation at the next token once the page that asked has gone."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class _Pieces(TextStreamer):
    """Puts each decoded piece of the answer on a queue, for the request's generator to show."""

    def __init__(self, tokenizer, out: queue.Queue):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.out.put(("piece", text))


def _load_clip(video: str, frames: int, fps: float, size: tuple[int, int]):
    """The sampled clip at ``size`` (the processor's frame size), or the message to show when the file
    cannot be used."""
    from crosslmm.data.sampling import FrameSampling
    from crosslmm.data.video import load_video

    try:
        sampling = FrameSampling.resolve(None, fps, int(frames)) if fps else FrameSampling(int(frames))
        return load_video(video, **dataclasses.asdict(sampling), size=size)
    except ValueError as err:  # VideoError included: the file and the reason, shown in the page
        return f"**Cannot use this video:** {err}"


def _work(web: WebModel, ticket: int, clip, question: str, budget, cancel: threading.Event, out) -> None:
    """The request's turn on the model (a worker thread): wait for it, answer, take the maps; report on
    ``out``. The turn ends when this does, whether the page is still there or not."""
    from crosslmm.explain.maps import answer_text, explain, generate_ids
    from crosslmm.inference import build_prompt

    while not web.turns.wait(ticket, timeout=0.5):
        out.put(("waiting", web.turns.ahead(ticket)))
    try:
        if cancel.is_set():
            return
        out.put(("started", None))
        (answer_ids,) = generate_ids(
            web.model,
            web.processor,
            [build_prompt(web.processor, question)],
            [clip.frames],
            MAX_NEW_TOKENS,
            tokens_per_frame=budget,
            streamer=_Pieces(web.processor.tokenizer, out),
            stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
        )
        if cancel.is_set():
            return
        out.put(("answer", answer_text(web.processor, answer_ids)))
        expl = explain(
            web.model,
            web.processor,
            clip.frames,
            question,
            answer_ids,
            tokens_per_frame=budget,
            frame_indices=clip.indices.tolist(),
        )
        out.put(("maps", _figures(expl, clip.frames)))
    except Exception as err:  # shown by the request, which re-raises it
        out.put(("error", err))
    finally:
        web.turns.done(ticket)
        out.put(("end", None))


def _figures(expl, frames: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """The T2V and V2V images and the gates line of an explanation."""
    from crosslmm.explain.render import t2v_figure, v2v_figure

    t2v = figure_image(t2v_figure(expl, frames)) if expl.t2v is not None else None
    v2v = figure_image(v2v_figure(expl, frames)) if expl.v2v is not None else None
    gates = ", ".join(
        f"layer {layer}: " + " ".join(f"{k} {v:+.2f}" for k, v in g.items())
        for layer, g in zip(expl.layers, expl.gates)
    )
    return t2v, v2v, f"{len(frames)} frames. Gates (tanh): {gates}"


def ask(
    web: WebModel,
    video: str,
    question: str,
    frames: int,
    fps: float,
    budget: int | None,
) -> Iterator[tuple[str, np.ndarray | None, np.ndarray | None, str]]:
    """Yields (answer so far, T2V image, V2V image, status): the place in the queue while other requests
    hold the model, the answer as it streams, then the maps. Closing the generator (the page went away)
    stops the generation at its next token."""
    if not question.strip() or not frames or frames < 1:
        yield "", None, None, "**Type a question and set frames to 1 or more.**"
        return
    clip = _load_clip(video, frames, fps, web.processor.frame_size)
    if isinstance(clip, str):
        yield "", None, None, clip
        return
    cancel, out = threading.Event(), queue.Queue()
    worker = threading.Thread(
        target=_work, args=(web, web.turns.take(), clip, question, budget, cancel, out), daemon=True
    )
    worker.start()
    text, count = "", len(clip.frames)
    try:
        while (message := out.get()) and message[0] != "end":
            kind, value = message
            if kind == "waiting":
                yield "", None, None, f"waiting for the model: {value} request(s) ahead"
            elif kind == "started":
                yield "", None, None, f"{count} frames; answering…"
            elif kind == "piece":
                text += value
                yield text, None, None, "answering…"
            elif kind == "answer":
                text = value
                yield text, None, None, "answered; drawing the maps…"
            elif kind == "maps":
                yield (text, *value)
            else:
                raise value
    finally:
        cancel.set()  # a no-op when the work is done; else the page went away


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
                question = gr.Textbox(value=default_question(), label="Question", elem_id="question")
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

        # A click while the last answer is still finishing runs after it, instead of being dropped. Every
        # page's requests run at once here and queue on the model (ModelTurns), which shows their place.
        go.click(
            run,
            [sample, upload, frames, fps, budget, question],
            [answer, t2v, v2v, status],
            trigger_mode="always_last",
            concurrency_limit=None,
        )
    return app
