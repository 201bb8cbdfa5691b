"""Atomic checkpoints on top of the HF Trainer's ``checkpoint-<step>`` dirs.

The Trainer writes a checkpoint as many files from many ranks; a crash in between leaves a dir that looks
like a checkpoint. So a checkpoint only counts once its files are fsynced on every rank and rank 0 has
then atomically written the ``COMPLETE`` marker. ``resume: auto`` and rotation consider only marked dirs;
unmarked leftovers are deleted at start-up.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
_STEP = re.compile(r"^checkpoint-(\d+)$")


def _checkpoint_dirs(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every ``checkpoint-<step>`` dir, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(_STEP.match(n), os.path.join(output_dir, n)) for n in os.listdir(output_dir)]
    return sorted((int(m.group(1)), path) for m, path in found if m and os.path.isdir(path))


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER))


def complete_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoint dirs, oldest first."""
    return [path for _, path in _checkpoint_dirs(output_dir) if is_complete(path)]


def latest_complete(output_dir: str) -> str | None:
    done = complete_checkpoints(output_dir)
    return done[-1] if done else None


def fsync_tree(path: str) -> None:
    """Flush every file under ``path`` to disk, so the marker never outlives the data after a power loss."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def mark_complete(path: str, step: int) -> None:
    """Write the marker via a temporary file and an atomic rename."""
    tmp = os.path.join(path, MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, MARKER))
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_incomplete(output_dir: str) -> list[str]:
    """Delete checkpoint dirs without a marker (a crash mid-save); rank 0 only, before training starts."""
    removed = [path for _, path in _checkpoint_dirs(output_dir) if not is_complete(path)]
    for path in removed:
        logger.warning("removing incomplete checkpoint %s (the run stopped while saving it)", path)
        shutil.rmtree(path)
    return removed


def rotate(output_dir: str, keep: int) -> None:
    """Keep the ``keep`` newest complete checkpoints (only deleted once a newer one is complete)."""
    for path in complete_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(path)


def resolve_resume(resume: str, output_dir: str) -> str | None:
    """``auto`` -> newest complete checkpoint or None; ``none`` -> None; else that dir, which must be complete."""
    if resume == "none":
        return None
    if resume == "auto":
        return latest_complete(output_dir)
    if not is_complete(resume):
        raise ValueError(f"resume: {resume} is not a complete checkpoint (no {MARKER} marker in it)")
    return resume
