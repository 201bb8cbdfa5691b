"""``crosslmm bench speed`` on the CPU mini model: ``measure.py`` (prefill/decode time and peak memory),
``streaming.py`` (the streaming-ingest row), ``bounded_decode.py`` (decode with top-m frames kept),
``report.py`` (tables, JSON, plot)."""
