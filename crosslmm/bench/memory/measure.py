"""Peak host memory of one training step: this code's step (the LM head on labelled positions only, uint8
frames normalised inside the model: mode "crosslmm") against a reference step that computes full (B, L, V)
logits from fp32 frames normalised in the data path (mode "reference"), as LLaVA-style trainers do.

A step is what a data-loader worker and the trainer do for one batch: resize the decoded frames, collate,
forward, loss, backward, optimizer step. Both modes run the same weights on the same batch: the reference
normalises its frames to fp32 per sample (``CrossLMMModel.normalize_frames`` gives exactly the values the
model computes itself) and computes its loss from full (B, L, V) logits. Two more modes change one thing
each ("labelled logits": only the LM head; "uint8 frames": only the pixels), so the saving can be
attributed. All modes must report the same loss.

Each (case, mode) runs in a fresh process (``rss.in_fresh_process``). It builds the model and optimizer,
runs one warm-up step (AdamW state, thread pools), then reports the peak resident memory of the measured
step above what was resident before it (``rss.peak_rss``): weights, optimizer state and the decoded frames
excluded; preprocessed frames, the batch, activations, logits, loss, gradients included. Linux only.
The command's table and plot are in ``report.py``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from crosslmm.bench.rss import in_fresh_process, peak_rss
from crosslmm.data.dataset import IGNORE_INDEX, VideoChatCollator
from crosslmm.model.configuration import CrossLMMConfig
from crosslmm.model.modeling import CrossLMMForCausalLM
from crosslmm.model.processing import CrossLMMProcessor, build_image_processor
from crosslmm.model.tiny import TinySpec, tiny_text_config, train_tiny_tokenizer

REFERENCE, LABELLED, UINT8, CROSSLMM = "reference", "labelled logits", "uint8 frames", "crosslmm"
# mode -> (LM head on every position, frames normalised to fp32 in the data path)
MODES = {REFERENCE: (True, True), LABELLED: (False, True), UINT8: (True, False), CROSSLMM: (False, False)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PAD_ID = 0


@dataclass(frozen=True)
class MemorySpec:
    """A tiny model with a real-sized vocabulary and real-sized frames, and a chat sample shaped like SFT
    data: a long video, a short system prompt and questions, answers the only labelled tokens."""

    frames: int = 64
    vocab_size: int = 32768
    image_size: int = 384  # the 7B tower's input; a 32 px patch keeps the tiny tower cheap
    patch_size: int = 32
    decoded_size: tuple[int, int] = (360, 640)  # frames as the video reader returns them, before resizing
    tokens_per_frame: int = 9
    system_tokens: int = 20
    question_tokens: int = 24
    answer_tokens: int = 64
    turns: int = 2
    batch: int = 1
    dtype: str = "fp32"
    train_vision: bool = False
    threads: int = 1

    @classmethod
    def quick(cls, **overrides: Any) -> MemorySpec:
        """Seconds-scale shapes for smoke tests: the same code paths, nothing proportional."""
        shapes = dict(
            frames=4, vocab_size=4096, image_size=48, patch_size=16, decoded_size=(48, 80), answer_tokens=8
        )
        return cls(**(shapes | overrides))

    def model_config(self, video_token_id: int) -> CrossLMMConfig:
        tiny = TinySpec(image_size=self.image_size, patch_size=self.patch_size)
        return CrossLMMConfig.from_fields(
            "MemorySpec.model_config",
            vision_config=tiny.vision_config(),
            text_config=tiny_text_config(tiny, self.vocab_size),
            tokens_per_frame=self.tokens_per_frame,
            cross_attention_every=2,
            video_token_id=video_token_id,
            pad_token_id=PAD_ID,
        )


def _sample(
    spec: MemorySpec, index: int, video_token_id: int, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """[system][video][question answer] x turns; answers shorten with ``index`` so a batch is padded.
    Text ids avoid the tiny tokenizer's 512 ids, which hold the video token."""

    def text(n: int) -> torch.Tensor:
        return torch.randint(512, spec.vocab_size, (n,), generator=gen)

    ids = [text(spec.system_tokens), torch.full((spec.frames * spec.tokens_per_frame,), video_token_id)]
    labelled = [False, False]
    for _ in range(spec.turns):
        ids += [text(spec.question_tokens), text(max(spec.answer_tokens - 8 * index, 1))]
        labelled += [False, True]
    input_ids = torch.cat(ids)
    labels = torch.cat(
        [part if keep else torch.full_like(part, IGNORE_INDEX) for part, keep in zip(ids, labelled)]
    )
    return {"input_ids": input_ids, "labels": labels}


