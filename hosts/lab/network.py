"""The lab's network: a namespace per host (lvA, lvB, lvC) and one more, the
switch (lvS), whose bridge joins them: each host's veth (vA at 10.77.0.1, vB
at 10.77.0.2, vC at 10.77.0.3) has its peer, of the same name, on the bridge.
One more veth from this (root) namespace into each TLS host's (vRB, vRC) with
a /32 route, so the dashboard reaches their TLS ports; and bridges that NIC
tests add on one host. Addresses 10.77.0.x exist only inside the namespaces."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from .layout import HOSTS, TLS_HOSTS, HostDef, hostdef
from .system import LabError, pids_in_netns, probe, run, stop_processes

log = logging.getLogger(__name__)

LAB_PREFIX_LEN = 24
SWITCH_NETNS, SWITCH_BRIDGE = "lvS", "lab"
# Per TLS host, a /30 of 10.78.0.0/24: the root's end .4i+1, the host's end .4i+2.
ROOT_VETHS = {key: f"vR{key}" for key in TLS_HOSTS}
ROOT_NET_PREFIX, ROOT_NET_PREFIX_LEN = "10.78.0.", 30


def netns_exists(key: str) -> bool:
    return Path(f"/run/netns/{HOSTS[key].netns}").exists()


def switch_exists() -> bool:
    return Path(f"/run/netns/{SWITCH_NETNS}").exists()


def is_up() -> bool:
    if not switch_exists() or "UP" not in _link_flags(SWITCH_NETNS, SWITCH_BRIDGE).split(","):
        return False
    for hd in HOSTS.values():
        if not netns_exists(hd.key):
            return False
        shown = probe("ip", "-n", hd.netns, "-o", "addr", "show", "dev", hd.veth)
        # LOWER_UP: both ends of the veth pair are up.
        if f"inet {hd.address}/" not in shown.stdout or "LOWER_UP" not in _link_flags(hd.netns, hd.veth):
            return False
        port = probe("ip", "-n", SWITCH_NETNS, "-o", "link", "show", "dev", hd.veth)
        if f" master {SWITCH_BRIDGE} " not in port.stdout:
            return False
    return True


def link_is_up(key: str) -> bool:
    """Whether the host's end of its lab veth is up (administratively: faults.cut_link takes it down)."""
    hd = HOSTS[key]
    return "UP" in _link_flags(hd.netns, hd.veth).split(",")


def ensure(stop_daemons: Callable[[], None]) -> None:
    if is_up():
        return
    if switch_exists() or any(netns_exists(k) for k in HOSTS):
        log.info("network incomplete: rebuilding it")
    # A half-present network is rebuilt whole. The daemons go too, even when
    # they still answer: one left running would stay in the old namespace.
    # Guests' definitions stay.
    stop_daemons()
    remove()
    run(["ip", "netns", "add", SWITCH_NETNS], f"create network namespace {SWITCH_NETNS}")
    run(["ip", "-n", SWITCH_NETNS, "link", "add", SWITCH_BRIDGE, "type", "bridge"], "create the lab switch")
    run(["ip", "-n", SWITCH_NETNS, "link", "set", SWITCH_BRIDGE, "up"], "bring up the lab switch")
    for hd in HOSTS.values():
        _add_host(hd)


def _add_host(hd: HostDef) -> None:
    run(["ip", "netns", "add", hd.netns], f"create network namespace {hd.netns}")
    run(
        ["ip", "link", "add", hd.veth, "netns", hd.netns, "type", "veth", "peer", "name", hd.veth]
        + ["netns", SWITCH_NETNS],
        f"create host {hd.key}'s veth pair",
    )
    run(["ip", "-n", SWITCH_NETNS, "link", "set", hd.veth, "master", SWITCH_BRIDGE], f"plug {hd.veth} into the switch")
    run(["ip", "-n", SWITCH_NETNS, "link", "set", hd.veth, "up"], f"bring up {hd.veth} on the switch")
    run(
        ["ip", "-n", hd.netns, "addr", "add", f"{hd.address}/{LAB_PREFIX_LEN}", "dev", hd.veth],
        f"address {hd.veth}",
    )
    run(["ip", "-n", hd.netns, "link", "set", "lo", "up"], f"bring up lo in {hd.netns}")
    run(["ip", "-n", hd.netns, "link", "set", hd.veth, "up"], f"bring up {hd.veth}")


