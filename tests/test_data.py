"""Data pipeline: records, mixtures, tokenisation/labels, over-length handling, bad-input errors."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import yaml

from crosslmm.data.dataset import IGNORE_INDEX, VideoChatCollator, VideoChatDataset, encode_conversation
from crosslmm.data.mixture import build_mixture
from crosslmm.data.records import RecordError, load_records
from crosslmm.data.sampling import FrameSampling
from crosslmm.data.synthetic import make_toy_dataset
from crosslmm.model.processing import CrossLMMProcessor
from crosslmm.model.tiny import TinySpec, make_tiny
from crosslmm.training.config import load_config

MULTI_TURN = [
    {"role": "user", "content": "<video>\nWhat colour is the marker?"},
    {"role": "assistant", "content": "red"},
    {"role": "user", "content": "Does it move?"},
    {"role": "assistant", "content": "yes"},
]
TURNS = [{"from": "human", "value": "<video>\nQ"}, {"from": "gpt", "value": "A"}]


@pytest.fixture(scope="module")
def processor():
    return make_tiny(TinySpec())[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    return out, make_toy_dataset(str(out), num_videos=4, num_frames=4)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _with_video_end(processor) -> CrossLMMProcessor:
    """The same processor with a ``<video_end>`` slot after each video, as a converted LLaVA-OneVision has."""
    tokenizer = copy.deepcopy(processor.tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<video>", "<video_end>"]})
    return CrossLMMProcessor(
        processor.image_processor, tokenizer, processor.tokens_per_frame, video_end_token="<video_end>"
    )


@pytest.mark.parametrize("video_end", [False, True])
def test_ids_match_processor_and_labels_cover_only_answers(processor, video_end):
    """Training sequences are the ones the processor builds at inference, video-end slot included."""
    processor = _with_video_end(processor) if video_end else processor
    encoded = encode_conversation(processor, MULTI_TURN, num_frames=3, max_length=1000, overlength="truncate")
    text = processor.apply_chat_template(MULTI_TURN, add_generation_prompt=False)
    reference = processor(text=[text], videos=[np.zeros((3, 8, 8, 3), np.uint8)])
    torch.testing.assert_close(encoded.input_ids, reference["input_ids"][0])
    answers = processor.tokenizer.decode(encoded.labels[encoded.labels != IGNORE_INDEX])
    assert answers == "red<|im_end|>\nyes<|im_end|>\n"
    assert int((encoded.input_ids == processor.video_token_id).sum()) == 3 * processor.tokens_per_frame
    end_id = processor.tokenizer.convert_tokens_to_ids("<video_end>")
    assert encoded.input_ids.tolist().count(end_id) == int(video_end)


def test_video_moves_to_the_front_of_its_turn(tmp_path):
    """LLaVA's rule, and the order evaluation asks in: text placed before the video would get no T2V."""
    rows = [{"video": "a.mp4", "conversations": [{"from": "human", "value": "Q?\n<video>"}, TURNS[1]]}]
    (record,), _ = load_records(_write_jsonl(tmp_path / "r.jsonl", rows), str(tmp_path))
    assert record.messages[0]["content"] == "<video>\nQ?"


def test_overlength_truncates_text_never_video(processor):
    full = encode_conversation(processor, MULTI_TURN, 3, 1000, "truncate")
    limit = len(full.input_ids) - 4
    cut = encode_conversation(processor, MULTI_TURN, 3, limit, "truncate")
    assert len(cut.input_ids) == limit and torch.equal(cut.input_ids, full.input_ids[:limit])
    assert encode_conversation(processor, MULTI_TURN, 3, limit, "drop") is None
    video_end = int((full.input_ids == processor.video_token_id).nonzero().max()) + 1
    assert encode_conversation(processor, MULTI_TURN, 3, video_end, "truncate") is None


def test_image_record_is_one_frame_video(toy, processor):
    out, _ = toy
    records, _ = load_records(str(out / "images.json"), str(out))
    assert "<video>" in records[0].messages[0]["content"]
    sample = VideoChatDataset(records, processor, max_length=256, sampling=FrameSampling(num_frames=8))[0]
    assert sample["frames"].shape[0] == 1


def test_mixture_counts_and_collated_batch(toy, processor):
    _, mixture = toy
    records, skipped = build_mixture(mixture)
    assert len(records) == 4 + 2 and skipped == 0
    data = VideoChatDataset(records, processor, max_length=256, sampling=FrameSampling(num_frames=2))
    batch = VideoChatCollator(processor.tokenizer.pad_token_id)([data[0], data[5]])
    assert batch["pixel_values_videos"].shape[:2] == (2, 2)
    assert batch["video_frame_counts"].tolist() == [2, 1]
    assert batch["attention_mask"].sum(1).tolist() == [len(data[0]["input_ids"]), len(data[5]["input_ids"])]


