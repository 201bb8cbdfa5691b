"""Visual-token reduction baselines (docs/baselines.md), selected by ``CrossLMMConfig.visual_reducer``.

Each is a small, parameter-free module kept out of the model core; docs/baselines.md describes them.

* ``"pool"``: uniform pooling to ``tokens_per_frame`` (the connector's ``pool_frames``, not here).
* ``"random"`` (:mod:`.random_drop`), ``"salient"`` (:mod:`.salient`, VisionZip-style) and ``"merge"``
  (:mod:`.merge`, ToMe-style): frame reducers, (F, N, C) -> (F, k, C), run where pooling runs. Salient
  ranks by the tower's attention, which its model subclass (:mod:`.salient_model`) hands the connector;
  merge's model subclass (:mod:`.merge_model`) adds ToMe's proportional attention (log of each merged
  token's size) to the decoder's attention logits.
* ``"fastv"`` (:mod:`.fastv`): every patch enters the LLM; decoder layers from ``fastv_layer`` on see only
  the ``fastv_keep`` visual tokens per frame that the last prompt token attended to most.

The frame reducers depend on torch only, so the model's connector imports them. FastV changes the decoder
loop: it is a subclass of the model (``FastVModel``), imported only when a config asks for it, since it
imports the model core itself.
"""

from __future__ import annotations

from crosslmm.baselines.merge import ToMeMerge
from crosslmm.baselines.random_drop import RandomDrop
from crosslmm.baselines.salient import SalientSelect

FRAME_REDUCERS = {"random": RandomDrop, "salient": SalientSelect, "merge": ToMeMerge}
DECODER_REDUCERS = ("fastv",)  # reducers inside the LLM: a CrossLMMModel subclass with its own decoder loop
# Every visual_reducer; CrossLMMConfig spells them as a Literal (tests/test_baselines.py keeps the two equal).
REDUCERS = ("pool", *FRAME_REDUCERS, *DECODER_REDUCERS)


def decoder_model_class(name: str) -> type | None:
    """The model class of a reducer that needs more than the connector (None: CrossLMMModel): FastV's
    decoder loop, salient's tower attention, merge's proportional attention. Each imports the model core,
    which imports this package."""
    if name == "fastv":
        from crosslmm.baselines.fastv import FastVModel

        return FastVModel
    if name == "salient":
        from crosslmm.baselines.salient_model import SalientModel

        return SalientModel
    if name == "merge":
        from crosslmm.baselines.merge_model import MergeModel

        return MergeModel
    return None


def build_frame_reducer(
    name: str, tokens_per_frame: int, seed: int = 0
) -> RandomDrop | SalientSelect | ToMeMerge | None:
    """The frame reducer of ``visual_reducer`` ``name`` (None for "pool" and "fastv", which are not)."""
    if name not in FRAME_REDUCERS:
        return None
    if name == "random":
        return RandomDrop(tokens_per_frame, seed)
    return FRAME_REDUCERS[name](tokens_per_frame)
