"""The ``crosslmm`` command: each feature module registers its own subcommands."""

from __future__ import annotations

import argparse
import sys

# Each command module imports only the standard library at module level (a subcommand imports its feature
# when it runs), and ``import crosslmm`` imports neither torch nor transformers (crosslmm/registration.py), so
# ``crosslmm --help`` and argument errors answer in a fraction of a second (tests/test_cli.py times it).
from crosslmm.bench import commands as bench_commands
from crosslmm.convert import commands as convert_commands
from crosslmm.data import commands as data_commands
from crosslmm.demo import commands as demo_commands
from crosslmm.demo.compare import commands as compare_commands
from crosslmm.eval import commands as eval_commands
from crosslmm.explain import commands as explain_commands
from crosslmm.model import commands as model_commands
from crosslmm.training import commands as training_commands
from crosslmm.web import commands as web_commands

# Modules exposing ``register(subparsers)``; each adds its subcommands with ``set_defaults(func=...)``.
# The order is the order of ``crosslmm --help``.
COMMAND_MODULES = (
    model_commands,
    training_commands,
    eval_commands,
    bench_commands,
    data_commands,
    convert_commands,
    demo_commands,
    compare_commands,
    explain_commands,
    web_commands,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crosslmm", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # user errors: one clear line, no traceback
        print(f"crosslmm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
