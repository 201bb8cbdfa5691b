"""``crosslmm init-tiny`` and ``crosslmm build``: write complete, loadable model directories."""

from __future__ import annotations

import argparse


def _init_tiny(args: argparse.Namespace) -> int:
    from crosslmm.model.build import save_model_dir
    from crosslmm.model.tiny import TinySpec, make_tiny

    spec = TinySpec(
        llm=args.llm,
        vision=args.vision,
        hidden_size=args.hidden_size,
        layers=args.layers,
        image_size=args.image_size,
        patch_size=args.patch_size,
    )
    fields = dict(
        tokens_per_frame=args.tokens_per_frame,
        v2v=not args.no_v2v,
        t2v=not args.no_t2v,
        v2v_scope=args.v2v_scope,
        pooling_mode=args.pooling,
    )
    if args.cross_every is not None:
        fields["cross_attention_every"] = args.cross_every
    model, processor = make_tiny(spec, seed=args.seed, **fields)
    save_model_dir(model, processor, args.out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote tiny CrossLMM ({args.llm} + {args.vision}, {n_params / 1e3:.0f}k params) to {args.out}")
    return 0


def _build(args: argparse.Namespace) -> int:
    from crosslmm.model.build import build_from_pretrained, save_model_dir
    from crosslmm.model.presets import load_config_yaml

    model, processor = build_from_pretrained(args.llm, args.vision, load_config_yaml(args.config))
    save_model_dir(model, processor, args.out)
    print(f"wrote CrossLMM composed from {args.llm} + {args.vision} to {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("init-tiny", help="write a tiny random CrossLMM dir (tests, demos)")
    p.add_argument("out")
    p.add_argument("--llm", choices=["qwen2", "llama"], default="qwen2")
    p.add_argument("--vision", choices=["siglip", "clip", "open_clip"], default="siglip")
    p.add_argument("--tokens-per-frame", type=int, default=4)
    p.add_argument("--pooling", choices=["avg", "max", "bilinear"], default="avg")
    p.add_argument(
        "--cross-every", type=int, default=None, help="cross-attention after every K layers (0: none)"
    )
    p.add_argument("--v2v-scope", choices=["frame", "video"], default="frame")
    p.add_argument("--no-v2v", action="store_true")
    p.add_argument("--no-t2v", action="store_true")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_init_tiny)

    p = subparsers.add_parser("build", help="compose a CrossLMM from local LLM + vision checkpoints")
    p.add_argument(
        "--llm",
        required=True,
        help="local HF Qwen2/Llama causal-LM dir, or a .gguf file (needs the gguf package)",
    )
    p.add_argument("--vision", required=True, help="local SigLIP/SigLIP2/CLIP or OpenCLIP dir")
    p.add_argument("--config", required=True, help="configs/model/<name>.yaml or a preset name")
    p.add_argument("out")
    p.set_defaults(func=_build)
