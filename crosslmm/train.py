"""Train CrossLMM: ``torchrun --nproc_per_node N -m crosslmm.train --config configs/train/X.yaml [key=value ...]``.

The ``__main__`` of that command: parse, load the config, and hand it to the launcher,
:mod:`crosslmm.training.launch`. ``crosslmm train --config ...`` (:mod:`crosslmm.training.commands`) is the
same in one process.
"""

from __future__ import annotations

import argparse

from crosslmm.training.commands import add_arguments
from crosslmm.training.config import load_config
from crosslmm.training.launch import exit_cleanly, launch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crosslmm.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    launch(load_config(args.config, args.overrides))
    return 0


if __name__ == "__main__":
    exit_cleanly(main())
