"""``crosslmm chat`` (ask about a video, answers streamed) and ``crosslmm paper-table``."""

from __future__ import annotations

import argparse
import sys


def _chat(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    from crosslmm.data.sampling import FrameSampling
    from crosslmm.data.video import load_frames
    from crosslmm.inference import build_prompt, generate, load

    # Decode the video before loading the model: a bad path fails in a second, naming the file.
    sampling = FrameSampling.resolve(args.frames, args.fps, args.max_frames, args.min_frames)
    frames = load_frames(args.video, sampling)
    model, processor = load(args.model, device=args.device)
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)

    def ask(question: str) -> None:
        prompt = build_prompt(processor, question)
        generate(model, processor, [prompt], [[frames]], args.max_new_tokens, streamer=streamer)

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


def _paper_table(args: argparse.Namespace) -> int:
    from crosslmm.eval.paper_table import write_table

    print(f"wrote {write_table(args.results_dir, args.out)}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("chat", help="ask a CrossLMM about a video; answers are streamed")
    p.add_argument("--model", required=True, help="CrossLMM model dir")
    p.add_argument("--video", required=True, help="video (or image) file")
    p.add_argument("--question", help="ask once and exit; without it, questions are read from stdin")
    sampling = p.add_mutually_exclusive_group()
    sampling.add_argument(
        "--frames",
        type=_positive_int,
        help="uniformly sampled frames (default: 1 fps clamped to [64, 512], as stage-2 training)",
    )
    sampling.add_argument("--fps", type=float, help="frames per second to sample instead")
    p.add_argument("--min-frames", type=_positive_int, help="floor for fps sampling (short clips)")
    p.add_argument("--max-frames", type=_positive_int, help="cap on the sampled frames")
    p.add_argument("--max-new-tokens", type=_positive_int, default=128)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")
    p.set_defaults(func=_chat)

    p = subparsers.add_parser("paper-table", help="lmms-eval results beside the paper's Table 1 (Markdown)")
    p.add_argument("results_dir", help="lmms-eval --output_path dir(s) to search for *_results.json")
    p.add_argument("--out", default="docs/results.md")
    p.set_defaults(func=_paper_table)
