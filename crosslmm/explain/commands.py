"""``crosslmm explain`` (answer a question and draw what the cross-attention looked at) and
``crosslmm explain-check`` (does a demo-trained model look at the marker?)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def _explain(args: argparse.Namespace) -> int:
    from crosslmm.data.sampling import FrameSampling
    from crosslmm.data.video import load_video
    from crosslmm.explain.maps import explain
    from crosslmm.explain.render import write_all
    from crosslmm.inference import build_prompt, generate, load

    # Decode the video before loading the model: a bad path fails in a second, naming the file.
    sampling = FrameSampling.resolve(args.frames, args.fps, args.max_frames)
    clip = load_video(args.video, **dataclasses.asdict(sampling))
    model, processor = load(args.model, device=args.device)
    if args.tokens_per_frame is not None:
        model.config.check_budget(args.tokens_per_frame, source="--tokens-per-frame")
    if not (model.config.v2v or model.config.t2v):
        raise ValueError(f"{args.model}: this model has no cross-attention layers, so nothing to explain")
    if args.all_tokens and model.config.decode_memory != "full":
        print(
            "note: this model decodes with a top-k frame selection; maps after the first token show the full "
            "memory that selection was ranked on",
            file=sys.stderr,
        )
    prompt = build_prompt(processor, args.question)
    answer = generate(
        model,
        processor,
        [prompt],
        [[clip.frames]],
        args.max_new_tokens,
        tokens_per_frame=args.tokens_per_frame,
    )[0]
    print(answer)
    expl = explain(
        model,
        processor,
        clip.frames,
        args.question,
        answer,
        all_tokens=args.all_tokens,
        tokens_per_frame=args.tokens_per_frame,
        frame_indices=clip.indices.tolist(),
    )
    for path in write_all(expl, clip.frames, args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    from crosslmm.explain.check import run_check

    result = run_check(args.model, args.data, args.frames, args.limit)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain", help="answer about a video and draw its cross-attention maps (docs/explain.md)"
    )
    p.add_argument("--model", required=True, help="CrossLMM model dir")
    p.add_argument("--video", required=True, help="video (or image) file")
    p.add_argument("--question", required=True)
    p.add_argument("--out", required=True, help="dir for the PNGs and explanation.json")
    sampling = p.add_mutually_exclusive_group()
    sampling.add_argument(
        "--frames", type=_positive_int, help="uniformly sampled frames (default: as crosslmm chat)"
    )
    sampling.add_argument("--fps", type=float, help="frames per second to sample instead")
    p.add_argument("--max-frames", type=_positive_int, help="cap on the sampled frames")
    p.add_argument("--max-new-tokens", type=_positive_int, default=32)
    p.add_argument(
        "--tokens-per-frame",
        type=_positive_int,
        help="pooled tokens per frame (elastic models: a trained budget)",
    )
    p.add_argument(
        "--all-tokens",
        action="store_true",
        help="a T2V map for every answer token, not only the first (t2v_tokens.png, JSON)",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")
    p.set_defaults(func=_explain)

    p = subparsers.add_parser(
        "explain-check",
        help="on a crosslmm demo data dir: how often the top T2V patch is on the marker (docs/explain.md)",
    )
    p.add_argument("--model", required=True, help="a model trained on the synthetic marker task")
    p.add_argument("--data", required=True, help="its data dir (test.json, spec.json, videos/)")
    p.add_argument("--frames", type=_positive_int, default=20, help="uniformly sampled frames per video")
    p.add_argument("--limit", type=_positive_int, help="score only the first N test videos")
    p.add_argument("--out", help="also write the rates to this JSON file")
    p.set_defaults(func=_check)
