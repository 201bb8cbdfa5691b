"""Efficiency benchmarks (``crosslmm bench``, docs/efficiency.md), one sub-package per benchmark:

* :mod:`.flops`: analytic prefill FLOPs (``bench flops``);
* :mod:`.speed`: prefill/decode time and peak memory on the CPU mini model (``bench speed``), with the
  streaming-ingest and bounded-decode rows;
* :mod:`.preset`: a model preset at its real size on a device (``bench speed --preset``);
* :mod:`.memory`: peak memory of one training step (``bench memory``);
* :mod:`.data`: the input pipeline: video decode time and RSS per sample, DataLoader samples/s, and what a
  stage-2 job needs (``bench data``).

Shared by them: ``commands.py`` (the CLI), ``mini.py`` (the CPU mini model), ``variants.py`` (the variants
on shared weights), ``rss.py`` (peak resident memory in a fresh process), ``targets.py`` and ``report.py``
(tables, JSON, plots).
"""
