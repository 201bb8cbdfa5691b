"""Does a reducer keep the target patch? Counted on the marked frames of synthetic videos, with the demo's
shared frozen tower (:func:`crosslmm.demo.variants.build_model`), for the rules docs/comparisons.md discusses:
ToMe merging (k = 3) leaving the target as a token of its own, and the k' = 2 dominant patches of salient
selection (k = 3) ranked by tower attention or by feature norm (the earlier rule, an oracle on the marker
design). No training: it measures the task and the rules, not a model.

    python -m crosslmm.demo.compare.probe    # both designs, 40 videos each (about half a minute on 1 core)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crosslmm.baselines import ToMeMerge
from crosslmm.baselines.salient import context_tokens
from crosslmm.demo.compare.plan import SALIENT_LAYER
from crosslmm.demo.synth import SynthSpec, make_video
from crosslmm.demo.variants import DemoSettings, Variant, build_model


@dataclass(frozen=True)
class TargetKept:
    """Marked frames probed, and in how many of them each rule keeps the target patch."""

    frames: int
    merge_unmerged: int  # ToMe k=3 leaves the target patch as a token of size 1
    salient_attention: int  # salient k=3's dominant patches (tower attention in SALIENT_LAYER) include it
    salient_norm: int  # the same, ranked by feature norm instead


def target_kept(design: str, videos: int = 40, seed: int = 123, k: int = 3) -> TargetKept:
    """Probe ``videos`` videos of the equal-compute study's shape (8 frames) drawn from ``seed``."""
    spec = SynthSpec(frames=8, design=design, questions=("colour", "motion"))
    fields = dict(
        visual_reducer="salient", tokens_per_frame=k, salient_layer=SALIENT_LAYER, cross_attention_every=0
    )
    model, _ = build_model(Variant("probe", "probe", fields), 0, DemoSettings(data=spec))
    model.eval()
    grid = spec.size // spec.cell
    dominant = k - context_tokens(k)
    rng = np.random.default_rng(seed)
    frames = merged_alone = by_attention = by_norm = 0
    for _ in range(videos):
        video, truth = make_video(spec, rng)
        target = truth["cell"][0] * grid + truth["cell"][1]
        start, stop = truth["marker_frames"]
        pixels = torch.from_numpy(video[start:stop]).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            features, attention = model.model.encode_frames_and_attention(pixels)
        merged, size = ToMeMerge(k).merge(features)
        for f in range(len(pixels)):
            frames += 1
            merged_alone += any(
                size[f, j] == 1 and torch.equal(merged[f, j], features[f, target]) for j in range(k)
            )
            by_attention += target in attention[f].topk(dominant).indices.tolist()
            by_norm += target in features[f].norm(dim=-1).topk(dominant).indices.tolist()
    return TargetKept(frames, merged_alone, by_attention, by_norm)


if __name__ == "__main__":
    for name in ("marker", "stripes"):
        kept = target_kept(name)
        print(
            f"{name}: {kept.frames} marked frames; ToMe k=3 leaves the target unmerged in {kept.merge_unmerged}; "
            f"salient k=3's 2 dominant patches hold it in {kept.salient_attention} ranked by tower attention, "
            f"{kept.salient_norm} ranked by feature norm"
        )
