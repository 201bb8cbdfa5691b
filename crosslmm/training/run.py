"""The training library: ``train(config)`` runs one stage from a validated :class:`TrainConfig`.

Launchers (``python -m crosslmm.train`` under torchrun, ``crosslmm train``, the demo) parse and validate a
config, set up the process, and hand it here; nothing in this module reads argv or the environment beyond
what the HF Trainer itself reads (rank, world size).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoProcessor, TrainingArguments

from crosslmm.data.dataset import VideoChatCollator, VideoChatDataset
from crosslmm.data.mixture import build_mixture
from crosslmm.model.build import save_model_dir
from crosslmm.training import checkpoint
from crosslmm.training.callbacks import MetricsFile
from crosslmm.training.config import TrainConfig
from crosslmm.training.params import set_trainable
from crosslmm.training.trainer import CrossLMMTrainer

logger = logging.getLogger("crosslmm.train")


def training_arguments(config: TrainConfig, use_configured_state: bool = False) -> TrainingArguments:
    """Map our config onto the Trainer's; built before the model so ZeRO-3 can partition it while loading.

    ``use_configured_state``: the launcher has already set up the distributed state (CPU DeepSpeed).
    """
    on_gpu = torch.cuda.is_available()
    return TrainingArguments(
        accelerator_config={"use_configured_state": use_configured_state},
        use_cpu=not on_gpu and not config.deepspeed,  # else the Trainer refuses precision: bf16 on CPU
        output_dir=config.output_dir,
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        # transformers 5 has no warmup_ratio: its warmup_steps takes a float < 1 as a ratio of the total
        # steps, so our ratio (validated to be < 1) goes here unchanged.
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch",
        bf16=config.precision == "bf16" or (config.precision == "auto" and on_gpu),
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},  # frozen embeddings need no input grads
        deepspeed=config.deepspeed,
        ddp_backend="gloo" if not on_gpu and int(os.environ.get("WORLD_SIZE", 1)) > 1 else None,
        seed=config.seed,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=None,  # rotation happens only over complete checkpoints (CrossLMMTrainer)
        logging_steps=config.logging_steps,
        report_to=[] if config.report_to == "none" else [config.report_to],
        run_name=config.run_name,
        dataloader_num_workers=config.data.num_workers,
        remove_unused_columns=False,  # the collator needs frames/dropped, which forward() does not take
        include_num_input_tokens_seen="non_padding",  # logs train_tokens_per_second
    )


def load_model(config: TrainConfig):
    """The model (with LoRA adapters on the LLM if asked) and its processor, frozen as the stage says."""
    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(config.model)
    model.config.use_cache = False
    if config.tokens_per_frame_choices is not None:
        model.config.tokens_per_frame_choices = list(config.tokens_per_frame_choices)
        try:
            model.config.validate_crosslmm()
        except ValueError as e:
            raise ValueError(f"tokens_per_frame_choices: {e}") from None
    if config.lora.enabled:
        from peft import LoraConfig, get_peft_model

        names = "|".join(config.lora.target_modules)
        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora.r,
                lora_alpha=config.lora.alpha,
                lora_dropout=config.lora.dropout,
                target_modules=rf".*language_model\.layers\.\d+\..*\.({names})",
            ),
        )
    counts = set_trainable(model, config.train, config.lora.enabled)
    logger.info("trainable parameters: %s", {k: f"{v / 1e6:.2f}M" for k, v in counts.items() if v})
    return model, processor


def save_final(trainer: CrossLMMTrainer, processor, config: TrainConfig) -> Path:
    """Write ``<output_dir>/final`` via a temporary dir and a rename, so a half-written one never exists."""
    final = os.path.join(config.output_dir, "final")
    partial = final + ".partial"
    if config.lora.enabled:
        if trainer.args.should_save:  # ZeRO-2/DDP: every rank holds whole weights
            save_model_dir(trainer.model.merge_and_unload(), processor, partial)
    else:
        trainer.save_model(partial)  # gathers ZeRO-3 shards; saves the processor (processing_class) too
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    return Path(final)


def log_dropped(trainer: CrossLMMTrainer, records: int, skipped_at_load: int) -> None:
    """One line with every record that was not trained on and why, summed over ranks."""
    dropped = trainer.dropped.clone()
    if dist.is_initialized():
        dist.all_reduce(dropped)
    logger.info(
        "data: %d records used, %d bad records skipped at load, %d skipped while reading media, "
        "%d over-length samples dropped",
        records,
        skipped_at_load,
        int(dropped[0]),
        int(dropped[1]),
    )


def train(config: TrainConfig, use_configured_state: bool = False) -> Path:
    """Train one stage as ``config`` says (resuming from its newest complete checkpoint unless told not
    to); returns the final model dir, loadable with ``AutoModelForCausalLM.from_pretrained``."""
    training_args = training_arguments(config, use_configured_state)
    model, processor = load_model(config)
    records, skipped_at_load = build_mixture(config.data.mixture, config.data.skip_bad)
    # Elastic budgets: expand at the largest (the over-length rule then cuts the same text for any draw);
    # the collator draws one budget per batch from (seed, batch) and re-expands (crosslmm.data.dataset).
    choices = model.config.tokens_per_frame_choices
    if choices:
        logger.info("elastic training: one budget per batch from tokens_per_frame_choices %s", choices)
    dataset = VideoChatDataset(
        records,
        processor,
        max_length=config.data.max_length,
        sampling=config.data.sampling,
        overlength=config.data.overlength,
        skip_bad=config.data.skip_bad,
        tokens_per_frame=max(choices) if choices else None,
        backend=config.data.video_backend,
    )
    if training_args.process_index == 0:
        checkpoint.remove_incomplete(config.output_dir)
    resume = checkpoint.resolve_resume(config.resume, config.output_dir)
    if resume:
        logger.info("resuming from %s", resume)
    trainer = CrossLMMTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=VideoChatCollator(
            processor.tokenizer.pad_token_id,
            tokens_per_frame_choices=choices,
            seed=config.seed,
            video_token_id=processor.video_token_id,
        ),
        processing_class=processor,
        callbacks=[MetricsFile()],
        train_config=config,
    )
    trainer.train(resume_from_checkpoint=resume)
    final = save_final(trainer, processor, config)
    log_dropped(trainer, len(records), skipped_at_load)
    logger.info("final model: %s", final)
    return final
