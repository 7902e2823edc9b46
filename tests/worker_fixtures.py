"""Real RQ workers for lab tests: `manage.py worker` processes on the test
database, the way a site runs them (several, on several machines, sharing
Redis and the database)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connection

from hosts.lab import DEMO_GUESTS

from .child_env import child_env

REPO = Path(__file__).resolve().parents[1]
# Small guests of the queue and fleet tests (128 MiB, 1 MiB rewritten a second).
GUESTS = ("queue-1", "queue-2", "queue-3", "queue-4", "queue-5")


@pytest.fixture
def real_workers(transactional_db, queue) -> Iterator[Callable[..., subprocess.Popen]]:
    """`real_workers(processes=2, **env)` starts one `manage.py worker` with
    that many processes (settings from `env`, e.g. MIGRATION_MAX_TOTAL="5");
    every worker started is stopped after the test."""
    started: list[subprocess.Popen] = []
    logs = []

    def start(processes: int = 2, **env: str) -> subprocess.Popen:
        log = open(REPO / "var" / f"test-worker-{len(started)}.log", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "worker", "--processes", str(processes), "--maintenance-every", "0"],
            cwd=REPO,
            env=child_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    (REPO / "var").mkdir(exist_ok=True)
    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    for log in logs:
        log.close()
    connection.close()


@pytest.fixture
def small_guests(lab):
    """`small_guests(n)` boots the first n of GUESTS on lab-a, side by side;
    they are removed after the test."""
    booted: list[str] = []

    def boot(count: int) -> tuple[str, ...]:
        names = GUESTS[:count]
        for name in names:
            lab.define_guest(name, 128, dirty_mb=1)
            booted.append(name)
        with ThreadPoolExecutor(max_workers=count) as pool:
            list(pool.map(lab.reset_guest, names))
        return names

    yield boot
    for name in booted:
        lab.remove_guest(name)


def quiet_lab(lab) -> None:
    """Only the test's own guests will run: every guest on every host is
    stopped and the demo guests are parked, shut off, on lab-a (an
    evacuation moves running VMs only)."""
    lab.stop_all_guests()
    for spec in DEMO_GUESTS:
        lab.park_guest(spec.name)