def test_mixture_ratio_and_bad_keys(toy, tmp_path):
    out, _ = toy
    spec = {"datasets": [{"path": str(out / "videos.jsonl"), "data_root": str(out), "ratio": 0.5}]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(spec))
    assert len(build_mixture(str(tmp_path / "m.yaml"))[0]) == 2
    spec["datasets"][0]["weight"] = 2
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="unknown keys.*weight"):
        build_mixture(str(tmp_path / "m.yaml"))


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"id": "a", "conversations": [{"from": "human", "value": "<video>\nQ"}]}, 'exactly one of "video"'),
        ({"id": "b", "video": "v.mp4"}, 'missing or empty "conversations"'),
        (
            {"id": "c", "video": "v.mp4", "conversations": [{"from": "human", "value": "Q"}, TURNS[1]]},
            "exactly one <video> placeholder",
        ),
        (
            {
                "id": "d",
                "image": "i.png",
                "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
            },
            "exactly one <image> placeholder",
        ),
        (
            {"id": "e", "video": "v.mp4", "conversations": [{"from": "human", "value": "<video>"}]},
            "no gpt turn",
        ),
    ],
)
def test_bad_record_names_file_index_reason(tmp_path, row, reason):
    good = {"id": "ok", "video": "v.mp4", "conversations": TURNS}
    path = _write_jsonl(tmp_path / "ann.jsonl", [good, row])
    with pytest.raises(RecordError, match=rf"ann\.jsonl: record 1: .*{reason}"):
        load_records(path, str(tmp_path))
    records, skipped = load_records(path, str(tmp_path), skip_bad=True)
    assert len(records) == 1 and skipped == 1


def test_unreadable_video_stops_or_is_skipped_and_counted(toy, tmp_path, processor):
    out, _ = toy
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    rows = [
        {"id": "bad", "video": "broken.mp4", "conversations": TURNS},
        {"id": "good", "video": str(out / "media" / "v0.mp4"), "conversations": TURNS},
    ]
    records, _ = load_records(_write_jsonl(tmp_path / "ann.jsonl", rows), str(tmp_path))
    with pytest.raises(RecordError, match=r"ann\.jsonl: record 0: unreadable media: .*broken\.mp4"):
        VideoChatDataset(records, processor, max_length=256, sampling=FrameSampling(num_frames=2))[0]
    sample = VideoChatDataset(
        records, processor, max_length=256, sampling=FrameSampling(num_frames=2), skip_bad=True
    )[0]
    assert sample["dropped"].tolist() == [1, 0] and sample["frames"].shape[0] == 2


def test_overlength_records_are_dropped_and_counted(toy, processor):
    _, mixture = toy
    records, _ = build_mixture(mixture)
    image_length = len(
        VideoChatDataset(records, processor, max_length=1000, sampling=FrameSampling(num_frames=4))[4][
            "input_ids"
        ]
    )
    data = VideoChatDataset(
        records, processor, max_length=image_length, sampling=FrameSampling(num_frames=4), overlength="drop"
    )
    sample = data[0]  # the 4-frame videos do not fit; the next record that does is the one-frame image
    assert sample["frames"].shape[0] == 1 and sample["dropped"].tolist() == [0, 4]


def test_config_rejects_unknown_keys_and_parses_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "output_dir": "o", "data": {"mixture": "x.yaml"}}))
    config = load_config(str(path), ["lr=1e-4", "data.num_frames=8", "train=[projector,v2v,t2v]"])
    assert config.lr == 1e-4 and config.data.num_frames == 8 and config.train == ["projector", "v2v", "t2v"]
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['data.frames'\]"):
        load_config(str(path), ["data.frames=8"])
    with pytest.raises(ValueError, match="train: must be a non-empty subset"):
        load_config(str(path), ["train=[decoder]"])
    with pytest.raises(ValueError, match="lr: expected a number"):
        load_config(str(path), ["lr=fast"])
    with pytest.raises(ValueError, match="data: min_frames applies to fps sampling only"):
        load_config(str(path), ["data.num_frames=8", "data.min_frames=4"])
    with pytest.raises(ValueError, match=r"warmup_ratio must be in \[0, 1\)"):
        load_config(str(path), ["warmup_ratio=5"])


def test_config_reads_the_zero_stage_from_the_deepspeed_json(tmp_path):
    """LoRA cannot merge ZeRO-3 shards: the stage comes from the JSON, whatever the file is called."""
    path = tmp_path / "c.yaml"
    lora = {"enabled": True}
    base = {"model": "m", "output_dir": "o", "data": {"mixture": "x.yaml"}, "train": ["llm"], "lora": lora}
    path.write_text(yaml.safe_dump(base))
    (tmp_path / "sharded.json").write_text('{"zero_optimization": {"stage": 3}}')
    (tmp_path / "zero3_but_stage2.json").write_text('{"zero_optimization": {"stage": 2}}')
    with pytest.raises(ValueError, match="lora with ZeRO-3"):
        load_config(str(path), [f"deepspeed={tmp_path / 'sharded.json'}"])
    assert load_config(str(path), [f"deepspeed={tmp_path / 'zero3_but_stage2.json'}"]).zero_stage == 2
    with pytest.raises(ValueError, match="missing.json: no such file"):
        load_config(str(path), [f"deepspeed={tmp_path / 'missing.json'}"])
