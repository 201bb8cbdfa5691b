"""``crosslmm bench speed --preset``: a model preset at its real size on one device. ``run.py`` (the cells),
``setup.py`` (settings, presets, variant models), ``train.py`` (the training step), ``targets.py``,
``device.py`` (clock, peak memory, OOM guard), ``report.py`` (tables, Markdown, plot)."""
