"""Whether a lab guest came through a fault whole: it runs on exactly one host
and is paused nowhere, its tick counter goes on, and the memory pattern its
/init wrote at boot still has the boot's checksum.

Each host has its own serial log of the guest (Layout.serial_log), written by
the QEMU that runs it there; a QEMU that starts on a host empties its log. So
after a migration the ticks and the checks go on in the destination's log
while the boot's PATTERN line stays in the source's (and in the record
wait_booted keeps). The guest's uptime goes on across hosts: it is the
counter, and `since` is an uptime.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hosts import gateway

from .daemons import Daemons
from .faults import daemon_stopped
from .guests import BOOT_PATTERN_RE, PATTERN_CHECK_RE, TICK_RE, TICK_TIMEOUT_S, boot_pattern_file
from .layout import HOSTS, SERIAL_LOG_DIR, Layout, hostdef, say_keys
from .system import process_alive

KERNEL_PANIC = "Kernel panic - not syncing"
UNKNOWN = "unknown"  # the state of a guest on a host whose daemon cannot tell
QUERY_TIMEOUT_S = 10.0  # a daemon that takes longer does not answer
PATTERN_TIMEOUT_S = 20.0  # the guest checks its pattern every 5 s; TCG guests sharing two cores lag


@dataclass(frozen=True)
class GuestHealth:
    name: str
    hosts_running: list[str]
    hosts_paused: list[str]
    runs_once: bool  # running on exactly one host, paused on none, every host answered
    counter_went_on: bool
    pattern_intact: bool
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.runs_once and self.counter_went_on and self.pattern_intact and not self.problems

    def describe(self) -> str:
        if self.healthy:
            return f"{self.name}: runs once (on {self.hosts_running[0]}), ticking, memory pattern intact"
        return f"{self.name}: " + "; ".join(self.problems)


class _NoAnswer(Exception):
    pass


class GuestChecks:
    def __init__(self, layout: Layout, daemons: Daemons) -> None:
        self._layout = layout
        self._daemons = daemons

    def where_running(self, name: str) -> list[tuple[str, str]]:
        """(host key, state) for each lab host that has the guest: "running",
        "paused", "shut off", … or "unknown" when the host's daemon does not answer."""
        return self._states(name)[0]

    def kernel_panics(self, since: float) -> list[str]:
        """Each guest kernel that panicked in a serial log written since the
        epoch time `since`: "guest on host: the panic line"."""
        found = []
        for key in HOSTS:
            directory = self._layout.host_path(key, SERIAL_LOG_DIR)
            for log in sorted(directory.glob("*-serial.log")) if directory.is_dir() else ():
                if log.stat().st_mtime < since:
                    continue
                text = log.read_text(errors="replace")
                panic = next((line for line in text.splitlines() if KERNEL_PANIC in line), None)
                if panic is not None:
                    found.append(f"{log.name.removesuffix('-serial.log')} on {key}: {panic.strip()}")
        return found

    def last_tick(self, name: str, host: str) -> float | None:
        """The guest's uptime on its last tick line in the host's serial log."""
        ticks = TICK_RE.findall(self._log(name, host))
        return float(ticks[-1]) if ticks else None

    def counter_advanced(
        self, name: str, host: str, since: float | None = None, timeout: float = TICK_TIMEOUT_S
    ) -> bool:
        """Whether the host's serial log gets a tick later than uptime `since`
        (default: its last tick now) within `timeout` seconds."""
        if since is None:
            since = self.last_tick(name, host)
        return self._tick_after(name, host, since, timeout)

    def pattern_intact(
        self, name: str, host: str, since: float | None = None, timeout: float = PATTERN_TIMEOUT_S
    ) -> bool:
        """Whether the last pattern check in the host's serial log (one after
        uptime `since`, if given, waited for) has the checksum of that boot's PATTERN line."""
        return self._pattern_problem(name, host, since, timeout) is None

    def check_guest(self, name: str, since: float | None = None) -> GuestHealth:
        """Everything the fault suite asks of a guest after a fault. The counter
        and the pattern are judged on the host it runs on, from a tick and a
        check later than uptime `since` (default: the last tick now)."""
        states, problems = self._states(name)
        running = [key for key, state in states if state in gateway.RUNNING_STATES]
        paused = [key for key, state in states if state == gateway.STATE_NAMES[gateway.DomainState.PAUSED]]
        answered = all(state != UNKNOWN for _key, state in states)
        if not states:
            problems.append(f"{name} is on no lab host")
        elif not running:
            problems.append(f"{name} runs nowhere ({', '.join(f'{key}: {state}' for key, state in states)})")
        elif len(running) > 1:
            problems.append(f"{name} runs on {say_keys(running)} at once")
        problems += [f"{name} is paused on host {key}" for key in paused]
        counter_went_on = pattern_intact = False
        if len(running) == 1:
            host = running[0]
            baseline = since if since is not None else self.last_tick(name, host)
            counter_went_on = self._tick_after(name, host, baseline, TICK_TIMEOUT_S)
            if not counter_went_on:
                after = f" after uptime {baseline}" if baseline is not None else ""
                problems.append(
                    f"no tick{after} on host {host} in {TICK_TIMEOUT_S:.0f} s (last: {self.last_tick(name, host)})"
                )
            pattern_problem = self._pattern_problem(name, host, baseline, PATTERN_TIMEOUT_S)
            pattern_intact = pattern_problem is None
            if pattern_problem:
                problems.append(pattern_problem)
        return GuestHealth(
            name,
            hosts_running=running,
            hosts_paused=paused,
            runs_once=len(running) == 1 and not paused and answered,
            counter_went_on=counter_went_on,
            pattern_intact=pattern_intact,
            problems=problems,
        )

    # ---------------------------------------------------------- reading

    def _log(self, name: str, host: str) -> str:
        path = self._layout.serial_log(name, hostdef(host).key)
        return path.read_text(errors="replace") if path.exists() else ""

    def _tick_after(self, name: str, host: str, since: float | None, timeout: float) -> bool:
        def ticked() -> bool:
            last = self.last_tick(name, host)
            return last is not None and (since is None or last > since)

        return gateway.wait_for(ticked, timeout)

    def _pattern_problem(self, name: str, host: str, since: float | None, timeout: float) -> str | None:
        """None when the pattern is intact, else what is wrong in words."""
        found: list[tuple[str, str, str]] = []

        def checked() -> bool:
            found[:] = PATTERN_CHECK_RE.findall(self._log(name, host))
            return bool(found) and (since is None or float(found[-1][2]) > since)

        if not gateway.wait_for(checked, timeout):
            after = f" after uptime {since}" if since is not None else ""
            return f"no pattern check{after} on host {host} in {timeout:.0f} s (guest booted with an older initrd?)"
        now_sum, boot_id, uptime = found[-1]
        boot_sum = self._boot_sum(name, boot_id)
        if boot_sum is None:
            return f"no PATTERN line of boot {boot_id} in any host's serial log, nor recorded at boot"
        if now_sum != boot_sum:
            return f"memory pattern changed: {boot_sum} at boot, {now_sum} on host {host} at uptime {uptime}"
        return None

    def _boot_sum(self, name: str, boot_id: str) -> str | None:
        texts = [self._log(name, key) for key in HOSTS]
        record = boot_pattern_file(self._layout, name)
        if record.exists():
            texts.append("PATTERN sum={} boot={}".format(*record.read_text().split()))
        for text in texts:
            for pattern_sum, boot in BOOT_PATTERN_RE.findall(text):
                if boot == boot_id:
                    return pattern_sum
        return None

    # ---------------------------------------------------------- asking the daemons

    def _states(self, name: str) -> tuple[list[tuple[str, str]], list[str]]:
        states, problems = [], []
        for key in HOSTS:
            try:
                status = self._status(key, name)
            except _NoAnswer as why:
                states.append((key, UNKNOWN))
                problems.append(f"host {key}: {why}{self._qemu_note(key, name)}")
                continue
            if status is not None:
                states.append((key, gateway.STATE_NAMES[status.state]))
        return states, problems

    def _status(self, key: str, name: str) -> gateway.DomainStatus | None:
        pid = self._daemons.pid(key)
        if pid is None or not process_alive(pid, "libvirtd"):
            raise _NoAnswer("libvirtd is not running")
        if daemon_stopped(pid):
            raise _NoAnswer("libvirtd is stopped (SIGSTOP)")
        try:
            return _within(QUERY_TIMEOUT_S, lambda: gateway.domain_status(self._layout.uri(key), name))
        except TimeoutError:
            raise _NoAnswer(f"libvirtd did not answer in {QUERY_TIMEOUT_S:.0f} s") from None
        except gateway.GatewayError as exc:
            raise _NoAnswer(f"libvirtd: {exc}") from exc

    def _qemu_note(self, key: str, name: str) -> str:
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int(self._layout.host_path(key, f"/run/libvirt/qemu/{name}.pid").read_text())
            if process_alive(pid, "qemu-system"):
                return f"; a QEMU of {name} runs there (pid {pid})"
        return ""


def _within(timeout_s: float, fn: Callable[[], Any]) -> Any:
    """fn() in a helper thread: a daemon that accepts and never answers blocks
    a libvirt call without an event loop forever, and must cost `timeout_s` only."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except Exception as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name="lab-guest-check", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError
    if "error" in result:
        raise result["error"]
    return result.get("value")
