"""``crosslmm web``: the gradio demo page (docs/explain.md); needs the ``[web]`` extra."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def _web(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local demo phones nobody
    try:
        from crosslmm.web.app import build_app, load_web_model, write_samples
    except ModuleNotFoundError as err:
        if err.name != "gradio":
            raise
        raise ValueError('crosslmm web needs gradio: pip install -e ".[web]"') from None

    web = load_web_model(args.model)
    with tempfile.TemporaryDirectory(prefix="crosslmm-web-") as tmp:
        samples = write_samples(tmp)
        print(f"serving {web.name} on http://127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        build_app(web, samples).queue().launch(server_name="127.0.0.1", server_port=args.port, ssr_mode=False)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "web", help="gradio page on 127.0.0.1: ask about a video, see the attention maps (docs/explain.md)"
    )
    p.add_argument(
        "--model",
        help="CrossLMM model dir (default: runs/demo's trained crosslmm, else a tiny random model)",
    )
    p.add_argument("--port", type=int, default=7860)
    p.set_defaults(func=_web)
