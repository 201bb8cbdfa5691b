"""Data mixtures: several annotation files, each taken whole, by a ratio of its records, or by a count.

A mixture YAML, as in LLaVA-Video's recipes (relative paths are relative to the YAML file)::

    seed: 0
    datasets:
      - path: captions/internvid.jsonl
        data_root: /data/internvid
        count: 5000000      # exactly this many records (repeats records if the file has fewer)
      - path: captions/capsfusion.json
        data_root: /data/capsfusion
        ratio: 0.5          # this fraction of the file's records (> 1 repeats records)

Neither ``ratio`` nor ``count`` means every record once. The selection is a deterministic function of the
seed, so every rank and every resumed run sees the same list.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields

import numpy as np
import yaml

from crosslmm.data.records import Record, load_records

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MixtureSource:
    path: str
    data_root: str = ""
    ratio: float | None = None
    count: int | None = None

    def target(self, available: int) -> int:
        """How many records to draw from a file holding ``available`` valid ones."""
        if self.count is not None:
            return self.count
        return round(available * (1.0 if self.ratio is None else self.ratio))


def _parse_source(entry, yaml_path: str, i: int) -> MixtureSource:
    where = f"{yaml_path}: datasets[{i}]"
    if not isinstance(entry, dict) or "path" not in entry:
        raise ValueError(f"{where}: each dataset needs a 'path'")
    known = {f.name for f in fields(MixtureSource)}
    unknown = set(entry) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
    if entry.get("ratio") is not None and entry.get("count") is not None:
        raise ValueError(f"{where}: give 'ratio' or 'count', not both")
    ratio, count = entry.get("ratio"), entry.get("count")
    if ratio is not None and not (isinstance(ratio, int | float) and ratio > 0):
        raise ValueError(f"{where}: ratio must be a number > 0, got {ratio!r}")
    if count is not None and not (isinstance(count, int) and count > 0):
        raise ValueError(f"{where}: count must be an int > 0, got {count!r}")
    base = os.path.dirname(os.path.abspath(yaml_path))
    return MixtureSource(
        path=os.path.join(base, entry["path"]),
        data_root=os.path.join(base, entry.get("data_root") or ""),
        ratio=ratio,
        count=count,
    )


def read_mixture(yaml_path: str) -> tuple[list[MixtureSource], int]:
    """The sources and the sampling seed of a mixture YAML, validated."""
    if not os.path.isfile(yaml_path):
        raise FileNotFoundError(f"data mixture not found: {yaml_path}")
    with open(yaml_path, encoding="utf-8") as f:
        spec = yaml.safe_load(f) or {}
    entries = spec.get("datasets") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{yaml_path}: expected a non-empty 'datasets' list")
    unknown = set(spec) - {"datasets", "seed"}
    if unknown:
        raise ValueError(f"{yaml_path}: unknown top-level keys {sorted(unknown)}; allowed: datasets, seed")
    return [_parse_source(e, yaml_path, i) for i, e in enumerate(entries)], int(spec.get("seed", 0))


def _draw(n_available: int, n_wanted: int, rng: np.random.Generator) -> np.ndarray:
    """Whole passes over a shuffled file, then a random subset for the remainder (no record twice per pass)."""
    full, rest = divmod(n_wanted, n_available)
    picks = [rng.permutation(n_available) for _ in range(full)]
    picks.append(rng.permutation(n_available)[:rest])
    return np.concatenate(picks)


def build_mixture(yaml_path: str, skip_bad: bool = False) -> tuple[list[Record], int]:
    """Records of a mixture (in file order, then drawn order) and the number of bad records skipped."""
    sources, seed = read_mixture(yaml_path)
    rng = np.random.default_rng(seed)
    out, skipped = [], 0
    for source in sources:
        records, bad = load_records(source.path, source.data_root, skip_bad)
        skipped += bad
        if not records:
            raise ValueError(f"{source.path}: no valid records")
        wanted = source.target(len(records))
        chosen = range(len(records)) if wanted == len(records) else _draw(len(records), wanted, rng)
        out.extend(records[i] for i in chosen)
        logger.info("mixture: %d of %d records from %s", wanted, len(records), source.path)
    return out, skipped
