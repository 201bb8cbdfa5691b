"""A CrossLMMConfig built by the project's own Python paths refuses a misspelt field, as the YAML configs do.

``CrossLMMConfig(cross_layers=[1])`` itself keeps the unknown kwarg (every HF config does), so each path
that builds a config from its own fields checks them (``check_fields``): ``make_tiny``, the demo's and the
compare demo's variants, ``crosslmm build``, model YAMLs and the bench presets.
"""

from __future__ import annotations

import pytest

from crosslmm.model.configuration import CrossLMMConfig, check_fields

MISSPELT = {"cross_layers": [0]}  # the field is cross_attention_layers
REFUSED = r"unknown CrossLMMConfig field\(s\) \['cross_layers'\]"


def test_the_config_itself_keeps_unknown_kwargs():
    """Why the paths below check: the HF config stores the misspelt field and ignores it."""
    assert CrossLMMConfig(**MISSPELT).cross_layers == [0]
    with pytest.raises(ValueError, match=REFUSED):
        CrossLMMConfig.from_fields(**MISSPELT)
    check_fields({"cross_attention_layers": [0], "eos_token_id": 1, "tie_word_embeddings": True})


def test_make_tiny_refuses_a_misspelt_field():
    from crosslmm.model.tiny import TinySpec, make_tiny

    with pytest.raises(ValueError, match="make_tiny: " + REFUSED):
        make_tiny(TinySpec(), **MISSPELT)


def test_demo_variants_refuse_a_misspelt_field():
    from crosslmm.demo.variants import DemoSettings, Variant, build_model

    with pytest.raises(ValueError, match=REFUSED):
        build_model(Variant("bad", "bad", dict(tokens_per_frame=1) | MISSPELT), 0, DemoSettings())


def test_elastic_variants_set_their_cross_attention_layers():
    """The elastic demo once wrote ``cross_layers=``, silently getting make_tiny's default layers."""
    from crosslmm.demo.elastic.run import elastic_variants

    for variant in elastic_variants((1, 4), [1]):
        check_fields(variant.fields, variant.name)
        if variant.fields.get("v2v"):
            assert variant.fields["cross_attention_layers"] == [1]


def test_compare_candidates_refuse_a_misspelt_field():
    from crosslmm.demo.compare.plan import Coster

    coster = Coster.__new__(Coster)  # only the config step: no model, no prompts
    coster.base = CrossLMMConfig().to_dict()
    assert coster.config(dict(tokens_per_frame=4)).tokens_per_frame == 4
    with pytest.raises(ValueError, match="compare candidate: " + REFUSED):
        coster.config(dict(tokens_per_frame=4) | MISSPELT)


def test_build_refuses_a_misspelt_field_before_reading_checkpoints(tmp_path):
    from crosslmm.model.build import build_from_pretrained

    with pytest.raises(ValueError, match=REFUSED):
        build_from_pretrained(str(tmp_path / "no-llm"), str(tmp_path / "no-tower"), MISSPELT)


def test_model_yaml_and_bench_presets_refuse_a_misspelt_field(tmp_path):
    from crosslmm.bench.preset.setup import load_preset
    from crosslmm.model.presets import available_presets, load_config_yaml

    path = tmp_path / "bad.yaml"
    path.write_text("tokens_per_frame: 4\ncross_layers: [0]\n")
    with pytest.raises(ValueError, match=REFUSED):
        load_config_yaml(path)
    with pytest.raises(ValueError, match=REFUSED):
        load_preset(str(path))
    for name in available_presets():  # every shipped preset passes
        check_fields(load_config_yaml(name), name)


def test_bench_mini_and_memory_specs_build_checked_configs(monkeypatch):
    """Their fields are written in code: both go through ``from_fields`` (a misspelling there is refused)."""
    from crosslmm.bench.memory.measure import MemorySpec
    from crosslmm.bench.preset.setup import load_preset

    sources = []
    from_fields = CrossLMMConfig.from_fields.__func__

    def recording(cls, source="CrossLMMConfig", **fields):
        sources.append(source)
        return from_fields(cls, source, **fields)

    monkeypatch.setattr(CrossLMMConfig, "from_fields", classmethod(recording))
    load_preset("mini-quick")
    MemorySpec.quick().model_config(video_token_id=3)
    assert sources == ["MiniSpec.config", "MemorySpec.model_config"]
