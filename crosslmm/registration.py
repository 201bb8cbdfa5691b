"""CrossLMM's registration with transformers' Auto classes, done as soon as transformers is imported.

``import crosslmm`` must make ``AutoModelForCausalLM.from_pretrained(dir)`` work, but registering needs the
model classes, and importing them (torch, transformers' modeling code) takes seconds that ``crosslmm --help``
should not pay. So ``crosslmm/__init__.py`` calls :func:`register_when_transformers_loads`: if transformers
is already imported, CrossLMM registers at once; otherwise a one-shot import hook registers it right after
transformers is imported, by whoever imports it. When that import happens inside the import of a crosslmm
module (``crosslmm.model.configuration`` imports transformers), registration waits until that crosslmm import
is complete, because registering imports the model modules themselves. The hook wraps the loaders of
transformers and of crosslmm's own modules only; it changes nothing in transformers.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Callable
from types import ModuleType


def register() -> None:
    """Register the config, the models and the processor with the Auto classes (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor

    from crosslmm.model.configuration import CrossLMMConfig
    from crosslmm.model.modeling import CrossLMMForCausalLM, CrossLMMModel
    from crosslmm.model.processing import CrossLMMProcessor

    AutoConfig.register("crosslmm", CrossLMMConfig, exist_ok=True)
    AutoModel.register(CrossLMMConfig, CrossLMMModel, exist_ok=True)
    AutoModelForCausalLM.register(CrossLMMConfig, CrossLMMForCausalLM, exist_ok=True)
    AutoProcessor.register(CrossLMMConfig, CrossLMMProcessor, exist_ok=True)


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Finds no module itself: it asks the other finders, and wraps the loader of transformers and of every
    ``crosslmm.*`` module so that :func:`register` runs once transformers is imported and no crosslmm module
    is half-executed."""

    def __init__(self) -> None:
        self.depth = 0  # wrapped modules executing now (nested imports)
        self.transformers_loaded = False

    def find_spec(self, name: str, path=None, target: ModuleType | None = None):
        if name != "transformers" and not name.startswith("crosslmm."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            # The loader is this module's own instance (one per spec), so wrapping it touches no other module.
            spec.loader.exec_module = self._wrap(spec.loader.exec_module, name == "transformers")
        return spec

    def _wrap(self, exec_module: Callable[[ModuleType], None], is_transformers: bool):
        def exec_then_register(module: ModuleType) -> None:
            self.depth += 1
            try:
                exec_module(module)
            finally:
                self.depth -= 1
            self.transformers_loaded |= is_transformers
            if self.transformers_loaded and self.depth == 0 and self in sys.meta_path:
                sys.meta_path.remove(self)  # one shot: later imports are not wrapped
                register()

        return exec_then_register


def register_when_transformers_loads() -> None:
    """Register now if transformers is imported, else as soon as it is (see the module docstring)."""
    if "transformers" in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTransformers())
