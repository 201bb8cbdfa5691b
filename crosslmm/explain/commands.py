"""``crosslmm explain`` (answer a question and draw what the cross-attention looked at) and
``crosslmm explain-check`` (does a demo-trained model look at the target? after a uniform-T2V control)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from crosslmm.eval.commands import add_model_arguments, load_for, positive_int


def _explain(args: argparse.Namespace) -> int:
    from crosslmm.data.sampling import FrameSampling
    from crosslmm.data.video import load_video
    from crosslmm.explain.maps import answer_text, explain, generate_ids
    from crosslmm.explain.render import write_all
    from crosslmm.inference import build_prompt, load_processor

    # Decode the video (at the processor's frame size: the maps are drawn on the frames the model saw)
    # before loading the model: a bad path fails in a second, naming the file.
    sampling = FrameSampling.resolve(args.frames, args.fps, args.max_frames, args.min_frames)
    size = load_processor(args.model).frame_size
    clip = load_video(args.video, **dataclasses.asdict(sampling), size=size)
    model, processor = load_for(args)
    if not (model.config.v2v or model.config.t2v):
        raise ValueError(f"{args.model}: this model has no cross-attention layers, so nothing to explain")
    if args.all_tokens and model.config.decode_memory != "full":
        print(
            "note: this model decodes with a top-k frame selection; maps after the first token show the full "
            "memory that selection was ranked on",
            file=sys.stderr,
        )
    (answer_ids,) = generate_ids(
        model,
        processor,
        [build_prompt(processor, args.question)],
        [clip.frames],
        args.max_new_tokens,
        tokens_per_frame=args.tokens_per_frame,
    )
    print(answer_text(processor, answer_ids), flush=True)
    expl = explain(
        model,
        processor,
        clip.frames,
        args.question,
        answer_ids,
        all_tokens=args.all_tokens,
        tokens_per_frame=args.tokens_per_frame,
        frame_indices=clip.indices.tolist(),
    )
    for path in write_all(expl, clip.frames, args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    from crosslmm.explain.check import run_check, summary

    out = Path(args.out) if args.out else None
    if out is not None:  # before the work, not after it: a bad --out fails in a second
        out.parent.mkdir(parents=True, exist_ok=True)
    result = run_check(args.model, args.data, args.frames, args.limit)
    text = json.dumps(result, indent=1)
    print(text)
    print(summary(result), file=sys.stderr)
    if out is not None:
        out.write_text(text + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain", help="answer about a video and draw its cross-attention maps (docs/explain.md)"
    )
    add_model_arguments(p)  # the same model, video, sampling and budget flags as crosslmm chat
    p.add_argument("--question", required=True)
    p.add_argument("--out", required=True, help="dir for the PNGs and explanation.json")
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument(
        "--all-tokens",
        action="store_true",
        help="a T2V map for every answer token, not only the first (t2v_tokens.png, JSON)",
    )
    p.set_defaults(func=_explain)

    p = subparsers.add_parser(
        "explain-check",
        help="on a crosslmm demo data dir: accuracy with uniform T2V weights against the majority floor, then "
        "how often the top T2V patch is on the target (docs/explain.md)",
    )
    p.add_argument("--model", required=True, help="a model trained on the synthetic task")
    p.add_argument("--data", required=True, help="its data dir (test.json, spec.json, videos/)")
    p.add_argument("--frames", type=positive_int, default=20, help="uniformly sampled frames per video")
    p.add_argument("--limit", type=positive_int, help="score only the first N test videos")
    p.add_argument("--out", help="also write the rates to this JSON file")
    p.set_defaults(func=_check)