def synthetic_batch(
    spec: MemorySpec, video_token_id: int
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Decoded videos (T, H, W, 3) uint8 and token samples {input_ids, labels} for one batch."""
    gen = torch.Generator().manual_seed(0)
    samples = [_sample(spec, i, video_token_id, gen) for i in range(spec.batch)]
    decoded = [
        torch.randint(0, 256, (spec.frames, *spec.decoded_size, 3), dtype=torch.uint8, generator=gen)
        for _ in range(spec.batch)
    ]
    return decoded, samples


def build(spec: MemorySpec) -> tuple[CrossLMMForCausalLM, CrossLMMProcessor]:
    """The model in training mode (vision tower frozen unless ``train_vision``) and its processor."""
    tokenizer = train_tiny_tokenizer()
    processor_video_id = tokenizer.convert_tokens_to_ids("<video>")
    torch.manual_seed(0)
    model = CrossLMMForCausalLM(spec.model_config(processor_video_id)).to(DTYPES[spec.dtype]).train()
    model.model.vision_tower.requires_grad_(spec.train_vision)
    processor = CrossLMMProcessor(
        image_processor=build_image_processor(model.model.vision_tower),
        tokenizer=tokenizer,
        tokens_per_frame=spec.tokens_per_frame,
    )
    return model, processor


def train_step(
    model: CrossLMMForCausalLM,
    processor: CrossLMMProcessor,
    optimizer: torch.optim.Optimizer,
    decoded: list[torch.Tensor],
    samples: list[dict[str, torch.Tensor]],
    mode: str,
) -> dict[str, float]:
    """One step in ``mode`` (see ``MODES``); returns the loss and the sizes of the batch pixels and logits."""
    full_logits, float_pixels = MODES[mode]
    frames = [processor.preprocess_frames(video) for video in decoded]  # uint8 (T, 3, S, S)
    if float_pixels:  # normalised fp32 from the data path
        frames = [model.model.normalize_frames(f) for f in frames]
    collate = VideoChatCollator(PAD_ID)
    batch = collate(
        [s | {"frames": f, "dropped": torch.zeros(2, dtype=torch.long)} for s, f in zip(samples, frames)]
    )
    del frames
    batch.pop("dropped")
    batch_labels = batch["labels"]
    if full_logits:  # LM head on every position, loss from (B, L, V) logits
        labels = batch.pop("labels")
        logits = model(**batch, use_cache=False).logits  # (B, L, V): every position
        loss = model.loss_function(
            logits=logits, labels=labels, vocab_size=model.config.text_config.vocab_size
        )
    else:
        out = model(**batch, use_cache=False)
        loss, logits = out.loss, out.logits  # logits: (N_labelled, V)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {
        "loss": loss.item(),
        "pixels_mb": batch["pixel_values_videos"].nbytes / 2**20,
        "logits_mb": logits.nbytes / 2**20,
        "logit_rows": logits.numel() // logits.shape[-1],
        "labelled": int((batch_labels[..., 1:] != IGNORE_INDEX).sum()),
        "positions": batch["input_ids"].numel(),
    }


def _timed_step(*args: Any) -> dict[str, float]:
    start = time.perf_counter()
    result = train_step(*args)
    result["step_s"] = time.perf_counter() - start
    return result


def _worker(spec: MemorySpec, mode: str) -> dict[str, float]:
    """One mode in a fresh process: warm-up step, then the measured one (see the module docstring)."""
    torch.set_num_threads(spec.threads)
    model, processor = build(spec)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    decoded, samples = synthetic_batch(spec, model.config.video_token_id)
    train_step(model, processor, optimizer, decoded, samples, mode)
    peak, before, result = peak_rss(_timed_step, model, processor, optimizer, decoded, samples, mode)
    result["peak_mb"] = peak
    result["resident_before_mb"] = before
    return result


def measure(spec: MemorySpec, mode: str) -> dict[str, float]:
    """Peak memory of one training step in ``mode``, measured in a fresh process."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    return in_fresh_process(_worker, spec, mode)


def run_memory(spec: MemorySpec, modes: tuple[str, ...] = tuple(MODES)) -> dict[str, Any]:
    """Each mode in its own process; ``peak_ratio`` is crosslmm / reference."""
    results = {mode: measure(spec, mode) for mode in modes}
    out: dict[str, Any] = {"spec": asdict(spec), "results": results}
    if REFERENCE in results and CROSSLMM in results:
        out["peak_ratio"] = results[CROSSLMM]["peak_mb"] / results[REFERENCE]["peak_mb"]
    return out
