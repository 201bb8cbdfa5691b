"""Installed as the package ``crosslmm.configs`` (pyproject.toml's package-dir), so the model presets, training
recipes and DeepSpeed configs below ship in the wheel; read them through ``crosslmm.model.presets.CONFIG_DIR``."""
