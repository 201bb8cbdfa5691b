"""``crosslmm demo --elastic`` (docs/elastic.md): one model trained at several token budgets, scored at each.
``run.py`` (train and score), ``report.py`` (table, plot, summary)."""
