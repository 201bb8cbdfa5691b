"""Vision tower backends: token shapes, LLaVA feature_layer semantics, checkpoint loading, config round trips."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, CLIPConfig, CLIPModel, CLIPVisionConfig, SiglipVisionModel

from crosslmm.model.build import load_pretrained_vision_tower
from crosslmm.model.tiny import tiny_vision_config
from crosslmm.model.vision import (
    CLIPTower,
    OpenCLIPTower,
    OpenCLIPVisionConfig,
    SiglipTower,
    VisionTower,
    build_vision_tower,
    vision_config_from_dict,
)

KINDS = ["siglip", "clip", "open_clip"]
GRID = 4  # tiny configs: 32 px images, 8 px patches


def _pixels(n: int = 2, size: int = 32) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 3, size, size)


def _tower(kind: str, feature_layer: int = -1) -> VisionTower:
    torch.manual_seed(0)
    return build_vision_tower(tiny_vision_config(kind), feature_layer).eval()


def _hf_hidden_state(model, pixels: torch.Tensor, feature_layer: int, prefix: int) -> torch.Tensor:
    """What LlavaOnevision selects: hidden_states[feature_layer], minus the CLS token for CLIP."""
    with torch.no_grad():
        return model(pixels, output_hidden_states=True).hidden_states[feature_layer][:, prefix:]


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_metadata(kind: str) -> None:
    tower = _tower(kind)
    with torch.no_grad():
        tokens = tower(_pixels(3))
    assert isinstance(tower, VisionTower)
    assert tokens.shape == (3, GRID * GRID, 32)
    assert (tower.hidden_size, tower.grid_size, tower.image_size) == (32, GRID, 32)
    assert len(tower.image_mean) == len(tower.image_std) == 3


@pytest.mark.parametrize(("kind", "prefix"), [("siglip", 0), ("clip", 1)])
@pytest.mark.parametrize("feature_layer", [-1, -2, 0, 1])
def test_hf_feature_layer_equals_hidden_states(kind: str, prefix: int, feature_layer: int) -> None:
    tower = _tower(kind, feature_layer)
    pixels = _pixels()
    with torch.no_grad():
        tokens = tower(pixels)
    reference = _hf_hidden_state(tower.model, pixels, feature_layer, prefix)
    assert tokens.shape == (2, GRID * GRID, 32)  # CLIP's CLS token is gone
    assert torch.equal(tokens, reference)


def test_hf_weight_names_are_stable() -> None:
    assert "model.encoder.layers.0.mlp.fc1.weight" in _tower("siglip").state_dict()
    assert "model.pre_layrnorm.weight" in _tower("clip").state_dict()


@pytest.mark.parametrize("feature_layer", [-1, -2, 1])
def test_open_clip_matches_open_clip_tokens(feature_layer: int) -> None:
    from open_clip.model import _build_vision_tower

    config = tiny_vision_config("open_clip")
    tower = _tower("open_clip", feature_layer)
    reference = _build_vision_tower(config.embed_dim, {**config.vision_cfg, "output_tokens": True}).eval()
    reference.load_state_dict(tower.visual.state_dict())
    hidden_states = [None]  # HF-style indexing: 0 = embeddings (not exposed by open_clip), i = block i output
    for block in reference.transformer.resblocks:
        block.register_forward_hook(lambda _module, _args, out: hidden_states.append(out))
    pixels = _pixels()
    with torch.no_grad():
        tokens = tower(pixels)
        _, final_tokens = reference(pixels)  # open_clip's own tokens: ln_post(last block)[:, 1:]
    assert tokens.shape == (2, GRID * GRID, 32)
    assert torch.equal(tokens, hidden_states[feature_layer][:, 1:])
    if feature_layer == -1:
        torch.testing.assert_close(tower.visual.ln_post(tokens), final_tokens, rtol=0, atol=1e-6)


def test_load_siglip_vision_model(tmp_path) -> None:
    torch.manual_seed(0)
    model = SiglipVisionModel(tiny_vision_config("siglip")).eval()
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3]}))
    tower, config = load_pretrained_vision_tower(str(tmp_path), feature_layer=-1)
    assert isinstance(tower, SiglipTower) and config.model_type == "siglip_vision_model"
    assert tower.image_mean == (0.1, 0.2, 0.3) and tower.image_std == (0.5, 0.5, 0.5)
    pixels = _pixels()
    with torch.no_grad():
        assert torch.equal(tower.eval()(pixels), _hf_hidden_state(model, pixels, -1, 0))
    rebuilt = build_vision_tower(vision_config_from_dict(config.to_dict()), -1)
    assert rebuilt.image_mean == (0.1, 0.2, 0.3)  # normalisation survives the config round trip


def test_load_full_clip_model_keeps_only_vision(tmp_path) -> None:
    torch.manual_seed(0)
    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 64,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
    }
    clip = CLIPModel(CLIPConfig(vision_config=tiny_vision_config("clip").to_dict(), text_config=text)).eval()
    clip.save_pretrained(tmp_path)
    tower, config = load_pretrained_vision_tower(str(tmp_path), feature_layer=-2)
    assert isinstance(tower, CLIPTower) and isinstance(config, CLIPVisionConfig)
    assert not any("text" in name or "projection" in name for name in tower.state_dict())
    pixels = _pixels()
    with torch.no_grad():
        assert torch.equal(tower.eval()(pixels), _hf_hidden_state(clip.vision_model, pixels, -2, 1))


@pytest.mark.parametrize("weights_file", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_load_open_clip_hub_dir(tmp_path, weights_file: str) -> None:
    from open_clip.model import CLIP

    vision_cfg = tiny_vision_config("open_clip").vision_cfg
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": vision_cfg,
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(0)
    clip = CLIP(**model_cfg).eval()
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    if weights_file.endswith(".safetensors"):
        save_file(state, tmp_path / weights_file)
    else:
        torch.save(state, tmp_path / weights_file)
    preprocess_cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
    )
    tower, config = load_pretrained_vision_tower(str(tmp_path), feature_layer=-1)
    assert isinstance(tower, OpenCLIPTower) and isinstance(config, OpenCLIPVisionConfig)
    assert tower.image_mean == (0.5, 0.5, 0.5) and tower.image_std == (0.25, 0.25, 0.25)
    assert set(tower.state_dict()) == {f"visual.{k}" for k in clip.visual.state_dict()}
    pixels = _pixels()
    with torch.no_grad():
        expected = clip.visual.forward_intermediates(
            pixels, indices=[-1], intermediates_only=True, output_fmt="NLC"
        )["image_intermediates"][0]
        assert torch.equal(tower.eval()(pixels), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_config_dict_round_trip(kind: str) -> None:
    config = tiny_vision_config(kind)
    restored = vision_config_from_dict(json.loads(json.dumps(config.to_dict())))
    assert type(restored) is type(config) and restored.to_dict() == config.to_dict()
    pixels = _pixels()
    with torch.no_grad():
        from_dict = build_vision_tower(config.to_dict(), -2)
        from_dict.load_state_dict(_tower(kind, -2).state_dict())
        assert torch.equal(from_dict.eval()(pixels), _tower(kind, -2)(pixels))


def test_open_clip_dict_alias_and_auto_config() -> None:
    d = {"model_type": "open_clip", "embed_dim": 32, "vision_cfg": tiny_vision_config("open_clip").vision_cfg}
    assert isinstance(vision_config_from_dict(d), OpenCLIPVisionConfig)
    assert isinstance(AutoConfig.for_model("open_clip_vision", embed_dim=8), OpenCLIPVisionConfig)


def test_unknown_model_type_lists_supported() -> None:
    with pytest.raises(ValueError, match="siglip_vision_model"):
        vision_config_from_dict({"model_type": "resnet"})
    with pytest.raises(ValueError, match="clip_vision_model"):
        build_vision_tower(AutoConfig.for_model("vit"), -1)
    with pytest.raises(ValueError, match="supported"):
        tiny_vision_config("resnet")


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_image_size_raises(kind: str) -> None:
    tower = _tower(kind)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\), got \(2, 3, 48, 48\)"):
        tower(_pixels(size=48))
    with pytest.raises(ValueError, match="got"):
        tower(torch.zeros(3, 32, 32))


def test_non_square_grid_raises() -> None:
    config = tiny_vision_config("siglip")
    config.image_size = [32, 48]
    with pytest.raises(ValueError, match="square"):
        build_vision_tower(config, -1)
    config = tiny_vision_config("open_clip")
    config.vision_cfg["patch_size"] = [8, 4]
    with pytest.raises(ValueError, match="square"):
        build_vision_tower(config, -1)


def test_bad_feature_layer_raises() -> None:
    with pytest.raises(ValueError, match="out of range"):
        build_vision_tower(tiny_vision_config("clip"), 3)
    assert build_vision_tower(tiny_vision_config("clip"), -3).num_layers_to_run == 0  # embeddings are valid
    with pytest.raises(ValueError, match="embeddings"):
        build_vision_tower(tiny_vision_config("open_clip"), 0)


def test_load_from_unusable_dir_raises(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_pretrained_vision_tower(str(tmp_path), -1)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="siglip"):
        load_pretrained_vision_tower(str(tmp_path), -1)
