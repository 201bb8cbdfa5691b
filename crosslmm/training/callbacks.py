"""Trainer callbacks."""

from __future__ import annotations

import json
import os

from transformers import TrainerCallback


class MetricsFile(TrainerCallback):
    """Appends every log entry as a JSON line to ``<output_dir>/metrics.jsonl`` (rank 0).

    A plain file next to the checkpoints survives crashes and resumes, whatever ``report_to`` is; the
    resume tests compare losses from it.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(os.path.join(args.output_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")
