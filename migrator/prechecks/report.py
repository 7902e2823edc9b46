"""The pre-check report: one line per check, pass, warn or fail, with the
reason in plain words."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from hosts import gateway

PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    message: str
    requirement: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: str, message: str, requirement: str = "") -> None:
        self.checks.append(Check(name, status, message, requirement))

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == WARN]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def verdict(self) -> str:
        if self.failures:
            return "blocked"
        return "warnings" if self.warnings else "ok"

    def as_list(self) -> list[dict[str, Any]]:
        return [asdict(c) for c in self.checks]

    def summary(self) -> str:
        if self.failures:
            return "; ".join(c.message for c in self.failures)
        return "; ".join(c.message for c in self.warnings) or "all checks passed"


@dataclass
class Facts:
    """Live facts read once per report, so every check sees the same moment."""

    source_info: gateway.HostInfo | None = None
    dest_info: gateway.HostInfo | None = None
    source_error: gateway.GatewayError | None = None
    dest_error: gateway.GatewayError | None = None


def _read(fn: Callable[[], Any]) -> tuple[Any, gateway.GatewayError | None]:
    try:
        return fn(), None
    except gateway.GatewayError as error:
        return None, error
