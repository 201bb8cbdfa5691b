"""``crosslmm train --check``: what a cluster job would meet, found before it starts.

It reads everything a stage would read, but never loads weights:

* the config, validated as the launcher validates it;
* the mixture: records of each entry (valid, bad, drawn by ``ratio``/``count``);
* media of a sample of the drawn records (every one with ``--all``), decoded by the training reader
  (:func:`crosslmm.data.video.load_frames` under the config's sampling), naming each unreadable file and its
  record;
* sequence lengths of the probed records, text plus video slots at their sampled frame count, encoded by the
  training code (:func:`crosslmm.data.dataset.encode_conversation`), so "cut" and "dropped" are the data
  pipeline's own verdicts under ``data.max_length`` and ``data.overlength``;
* steps per epoch for a number of GPUs;
* memory per GPU: weights, gradients and optimizer states for the ZeRO stage and precision (DeepSpeed's own
  estimators where they apply: bf16 under ZeRO-2/3), and activations at the configured worst case
  (``max_frames`` frames, ``max_length`` tokens, the per-GPU batch, gradient checkpointing on or off).

The model's shapes come from the model dir's ``config.json`` (a model dir holds one even before training), or,
when the dir does not exist yet (stage 2 before stage 1 has finished), from a preset (``--model-config``);
parameter counts come from the model built on the meta device, so nothing is allocated. Text lengths need
the model dir's processor, or a tokenizer dir (``--tokenizer``, e.g. the LLM the model was built from).

Every problem is one line in :attr:`Preflight.problems`; the command exits 1 if there is any.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crosslmm.training.config import COMPONENTS, TrainConfig, load_config

GIB = 2**30


@dataclass
class Preflight:
    """What the check found: report lines for a person, one line per problem."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # the numbers behind the lines, for tests and scripts

    def say(self, line: str = "") -> None:
        self.lines.append(line)

    def problem(self, line: str) -> None:
        self.problems.append(line)


# ---------------------------------------------------------------------------------------------- the model


def model_config_of(config: TrainConfig, preset: str | None, check: Preflight):
    """The CrossLMMConfig of the model dir, else of ``preset``; None (and a problem) if neither is there."""
    from crosslmm.model.configuration import CrossLMMConfig

    config_json = Path(config.model) / "config.json"
    if config_json.is_file():
        check.say(f"model: shapes from {config_json}")
        return CrossLMMConfig.from_pretrained(config.model)
    if preset is None:
        check.problem(
            f"model: {config.model} has no config.json (not built or trained yet?); "
            "give --model-config PRESET to check with a preset's shapes"
        )
        return None
    from crosslmm.model.presets import load_config_yaml

    fields = load_config_yaml(preset)
    fields.setdefault("video_token_id", 0)
    check.say(f"model: {config.model} does not exist yet; shapes from the preset {preset}")
    return CrossLMMConfig.from_fields(preset, **fields)


