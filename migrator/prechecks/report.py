"""The pre-check report: one line per check, pass, warn or fail, with the
reason in plain words."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from hosts import gateway
from hosts.models import Host

PASS, WARN, FAIL = "pass", "warn", "fail"
REACHABILITY_CHECKS = ("source reachable", "destination reachable")


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
    def no_answer(self) -> str:
        """Why a host did not answer, from the failed reachability check; ""
        when both answered."""
        return next((c.message for c in self.failures if c.name in REACHABILITY_CHECKS), "")

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


@dataclass(frozen=True)
class SourceFacts:
    """The source's side of a report, read once for every destination a page
    judges."""

    info: gateway.HostInfo | None
    error: gateway.GatewayError | None
    vm_state: str | None = None
    vm_state_error: gateway.GatewayError | None = None


@dataclass
class Facts:
    """Live facts read once per report, so every check sees the same moment."""

    source_info: gateway.HostInfo | None = None
    dest_info: gateway.HostInfo | None = None
    source_error: gateway.GatewayError | None = None
    dest_error: gateway.GatewayError | None = None


def _read(fn: Callable[[], Any], host: Host | None = None) -> tuple[Any, gateway.GatewayError | None]:
    """fn()'s answer, or the gateway's error (naming `host` when it did not answer)."""
    try:
        return fn(), None
    except gateway.GatewayError as error:
        return None, error.naming(host.name) if host is not None else error


def unreachable(host: Host, error: gateway.GatewayError) -> str:
    """A host that did not answer, in plain words."""
    if error.no_answer_s is not None:
        return error.naming(host.name).message
    if error.extra.get("refused_uri"):
        return error.message  # refused by the allow-list: never tried
    return f"{host.name} does not answer: {error.message} {error.hint}".strip()
