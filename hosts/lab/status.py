"""What `lab status` reports: per host its namespace, daemon and guests; the
switch that joins the hosts, and the routes to the TLS hosts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GuestState:
    name: str
    state: str


@dataclass(frozen=True)
class HostStatus:
    key: str
    hostname: str
    address: str
    netns: str
    netns_exists: bool
    daemon_pid: int | None
    daemon_alive: bool
    answering: bool
    guests: tuple[GuestState, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.netns_exists and self.daemon_alive and self.answering


@dataclass(frozen=True)
class LabStatus:
    root: Path
    hosts: dict[str, HostStatus]
    switch: bool  # its namespace exists (network.SWITCH_NETNS)
    tls_routes: dict[str, bool]  # per TLS host, whether this namespace has its route there
    faults: tuple[str, ...] = ()  # injected by a test and not undone yet (faults.Faults.active)

    @property
    def healthy(self) -> bool:
        return (
            self.switch
            and all(self.tls_routes.values())
            and all(h.healthy for h in self.hosts.values())
            and not self.faults
        )

    @property
    def down(self) -> bool:
        return (
            not self.switch
            and not any(self.tls_routes.values())
            and not any(h.netns_exists or h.daemon_alive for h in self.hosts.values())
        )

    def describe(self) -> str:
        verdict = "up" if self.healthy else "down" if self.down else "half up (run `lab up` to repair)"
        if self.faults and not self.down:
            verdict = "up with faults injected (`lab up` undoes them)"
        lines = [f"lab at {self.root}: {verdict}"]
        lines += [f"  fault: {fault}" for fault in self.faults]
        for h in self.hosts.values():
            daemon = "no libvirtd"
            if h.daemon_pid is not None:
                daemon = f"libvirtd pid {h.daemon_pid} " + (
                    ("answering" if h.answering else "NOT answering") if h.daemon_alive else "DEAD"
                )
            lines.append(
                f"  host {h.key} ({h.hostname}, {h.address}): netns {h.netns} "
                f"{'present' if h.netns_exists else 'MISSING'}, {daemon}"
            )
            for g in h.guests:
                lines.append(f"    {g.name:<12} {g.state}")
        lines.append(f"  switch joining the hosts: {'present' if self.switch else 'MISSING'}")
        routes = ", ".join(f"{key} {'yes' if present else 'NO'}" for key, present in self.tls_routes.items())
        lines.append(f"  routes from this namespace to the TLS ports: {routes}")
        return "\n".join(lines)
