"""The command line answers at once, and ``import crosslmm`` still registers the Auto classes.

``import crosslmm`` imports neither torch nor transformers (crosslmm/registration.py registers CrossLMM as
soon as transformers is imported), so ``crosslmm --help`` costs little more than starting Python.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


def _seconds(args: list[str], expect_rc: int) -> float:
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert result.returncode == expect_rc, result.stdout + result.stderr
    return elapsed


def test_help_and_argument_errors_cost_little_more_than_starting_python():
    # Best of 3 of each, interleaved in the same run, so a loaded machine slows both alike.
    bare, help_, error = [], [], []
    for _ in range(3):
        bare.append(_seconds([sys.executable, "-c", "pass"], 0))
        help_.append(_seconds([sys.executable, "-m", "crosslmm.cli", "--help"], 0))
        error.append(_seconds([sys.executable, "-m", "crosslmm.cli", "bench", "speed", "--no-such-flag"], 2))
    # Importing torch alone takes about 2 s here and transformers' model code 5 s; the parsers take ~0.3 s.
    assert min(help_) - min(bare) < 1.0, f"--help {min(help_):.2f} s vs python -c pass {min(bare):.2f} s"
    assert min(error) - min(bare) < 1.0, f"argument error {min(error):.2f} s vs {min(bare):.2f} s"


def test_importing_the_package_and_building_the_parser_import_no_torch():
    probe = (
        "import sys, crosslmm, crosslmm.model, crosslmm.convert; from crosslmm.cli import build_parser; "
        "build_parser(); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# Registration must not depend on what is imported first: the README's order, transformers first, and a
# crosslmm module whose own import pulls in transformers half-way through (registration waits for it).
PRELUDES = {
    "readme": "import crosslmm",
    "transformers_first": "import transformers; import crosslmm",
    "model_module_first": "import crosslmm.model.configuration",
    "data_module_first": "import crosslmm.data.dataset",
}


@pytest.mark.parametrize(
    "prelude",
    [
        "readme",
        pytest.param("transformers_first", marks=pytest.mark.slow),
        pytest.param("model_module_first", marks=pytest.mark.slow),
        pytest.param("data_module_first", marks=pytest.mark.slow),
    ],
)
def test_auto_classes_load_a_crosslmm_dir_after_import_crosslmm(tiny_dir, prelude):
    probe = (
        f"{PRELUDES[prelude]}\n"
        "from transformers import AutoModelForCausalLM, AutoProcessor\n"
        f"model = AutoModelForCausalLM.from_pretrained({tiny_dir!r})\n"
        f"processor = AutoProcessor.from_pretrained({tiny_dir!r})\n"
        "print(type(model).__name__, type(processor).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["CrossLMMForCausalLM", "CrossLMMProcessor"]


def test_model_classes_load_on_first_access():
    import crosslmm
    from crosslmm.model import CrossLMMForCausalLM
    from crosslmm.model.modeling import CrossLMMForCausalLM as defined

    assert crosslmm.CrossLMMForCausalLM is CrossLMMForCausalLM is defined
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = crosslmm.no_such_name
