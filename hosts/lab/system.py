"""This machine as the lab sees it: commands it runs, processes it stops, and
whether it may run at all. Everything the lab starts is stopped by PID (or by
membership of the lab's namespaces), never by process name."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hosts.gateway import wait_for

log = logging.getLogger(__name__)

PROCESS_STOP_TIMEOUT_S = 10.0


class LabError(Exception):
    """Something the lab could not do, in plain words."""


def run(cmd: Sequence[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; on failure raise LabError saying what we were doing."""
    log.debug("run: %s", shlex.join(cmd))
    kwargs.setdefault("capture_output", True)
    try:
        result = subprocess.run(list(cmd), check=False, **kwargs)
    except FileNotFoundError as exc:
        raise LabError(f"could not {what}: {cmd[0]} is not installed") from exc
    if result.returncode != 0:
        stderr = result.stderr.decode() if isinstance(result.stderr, bytes) else result.stderr or ""
        detail = stderr.strip().splitlines()[-3:] if stderr else []
        raise LabError(f"could not {what}: `{shlex.join(cmd)}` exited {result.returncode}: {' / '.join(detail)}")
    return result


def probe(*cmd: str) -> subprocess.CompletedProcess:
    """Run a query whose exit status is part of the answer (no exception)."""
    return subprocess.run(cmd, check=False, capture_output=True, text=True)


def cannot_run_reason() -> str | None:
    """Why this machine cannot run the lab, or None."""
    if os.geteuid() != 0:
        return f"the lab needs root (it creates network namespaces and runs libvirtd); running as uid {os.geteuid()}"
    for tool in ("ip", "unshare", "nsenter", "taskset", "dpkg-query"):
        if shutil.which(tool) is None:
            return f"the lab needs `{tool}`, which is not installed"
    unshare = probe("unshare", "--net", "--mount", "--uts", "true")
    if unshare.returncode != 0:
        return f"this machine does not allow network/mount namespaces: {unshare.stderr.strip()}"
    return None


def process_alive(pid: int, expected: str) -> bool:
    """True if `pid` runs and its command line contains `expected` (a recycled
    PID must never be killed). Zombies count as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and expected.encode() in cmdline


def stop_processes(pids: Sequence[int], expected: str) -> None:
    """SIGTERM, wait, then SIGKILL the given PIDs (those still matching)."""
    targets = [p for p in pids if process_alive(p, expected)]
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if wait_for(lambda: not any(process_alive(p, expected) for p in targets), PROCESS_STOP_TIMEOUT_S, 0.05):
        return
    for pid in targets:
        if process_alive(pid, expected):
            log.warning("pid %d (%s) ignored SIGTERM; killing it", pid, expected)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def pids_in_netns(netns: str) -> list[int]:
    """Every process living in the named network namespace."""
    try:
        ns = os.stat(f"/run/netns/{netns}")
    except FileNotFoundError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                st = os.stat(entry / "ns" / "net")
                if (st.st_dev, st.st_ino) == (ns.st_dev, ns.st_ino):
                    pids.append(int(entry.name))
    return pids
