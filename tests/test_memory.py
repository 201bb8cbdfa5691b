"""Training-step memory: the LM head runs only where labels are set, and frames travel as uint8 until the
model normalises them. Each new path is checked against the computation it replaces."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import random_frames, set_gates
from transformers.loss.loss_utils import ForCausalLMLoss

from crosslmm.bench.memory.measure import (
    CROSSLMM,
    MODES,
    REFERENCE,
    MemorySpec,
    build,
    synthetic_batch,
    train_step,
)
from crosslmm.cli import main
from crosslmm.data.dataset import IGNORE_INDEX, VideoChatCollator, encode_conversation
from crosslmm.model.tiny import TinySpec, make_tiny

CONVERSATIONS = [
    [
        {"role": "user", "content": "<video>\nWhat colour is the marker?"},
        {"role": "assistant", "content": "It is red."},
        {"role": "user", "content": "Which shape is it?"},
        {"role": "assistant", "content": "A small square in the top left."},
    ],
    [
        {"role": "user", "content": "<video>\nDescribe the video."},
        {"role": "assistant", "content": "A blue circle moves right."},
    ],
]


def _training_batch(processor, frames=(3, 2)) -> dict[str, torch.Tensor]:
    """Two conversations encoded and collated exactly as in training: right padding, labels on the
    assistant turns only (three answer spans in all)."""
    samples = []
    for i, (messages, count) in enumerate(zip(CONVERSATIONS, frames)):
        encoded = encode_conversation(processor, messages, count, max_length=512, overlength="truncate")
        samples.append(
            dict(
                input_ids=encoded.input_ids,
                labels=encoded.labels,
                frames=processor.preprocess_frames(random_frames(count, seed=i)),
                dropped=torch.zeros(2, dtype=torch.long),
            )
        )
    batch = VideoChatCollator(processor.tokenizer.pad_token_id)(samples)
    batch.pop("dropped")
    return batch


def _grads(model, loss) -> list[torch.Tensor | None]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, allow_unused=True))


@pytest.mark.parametrize("num_items", [None, 40], ids=["mean", "num_items_in_batch"])
def test_labelled_only_lm_head_gives_the_full_logits_loss_and_gradients(num_items):
    model, processor = make_tiny(TinySpec(), v2v=True, t2v=True)
    set_gates(model, 0.5)  # cross-attention contributes to the loss and receives gradients
    model.train()
    batch = _training_batch(processor)
    labels = batch["labels"]
    assert bool((batch["attention_mask"] == 0).any()), "the test needs a padded row"
    loss_kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}

    out = model(**batch, **loss_kwargs)
    new_grads = _grads(model, out.loss)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    full = model(**inputs).logits  # (B, L, V): the old path
    ref_loss = ForCausalLMLoss(full, labels, model.config.text_config.vocab_size, **loss_kwargs)
    ref_grads = _grads(model, ref_loss)

    torch.testing.assert_close(out.loss, ref_loss)
    assert [g is None for g in new_grads] == [g is None for g in ref_grads]
    assert sum(g is not None for g in new_grads) > 10
    for new, ref in zip(new_grads, ref_grads):
        if ref is not None:
            torch.testing.assert_close(new, ref)
    # The rows kept are the positions whose next token is labelled, in batch order.
    scored = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:] != IGNORE_INDEX
    assert out.logits.shape == (int(scored.sum()), model.config.text_config.vocab_size)
    assert out.logits.shape[0] < full.shape[0] * full.shape[1] / 4
    torch.testing.assert_close(out.logits, full[scored])


def test_shift_labels_kwarg_is_respected():
    """Collators that pass pre-shifted labels (HF's padding-free ones, context parallelism) decide the targets:
    the loss is transformers' over ``shift_labels`` as given, not over ``labels`` shifted again. The targets
    here are ones shifting ``labels`` cannot give (each row's first answer token unscored, one target
    changed), so a model that ignored ``shift_labels`` would fail."""
    model, processor = make_tiny(TinySpec())
    batch = _training_batch(processor)
    shifted = torch.nn.functional.pad(batch["labels"], (0, 1), value=IGNORE_INDEX)[:, 1:]
    custom = shifted.clone()
    for row in custom:
        scored = torch.nonzero(row != IGNORE_INDEX).squeeze(1)
        row[scored[0]] = IGNORE_INDEX
        row[scored[-1]] = (row[scored[-1]] + 1) % model.config.text_config.vocab_size
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    vocab = model.config.text_config.vocab_size
    with torch.no_grad():
        full = model(**inputs).logits  # (B, L, V)
        expected = ForCausalLMLoss(full, None, vocab, shift_labels=custom)
        loss = model(**batch, shift_labels=custom).loss
        torch.testing.assert_close(loss, expected)
        assert (loss - model(**batch).loss).abs() > 1e-3  # the custom targets matter


def test_inference_logits_unchanged_without_labels():
    model, processor = make_tiny(TinySpec())
    batch = _training_batch(processor)
    batch.pop("labels")
    with torch.no_grad():
        full = model(**batch).logits
        last = model(**batch, logits_to_keep=2).logits
    assert full.shape[:2] == batch["input_ids"].shape
    torch.testing.assert_close(last, full[:, -2:])


@pytest.mark.parametrize("chunk", [32, 2], ids=["one-chunk", "chunks-of-2"])
def test_uint8_frames_equal_the_old_normalised_float_input(chunk):
    model, processor = make_tiny(TinySpec(), vision_chunk_size=chunk)
    set_gates(model, 0.5)
    videos = [random_frames(3, seed=0), random_frames(2, seed=1)]
    prompts = [processor.apply_chat_template([{"role": "user", "content": "<video>\nWhat?"}])] * 2
    inputs = processor(text=prompts, videos=videos)
    pixels = inputs["pixel_values_videos"]
    assert pixels.dtype == torch.uint8 and pixels.shape[:2] == (2, 3)

    # The old preprocessing: resize, rescale and normalise (the tower's mean/std) in the image processor.
    old = torch.zeros(pixels.shape, dtype=torch.float32)
    for b, video in enumerate(videos):
        images = list(torch.from_numpy(video).permute(0, 3, 1, 2))
        tower = model.model.vision_tower
        old[b, : len(video)] = processor.image_processor(
            images=images,
            do_rescale=True,
            do_normalize=True,
            image_mean=list(tower.image_mean),
            image_std=list(tower.image_std),
            return_tensors="pt",
        )["pixel_values"]
        torch.testing.assert_close(
            model.model.normalize_frames(pixels[b, : len(video)]), old[b, : len(video)], rtol=0, atol=0
        )
    with torch.no_grad():
        new_logits = model(**inputs).logits
        old_logits = model(**(dict(inputs) | {"pixel_values_videos": old})).logits
    torch.testing.assert_close(new_logits, old_logits, rtol=1e-5, atol=1e-5)


def test_collator_and_dataset_frames_stay_uint8():
    _, processor = make_tiny(TinySpec())
    batch = _training_batch(processor, frames=(3, 1))
    pixels = batch["pixel_values_videos"]
    assert pixels.dtype == torch.uint8 and pixels.shape[:2] == (2, 3)
    assert batch["video_frame_counts"].tolist() == [3, 1] and not pixels[1, 1:].any()


def test_integer_frames_other_than_uint8_are_rejected():
    model, processor = make_tiny(TinySpec())
    size = model.config.vision_config.image_size
    with pytest.raises(TypeError, match="uint8"):
        model.model.encode_frames(torch.zeros(2, 3, size, size, dtype=torch.int64))


def test_bench_modes_compute_the_same_step():
    """The benchmark's "reference" (full logits, fp32 pixels) and "crosslmm" paths train the same step."""
    spec = MemorySpec.quick(batch=2)
    results = {}
    for mode in (REFERENCE, CROSSLMM):
        model, processor = build(spec)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        decoded, samples = synthetic_batch(spec, model.config.video_token_id)
        results[mode] = [train_step(model, processor, optimizer, decoded, samples, mode) for _ in range(2)]
    before, after = results[REFERENCE][-1], results[CROSSLMM][-1]
    assert after["loss"] == pytest.approx(before["loss"], rel=1e-5)
    assert before["pixels_mb"] == pytest.approx(4 * after["pixels_mb"])
    labelled = sum(int((s["labels"][1:] != IGNORE_INDEX).sum()) for s in samples)
    assert after["logit_rows"] == labelled and before["logit_rows"] == before["positions"]


@pytest.mark.slow
def test_bench_memory_command_writes_table_json_and_plot(tmp_path, capsys):
    argv = ["bench", "memory", "--quick", "--dtypes", "fp32", "--vision", "frozen", "--out", str(tmp_path)]
    assert main(argv) == 0
    (case,) = json.loads((tmp_path / "memory.json").read_text())["cases"]
    assert set(case["results"]) == set(MODES) and case["peak_ratio"] > 0
    assert (tmp_path / "memory.png").stat().st_size > 0
    assert "crosslmm/reference" in capsys.readouterr().out
