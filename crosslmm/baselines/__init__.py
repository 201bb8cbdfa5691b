"""Visual-token reduction baselines (issue 16), selected by ``CrossLMMConfig.visual_reducer``.

Each is a small, parameter-free module kept out of the model core; docs/baselines.md describes them.

* ``"pool"``: uniform pooling to ``tokens_per_frame`` (the connector's ``pool_frames``, not here).
* ``"random"`` (:mod:`.random_drop`), ``"salient"`` (:mod:`.salient`, VisionZip-style) and ``"merge"``
  (:mod:`.merge`, ToMe-style): frame reducers, (F, N, C) -> (F, k, C), run where pooling runs.
* ``"fastv"`` (:mod:`.fastv`): every patch enters the LLM; decoder layers from ``fastv_layer`` on see only
  the ``fastv_keep`` visual tokens per frame that the last prompt token attended to most.

This package depends on torch and transformers only, so the model's config and connector can import it.
"""

from __future__ import annotations

from crosslmm.baselines.merge import ToMeMerge
from crosslmm.baselines.random_drop import RandomDrop
from crosslmm.baselines.salient import SalientSelect

FRAME_REDUCERS = {"random": RandomDrop, "salient": SalientSelect, "merge": ToMeMerge}


def build_frame_reducer(
    name: str, tokens_per_frame: int, seed: int = 0
) -> RandomDrop | SalientSelect | ToMeMerge | None:
    """The frame reducer of ``visual_reducer`` ``name`` (None for "pool" and "fastv", which are not)."""
    if name not in FRAME_REDUCERS:
        return None
    if name == "random":
        return RandomDrop(tokens_per_frame, seed)
    return FRAME_REDUCERS[name](tokens_per_frame)
