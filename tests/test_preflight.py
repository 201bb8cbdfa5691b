"""`crosslmm train --check`: the preflight finds what a cluster job would meet, before it starts."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import write_train_config

from crosslmm.cli import main
from crosslmm.data.dataset import VideoChatDataset
from crosslmm.data.mixture import build_mixture
from crosslmm.data.video import write_video
from crosslmm.model.presets import CONFIG_DIR
from crosslmm.model.tiny import TinySpec, make_tiny, train_tiny_tokenizer
from crosslmm.training.config import load_config
from crosslmm.training.params import set_trainable
from crosslmm.training.preflight import (
    ActivationShape,
    ParamCounts,
    activation_bytes,
    model_states,
    run_check,
    steps_per_epoch,
)

STAGE2 = str(CONFIG_DIR / "train" / "crosslmm-7b-stage2.yaml")


def _caption(i: int, words: int) -> dict:
    return {
        "id": f"r{i}",
        "video": f"media/v{i % 10}.mp4",
        "conversations": [
            {"from": "human", "value": "<video>\nDescribe the video."},
            {"from": "gpt", "value": " ".join(["red square moves left"] * words)},
        ],
    }


def write_mixture(out: Path, records: int, seed: int = 0) -> Path:
    """``records`` caption records over ten short videos of 8-116 frames (8 fps, 32 px), answers of
    1-400 repeated phrases, in one JSONL entry of a mixture YAML."""
    rng = np.random.default_rng(seed)
    (out / "media").mkdir(parents=True, exist_ok=True)
    for v in range(10):
        frames = rng.integers(0, 255, (8 + 12 * v, 32, 32, 3), dtype=np.uint8)
        write_video(out / "media" / f"v{v}.mp4", frames, fps=8)
    with open(out / "a.jsonl", "w") as f:
        f.writelines(json.dumps(_caption(i, int(rng.integers(1, 400)))) + "\n" for i in range(records))
    mixture = out / "mix.yaml"
    mixture.write_text(yaml.safe_dump({"seed": 0, "datasets": [{"path": "a.jsonl", "data_root": "."}]}))
    return mixture


def test_stage2_config_over_1000_records_in_under_a_minute(tmp_path, capsys):
    """The repo's 7B stage-2 config before its model exists: shapes from the preset, tokens from a
    tokenizer dir, every record's media probed."""
    mixture = write_mixture(tmp_path, 1000)
    train_tiny_tokenizer().save_pretrained(tmp_path / "tok")
    argv = ["train", "--check", "--config", STAGE2, f"data.mixture={mixture}", "--all"]
    argv += ["--model-config", "crosslmm-7b-9tok", "--tokenizer", str(tmp_path / "tok")]
    start = time.process_time()  # CPU seconds: the wall clock of a shared CI machine measures its load
    code = main(argv)
    seconds = time.process_time() - start
    out = capsys.readouterr().out
    assert code == 0, out
    assert seconds < 60, f"took {seconds:.0f} s of CPU"
    assert "1000 records, 0 bad (none), 1000 drawn; media probed: 1000 (all), unreadable: 0" in out
    assert "steps per epoch on 8 GPUs: 7 (global batch 128" in out  # ceil(1000 / 8) // 16
    assert "ZeRO-3, bf16, 8 GPUs, 1 x 8192 tokens, 512 frames, checkpointing on" in out
    for part in ("weights", "gradients", "optimizer states", "activations", "DeepSpeed's estimator"):
        assert part in out
    assert "no problems found" in out


