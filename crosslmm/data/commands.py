"""``crosslmm toy-data``: write the toy video-QA dataset used by the tiny training configs."""

from __future__ import annotations

import argparse


def _toy_data(args: argparse.Namespace) -> int:
    from crosslmm.data.synthetic import make_toy_dataset

    mixture = make_toy_dataset(args.out, num_videos=args.videos, num_frames=args.frames)
    print(f"wrote toy dataset; mixture: {mixture}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "toy-data", help="write a toy video-QA dataset + mixture YAML (CPU runs, tests)"
    )
    p.add_argument("out")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.set_defaults(func=_toy_data)
