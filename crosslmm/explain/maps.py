"""What a CrossLMM looked at: T2V and V2V attention over each frame's patch grid, and the gates.

The answer comes from :func:`generate_ids`, ``crosslmm chat``'s inputs and greedy ``model.generate`` (its text
is what :func:`crosslmm.inference.generate` prints), which keeps the token ids the model generated. The maps
come from one more forward pass over the prompt (and, for every token, those generated ids: teacher forcing
on what the model produced, never on a re-tokenisation of its text) inside
:func:`~crosslmm.model.cross_attention.capture_attention`, which computes the cross-attention softmax in
eager form for that pass only: the position that predicts an answer token sees exactly what it saw while
generating (decode reads the same cached keys; a ``topk_frames`` model's later tokens read a selection, so
their maps show the full memory the selection was ranked on). Normal inference never pays for this.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from crosslmm.model.cross_attention import DualCrossAttentionLayer, capture_attention


@dataclass
class Explanation:
    """Head-averaged cross-attention of one answer, frames in time order.

    ``t2v`` (tokens, layers, F, g, g): for each explained answer token, the attention of the position that
    predicts it over every frame's g x g patch grid (sums to 1 over frames and patches per layer). ``v2v``
    (layers, F, k, g, g): each frame's k pooled tokens over that frame's patches (sums to 1 per token in the
    default ``v2v_scope="frame"``; under ``"video"`` the frame's own block of attention over all frames).
    ``gates``: tanh of every gate, per layer, so a reader sees which blocks are open."""

    question: str
    answer: str  # the answer's text, as crosslmm chat prints it
    tokens: list[str]  # the generated tokens explained ("" when the model ended the turn at once)
    frame_indices: list[int]  # source frame index of each sampled frame
    grid: int  # patches per side of a frame
    layers: list[int]  # decoder layers the cross-attention layers follow
    t2v: np.ndarray | None
    v2v: np.ndarray | None
    gates: list[dict[str, float]]  # per layer: {"v2v": tanh, "t2v": tanh, "mlp": tanh} for present blocks

    def frame_mass(self) -> np.ndarray:
        """T2V attention mass per frame (tokens, layers, F)."""
        if self.t2v is None:
            raise ValueError("this model has no T2V cross-attention")
        return self.t2v.sum((-2, -1))

    def to_json(self) -> dict:
        """Every number as plain lists, with their axes named."""
        out = asdict(self)
        out["t2v"] = None if self.t2v is None else self.t2v.tolist()
        out["v2v"] = None if self.v2v is None else self.v2v.tolist()
        out["frame_mass"] = None if self.t2v is None else self.frame_mass().tolist()
        out["axes"] = {
            "t2v": "token, layer, frame, row, col",
            "v2v": "layer, frame, pooled token, row, col",
            "frame_mass": "token, layer, frame",
        }
        return out

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f)


def dual_layers(model) -> list[DualCrossAttentionLayer]:
    """The model's cross-attention layers in decoder order."""
    return sorted(
        (m for m in model.modules() if isinstance(m, DualCrossAttentionLayer)), key=lambda m: m.layer_idx
    )


def gate_values(model) -> tuple[list[int], list[dict[str, float]]]:
    """The cross-attention layers' decoder indices and tanh of each of their gates."""
    layers = dual_layers(model)
    gates = [
        {
            name: float(torch.tanh(block.gate.detach().float()))
            for name, block in (("v2v", layer.v2v), ("t2v", layer.t2v), ("mlp", layer.mlp))
            if block is not None
        }
        for layer in layers
    ]
    return [layer.layer_idx for layer in layers], gates


def _t2v_rows(calls: list[torch.Tensor], rows: int, frames: int, grid: int) -> torch.Tensor:
    """The last ``rows`` query rows of a layer's last T2V call (the text after the video, which sees every
    frame) -> head-averaged (rows, F, g, g)."""
    weights = calls[-1][0]  # (H, Lq, M): batch of one
    if weights.shape[-1] != frames * grid * grid or weights.shape[1] < rows:
        raise ValueError(
            f"the question must follow the whole video: the last text attends over {weights.shape[-1]} "
            f"patches, not all {frames} frames x {grid * grid}"
        )
    return weights[:, -rows:].mean(0).view(rows, frames, grid, grid)


def _v2v_maps(calls: list[torch.Tensor], frames: int, grid: int) -> torch.Tensor:
    """A layer's V2V calls -> head-averaged (F, k, g, g): each frame's pooled tokens over its own patches.

    ``v2v_scope="frame"`` calls are chunks of frames (chunk, H, k, N); ``"video"`` is one call (1, H, F*k, F*N)
    whose per-frame diagonal blocks are kept."""
    weights = torch.cat(calls)
    n = grid * grid
    if weights.shape[-1] != n:  # video scope: (1, H, F*k, F*N) -> (F, H, k, N), frame f's block on f
        heads = weights.shape[1]
        blocks = weights[0].unflatten(1, (frames, -1)).unflatten(-1, (frames, n))  # (H, F, k, F, N)
        weights = blocks.diagonal(dim1=1, dim2=3).permute(3, 0, 1, 2).reshape(frames, heads, -1, n)
    return weights.mean(1).unflatten(-1, (grid, grid))


@torch.inference_mode()
def generate_ids(
    model,
    processor,
    prompts: Sequence[str],
    videos: Sequence[np.ndarray],
    max_new_tokens: int,
    tokens_per_frame: int | None = None,
    **generate_kwargs,
) -> list[list[int]]:
    """Greedy answers to ``prompts`` (one video each, in a left-padded batch as ``crosslmm chat`` builds it):
    per prompt the ids the model generated, up to its end of turn (excluded)."""
    inputs = processor(
        text=list(prompts), videos=list(videos), padding_side="left", tokens_per_frame=tokens_per_frame
    ).to(model.device)
    generate_kwargs.setdefault("do_sample", False)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
    eos = processor.tokenizer.eos_token_id
    answers = []
    for row in out[:, inputs["input_ids"].shape[1] :].tolist():
        answers.append(row[: row.index(eos)] if eos in row else row)
    return answers


def answer_text(processor, answer_ids: Sequence[int]) -> str:
    """What ``crosslmm chat`` prints for these generated ids."""
    return processor.tokenizer.decode(answer_ids, skip_special_tokens=True).strip()


@torch.inference_mode()
def explain(
    model,
    processor,
    frames: np.ndarray,
    question: str,
    answer_ids: Sequence[int],
    all_tokens: bool = False,
    tokens_per_frame: int | None = None,
    frame_indices: list[int] | None = None,
) -> Explanation:
    """Maps for the answer the model generated to ``question`` about ``frames`` (T, H, W, 3), given as its
    generated ids (:func:`generate_ids`): the first answer token's, or with ``all_tokens`` every one's."""
    from crosslmm.inference import build_prompt

    answer_ids = [int(t) for t in answer_ids]
    explained = max(len(answer_ids), 1) if all_tokens else 1
    inputs = processor(
        text=[build_prompt(processor, question)], videos=[frames], tokens_per_frame=tokens_per_frame
    ).to(model.device)
    # Teacher forcing: the prompt, then the generated tokens that precede each explained one.
    forced = torch.tensor([answer_ids[: explained - 1]], dtype=torch.long, device=model.device)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], forced], 1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with capture_attention(model) as records:
        model(**inputs, use_cache=False, logits_to_keep=1)
    grid, count = model.model.vision_tower.grid_size, len(frames)
    layers, gates = gate_values(model)
    t2v = [_t2v_rows(records[("t2v", i)], explained, count, grid) for i in layers if ("t2v", i) in records]
    v2v = [_v2v_maps(records[("v2v", i)], count, grid) for i in layers if ("v2v", i) in records]
    tokens = [processor.tokenizer.decode([t]) for t in answer_ids[:explained]]
    return Explanation(
        question=question,
        answer=answer_text(processor, answer_ids),
        tokens=tokens or [""],
        frame_indices=list(range(count)) if frame_indices is None else [int(i) for i in frame_indices],
        grid=grid,
        layers=layers,
        t2v=torch.stack(t2v, 1).float().cpu().numpy() if t2v else None,
        v2v=torch.stack(v2v).float().cpu().numpy() if v2v else None,
        gates=gates,
    )
