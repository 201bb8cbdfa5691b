"""The salient baseline's model: CrossLMM's model whose tower also returns the attention each patch receives
in ``salient_layer``, which the connector's salient reducer ranks by (:mod:`crosslmm.baselines.salient`).

Built when ``visual_reducer="salient"`` (``crosslmm.baselines.decoder_model_class``); same modules and weight
names as ``CrossLMMModel``. One tower pass per chunk of frames gives both the feature layer's tokens and the
ranking layer's attention (:meth:`crosslmm.model.vision.VisionTower.tokens_and_attention`).
"""

from __future__ import annotations

import torch

from crosslmm.model.frames import normalize_frames
from crosslmm.model.modeling import CrossLMMModel


class SalientModel(CrossLMMModel):
    """``CrossLMMModel`` whose frames are ranked by the attention they receive in the tower."""

    def __init__(self, config):
        super().__init__(config)
        self.salient_layer = -1 if config.salient_layer is None else config.salient_layer
        encoder = getattr(getattr(self.vision_tower, "model", None), "encoder", None)  # HF towers only
        if encoder is None:
            raise ValueError(
                "visual_reducer='salient' ranks by tower attention, which "
                f"{type(self.vision_tower).__name__} does not expose: use a CLIP or SigLIP tower"
            )
        count = len(encoder.layers)
        if not -count <= self.salient_layer < count:
            raise ValueError(f"salient_layer={self.salient_layer} is out of range for a {count}-layer tower")

    def encode_frames_and_attention(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (F, 3, H, W), uint8 or normalised float -> original tokens (F, N, Dv) and the attention
        each patch receives in ``salient_layer`` (F, N), ``vision_chunk_size`` frames at a time."""
        tower, chunk_size = self.vision_tower, self.config.vision_chunk_size
        weight = next(tower.parameters())
        tokens, received = [], []
        for start in range(0, frames.shape[0], chunk_size):
            chunk = frames[start : start + chunk_size].to(weight.device)
            if chunk.dtype == torch.uint8:
                chunk = normalize_frames(chunk, tower.image_mean, tower.image_std)
            t, a = tower.tokens_and_attention(chunk.to(weight.dtype), self.salient_layer)
            tokens.append(t)
            received.append(a)
        return torch.cat(tokens), torch.cat(received)

    def encode_video(
        self,
        frames: torch.Tensor,
        tokens_per_frame: int | None = None,
        frame_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``CrossLMMModel.encode_video``, the reducer ranking by the tower's attention."""
        original, saliency = self.encode_frames_and_attention(frames)
        return self.projector(original, tokens_per_frame, frame_index, saliency)
