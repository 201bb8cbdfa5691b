"""Renaming between an HF checkpoint's parameter names and CrossLMM's, in both directions, from one table.

Like torchtitan's ``StateDictAdapter``: a converter states *what* maps where once (``rules``), and every key
is accounted for. A source key no rule covers, or a CrossLMM key neither mapped nor declared new, is an error
that lists all offenders, so a changed checkpoint layout fails loudly instead of loading half a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch


class KeyMismatchError(ValueError):
    """Raised with every unmapped or missing key at once, so one run shows the whole problem."""


def _prefix_rename(key: str, rules: Iterable[tuple[str, str]]) -> str | None:
    """Rename by the first matching rule: a rule ending in ``.`` is a prefix, otherwise an exact key."""
    for old, new in rules:
        if old.endswith(".") and key.startswith(old):
            return new + key[len(old) :]
        if key == old:
            return new
    return None


def _report(problems: dict[str, list[str]], limit: int = 20) -> None:
    lines = []
    for what, keys in problems.items():
        if keys:
            shown = ", ".join(sorted(keys)[:limit]) + (
                f", ... ({len(keys)} in all)" if len(keys) > limit else ""
            )
            lines.append(f"{what}: {shown}")
    if lines:
        raise KeyMismatchError("state dict does not match:\n  " + "\n  ".join(lines))


@dataclass(frozen=True)
class StateDictAdapter:
    """``rules``: (source name, CrossLMM name) pairs, prefixes ending in ``.``; ``new_prefixes``: CrossLMM
    modules with no source counterpart (initialised fresh on import, dropped on export)."""

    source: str
    rules: tuple[tuple[str, str], ...]
    new_prefixes: tuple[str, ...] = ()

    def from_hf(
        self, hf_state: Mapping[str, torch.Tensor], expected: Iterable[str]
    ) -> dict[str, torch.Tensor]:
        """Source state dict -> CrossLMM names; ``expected`` are the target model's keys."""
        ours, unmapped = {}, []
        for key, value in hf_state.items():
            new = _prefix_rename(key, self.rules)
            if new is None:
                unmapped.append(key)
            else:
                ours[new] = value
        expected = set(expected)
        missing = [k for k in expected - ours.keys() if not k.startswith(self.new_prefixes)]
        _report(
            {
                f"{self.source} keys with no CrossLMM counterpart": unmapped,
                "CrossLMM keys missing from the source": missing,
                "mapped keys the CrossLMM model does not have": list(ours.keys() - expected),
            }
        )
        return ours

    def to_hf(self, state: Mapping[str, torch.Tensor], expected: Iterable[str]) -> dict[str, torch.Tensor]:
        """CrossLMM state dict -> source names, new modules dropped; ``expected`` are the source model's keys."""
        inverse = tuple((new, old) for old, new in self.rules)
        hf, unmapped = {}, []
        for key, value in state.items():
            if key.startswith(self.new_prefixes):
                continue
            old = _prefix_rename(key, inverse)
            if old is None:
                unmapped.append(key)
            else:
                hf[old] = value
        expected = set(expected)
        _report(
            {
                f"CrossLMM keys with no {self.source} counterpart": unmapped,
                f"{self.source} keys missing from the CrossLMM model": list(expected - hf.keys()),
                f"mapped keys the {self.source} model does not have": list(hf.keys() - expected),
            }
        )
        return hf
