"""``crosslmm chat`` (ask about a video, answers streamed; ``--stream`` replays it as a live stream) and
``crosslmm paper-table``."""

from __future__ import annotations

import argparse
import dataclasses
import sys

STREAM_FPS = 2.0  # chat --stream's default sampling rate


def _chat(args: argparse.Namespace) -> int:
    if args.stream:
        return _chat_stream(args)
    stream_only = [
        flag for flag, value in (("--ask", args.ask), ("--speed", args.speed)) if value is not None
    ]
    if stream_only:
        raise ValueError(f"{', '.join(stream_only)}: only with --stream")
    from transformers import TextStreamer

    from crosslmm.data.sampling import FrameSampling
    from crosslmm.data.video import load_frames
    from crosslmm.inference import build_prompt, generate, load_processor

    # Decode the video (at the processor's frame size) before loading the model: a bad path fails in a
    # second, naming the file.
    sampling = FrameSampling.resolve(args.frames, args.fps, args.max_frames, args.min_frames)
    frames = load_frames(args.video, sampling, size=load_processor(args.model).frame_size)
    model, processor = load_for(args)
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)

    def ask(question: str) -> None:
        prompt = build_prompt(processor, question)
        generate(
            model,
            processor,
            [prompt],
            [[frames]],
            args.max_new_tokens,
            streamer=streamer,
            tokens_per_frame=args.tokens_per_frame,
        )

    if args.question is not None:
        ask(args.question)
        return 0
    interactive = sys.stdin.isatty()
    print(f"{args.video}: {len(frames)} frames. Ask a question (Ctrl-D to quit).", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        if line.strip():
            ask(line.strip())


def _chat_stream(args: argparse.Namespace) -> int:
    """``chat --stream``: frames reach a StreamingSession at their video times (crosslmm.eval.live)."""
    if args.question is not None:
        raise ValueError("--question asks about the whole video; with --stream use --ask SECONDS:QUESTION")
    from transformers import TextStreamer

    from crosslmm.data.sampling import FrameSampling
    from crosslmm.data.video import load_video
    from crosslmm.eval.live import replay
    from crosslmm.inference import load_processor
    from crosslmm.streaming import StreamingSession

    # Decode the video (at the processor's frame size) before loading the model: a bad path fails in a
    # second, naming the file.
    fps = args.fps if args.fps is not None or args.frames is not None else STREAM_FPS
    sampling = FrameSampling.resolve(args.frames, fps, args.max_frames, args.min_frames)
    size = load_processor(args.model).frame_size
    clip = load_video(args.video, **dataclasses.asdict(sampling), size=size)
    times = clip.indices / clip.fps if clip.fps > 0 else clip.indices * 0.0  # an image: one frame at 0 s
    model, processor = load_for(args)
    # refuses a model that cannot stream, or a budget it was not trained at, saying why
    session = StreamingSession(model, processor, args.tokens_per_frame)
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    speed = 1.0 if args.speed is None else args.speed
    print(
        f"{args.video}: {len(times)} frames over {clip.duration:.1f} s, replayed "
        + ("as fast as possible" if speed == 0 else f"at {speed:g}x")
        + ("" if args.ask else "; ask a question at any moment (Ctrl-D to quit)"),
        file=sys.stderr,
    )
    try:
        replay(
            session,
            clip.frames,
            times,
            speed=speed,
            asks=args.ask,
            typed=None if args.ask else sys.stdin,
            answer=lambda q: session.ask(q, max_new_tokens=args.max_new_tokens, streamer=streamer),
        )
    finally:
        session.close()
    return 0


def load_for(args: argparse.Namespace):
    """The model and processor of :func:`add_model_arguments`' flags, the budget checked before any work."""
    from crosslmm.inference import load

    model, processor = load(
        args.model, device=args.device, allow_untrained_budgets=args.allow_untrained_budget
    )
    if args.tokens_per_frame is not None:
        model.config.check_budget(args.tokens_per_frame, source="--tokens-per-frame")
    return model, processor


def _ask_at(text: str) -> tuple[float, str]:
    """``SECONDS:QUESTION`` -> (seconds of video time, question)."""
    seconds, sep, question = text.partition(":")
    try:
        at = float(seconds)
    except ValueError:
        at = float("nan")
    if not sep or not question.strip() or not at >= 0:
        raise argparse.ArgumentTypeError(f"expected SECONDS:QUESTION with SECONDS >= 0, got {text!r}")
    return at, question.strip()


def _speed(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: as fast as possible), got {value}")
    return value


def _paper_table(args: argparse.Namespace) -> int:
    from crosslmm.eval.paper_table import write_table

    print(f"wrote {write_table(args.results_dir, args.out)}")
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The flags every command that answers about one video shares (chat, explain): model, video, frame
    sampling, token budget, device."""
    p.add_argument("--model", required=True, help="CrossLMM model dir")
    p.add_argument("--video", required=True, help="video (or image) file")
    sampling = p.add_mutually_exclusive_group()
    sampling.add_argument(
        "--frames",
        type=positive_int,
        help="uniformly sampled frames (default: 1 fps clamped to [64, 512], as stage-2 training)",
    )
    sampling.add_argument("--fps", type=float, help="frames per second to sample instead")
    p.add_argument("--min-frames", type=positive_int, help="floor for fps sampling (short clips)")
    p.add_argument("--max-frames", type=positive_int, help="cap on the sampled frames")
    p.add_argument(
        "--tokens-per-frame",
        type=positive_int,
        help="pooled tokens per frame (elastic models: a trained budget; also with --stream)",
    )
    p.add_argument(
        "--allow-untrained-budget",
        action="store_true",
        help="run a --tokens-per-frame the model was not trained at (a pooled grid of the tower), with a warning",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("chat", help="ask a CrossLMM about a video; answers are streamed")
    add_model_arguments(p)
    p.add_argument("--question", help="ask once and exit; without it, questions are read from stdin")
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    live = p.add_argument_group("live stream (docs/streaming.md)")
    live.add_argument(
        "--stream",
        action="store_true",
        help=f"replay the video as a live stream (default --fps {STREAM_FPS:g}); each answer sees the frames so far",
    )
    live.add_argument(
        "--ask",
        type=_ask_at,
        action="append",
        metavar="SECONDS:QUESTION",
        help="ask at this video time (repeatable; for scripts, instead of reading stdin)",
    )
    live.add_argument(
        "--speed", type=_speed, help="video seconds per wall second (default 1; 0: as fast as possible)"
    )
    p.set_defaults(func=_chat)

    p = subparsers.add_parser("paper-table", help="lmms-eval results beside the paper's Table 1 (Markdown)")
    p.add_argument("results_dir", help="lmms-eval --output_path dir(s) to search for *_results.json")
    p.add_argument("--out", default="docs/results.md")
    p.set_defaults(func=_paper_table)
