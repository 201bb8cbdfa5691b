"""The benchmarks' pass/fail targets (docs/efficiency.md): a measured value against a limit, as JSON records
and as the "Targets" table every ``crosslmm bench`` command prints last."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from crosslmm.bench.report import format_table


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None  # None: not measured (e.g. out of memory), so not met
    limit: float

    @property
    def met(self) -> bool:
        return self.value is not None and self.value <= self.limit

    def as_dict(self) -> dict[str, Any]:
        """The JSON record: name, value, limit and the verdict ``met``."""
        return asdict(self) | {"met": self.met}


TARGET_HEADER = ["target", "value", "limit", "met"]


def target_rows(targets: list[dict[str, Any]]) -> list[list[Any]]:
    """The records of ``Target.as_dict`` as table rows under ``TARGET_HEADER``."""
    return [[t["name"], t["value"], t["limit"], t["met"]] for t in targets]


def print_targets(targets: list[dict[str, Any]]) -> None:
    print("\nTargets")
    print(format_table(TARGET_HEADER, target_rows(targets)))