def test_problems_name_every_bad_file_and_record(tmp_path, tiny_dir, capsys):
    root = tmp_path / "data"
    write_mixture(root, 6)
    (root / "media" / "broken.mp4").write_bytes(b"not a video at all" * 10)
    records = [json.loads(line) for line in (root / "a.jsonl").read_text().splitlines()]
    records[1]["video"] = "media/missing.mp4"
    records[2]["video"] = "media/broken.mp4"
    records[3]["conversations"] = records[3]["conversations"][:1]  # no answer
    (root / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = write_train_config(
        tmp_path / "c.yaml", tiny_dir, tmp_path / "run", str(root / "mix.yaml"), warmup_ratio=1.5
    )
    code = main(["train", "--check", "--config", config, "--gpu-memory", "0.001"])
    out = capsys.readouterr().out
    assert code == 1
    problems = out.split("problem(s):\n")[1].strip().splitlines()
    assert problems[0] == "config: warmup_ratio must be in [0, 1), got 1.5"
    source = str(root / "a.jsonl")
    assert any(line.startswith(f"{source}: record 3: has no gpt turn") for line in problems), problems
    assert any(
        line.startswith(f"{source}: record 1 (id r1): unreadable media:") and "missing.mp4" in line
        for line in problems
    ), problems
    assert any(line.startswith(f"{source}: record 2 (id r2): unreadable media:") for line in problems)
    assert problems[-1].startswith("memory: about")
    assert len(problems) == 5, problems


def test_lengths_cut_and_dropped_are_the_pipelines_verdicts(tmp_path, tiny_dir):
    """Per record, the check's verdict (fits, cut, dropped) is what VideoChatDataset does with it."""
    mixture = write_mixture(tmp_path / "data", 40)
    for overlength in ("truncate", "drop"):
        config = write_train_config(
            tmp_path / "c.yaml",
            tiny_dir,
            tmp_path / "run",
            str(mixture),
            data={
                "mixture": str(mixture),
                "num_frames": 4,
                "max_length": 400,
                "overlength": overlength,
                "num_workers": 0,
            },
        )
        check = run_check(config, probe_all=True)
        assert not check.problems, check.problems
        train = load_config(config)
        records, _ = build_mixture(train.data.mixture)
        from transformers import AutoProcessor

        dataset = VideoChatDataset(
            records, AutoProcessor.from_pretrained(tiny_dir), 400, train.data.sampling, overlength
        )
        full = VideoChatDataset(records, dataset.processor, 10**9, train.data.sampling)
        verdicts = defaultdict(int)
        for record in records:
            kept, whole = dataset.encode(record), full.encode(record)
            if kept is None:
                verdicts["dropped"] += 1
            else:
                verdicts["cut" if len(kept[0].input_ids) < len(whole[0].input_ids) else "fits"] += 1
        assert check.data["verdicts"] == dict(verdicts)
        assert sum(verdicts.values()) == 40 and verdicts["fits"] < 40  # some records are over max_length


def test_counts_per_mixture_entry_follow_ratio_and_count(tmp_path, tiny_dir):
    root = tmp_path / "data"
    write_mixture(root, 20)
    spec = {"seed": 0, "datasets": [{"path": "a.jsonl", "ratio": 0.5}, {"path": "a.jsonl", "count": 7}]}
    (root / "mix.yaml").write_text(yaml.safe_dump(spec))
    config = write_train_config(tmp_path / "c.yaml", tiny_dir, tmp_path / "run", str(root / "mix.yaml"))
    check = run_check(config, sample=3)
    assert check.data["records"] == [10, 7]
    assert len(build_mixture(str(root / "mix.yaml"))[0]) == 17
    assert len(check.data["frames"]) == 6  # 3 probed per entry


def test_missing_model_dir_without_a_preset_is_a_problem(tmp_path):
    mixture = write_mixture(tmp_path, 4)
    config = write_train_config(tmp_path / "c.yaml", tmp_path / "no-model", tmp_path / "run", str(mixture))
    check = run_check(config)
    assert any(p.startswith(f"model: {tmp_path / 'no-model'} has no config.json") for p in check.problems)


def test_steps_per_epoch_counts_as_the_trainer_does(tmp_path):
    config = load_config(STAGE2, ["data.mixture=m.yaml"], validate=False)
    assert steps_per_epoch(1000, config, 8) == 7
    assert steps_per_epoch(128 * 10, config, 8) == 10
    assert steps_per_epoch(5, config, 8) == 1


@pytest.mark.parametrize("stage", [2, 3])
def test_model_states_are_deepspeeds_estimate(stage):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    everything = ParamCounts(7_000_000_000, 7_000_000_000, 500_000_000, {})
    states = model_states(everything, stage, bf16=True, gpus=8)
    if stage == 2:
        expected = estimate_zero2_model_states_mem_needs(7_000_000_000, 8, 1, cpu_offload=False)[1]
    else:
        expected = estimate_zero3_model_states_mem_needs(7_000_000_000, 500_000_000, 8, 1, False, False)[1]
    assert states.deepspeed == expected
    assert states.total == pytest.approx(expected, rel=1e-9, abs=8)
    half = model_states(ParamCounts(7_000_000_000, 3_500_000_000, 500_000_000, {}), stage, True, 8)
    frozen_weights = 2 * 3_500_000_000 // (1 if stage == 2 else 8)
    assert half.total == pytest.approx(half.deepspeed, abs=8)
    assert half.deepspeed < states.deepspeed
    assert half.weights >= frozen_weights


def measured_activation_bytes(model, batch: dict) -> int:
    """Bytes a real CPU forward saves for its backward: every tensor autograd packs, each storage once,
    parameters excluded."""
    stored: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        stored[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch, use_cache=False).loss
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    loss.backward()
    return sum(n for ptr, n in stored.items() if ptr not in params)


@pytest.mark.parametrize(
    "train", [["projector", "v2v"], ["projector", "v2v", "t2v", "llm", "vision"], ["v2v"]], ids=str
)
def test_activation_estimate_is_within_25_percent_of_a_measured_cpu_step(train):
    model, _ = make_tiny(TinySpec(), seed=0, v2v=True, t2v=True, tokens_per_frame=4)
    set_trainable(model, train, False)
    model.train()
    shape = ActivationShape(batch=2, tokens=160, frames=8)
    video = model.config.video_token_id
    ids = torch.randint(10, 400, (shape.batch, shape.tokens))
    ids[:, 5 : 5 + shape.frames * 4] = video
    labels = ids.clone()
    labels[:, : 5 + shape.frames * 4] = -100
    batch = dict(
        input_ids=ids,
        labels=labels,
        pixel_values_videos=torch.randint(0, 256, (shape.batch, shape.frames, 3, 32, 32), dtype=torch.uint8),
        video_frame_counts=torch.full((shape.batch,), shape.frames),
    )
    measured = measured_activation_bytes(model, batch)
    estimate = sum(activation_bytes(model.config, shape, train, 4, checkpointing=False).values())
    assert abs(estimate / measured - 1) <= 0.25, (estimate, measured)