def root_route_exists(key: str) -> bool:
    shown = probe("ip", "-o", "route", "show", f"{HOSTS[key].address}/32")
    return f"dev {ROOT_VETHS[key]}" in shown.stdout


def root_routes() -> dict[str, bool]:
    """Per TLS host, whether this namespace has its route to the host's address."""
    return {key: root_route_exists(key) for key in TLS_HOSTS}


def ensure_root_routes() -> None:
    for key in TLS_HOSTS:
        if not root_route_exists(key):
            _add_root_route(HOSTS[key])


def _add_root_route(hd: HostDef) -> None:
    veth = ROOT_VETHS[hd.key]
    base = 4 * TLS_HOSTS.index(hd.key)
    root_addr, host_addr = f"{ROOT_NET_PREFIX}{base + 1}", f"{ROOT_NET_PREFIX}{base + 2}"
    probe("ip", "link", "del", veth)  # a leftover without its route
    run(
        ["ip", "link", "add", veth, "type", "veth", "peer", "name", veth, "netns", hd.netns],
        f"create the root veth to host {hd.key}",
    )
    run(["ip", "addr", "add", f"{root_addr}/{ROOT_NET_PREFIX_LEN}", "dev", veth], f"address {veth}")
    run(
        ["ip", "-n", hd.netns, "addr", "add", f"{host_addr}/{ROOT_NET_PREFIX_LEN}", "dev", veth],
        f"address {veth} in {hd.netns}",
    )
    run(["ip", "link", "set", veth, "up"], f"bring up {veth}")
    run(["ip", "-n", hd.netns, "link", "set", veth, "up"], f"bring up {veth} in {hd.netns}")
    run(["ip", "route", "add", f"{hd.address}/32", "via", host_addr, "dev", veth], f"route to host {hd.key}")


def remove() -> None:
    # Deleting one end of a veth deletes its peer; a route goes with its link.
    for veth in ROOT_VETHS.values():
        probe("ip", "link", "del", veth)
    for netns in [hd.netns for hd in HOSTS.values()] + [SWITCH_NETNS]:
        for pid in pids_in_netns(netns):
            log.warning("pid %d still runs in %s; stopping it", pid, netns)
            stop_processes([pid], "")  # any command: whatever lives in our namespace is ours
        if Path(f"/run/netns/{netns}").exists():
            run(["ip", "netns", "del", netns], f"delete network namespace {netns}")


def add_bridge(host: str, name: str) -> None:
    """A Linux bridge on one lab host only (for guests whose NIC needs it)."""
    hd = hostdef(host)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}", name):
        raise LabError(f"bridge name {name!r}: at most 15 letters, digits, '-', '_' or '.'")
    if probe("ip", "-n", hd.netns, "link", "show", "dev", name).returncode != 0:
        run(["ip", "-n", hd.netns, "link", "add", name, "type", "bridge"], f"create bridge {name} on {hd.key}")
    run(["ip", "-n", hd.netns, "link", "set", name, "up"], f"bring up bridge {name} on {hd.key}")


def remove_bridge(host: str, name: str) -> None:
    hd = hostdef(host)
    if probe("ip", "-n", hd.netns, "link", "show", "dev", name).returncode == 0:
        run(["ip", "-n", hd.netns, "link", "del", name], f"delete bridge {name} on {hd.key}")


def _link_flags(netns: str, dev: str) -> str:
    shown = probe("ip", "-n", netns, "-o", "link", "show", "dev", dev)
    return shown.stdout.split("<", 1)[-1].split(">", 1)[0] if "<" in shown.stdout else ""
