"""The training config: dataclasses loaded from YAML plus ``key=value`` overrides, validated once."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field

import yaml

from crosslmm.data.dataset import OVERLENGTH_POLICIES
from crosslmm.data.sampling import FrameSampling
from crosslmm.data.video import BACKENDS

# Trainable parts of the model, named by what they are rather than by module paths.
COMPONENTS = ("vision", "projector", "v2v", "t2v", "cross_mlp", "llm")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class DataConfig:
    mixture: str = ""  # data-mixture YAML (see crosslmm.data.mixture)
    # Frame sampling (crosslmm.data.sampling.FrameSampling, the rule evaluation uses too): num_frames uniform
    # frames, or fps clamped to [min_frames, max_frames]; none of them: the shared default (1 fps in
    # [64, 512], DEFAULT_SAMPLING); max_frames alone: that many uniform frames.
    num_frames: int | None = None
    fps: float | None = None
    min_frames: int | None = None
    max_frames: int | None = None
    max_length: int = 4096  # tokens, video included
    overlength: str = "truncate"  # cut text after the video, or "drop" the sample
    skip_bad: bool = False  # skip (and count) bad records instead of stopping
    num_workers: int = 4
    # crosslmm.data.video.BACKENDS: "auto" (exact frames, the backend chosen per video), or one backend;
    # "pyav-keyframes" trains on the nearest keyframes instead of the sampled frames (docs/video.md)
    video_backend: str = "auto"

    @property
    def sampling(self) -> FrameSampling:
        return FrameSampling.resolve(self.num_frames, self.fps, self.max_frames, self.min_frames)


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    # Projection names inside the LLM's decoder layers; cross-attention and vision layers are never LoRA'd.
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class TrainConfig:
    model: str = ""  # a CrossLMM model dir (crosslmm build / init-tiny / a previous stage's final dir)
    # Elastic budgets to train at (docs/model.md): turns a fixed-budget checkpoint into an elastic one, or
    # changes an elastic one's set; null keeps the checkpoint's own. Its default budget must be among them.
    tokens_per_frame_choices: list[int] | None = None
    output_dir: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    train: list[str] = field(default_factory=lambda: ["projector", "v2v"])  # subset of COMPONENTS
    lr: float = 1e-3  # new blocks: projector and cross-attention
    llm_lr: float | None = None  # None: same as lr
    vision_lr: float | None = None  # None: same as lr
    # Cross-attention gates (tanh(gate), 0 at init): until a gate moves, no other cross-attention weight gets
    # gradient, and Adam moves a scalar by about lr per step. 1.0 and true keep the paper's one schedule.
    gate_lr_scale: float = 1.0  # gates learn at lr * gate_lr_scale, without weight decay when != 1
    gate_lr_decay: bool = (
        True  # false: gates keep their peak rate after warmup instead of following lr_scheduler
    )
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    per_device_batch_size: int = 1
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    deepspeed: str | None = None  # configs/deepspeed/zero2.json or zero3.json
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    seed: int = 42
    save_steps: int = 500
    keep_checkpoints: int = 2  # complete checkpoints kept; older ones are deleted
    logging_steps: int = 1
    report_to: str = "wandb"  # or "none"; wandb respects WANDB_MODE
    run_name: str | None = None
    resume: str = "auto"  # auto: newest complete checkpoint in output_dir if any; none; or a checkpoint dir
    lora: LoraConfig = field(default_factory=LoraConfig)

    @property
    def zero_stage(self) -> int | None:
        """The ZeRO stage of the DeepSpeed config (``zero_optimization.stage``), None without DeepSpeed."""
        if not self.deepspeed:
            return None
        try:
            with open(self.deepspeed, encoding="utf-8") as f:
                settings = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"deepspeed: {self.deepspeed}: no such file") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"deepspeed: {self.deepspeed}: invalid JSON: {e}") from None
        return int(settings.get("zero_optimization", {}).get("stage", 0))

    def validate(self) -> None:
        """Reject inconsistent settings at start-up, naming the key."""
        if not self.model:
            raise ValueError("model: set the model dir to train")
        if not self.output_dir:
            raise ValueError("output_dir: set where checkpoints and the final model go")
        if not self.data.mixture:
            raise ValueError("data.mixture: set the data-mixture YAML")
        unknown = sorted(set(self.train) - set(COMPONENTS))
        if unknown or not self.train:
            raise ValueError(f"train: must be a non-empty subset of {list(COMPONENTS)}, got {self.train}")
        try:
            self.data.sampling  # noqa: B018 (validates)
        except ValueError as e:
            raise ValueError(f"data: {e} (set the unused one to null)") from None
        if self.data.overlength not in OVERLENGTH_POLICIES:
            raise ValueError(
                f"data.overlength must be one of {OVERLENGTH_POLICIES}, got {self.data.overlength!r}"
            )
        if self.data.video_backend not in BACKENDS:
            raise ValueError(f"data.video_backend must be one of {BACKENDS}, got {self.data.video_backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.report_to not in ("wandb", "none"):
            raise ValueError(f"report_to must be 'wandb' or 'none', got {self.report_to!r}")
        if self.lora.enabled and "llm" not in self.train:
            raise ValueError("lora.enabled needs 'llm' in train: LoRA adapters are what trains the LLM")
        if self.lora.enabled and self.zero_stage == 3:
            raise ValueError(
                "lora with ZeRO-3 is not supported (the final merge needs whole weights); use zero2"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.gate_lr_scale <= 0:
            raise ValueError(f"gate_lr_scale must be > 0, got {self.gate_lr_scale}")
        for name in ("lr", "llm_lr", "vision_lr"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")


def _coerce(value, hint, key: str):
    """Check ``value`` against a field's type (ints and numeric strings pass as floats); build nested dataclasses."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return _build(hint, value, f"{key}.")
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0])
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if hint is float and not isinstance(value, bool) and isinstance(value, int | str):
        try:  # PyYAML reads 1e-4 (no dot) as a string
            return float(value)
        except ValueError:
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys: {[prefix + k for k in hints]}"
        )
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in values.items()})


def _set_dotted(values: dict, override: str) -> None:
    """Apply ``a.b=value`` (value parsed as YAML, so ``null``, ``1e-4`` and ``[a, b]`` work)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ValueError(
            f"override {override!r} must look like key=value (e.g. lr=1e-4 or data.num_frames=8)"
        )
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(raw)


def load_config(path: str, overrides: list[str] = (), validate: bool = True) -> TrainConfig:
    """The config in ``path`` with ``key=value`` overrides applied, validated unless ``validate`` is False
    (a template to fill with ``dataclasses.replace`` and validate then, as the demo does)."""
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of config keys")
    for override in overrides:
        _set_dotted(values, override)
    config = _build(TrainConfig, values)
    if validate:
        config.validate()
    return config
