"""``crosslmm demo --needle`` (docs/needle.md): the demo's trained models scored on longer videos with the
target placed at chosen depths, LongVA's V-NIAH check. ``run.py`` (data and scoring), ``report.py`` (heatmap
tables, paired statistics, plot)."""
