"""Video pixels on their way into the model: the real frames of a padded batch, normalised with the vision
tower's statistics and encoded a chunk at a time, so the tower's activations and a float copy of every frame
never exist all at once."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crosslmm.model.vision import VisionTower


def unpad_frames(
    pixel_values_videos: torch.Tensor, frame_counts: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, F_max, 3, H, W) padded videos + (B,) real frame counts (None: all F_max) -> the real frames
    (F_total, 3, H, W) in batch order and the validated counts (B,)."""
    if pixel_values_videos.dim() != 5:
        raise ValueError(
            f"pixel_values_videos must be (batch, frames, 3, H, W), got shape {tuple(pixel_values_videos.shape)}"
        )
    batch, max_frames = pixel_values_videos.shape[:2]
    if frame_counts is None:
        frame_counts = torch.full((batch,), max_frames, dtype=torch.long)
    if (
        frame_counts.shape != (batch,)
        or bool((frame_counts < 0).any())
        or bool((frame_counts > max_frames).any())
    ):
        raise ValueError(
            f"video_frame_counts {frame_counts.tolist()} must give 0..{max_frames} frames for each of {batch} samples"
        )
    if int(frame_counts.sum()) == 0:
        raise ValueError("pixel_values_videos holds zero frames: every video needs at least one frame")
    if bool((frame_counts == max_frames).all()):  # no padding: a view, not a copy of every frame's pixels
        return pixel_values_videos.flatten(0, 1), frame_counts
    keep = torch.arange(max_frames, device=frame_counts.device)[None] < frame_counts[:, None]
    return pixel_values_videos[keep.to(pixel_values_videos.device)], frame_counts


def normalize_frames(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 frames (F, 3, S, S), resized but not normalised -> fp32 (F, 3, S, S) normalised with the
    tower's ``mean``/``std``. Same arithmetic as transformers' image processors (rescale fused into
    normalisation: (x - 255 mean) / (255 std)), so the result equals their normalised output exactly."""
    mean = torch.tensor(mean, device=frames.device) * 255.0
    std = torch.tensor(std, device=frames.device) * 255.0
    return (frames.float() - mean[:, None, None]) / std[:, None, None]


def encode_frames(tower: VisionTower, frames: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """frames (F, 3, H, W) -> original patch tokens (F, N, Dv), ``chunk_size`` frames at a time to bound the
    tower's activations. Chunks are written into one preallocated output: concatenating a list would hold
    every frame's tokens twice at the peak.

    uint8 frames (resized, not normalised: what the processor and the training collator give) are moved to
    the tower's device and normalised one chunk at a time, so a float copy of all frames never exists;
    floating-point frames are taken as already normalised."""
    if not (frames.dtype == torch.uint8 or frames.is_floating_point()):
        raise TypeError(
            f"video frames must be uint8 (resized, not normalised) or float (normalised), got {frames.dtype}"
        )
    weight = next(tower.parameters())
    original = None
    for start in range(0, frames.shape[0], chunk_size):
        chunk = frames[start : start + chunk_size].to(weight.device)
        if chunk.dtype == torch.uint8:
            chunk = normalize_frames(chunk, tower.image_mean, tower.image_std)
        tokens = tower(chunk.to(weight.dtype))
        if original is None:
            original = tokens.new_empty((frames.shape[0], *tokens.shape[1:]))
        original[start : start + tokens.shape[0]] = tokens
    return original