def processor_of(config: TrainConfig, model_config, tokenizer_dir: str | None, check: Preflight):
    """The model dir's processor, else one around ``tokenizer_dir``; None (and a problem) without either."""
    from transformers import AutoProcessor, AutoTokenizer, SiglipImageProcessor

    import crosslmm  # noqa: F401 (registers the processor class)
    from crosslmm.model.processing import CHATML_TEMPLATE, VIDEO_TOKEN, CrossLMMProcessor

    if (Path(config.model) / "processor_config.json").is_file() or (
        Path(config.model) / "tokenizer_config.json"
    ).is_file():
        return AutoProcessor.from_pretrained(config.model)
    if tokenizer_dir is None:
        check.problem(
            f"lengths: {config.model} has no processor; give --tokenizer DIR (the LLM's tokenizer) to count tokens"
        )
        return None
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if VIDEO_TOKEN not in tokenizer.get_vocab():  # as crosslmm build adds it
        tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHATML_TEMPLATE
    return CrossLMMProcessor(
        image_processor=SiglipImageProcessor(do_rescale=False, do_normalize=False),
        tokenizer=tokenizer,
        tokens_per_frame=model_config.tokens_per_frame,
    )


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of the model as the stage trains it."""

    total: int
    trainable: int
    largest_layer: int  # the most parameters one module owns directly (ZeRO-3 gathers a module at a time)
    by_component: dict[str, int]

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


def count_parameters(model_config, config: TrainConfig) -> ParamCounts:
    """Counts from the model built on the meta device (shapes only, nothing allocated), frozen as
    :func:`crosslmm.training.params.set_trainable` freezes it; LoRA adapters counted from the target shapes."""
    import torch

    from crosslmm.model.modeling import CrossLMMForCausalLM
    from crosslmm.training.params import component_of

    with torch.device("meta"):
        model = CrossLMMForCausalLM(model_config)
    by_component = dict.fromkeys(COMPONENTS, 0)
    seen, total, trainable = set(), 0, 0
    for name, p in model.named_parameters():
        if id(p) in seen:  # tied embeddings count once
            continue
        seen.add(id(p))
        part = component_of(name)
        by_component[part] += p.numel()
        total += p.numel()
        if part in config.train and not (config.lora.enabled and part == "llm"):
            trainable += p.numel()
    if config.lora.enabled:
        names = tuple(config.lora.target_modules)
        for name, module in model.model.language_model.layers.named_modules():
            if name.split(".")[-1] in names and isinstance(module, torch.nn.Linear):
                adapters = config.lora.r * (module.in_features + module.out_features)
                total += adapters
                trainable += adapters
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return ParamCounts(total, trainable, largest, by_component)


# -------------------------------------------------------------------------------------------- the memory


@dataclass(frozen=True)
class ModelStates:
    """Bytes per GPU of weights, gradients and optimizer states; ``deepspeed``: DeepSpeed's own estimate of
    their sum (None where its estimators do not apply), ``rule``: how they were counted."""

    weights: int
    gradients: int
    optimizer: int
    deepspeed: int | None
    rule: str

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer


def zero_offload(deepspeed_json: str | None) -> tuple[bool, bool]:
    """(optimizer offloaded to CPU, parameters offloaded to CPU) in a DeepSpeed JSON."""
    import json

    if not deepspeed_json:
        return False, False
    with open(deepspeed_json, encoding="utf-8") as f:
        zero = json.load(f).get("zero_optimization", {})

    def on_cpu(key: str) -> bool:
        return str((zero.get(key) or {}).get("device", "none")).lower() in ("cpu", "nvme")

    return on_cpu("offload_optimizer"), on_cpu("offload_param")


def model_states(
    counts: ParamCounts, stage: int | None, bf16: bool, gpus: int, offload: tuple[bool, bool] = (False, False)
) -> ModelStates:
    """Weights, gradients and AdamW states per GPU.

    bf16 under ZeRO-2/3 (DeepSpeed casts the model to bf16 and keeps fp32 master weights in its optimizer),
    DeepSpeed's ``estimate_zero{2,3}_model_states_mem_needs`` for the trained parameters plus the frozen
    parameters' bf16 weights. ZeRO-2: 2 bytes of bf16 weight per parameter on every GPU, and per trained
    parameter 18 bytes split over the GPUs: 2 (bf16 gradient) + 4 (fp32 gradient), 4 (fp32 master) + 8
    (Adam moments). ZeRO-3: 18 bytes per trained parameter split over the GPUs, 2 (bf16 weight) + 4 (fp32
    gradient) + 12 (master and moments), 2 per frozen one, plus the largest layer gathered (4 bytes per
    parameter, DeepSpeed's allowance). The split into weights, gradients and optimizer states is ours; the
    sum is DeepSpeed's. With offload, DeepSpeed's estimate is what stays on the GPU.

    Anything else (DDP, or fp32 under ZeRO): the model stays fp32 (bf16 is autocast), 4 bytes of weight per
    parameter (split under ZeRO-3), 4 of gradient and 8 of Adam moments per trained parameter (both split
    under ZeRO; ZeRO's optimizer keeps an fp32 partition, 4 more bytes split). Our counting, not DeepSpeed's.
    """
    trained, frozen, n = counts.trainable, counts.frozen, gpus
    if stage in (2, 3) and bf16:
        if stage == 2:
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

            _, ds_gpu = estimate_zero2_model_states_mem_needs(
                trained, num_gpus_per_node=n, num_nodes=1, cpu_offload=offload[0]
            )
            weights = 2 * counts.total
        else:
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

            _, ds_gpu, largest = estimate_zero3_model_states_mem_needs(
                trained,
                counts.largest_layer,
                num_gpus_per_node=n,
                num_nodes=1,
                cpu_offload=offload[0],
                cpu_offload_params=offload[1],
            )
            weights = (0 if offload[1] else int(2 * counts.total / n)) + largest
        gradients = 0 if offload[0] else int((6 if stage == 2 else 4) * trained / n)
        optimizer = 0 if offload[0] else int(12 * trained / n)
        frozen_bytes = (2 * frozen if stage == 2 else int(2 * frozen / n)) if not offload[1] else 0
        if offload[0] or offload[1]:  # DeepSpeed's number is what stays on the GPU; split it as it says
            return ModelStates(ds_gpu + frozen_bytes, 0, 0, ds_gpu + frozen_bytes, "DeepSpeed (offload)")
        return ModelStates(weights, gradients, optimizer, ds_gpu + frozen_bytes, f"ZeRO-{stage} bf16")
    split = n if stage in (2, 3) else 1
    weights = 4 * counts.total // (n if stage == 3 else 1)
    master = 4 * trained // split if stage in (2, 3) else 0
    return ModelStates(
        weights,
        4 * trained // split,
        8 * trained // split + master,
        None,
        f"{'ZeRO-' if stage else ''}{stage or 'DDP'} fp32 weights" + (" (bf16 autocast)" if bf16 else ""),
    )


@dataclass(frozen=True)
class ActivationShape:
    """One micro-batch at its worst: ``batch`` samples of ``tokens`` tokens, each with ``frames`` frames."""

    batch: int
    tokens: int
    frames: int


def activation_bytes(
    model_config,
    shape: ActivationShape,
    train: list[str],
    element_bytes: int,
    checkpointing: bool,
) -> dict[str, int]:
    """Bytes autograd keeps for the backward pass of one micro-batch, by part of the model.

    Counted per token from what each block saves (HF Qwen2/Llama decoder layers with SDPA, our
    cross-attention blocks, a SigLIP/CLIP tower): ``element_bytes`` for tensors in the compute dtype (2 for
    bf16, 4 for fp32), 4 for the fp32 copies RMSNorm makes. With ``checkpointing`` a decoder layer (and a
    cross-attention layer, a vision layer) keeps only its input, and one layer's activations exist at a
    time during its recomputation. The vision tower saves nothing while it is frozen (no gradient flows
    into it); the LM head's logits are counted at every text position (an upper bound on the labelled ones).

    Checked against the bytes a real CPU training step of the tiny model saves (tests/test_preflight.py).
    """
    text = model_config.text_config
    vision = model_config.vision_config
    e, f32 = element_bytes, 4
    h = text.hidden_size
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or h // heads
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    inter = text.intermediate_size
    layers = text.num_hidden_layers
    tokens = shape.batch * shape.tokens
    frames = shape.batch * shape.frames
    from crosslmm.model.vision import vision_grid_size

    patches = frames * vision_grid_size(vision) ** 2
    dv = vision.hidden_size
    video_tokens = frames * max(model_config.trained_budgets)  # elastic: expanded at the largest
    text_tokens = max(tokens - video_tokens, 0)

    train_llm, train_vision = "llm" in train, "vision" in train
    # A decoder layer per token: two RMSNorms (their input in fp32, a copy under bf16, and, when the LLM
    # trains, their output), SDPA's q, k, v (k, v repeated to every head) and output, the SwiGLU MLP's
    # gate, silu(gate) and up, and, when the LLM trains, the inputs of o_proj (a copy: the attention output
    # is transposed) and down_proj (frozen linears need no input for their backward).
    norm = (f32 + (e if train_llm else 0)) * h
    layer = 2 * norm + e * 4 * q_dim + 3 * e * inter + (e * (q_dim + inter) if train_llm else 0)
    layer_input = e * h
    # Layers before anything trained save nothing; with a trained projector or tower the video embeddings
    # need a gradient, so every layer counts.
    cross_at = model_config.resolved_cross_layers()
    if train_llm or train_vision or "projector" in train or not cross_at:
        saving_layers = layers
    else:
        saving_layers = layers - (cross_at[0] + 1)
    # A cross-attention block: per patch, the memory's LayerNorm output and keys and values (only when the
    # block or the tower trains: a frozen block over a frozen memory needs no gradient there); per query the
    # gathered query, its RMSNorm, q, the attention output and o_proj's input.
    cross_layers = len(cross_at)
    memory_side = e * (dv + 2 * kv_dim)
    query_side = (f32 + e) * h + e * (h + 3 * q_dim)
    cross = 0
    for block, queries in (("v2v", video_tokens), ("t2v", text_tokens)):
        if getattr(model_config, block):
            saves_memory = block in train or train_vision
            cross += (patches * memory_side if saves_memory else 0) + queries * query_side
    cross_input = tokens * layer_input
    # A vision layer per patch: two LayerNorm outputs and inputs, q, k, v, SDPA's output, out_proj's input,
    # and the MLP's two activations.
    vision_layer = e * (2 * dv + 2 * dv + 3 * dv + dv + dv + 2 * vision.intermediate_size)
    vision_layers = vision.num_hidden_layers

    out = {}
    if checkpointing:
        out["llm"] = saving_layers * tokens * layer_input + tokens * layer
        out["cross_attention"] = cross_layers * cross_input + cross
        out["vision"] = (vision_layers * patches * e * dv + patches * vision_layer) if train_vision else 0
    else:
        out["llm"] = saving_layers * tokens * layer
        out["cross_attention"] = cross_layers * cross
        out["vision"] = vision_layers * patches * vision_layer if train_vision else 0
    # The visual memory (original tokens) every cross-attention layer reads, and the LM head's input and
    # fp32 logits for the loss over the labelled positions (at most every text position).
    out["memory"] = patches * e * dv
    out["lm_head"] = text_tokens * (e * h + f32 * text.vocab_size)
    return out


# ---------------------------------------------------------------------------------------------- the data


def _percentile(values: list[int], q: float) -> int:
    return int(np.percentile(values, q, method="lower")) if values else 0


def check_data(
    config: TrainConfig,
    processor,
    model_config,
    check: Preflight,
    sample: int,
    probe_all: bool,
    seed: int = 0,
) -> list[int]:
    """Count, probe and measure the mixture; returns the number of drawn records of each entry."""
    from crosslmm.data.dataset import encode_conversation
    from crosslmm.data.mixture import _draw, read_mixture
    from crosslmm.data.records import RecordError, _read_raw, parse_record
    from crosslmm.data.video import VideoError, load_frames

    try:
        sources, mix_seed = read_mixture(config.data.mixture)
    except (OSError, ValueError) as e:
        check.problem(f"data.mixture: {e}")
        return []
    rng = np.random.default_rng(mix_seed)
    probe_rng = np.random.default_rng(seed)
    sampling = config.data.sampling
    choices = getattr(model_config, "tokens_per_frame_choices", None) if model_config is not None else None
    per_frame = max(choices) if choices else None
    drawn_counts: list[int] = []
    lengths: list[int] = []
    verdicts: Counter = Counter()
    frames_seen: list[int] = []
    bad_label = "skipped (data.skip_bad)" if config.data.skip_bad else "would stop the run"
    check.say(f"mixture {config.data.mixture}:")
    for source in sources:
        name = source.path
        try:
            raw = _read_raw(source.path)
        except FileNotFoundError:
            check.problem(f"{name}: annotation file not found")
            drawn_counts.append(0)
            continue
        except ValueError as e:
            check.problem(str(e))
            drawn_counts.append(0)
            continue
        records, bad = [], 0
        for index, item in enumerate(raw):
            try:
                records.append(parse_record(item, source.path, index, source.data_root))
            except RecordError as e:
                bad += 1
                if not config.data.skip_bad:
                    check.problem(str(e))
        if not records:
            check.problem(f"{name}: no valid records")
            drawn_counts.append(0)
            continue
        wanted = source.target(len(records))
        chosen = range(len(records)) if wanted == len(records) else _draw(len(records), wanted, rng)
        distinct = sorted(set(int(i) for i in chosen))
        drawn_counts.append(wanted)
        if probe_all or len(distinct) <= sample:
            probed = distinct
        else:
            probed = sorted(probe_rng.choice(distinct, size=sample, replace=False).tolist())
        unreadable = 0
        for i in probed:
            record = records[i]
            try:
                n_frames = len(load_frames(record.media, sampling, backend=config.data.video_backend))
            except VideoError as e:
                unreadable += 1
                message = f"{record.source}: record {record.index} (id {record.id}): unreadable media: {e}"
                (check.problem if not config.data.skip_bad else check.say)(message)
                continue
            frames_seen.append(n_frames)
            if processor is None:
                continue
            messages = list(record.messages)
            full = encode_conversation(processor, messages, n_frames, 2**62, "truncate", per_frame)
            kept = full  # the pipeline acts only on what is longer than max_length: ask it then
            if len(full.input_ids) > config.data.max_length:
                kept = encode_conversation(
                    processor, messages, n_frames, config.data.max_length, config.data.overlength, per_frame
                )
            lengths.append(len(full.input_ids))
            if kept is None:
                verdicts["dropped"] += 1
            elif len(kept.input_ids) < len(full.input_ids):
                verdicts["cut"] += 1
            else:
                verdicts["fits"] += 1
        check.say(
            f"  {name}: {len(raw)} records, {bad} bad ({bad_label if bad else 'none'}), {wanted} drawn"
            f"{f' (ratio {source.ratio})' if source.ratio is not None else ''}"
            f"{f' (count {source.count})' if source.count is not None else ''}; media probed: {len(probed)}"
            f"{' (all)' if len(probed) == len(distinct) else ''}, unreadable: {unreadable}"
        )
    total = sum(drawn_counts)
    check.say(f"  total: {total} records")
    check.data.update(records=drawn_counts, lengths=lengths, verdicts=dict(verdicts), frames=frames_seen)
    if frames_seen:
        check.say(
            f"frames per video ({sampling}): min {min(frames_seen)}, median {_percentile(frames_seen, 50)}, "
            f"max {max(frames_seen)}"
        )
    if lengths:
        limit = config.data.max_length
        buckets = [0.25, 0.5, 0.75, 1.0]
        shares = [sum(1 for n in lengths if n <= q * limit) for q in buckets]
        over = len(lengths) - shares[-1]
        check.say(
            f"sequence lengths (text + video slots) of {len(lengths)} probed records: min {min(lengths)}, "
            f"p50 {_percentile(lengths, 50)}, p90 {_percentile(lengths, 90)}, p99 {_percentile(lengths, 99)}, "
            f"max {max(lengths)}; max_length {limit}"
        )
        check.say(
            "  <= 25% / 50% / 75% / 100% of max_length: "
            + " / ".join(str(s) for s in shares)
            + f"; over: {over} ({verdicts['cut']} cut after the video, {verdicts['dropped']} dropped; "
            f"overlength: {config.data.overlength})"
        )
        if verdicts["dropped"] and len(lengths) < total:
            estimate = round(verdicts["dropped"] / len(lengths) * total)
            check.say(f"  about {estimate} of {total} records would be dropped (from the probed share)")
    return drawn_counts


# ------------------------------------------------------------------------------------------------ the run


def steps_per_epoch(records: int, config: TrainConfig, world: int) -> int:
    """Optimizer steps in one epoch, as the HF Trainer counts them (each rank's share of the records in
    batches, then whole accumulation groups)."""
    per_rank = math.ceil(records / world)
    batches = math.ceil(per_rank / config.per_device_batch_size)
    return max(batches // config.grad_accum, 1)


def run_check(
    config_path: str,
    overrides: list[str] = (),
    model_config: str | None = None,
    tokenizer: str | None = None,
    gpus: int = 8,
    sample: int = 100,
    probe_all: bool = False,
    gpu_memory_gib: float = 80.0,
) -> Preflight:
    """Everything :mod:`crosslmm.training.preflight` checks; problems in ``.problems``, one line each."""
    check = Preflight()
    try:
        config = load_config(config_path, overrides, validate=False)
    except (OSError, ValueError) as e:
        check.problem(f"config: {e}")
        return check
    try:
        config.validate()
        check.say(f"config {config_path}: valid")
    except ValueError as e:
        check.problem(f"config: {e}")
    if config.deepspeed and not os.path.isfile(config.deepspeed):
        return check  # validate() has reported it
    mconf = None
    try:
        mconf = model_config_of(config, model_config, check)
    except (OSError, ValueError) as e:
        check.problem(f"model: {e}")
    processor = None
    if mconf is not None:
        try:
            processor = processor_of(config, mconf, tokenizer, check)
        except (OSError, ValueError) as e:
            check.problem(f"processor: {e}")
    records = check_data(config, processor, mconf, check, sample, probe_all) if config.data.mixture else []
    world = gpus
    total = sum(records)
    if total:
        per_epoch = steps_per_epoch(total, config, world)
        global_batch = config.per_device_batch_size * config.grad_accum * world
        steps = config.max_steps if config.max_steps > 0 else math.ceil(per_epoch * config.epochs)
        check.data.update(steps_per_epoch=per_epoch, steps=steps)
        check.say(
            f"steps per epoch on {world} GPUs: {per_epoch} (global batch {global_batch} = "
            f"{config.per_device_batch_size} per GPU x {config.grad_accum} accumulation x {world}); "
            f"this run: {steps} steps"
        )
    if mconf is not None:
        memory_report(config, mconf, world, gpu_memory_gib, check)
    return check


def memory_report(config: TrainConfig, mconf, gpus: int, gpu_memory_gib: float, check: Preflight) -> None:
    counts = count_parameters(mconf, config)
    stage = config.zero_stage
    bf16 = config.precision in ("auto", "bf16")  # auto is bf16 on a GPU
    states = model_states(counts, stage, bf16, gpus, zero_offload(config.deepspeed))
    element = 2 if (bf16 and stage in (2, 3)) else 4  # DeepSpeed bf16 casts the model; autocast keeps fp32
    budget = config.data.sampling.budget or 0
    shape = ActivationShape(config.per_device_batch_size, config.data.max_length, budget)
    acts = activation_bytes(mconf, shape, config.train, element, config.gradient_checkpointing)
    activations = sum(acts.values())
    total = states.total + activations
    check.data.update(params=counts, states=states, activations=acts, memory_total=total)
    check.say(
        f"parameters: {counts.total / 1e9:.2f}B, trained {counts.trainable / 1e9:.2f}B ("
        + ", ".join(f"{k} {v / 1e6:.0f}M" for k, v in counts.by_component.items() if v)
        + ")"
    )
    where = f"ZeRO-{stage}" if stage else "no DeepSpeed"
    check.say(
        f"memory per GPU ({where}, {'bf16' if bf16 else 'fp32'}, {gpus} GPUs, {shape.batch} x "
        f"{shape.tokens} tokens, {shape.frames} frames, checkpointing "
        f"{'on' if config.gradient_checkpointing else 'off'}):"
    )
    check.say(
        f"  weights {states.weights / GIB:.1f} GiB, gradients {states.gradients / GIB:.1f} GiB, "
        f"optimizer states {states.optimizer / GIB:.1f} GiB ({states.rule})"
    )
    if states.deepspeed is not None:
        check.say(f"  DeepSpeed's estimator (+ frozen weights): {states.deepspeed / GIB:.1f} GiB")
    check.say(
        f"  activations {activations / GIB:.1f} GiB ("
        + ", ".join(f"{k} {v / GIB:.1f}" for k, v in acts.items() if v)
        + ")"
    )
    check.say(f"  total {total / GIB:.1f} GiB of {gpu_memory_gib:g} GiB")
    if total > gpu_memory_gib * GIB:
        check.problem(
            f"memory: about {total / GIB:.1f} GiB per GPU needed, more than {gpu_memory_gib:g} GiB "
            "(lower data.max_frames or per_device_batch_size, turn on gradient_checkpointing, or use ZeRO-3)"
        )
