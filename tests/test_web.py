"""``crosslmm web`` driven in headless Chromium (Debian's ``chromium``; playwright never downloads a browser).

One server on a free local port serves a tiny random model whose answers differ between sample videos, so
the page is checked against :func:`crosslmm.inference.generate` on the same video: a sample gives its answer
and heatmap, a corrupt upload gives an error in the page, and the server answers again afterwards.
Locally a missing browser, playwright or gradio skips; under CI (``CI=true``) it fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import coloured_frames, set_gates

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
QUESTION = "What colour are the vertical stripes?"  # the page's default: the demo task's question
TEST_MODEL_SEED = 20
WAIT_MS = 90_000  # per page step: two CPU cores shared by the whole suite


def _require(condition: bool, what: str) -> None:
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} is missing: .ci/run installs it (the web extra, apt-get chromium)")
        pytest.skip(f"{what} is not installed")


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_dir(path) -> str:
    """A tiny random model, gates open; seed 20 answers differently for sample 1 and sample 4 (the samples
    are the demo task's videos, alike to a random tower: seed 2 answered the same for all four)."""
    from crosslmm.model.build import save_model_dir
    from crosslmm.model.tiny import TinySpec, make_tiny

    model, processor = make_tiny(TinySpec(), seed=TEST_MODEL_SEED, v2v=True, t2v=True)
    set_gates(model, 3.0)
    save_model_dir(model, processor, path)
    return str(path)


def _expected(model_dir: str, videos: list[str]) -> list[str]:
    """What ``crosslmm chat`` answers about each video, at the page's settings (20 frames, 32 tokens)."""
    from crosslmm.data.video import load_video
    from crosslmm.inference import build_prompt, generate, load

    model, processor = load(model_dir)
    prompt = build_prompt(processor, QUESTION)
    return [
        generate(model, processor, [prompt], [[load_video(v, num_frames=20).frames]], 32)[0] for v in videos
    ]


@pytest.fixture
def server(tmp_path):
    """(url, model dir) of ``crosslmm web`` running in a subprocess; stopped after the test."""
    _require(_importable("gradio"), "gradio")
    model_dir = _model_dir(tmp_path / "model")
    port = _free_port()
    log = open(tmp_path / "web.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "crosslmm.cli", "web", "--model", model_dir, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ | {"GRADIO_ANALYTICS_ENABLED": "False"},
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.close()
                    pytest.fail(f"crosslmm web did not start:\n{(tmp_path / 'web.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, model_dir
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _choose(page, label: str) -> None:
    page.locator("#sample input").click()
    page.get_by_role("option", name=label).click()


@pytest.mark.slow
def test_web_page_in_chromium(server, tmp_path):
    _require(os.path.exists(CHROMIUM), "chromium")
    _require(_importable("playwright"), "playwright")
    from playwright.sync_api import expect, sync_playwright

    from crosslmm.web.app import write_samples

    url, model_dir = server
    samples = write_samples(tmp_path / "samples")  # the server's samples: the same seed, the same videos
    labels = list(samples)
    first, fourth = _expected(model_dir, [samples[labels[0]], samples[labels[3]]])
    assert first and fourth and first != fourth, "the test model must answer differently for the two samples"
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)
        page.goto(url)
        answer, status = page.locator("#answer textarea"), page.locator("#status")

        expect(page.locator("#question textarea")).to_have_value(QUESTION)
        _choose(page, labels[3])
        page.click("#ask")
        expect(answer).to_have_value(fourth)
        expect(page.locator("#t2v img")).to_be_visible()
        expect(page.locator("#v2v img")).to_be_visible()
        expect(status).to_contain_text("Gates")

        page.locator("#upload input[type=file]").set_input_files(str(corrupt))
        expect(page.locator('#upload a[download="corrupt.mp4"]')).to_be_visible()  # on the server
        page.click("#ask")
        expect(status).to_contain_text("Cannot use this video")
        expect(status).to_contain_text("corrupt.mp4")
        expect(answer).to_have_value("")

        page.locator("#upload button[aria-label=Clear]").click()
        _choose(page, labels[0])
        page.click("#ask")
        expect(answer).to_have_value(first)
        expect(page.locator("#t2v img")).to_be_visible()
        browser.close()


@pytest.mark.slow
def test_two_pages_asking_at_once_get_their_own_answers(server, tmp_path):
    """Two pages upload different videos and click Ask together: the requests queue on the model, and each
    page shows the answer to its own video, with its maps."""
    _require(os.path.exists(CHROMIUM), "chromium")
    _require(_importable("playwright"), "playwright")
    from playwright.sync_api import expect, sync_playwright

    from crosslmm.data.video import write_video

    url, model_dir = server
    videos = []
    for seed in range(6):  # plain coloured videos: two the test model answers differently about
        videos.append(str(tmp_path / f"clip{seed}.mp4"))
        write_video(videos[-1], coloured_frames(20, seed=seed, size=32), fps=4)
    answers = dict(zip(videos, _expected(model_dir, videos)))
    answered = [v for v in videos if answers[v]]  # an empty answer would match the empty box at once
    chosen = answered[:1] + [v for v in answered if answers[v] != answers[answered[0]]][:1]
    assert len(chosen) == 2, f"the test model must give two different non-empty answers: {answers}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        expect.set_options(timeout=WAIT_MS)
        pages = [browser.new_page(), browser.new_page()]
        for page, video in zip(pages, chosen):
            page.set_default_timeout(WAIT_MS)
            page.goto(url)
            page.locator("#upload input[type=file]").set_input_files(video)
            expect(page.locator(f'#upload a[download="{os.path.basename(video)}"]')).to_be_visible()
        for page in pages:
            page.click("#ask", no_wait_after=True)
        for page, video in zip(pages, chosen):
            expect(page.locator("#answer textarea")).to_have_value(answers[video])
            expect(page.locator("#t2v img")).to_be_visible()
            expect(page.locator("#status")).to_contain_text("Gates")
        browser.close()


def test_sample_labels_describe_the_demo_tasks_target(tmp_path):
    """Each sample's label names the colour with the vertical stripes, its cell and frames, as the video
    shows them; the page's question is the demo task's."""
    _require(_importable("gradio"), "gradio")
    import re

    import numpy as np

    from crosslmm.data.video import load_video
    from crosslmm.demo.synth import STRIPE, STRIPE_COLOURS, SynthSpec, questions_of
    from crosslmm.web.app import default_question, write_samples

    spec = SynthSpec()
    assert default_question() == QUESTION == questions_of(spec.design)["colour"]
    samples = write_samples(tmp_path)
    assert len({re.sub(r"^sample \d+: ", "", label) for label in samples}) == len(samples) == 4
    for label, path in samples.items():
        parsed = re.fullmatch(
            r"sample \d: vertical stripes on (\w+) at cell \((\d), (\d)\), frames (\d+)-(\d+)", label
        )
        assert parsed, label
        colour, row, col, first, last = parsed[1], *map(int, parsed.groups()[1:])
        frames = load_video(path, num_frames=spec.frames).frames.astype(np.float32)
        patch = frames[:, row * spec.cell : (row + 1) * spec.cell, col * spec.cell : (col + 1) * spec.cell]
        grey = patch.mean(-1)
        columns, rows = np.ptp(grey.mean(1), axis=1), np.ptp(grey.mean(2), axis=1)  # (T,) each
        vertical = (columns > STRIPE / 2) & (rows < columns / 3)
        assert vertical.nonzero()[0].tolist() == list(range(first, last + 1)), label
        assert patch[first : last + 1].mean((0, 1, 2)).argmax() == STRIPE_COLOURS.index(colour), label


def test_without_model_a_random_model_says_so(tmp_path, monkeypatch):
    _require(_importable("gradio"), "gradio")
    from crosslmm.web.app import RANDOM_NOTICE, load_web_model

    monkeypatch.chdir(tmp_path)  # no runs/demo here
    web = load_web_model(None)
    assert web.notice == RANDOM_NOTICE and "meaningless" in web.notice


def _web_model(slow_s: float = 0.0):
    """The tiny model of ``_model_dir`` in this process; every forward takes at least ``slow_s`` seconds and
    is counted (``calls``)."""
    from crosslmm.model.tiny import TinySpec, make_tiny
    from crosslmm.web.app import WebModel

    model, processor = make_tiny(TinySpec(), seed=TEST_MODEL_SEED, v2v=True, t2v=True)
    set_gates(model, 3.0)
    calls = []

    def slow(*_):
        calls.append(time.monotonic())
        time.sleep(slow_s)

    model.register_forward_pre_hook(slow)
    return WebModel(model.eval(), processor, "test"), calls


def test_requests_queue_on_the_model_and_show_their_place(tmp_path):
    """While another request holds the model, a request says how many are ahead; then it gets its turn and
    the answer ``crosslmm chat`` gives, with its maps."""
    _require(_importable("gradio"), "gradio")
    from crosslmm.web.app import ask, write_samples

    web, _ = _web_model()
    video = next(iter(write_samples(tmp_path, count=1).values()))
    holder = web.turns.take()  # another request, answering
    steps = ask(web, video, QUESTION, 20, 0, None)
    assert next(steps)[3] == "waiting for the model: 1 request(s) ahead"
    web.turns.done(holder)
    *_, (answer, t2v, v2v, status) = steps
    from crosslmm.data.video import load_video
    from crosslmm.inference import build_prompt, generate

    frames = load_video(video, num_frames=20).frames
    assert (
        answer
        == generate(web.model, web.processor, [build_prompt(web.processor, QUESTION)], [[frames]], 32)[0]
    )
    assert t2v is not None and v2v is not None and "Gates" in status


def test_a_page_that_goes_away_stops_its_generation(tmp_path):
    """The request's generator is closed mid-answer (gradio does this when the page goes away): its
    generation stops at the next token and frees the model, so the next request runs alone."""
    _require(_importable("gradio"), "gradio")
    from crosslmm.web.app import ask, write_samples

    web, calls = _web_model(slow_s=0.05)
    video = next(iter(write_samples(tmp_path, count=1).values()))
    first = ask(web, video, QUESTION, 20, 0, None)
    while "answering" not in next(first)[3]:
        pass
    time.sleep(0.2)  # a few tokens
    first.close()
    closed_at = time.monotonic()
    second = web.turns.take()
    assert web.turns.wait(second, timeout=5), "the closed request must end its turn"
    web.turns.done(second)
    assert len([t for t in calls if t > closed_at]) <= 1  # at most the step under way
