"""Evaluation: the lmms-eval plugin and the ``chat``/``paper-table`` commands (the paper's numbers are in
``crosslmm.paper``).

This module stays import-light: lmms-eval imports it through the ``lmms_eval.models`` entry point every
time its model registry is built, before it knows which model is wanted.
"""

from __future__ import annotations


def lmms_eval_manifest():
    """Entry-point payload for lmms-eval >= 0.7 (``ModelRegistryV2.load_entrypoint_manifests``).

    lmms-eval calls a callable payload and expects a ``ModelManifest``; pointing the entry point at the
    model class itself would make it instantiate the class with no arguments. The class path is imported
    only when ``--model crosslmm`` is actually requested.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="crosslmm", simple_class_path="crosslmm.eval.lmms_plugin.CrossLMMEval")
