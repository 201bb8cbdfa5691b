"""``crosslmm convert llava-onevision`` and ``crosslmm export llava-onevision``."""

from __future__ import annotations

import argparse


def _convert(args: argparse.Namespace) -> int:
    from crosslmm.convert.llava_onevision import convert_llava_onevision
    from crosslmm.model.build import save_model_dir

    fields = dict(
        pooling_mode=args.pooling,
        pooling_antialias=args.antialias,
        pooling_position=args.pooling_position,
        cross_attention_every=args.cross_every,
        t2v=not args.no_t2v,
        v2v_scope=args.v2v_scope,
    )
    model, processor = convert_llava_onevision(args.src, tokens_per_frame=args.tokens_per_frame, **fields)
    save_model_dir(model, processor, args.out)
    cfg = model.config
    print(
        f"wrote CrossLMM converted from {args.src} to {args.out}: {cfg.tokens_per_frame} tokens per frame "
        f"({cfg.pooling_mode}, antialias={cfg.pooling_antialias}, {cfg.pooling_position}), "
        f"{len(model.model.cross_layers)} zero-gated cross-attention blocks"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from transformers import AutoModelForCausalLM, AutoProcessor

    import crosslmm  # noqa: F401  (registers the Auto classes)
    from crosslmm.convert.llava_onevision import export_llava_onevision

    model = AutoModelForCausalLM.from_pretrained(args.src, dtype="auto")
    source, processor = export_llava_onevision(model, AutoProcessor.from_pretrained(args.src))
    source.save_pretrained(args.out, safe_serialization=True)
    processor.save_pretrained(args.out)
    print(f"wrote LlavaOnevisionForConditionalGeneration exported from {args.src} to {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    convert = subparsers.add_parser("convert", help="start a CrossLMM from another video LMM's checkpoint")
    sources = convert.add_subparsers(dest="source", required=True)
    p = sources.add_parser(
        "llava-onevision",
        help="local HF LlavaOnevisionForConditionalGeneration dir (LLaVA-OneVision, LLaVA-Video)",
        description="Defaults reproduce the source model exactly (its pooling, zero-gated cross-attention).",
    )
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument(
        "--tokens-per-frame", type=int, default=None, help="square; default: the source's ceil(g/2)^2 (196)"
    )
    p.add_argument("--pooling", choices=["bilinear", "avg", "max"], default="bilinear")
    p.add_argument(
        "--antialias", action="store_true", help="antialiased bilinear (the source has none; use for 9 or 1)"
    )
    p.add_argument(
        "--pooling-position", choices=["after_projector", "before_projector"], default="after_projector"
    )
    p.add_argument(
        "--cross-every", type=int, default=4, help="cross-attention after every K LLM layers (0: none)"
    )
    p.add_argument("--v2v-scope", choices=["frame", "video"], default="frame")
    p.add_argument("--no-t2v", action="store_true", help="V2V only (the paper's stage-1 setting)")
    p.set_defaults(func=_convert)

    export = subparsers.add_parser("export", help="write a CrossLMM back in another model's format")
    targets = export.add_subparsers(dest="target", required=True)
    p = targets.add_parser(
        "llava-onevision",
        help="CrossLMM dir with source pooling and closed gates -> LlavaOnevisionForConditionalGeneration dir",
    )
    p.add_argument("src")
    p.add_argument("out")
    p.set_defaults(func=_export)
