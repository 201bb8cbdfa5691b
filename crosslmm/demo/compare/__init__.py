"""``crosslmm compare`` (docs/comparisons.md): other visual-token reducers against CrossLMM at equal FLOPs on
the demo's task. ``plan.py`` (what is trained and how each budget is chosen), ``run.py`` (the pipeline),
``report.py`` (tables, plots, the docs section), ``commands.py`` (the CLI)."""
