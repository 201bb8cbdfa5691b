"""Model variants as data: ``configs/model/<name>.yaml``, picked by name or by path; where configs/ lives."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

# The repository's configs/ directory, installed as the package crosslmm.configs (see pyproject.toml): the
# same files from a source checkout, an editable install or a wheel.
CONFIG_DIR = Path(str(files("crosslmm.configs")))
PRESET_DIR = CONFIG_DIR / "model"


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config_yaml(path_or_name: str | Path) -> dict[str, Any]:
    """Load a model config YAML (CrossLMMConfig kwargs with nested ``text_config``/``vision_config``).

    A bare name such as ``"crosslmm-7b-9tok"`` means ``configs/model/crosslmm-7b-9tok.yaml``; anything
    that is an existing file, or looks like a path, is read as a path.
    """
    path = Path(path_or_name)
    looks_like_path = path.suffix in (".yaml", ".yml") or len(path.parts) > 1
    if not path.is_file():
        if looks_like_path:
            raise FileNotFoundError(f"model config file {str(path)!r} does not exist")
        path = PRESET_DIR / f"{path_or_name}.yaml"
        if not path.is_file():
            raise FileNotFoundError(
                f"unknown model preset {str(path_or_name)!r}; available in {PRESET_DIR}: "
                f"{', '.join(available_presets()) or '(none)'}"
            )
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a model config must be a YAML mapping, got {type(data).__name__}")
    from crosslmm.model.configuration import check_fields  # transformers: only once a config is read

    check_fields(data, str(path))
    return data
