"""`crosslmm init-tiny` and `crosslmm build` produce directories that load through the public Auto API."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers import random_frames, video_prompt
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, Qwen2ForCausalLM, SiglipVisionModel

import crosslmm  # noqa: F401
from crosslmm.cli import main
from crosslmm.model.tiny import TinySpec, tiny_text_config, tiny_vision_config, train_tiny_tokenizer


@pytest.mark.parametrize(("llm", "vision"), [("qwen2", "siglip"), ("llama", "clip"), ("qwen2", "open_clip")])
def test_init_tiny_writes_loadable_dir(tmp_path, llm, vision):
    assert (
        main(["init-tiny", str(tmp_path), "--llm", llm, "--vision", vision, "--tokens-per-frame", "1"]) == 0
    )
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    processor = AutoProcessor.from_pretrained(tmp_path)
    inputs = processor(text=[video_prompt(processor)], videos=[random_frames(2)])
    assert inputs["input_ids"].eq(model.config.video_token_id).sum() == 2  # 2 frames x 1 token
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


@pytest.fixture
def pretrained_parts(tmp_path):
    """A tiny 'Qwen2.5' causal-LM dir (with tokenizer) and a tiny SigLIP dir, as a user would have them."""
    tokenizer = train_tiny_tokenizer()
    text_cfg = AutoConfig.for_model(**tiny_text_config(TinySpec(), len(tokenizer)))
    llm_dir, vision_dir = tmp_path / "llm", tmp_path / "vision"
    Qwen2ForCausalLM(text_cfg).save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    SiglipVisionModel(tiny_vision_config("siglip", image_size=32, patch_size=4)).save_pretrained(vision_dir)
    return llm_dir, vision_dir


def _write_config(path, **extra):
    cfg = {"tokens_per_frame": 4, "cross_attention_every": 2, "v2v": True, "t2v": True} | extra
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_build_copies_pretrained_weights_and_starts_as_base_model(tmp_path, pretrained_parts):
    llm_dir, vision_dir = pretrained_parts
    config = _write_config(tmp_path / "cfg.yaml", text_config={"hidden_size": 64})
    out = tmp_path / "out"
    assert (
        main(["build", "--llm", str(llm_dir), "--vision", str(vision_dir), "--config", str(config), str(out)])
        == 0
    )
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    llm = Qwen2ForCausalLM.from_pretrained(llm_dir).eval()
    vision = SiglipVisionModel.from_pretrained(vision_dir)
    for name, p in llm.model.state_dict().items():
        torch.testing.assert_close(model.model.language_model.state_dict()[name], p, rtol=0, atol=0)
    torch.testing.assert_close(
        model.model.vision_tower.model.embeddings.patch_embedding.weight,
        vision.embeddings.patch_embedding.weight,
        rtol=0,
        atol=0,
    )
    assert len(model.model.cross_layers) == 2
    processor = AutoProcessor.from_pretrained(out)
    ids = processor.tokenizer("what colour is it", return_tensors="pt")["input_ids"]
    with torch.no_grad():  # zero gates, no video: exactly the source LLM
        torch.testing.assert_close(model(input_ids=ids).logits, llm(input_ids=ids).logits, rtol=0, atol=0)


def test_build_rejects_config_contradicting_checkpoint(tmp_path, pretrained_parts, capsys):
    llm_dir, vision_dir = pretrained_parts
    config = _write_config(tmp_path / "cfg.yaml", text_config={"hidden_size": 3584})
    code = main(
        [
            "build",
            "--llm",
            str(llm_dir),
            "--vision",
            str(vision_dir),
            "--config",
            str(config),
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert "hidden_size: config 3584 vs checkpoint 64" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_build_unknown_preset_lists_available(tmp_path, pretrained_parts, capsys):
    llm_dir, vision_dir = pretrained_parts
    assert (
        main(["build", "--llm", str(llm_dir), "--vision", str(vision_dir), "--config", "no-such", "o"]) == 2
    )
    assert "crosslmm-7b-9tok" in capsys.readouterr().err


def test_build_rejects_unknown_option(tmp_path, pretrained_parts, capsys):
    llm_dir, vision_dir = pretrained_parts
    config = _write_config(tmp_path / "cfg.yaml", tokens_per_frme=9)
    code = main(["build", "--llm", str(llm_dir), "--vision", str(vision_dir), "--config", str(config), "o"])
    assert code == 2
    assert "tokens_per_frme" in capsys.readouterr().err


def test_build_names_a_missing_gguf_file(tmp_path, pretrained_parts, capsys):
    """``--llm`` also takes a .gguf file (tests/test_real_checkpoint.py builds from one); a missing one is
    named before anything loads."""
    _, vision_dir = pretrained_parts
    config = _write_config(tmp_path / "cfg.yaml")
    missing = tmp_path / "SmolLM2.gguf"
    code = main(["build", "--llm", str(missing), "--vision", str(vision_dir), "--config", str(config), "o"])
    assert code == 2
    assert f"GGUF file {str(missing)!r} does not exist" in capsys.readouterr().err
