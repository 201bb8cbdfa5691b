"""The lmms-eval workarounds in ``crosslmm.eval.compat`` are still needed, and still work.

When a test here fails because lmms-eval fixed the problem, delete the workaround (and this test)."""

from __future__ import annotations

import importlib.util
import inspect

import pytest

evaluator = pytest.importorskip("lmms_eval.evaluator")

DELETE_SHIM = "lmms-eval no longer needs crosslmm.eval.compat.skip_filelock3_patch_on_filelock4: delete it"
FILELOCK_4 = importlib.util.find_spec("filelock._api") is None


def test_lmms_eval_still_patches_filelock3_internals():
    patch = getattr(evaluator, "_enable_reentrant_filelocks", None)
    assert patch is not None, DELETE_SHIM
    assert "import filelock._api" in inspect.getsource(patch), DELETE_SHIM


@pytest.mark.skipif(not FILELOCK_4, reason="filelock 3 installed: lmms-eval's patch works as is")
def test_lmms_eval_patch_still_fails_on_filelock4(monkeypatch):
    """Unguarded, lmms-eval's patch dies on filelock 4 before touching anything; with the shim it is skipped."""
    import crosslmm.eval.lmms_plugin  # noqa: F401  (imports apply the shim, as lmms-eval's import does)

    patch = evaluator._enable_reentrant_filelocks
    assert patch._patched is True
    patch()  # the guard short-cuts it: no ModuleNotFoundError
    monkeypatch.setattr(patch, "_patched", False)
    try:
        patch()
    except ModuleNotFoundError as err:
        assert "filelock._api" in str(err)
    else:
        pytest.fail(DELETE_SHIM)


def test_shim_leaves_filelock3_alone(monkeypatch):
    from crosslmm.eval import compat

    monkeypatch.setattr(compat.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(evaluator._enable_reentrant_filelocks, "_patched", False)
    assert compat.skip_filelock3_patch_on_filelock4() is False
    assert evaluator._enable_reentrant_filelocks._patched is False
