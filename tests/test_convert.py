"""LLaVA-OneVision -> CrossLMM conversion: exact equivalence with the source, pooling switches, stage-1 start,
export back, and clear key-mismatch errors. The source is a tiny random LlavaOnevision built from configs."""

from __future__ import annotations

import pytest
import torch
from helpers import greedy, random_frames, write_train_config
from transformers import (
    AutoModelForCausalLM,
    AutoProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    Qwen2Config,
    SiglipVisionConfig,
)

import crosslmm  # noqa: F401  (registers the Auto classes)
from crosslmm.cli import main as cli_main
from crosslmm.convert import KeyMismatchError, export_llava_onevision
from crosslmm.convert.llava_onevision import ADAPTER
from crosslmm.data.synthetic import make_toy_dataset
from crosslmm.model.tiny import train_tiny_tokenizer
from crosslmm.train import main as train_main

IMAGE_SIZE, PATCH = 36, 4  # 9x9 patch grid: odd, so the source's ceil(9/2) = 5x5 pooling is exercised
FRAMES = 3
QUESTION = "What colour is the marker?"
# The chat template of the llava-hf LLaVA-OneVision checkpoints: it renders only list content.
LLAVA_OV_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    """A tiny random LLaVA-OneVision saved the way llava-hf checkpoints are (model + processor)."""
    torch.manual_seed(0)
    tokenizer = train_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<video>", "<image>"]})
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    preprocessing = dict(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(**preprocessing),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(**preprocessing),
        num_image_tokens=(IMAGE_SIZE // PATCH) ** 2,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_OV_TEMPLATE,
    )
    out = tmp_path_factory.mktemp("llava_ov")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def converted_dir(source_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("crosslmm")
    assert cli_main(["convert", "llava-onevision", str(source_dir), str(out), "--cross-every", "2"]) == 0
    return out


def _source_inputs(source_dir):
    processor = AutoProcessor.from_pretrained(source_dir)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(text=[prompt], videos=[random_frames(FRAMES)], return_tensors="pt")


def _our_inputs(processor, frames=FRAMES):
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": f"<video>\n{QUESTION}"}], add_generation_prompt=True
    )
    return processor(text=[prompt], videos=[random_frames(frames)])


def test_converted_model_equals_source(source_dir, converted_dir):
    source = LlavaOnevisionForConditionalGeneration.from_pretrained(source_dir).eval()
    model = AutoModelForCausalLM.from_pretrained(converted_dir).eval()
    processor = AutoProcessor.from_pretrained(converted_dir)
    assert model.config.tokens_per_frame == 25 and len(model.model.cross_layers) == 2
    src_inputs, inputs = _source_inputs(source_dir), _our_inputs(processor)
    # Same prompt from a plain-string message, except that the source's extra last <video> slot (which
    # receives image_newline) is our <video_end>.
    expected = src_inputs["input_ids"].clone()
    expected[0, int(torch.nonzero(expected[0] == model.config.video_token_id).max())] = (
        model.config.video_end_token_id
    )
    assert inputs["input_ids"].tolist() == expected.tolist()
    # Our frames are uint8, resized only; normalised by the model they equal the source's pixels exactly.
    assert inputs["pixel_values_videos"].dtype == torch.uint8
    torch.testing.assert_close(
        model.model.normalize_frames(inputs["pixel_values_videos"][0])[None],
        src_inputs["pixel_values_videos"],
        rtol=0,
        atol=0,
    )

    vocab = source.config.text_config.vocab_size
    with torch.no_grad():
        src_logits = source(**src_inputs).logits
        logits = model(**inputs).logits
        # The one extra vocabulary column is <video_end>, which generation suppresses.
        torch.testing.assert_close(logits[..., :vocab], src_logits, rtol=1e-5, atol=1e-5)
        src_tokens, src_steps = greedy(source, src_inputs, steps=8)
        tokens, steps = greedy(model, inputs, steps=8)
    assert tokens.tolist() == src_tokens.tolist()
    torch.testing.assert_close(steps[..., :vocab], src_steps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens", [9, 1])
def test_switch_tokens_per_frame(converted_dir, tokens):
    """Switching is a config change: the processor emits the new slot count, the model pools to the new grid."""
    model = AutoModelForCausalLM.from_pretrained(
        converted_dir, tokens_per_frame=tokens, pooling_antialias=True
    ).eval()
    processor = AutoProcessor.from_pretrained(converted_dir, tokens_per_frame=tokens)
    inputs = _our_inputs(processor)
    n_video = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert n_video == FRAMES * tokens
    with torch.no_grad():
        pooled, _ = model.model.encode_video(inputs["pixel_values_videos"][0])
        tokens_out, _ = greedy(model, inputs, steps=3)
    assert pooled.shape[:2] == (FRAMES, tokens) and tokens_out.shape == (1, 3)


def test_stage1_training_starts_from_converted_model(source_dir, tmp_path):
    """Convert at 9 tokens per frame, then the real training entry point runs stage 1 (projector, video-end
    vector, V2V trainable) from it: gates and the video-end vector move, the LLM does not, a loadable model
    comes out (docs/convert.md, section 4)."""
    converted = tmp_path / "converted"
    assert (
        cli_main(["convert", "llava-onevision", str(source_dir), str(converted), "--tokens-per-frame", "9"])
        == 0
    )
    mixture = make_toy_dataset(str(tmp_path / "data"), num_videos=4, num_frames=3)
    config = write_train_config(
        tmp_path / "stage1.yaml",
        converted,
        tmp_path / "stage1",
        mixture,
        lr=1e-2,
        max_steps=3,
        save_steps=3,
        data={"mixture": mixture, "num_frames": 2, "max_length": 256, "num_workers": 0},
    )
    assert train_main(["--config", config]) == 0
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "stage1" / "final")
    assert trained.config.tokens_per_frame == 9
    gates = [p for n, p in trained.named_parameters() if n.endswith("v2v.gate")]
    assert gates and all(torch.isfinite(g).all() for g in gates) and any(g.abs().sum() > 0 for g in gates)
    start = AutoModelForCausalLM.from_pretrained(converted)
    end_vector = trained.model.video_end_embedding
    assert end_vector is not None and torch.isfinite(end_vector).all()
    assert not torch.equal(end_vector, start.model.video_end_embedding)  # trains with the projector
    embeddings = trained.get_input_embeddings().weight
    assert torch.equal(embeddings, start.get_input_embeddings().weight)  # the LLM is frozen in stage 1


def test_export_round_trip_is_exact(source_dir, converted_dir, tmp_path):
    assert cli_main(["export", "llava-onevision", str(converted_dir), str(tmp_path)]) == 0
    original = LlavaOnevisionForConditionalGeneration.from_pretrained(source_dir)
    exported = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path)
    vocab = original.config.text_config.vocab_size
    for name, value in original.state_dict().items():
        torch.testing.assert_close(exported.state_dict()[name][:vocab], value, rtol=0, atol=0, msg=name)
    inputs = _source_inputs(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(exported(**inputs).logits[..., :vocab], original(**inputs).logits)


def test_export_refuses_models_it_cannot_represent(converted_dir):
    model = AutoModelForCausalLM.from_pretrained(converted_dir, tokens_per_frame=9)
    with torch.no_grad():
        next(iter(model.model.cross_layers.values())).v2v.gate.fill_(0.5)
    with pytest.raises(ValueError, match="tokens_per_frame=9.*non-zero gates"):
        export_llava_onevision(model, AutoProcessor.from_pretrained(converted_dir))


def test_adapter_lists_unmapped_and_missing_keys():
    state = {"model.image_newline": torch.zeros(2), "model.mystery.weight": torch.zeros(1)}
    expected = ["model.video_end_embedding", "lm_head.weight", "model.cross_layers.1.v2v.gate"]
    with pytest.raises(KeyMismatchError) as err:
        ADAPTER.from_hf(state, expected)
    message = str(err.value)
    assert "model.mystery.weight" in message and "lm_head.weight" in message
    assert "cross_layers" not in message  # new modules are expected to be missing
