"""A built wheel carries the configs: presets load by name and the demo finds its recipe outside the checkout."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]

# Runs from the installed wheel only (PYTHONPATH=target, cwd elsewhere): prints where each config was found.
PROBE = """
import crosslmm
from crosslmm.demo.run import DEMO_CONFIG
from crosslmm.model.presets import load_config_yaml

assert load_config_yaml("crosslmm-7b-9tok")["tokens_per_frame"] == 9
assert DEMO_CONFIG.is_file(), DEMO_CONFIG
print(crosslmm.__file__)
print(DEMO_CONFIG)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy of what the wheel is made of: setuptools writes build/ and *.egg-info next to the
    # sources, and a stale build/lib would smuggle deleted modules into the wheel.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source)
    for name in ("crosslmm", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [*PIP, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("crosslmm-*.whl")
    return built


@pytest.mark.slow
def test_wheel_ships_every_config_and_subpackage(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").glob("*/*") if p.is_file())
    missing = [c for c in configs if f"crosslmm/{c}" not in names]
    assert configs and not missing, f"configs not in the wheel: {missing}"
    # pyproject.toml lists the packages by hand (a mapped package rules out packages.find).
    inits = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "crosslmm").rglob("__init__.py"))
    unlisted = [i for i in inits if i not in names]
    assert not unlisted, f"subpackages missing from pyproject.toml's [tool.setuptools] packages: {unlisted}"


@pytest.mark.slow
def test_installed_wheel_loads_a_preset_and_the_demo_config(wheel, tmp_path):
    target = tmp_path / "site"
    installed = subprocess.run(
        [*PIP, "install", "--no-deps", "--no-compile", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    package_file, demo_config = result.stdout.split()
    assert Path(package_file).is_relative_to(target)
    assert Path(demo_config).is_relative_to(target)
