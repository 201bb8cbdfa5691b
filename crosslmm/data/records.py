"""LLaVA-format conversation records (JSON list or JSONL), validated on load.

A record is ``{"id", "video" | "image", "conversations": [{"from": "human", "value": "<video>\\n..."},
{"from": "gpt", "value": ...}, ...]}``. Media paths are relative to a data root. ``<image>`` in an image
record becomes the model's ``<video>`` placeholder: an image is a one-frame video.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

logger = logging.getLogger(__name__)

VIDEO_PLACEHOLDER = "<video>"
IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class RecordError(ValueError):
    """A bad record: names the file, the record's index in it and the reason, so it can be fixed."""

    def __init__(self, source: str, index: int, reason: str) -> None:
        self.source, self.index, self.reason = source, index, reason
        super().__init__(f"{source}: record {index}: {reason}")

    def __reduce__(self):  # survive pickling out of DataLoader workers
        return (type(self), (self.source, self.index, self.reason))


@dataclass(frozen=True)
class Record:
    """One validated sample: chat messages with exactly one ``<video>`` placeholder, and its media file."""

    source: str  # the annotation file, for error messages
    index: int  # position in that file
    id: str
    media: str  # absolute path of the video or image
    is_image: bool
    messages: tuple[dict, ...]  # [{"role": "user" | "assistant" | "system", "content": str}, ...]


def _read_raw(path: str) -> list:
    """A JSON list or JSONL (one object per line); a syntax error names the file (and line for JSONL)."""
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            rows = []
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: invalid JSON: {e}") from None
            return rows
        try:
            rows = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(rows).__name__}")
    return rows


def video_first(message: dict) -> dict:
    """Move a turn's ``<video>`` to the front (``"<video>\\n" + the rest``), as LLaVA's preprocessing does.

    Text before the video would see none of it through T2V (a text token attends only to the frames
    before it), and evaluation always asks with the video first (``crosslmm.inference.build_prompt``), so
    training puts it there too.
    """
    text = message["content"]
    if VIDEO_PLACEHOLDER not in text:
        return message
    rest = text.replace(VIDEO_PLACEHOLDER, "").strip()
    return {**message, "content": f"{VIDEO_PLACEHOLDER}\n{rest}" if rest else VIDEO_PLACEHOLDER}


def parse_record(raw, source: str, index: int, data_root: str) -> Record:
    """Validate one raw record; raise :class:`RecordError` saying what is wrong with it."""

    def bad(reason: str) -> RecordError:
        return RecordError(source, index, reason)

    if not isinstance(raw, dict):
        raise bad(f"expected an object, got {type(raw).__name__}")
    has_video, has_image = "video" in raw, "image" in raw
    if has_video == has_image:
        raise bad('needs exactly one of "video" or "image"')
    media = raw["video" if has_video else "image"]
    if not isinstance(media, str) or not media:
        raise bad(f'"{"video" if has_video else "image"}" must be a non-empty path, got {media!r}')
    turns = raw.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise bad('missing or empty "conversations"')
    messages = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise bad(f'conversations[{t}] needs "from" and "value"')
        role = ROLES.get(turn["from"])
        if role is None:
            raise bad(f"conversations[{t}] has unknown speaker {turn['from']!r}; use one of {sorted(ROLES)}")
        if not isinstance(turn["value"], str):
            raise bad(f"conversations[{t}].value must be a string")
        text = turn["value"].replace(IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER) if has_image else turn["value"]
        messages.append({"role": role, "content": text})
    placeholders = sum(m["content"].count(VIDEO_PLACEHOLDER) for m in messages)
    wanted = IMAGE_PLACEHOLDER if has_image else VIDEO_PLACEHOLDER
    if placeholders != 1:
        raise bad(f"needs exactly one {wanted} placeholder in its conversations, found {placeholders}")
    if any(VIDEO_PLACEHOLDER in m["content"] for m in messages if m["role"] != "user"):
        raise bad(f"the {wanted} placeholder must be in a human turn")
    messages = [video_first(m) for m in messages]
    if not any(m["role"] == "assistant" for m in messages):
        raise bad("has no gpt turn, so there is nothing to train on")
    return Record(
        source=source,
        index=index,
        id=str(raw.get("id", index)),
        media=os.path.join(data_root, media),
        is_image=has_image,
        messages=tuple(messages),
    )


def load_records(path: str, data_root: str, skip_bad: bool = False) -> tuple[list[Record], int]:
    """All records of one annotation file and how many bad ones were skipped.

    By default the first bad record raises :class:`RecordError`; with ``skip_bad`` each is logged and counted.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    records, skipped = [], 0
    for index, raw in enumerate(_read_raw(path)):
        try:
            records.append(parse_record(raw, path, index, data_root))
        except RecordError as e:
            if not skip_bad:
                raise
            skipped += 1
            logger.warning("skipping bad record: %s", e)
    return records, skipped
