"""The lab's network: a namespace per host (lvA / lvB) joined by a veth pair
10.77.0.1 <-> 10.77.0.2, one more veth from this (root) namespace into B's with
a /32 route, so the dashboard reaches B's TLS port, and bridges that NIC tests
add on one host. Addresses 10.77.0.x exist only inside the namespaces."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from .layout import HOSTS, hostdef
from .system import LabError, pids_in_netns, probe, run, stop_processes

log = logging.getLogger(__name__)

LAB_PREFIX_LEN = 24
ROOT_VETH, ROOT_VETH_PEER = "vR", "vRB"
ROOT_VETH_ADDR, ROOT_VETH_PEER_ADDR = "10.78.0.1/30", "10.78.0.2/30"


def netns_exists(key: str) -> bool:
    return Path(f"/run/netns/{HOSTS[key].netns}").exists()


def is_up() -> bool:
    for hd in HOSTS.values():
        if not netns_exists(hd.key):
            return False
        shown = probe("ip", "-n", hd.netns, "-o", "addr", "show", "dev", hd.veth)
        # LOWER_UP: both ends of the veth pair are up.
        if f"inet {hd.address}/" not in shown.stdout or "LOWER_UP" not in _link_flags(hd.netns, hd.veth):
            return False
    return True


def link_is_up(key: str) -> bool:
    """Whether the host's end of the lab veth is up (administratively: faults.cut_link takes it down)."""
    hd = HOSTS[key]
    return "UP" in _link_flags(hd.netns, hd.veth).split(",")


def ensure(stop_daemons: Callable[[], None]) -> None:
    if is_up():
        return
    if any(netns_exists(k) for k in HOSTS):
        log.info("network incomplete: rebuilding it")
    # A veth pair dies with either end, so a half-present network is rebuilt
    # whole. The daemons go too, even when they still answer: one left running
    # would stay in the old namespace. Guests' definitions stay.
    stop_daemons()
    remove()
    a, b = HOSTS["A"], HOSTS["B"]
    for hd in (a, b):
        run(["ip", "netns", "add", hd.netns], f"create network namespace {hd.netns}")
    run(["ip", "link", "add", a.veth, "type", "veth", "peer", "name", b.veth], "create the lab veth pair")
    for hd in (a, b):
        run(["ip", "link", "set", hd.veth, "netns", hd.netns], f"move {hd.veth} into {hd.netns}")
        run(
            ["ip", "-n", hd.netns, "addr", "add", f"{hd.address}/{LAB_PREFIX_LEN}", "dev", hd.veth],
            f"address {hd.veth}",
        )
        run(["ip", "-n", hd.netns, "link", "set", "lo", "up"], f"bring up lo in {hd.netns}")
        run(["ip", "-n", hd.netns, "link", "set", hd.veth, "up"], f"bring up {hd.veth}")


def root_route_exists() -> bool:
    shown = probe("ip", "-o", "route", "show", f"{HOSTS['B'].address}/32")
    return f"dev {ROOT_VETH}" in shown.stdout


def ensure_root_route() -> None:
    if root_route_exists():
        return
    b = HOSTS["B"]
    probe("ip", "link", "del", ROOT_VETH)  # a leftover without its route
    run(["ip", "link", "add", ROOT_VETH, "type", "veth", "peer", "name", ROOT_VETH_PEER], "create the root veth")
    run(["ip", "link", "set", ROOT_VETH_PEER, "netns", b.netns], f"move {ROOT_VETH_PEER} into {b.netns}")
    run(["ip", "addr", "add", ROOT_VETH_ADDR, "dev", ROOT_VETH], f"address {ROOT_VETH}")
    run(["ip", "-n", b.netns, "addr", "add", ROOT_VETH_PEER_ADDR, "dev", ROOT_VETH_PEER], f"address {ROOT_VETH_PEER}")
    run(["ip", "link", "set", ROOT_VETH, "up"], f"bring up {ROOT_VETH}")
    run(["ip", "-n", b.netns, "link", "set", ROOT_VETH_PEER, "up"], f"bring up {ROOT_VETH_PEER}")
    gateway_ip = ROOT_VETH_PEER_ADDR.split("/")[0]
    run(["ip", "route", "add", f"{b.address}/32", "via", gateway_ip, "dev", ROOT_VETH], "route to host B")


def remove() -> None:
    # Deleting one end of a veth deletes its peer; the route goes with the link.
    probe("ip", "link", "del", ROOT_VETH)
    for hd in HOSTS.values():
        for pid in pids_in_netns(hd.netns):
            log.warning("pid %d still runs in %s; stopping it", pid, hd.netns)
            stop_processes([pid], "")  # any command: whatever lives in our namespace is ours
        if netns_exists(hd.key):
            run(["ip", "netns", "del", hd.netns], f"delete network namespace {hd.netns}")


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
