"""Workarounds for the installed lmms-eval, kept out of the plugin so each can be deleted on its own.

``tests/test_compat.py`` fails once lmms-eval no longer needs a workaround here: then delete it.
"""

from __future__ import annotations

import importlib.util


def skip_filelock3_patch_on_filelock4() -> bool:
    """Let lmms-eval 0.7.3 run next to filelock >= 4 (a dependency conflict we cannot pin away: torch,
    datasets and huggingface_hub all accept filelock 4). Returns whether it marked the patch as applied.

    ``simple_evaluate`` patches filelock 3.x's lock metaclass through ``import filelock._api``
    (``lmms_eval.evaluator._enable_reentrant_filelocks``); in filelock 4 that module is gone, so every run
    dies with ModuleNotFoundError before evaluating. filelock 4 has its own per-path singleton locks, so the
    patch is skipped by marking it applied (the guard lmms-eval itself checks). With filelock 3.x installed
    nothing is touched. The plugin calls this when lmms-eval imports it for ``--model crosslmm``, which
    happens before ``simple_evaluate`` reaches the patch.
    """
    if importlib.util.find_spec("filelock._api") is not None:
        return False
    from lmms_eval import evaluator

    patch = getattr(evaluator, "_enable_reentrant_filelocks", None)
    if patch is None:
        return False
    patch._patched = True
    return True
