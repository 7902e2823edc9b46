"""Measures live progress over a real lab migration: the latency from a
job-stats sample being read to its message arriving in a websocket client
connected to a real Daphne, and the wall-time cost of monitoring compared
with a bare libvirt migration of the same guest."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.core.management.base import BaseCommand, CommandError

from hosts import gateway

from ._lab import bench_user, lab_with_hosts, queue_on_lab, run_here

GUEST = "web-shared"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Command(BaseCommand):
    help = "Benchmark live progress: sample→websocket latency and monitoring overhead, over real lab migrations."

    def add_arguments(self, parser):
        parser.add_argument("--bandwidth", type=int, default=8, help="MiB/s cap, to make the migration long")
        parser.add_argument("--interval", type=float, default=0.1, help="seconds between job-stats samples")
        parser.add_argument("--repeat", type=int, default=3, help="bare vs monitored migrations for the ratio")
        parser.add_argument("--min-samples", type=int, default=200, help="latency samples to collect at least")

    def handle(self, bandwidth: int, interval: float, repeat: int, min_samples: int, **options):
        lab, a, b = lab_with_hosts()
        settings.MIGRATION_SAMPLE_INTERVAL_S = interval
        user = bench_user()
        port = _free_port()
        daphne = self._start_daphne(port)
        try:
            latencies: list[float] = []
            while len(latencies) < min_samples:
                more, monitored_s = self._latency_run(lab, a, b, user, port, bandwidth)
                latencies += more
                self.stdout.write(f"latency run: {len(more)} samples over {monitored_s:.1f} s")
            bare, monitored = [], []
            for i in range(repeat):
                bare.append(self._bare_run(lab, a, b, bandwidth))
                monitored.append(self._monitored_run(lab, a, b, user, bandwidth))
                self.stdout.write(f"  run {i + 1}: bare {bare[-1]:.2f} s, monitored {monitored[-1]:.2f} s")
        finally:
            daphne.terminate()
            daphne.wait(10)
            lab.stop_guest(GUEST)
        if len(latencies) < 2:
            raise CommandError("Too few samples reached the websocket; is Redis running?")
        ms = sorted(x * 1000 for x in latencies)
        p50 = statistics.median(ms)
        p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
        ratio = statistics.median(monitored) / statistics.median(bare)
        self.stdout.write(
            f"samples={len(ms)} bare_s={statistics.median(bare):.2f} monitored_s={statistics.median(monitored):.2f}"
        )
        self.stdout.write(f"p50_ms={p50:.1f} p95_ms={p95:.1f} max_ms={ms[-1]:.1f} overhead_ratio={ratio:.3f}")

    # ------------------------------------------------------------ runs

    def _start_daphne(self, port: int) -> subprocess.Popen:
        log = open(Path(settings.BASE_DIR) / "var" / "bench-daphne.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "migrator.asgi:application"],
            cwd=settings.BASE_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "migrator.settings"},
        )
        if not gateway.wait_for(lambda: _port_open(port), 20):
            proc.terminate()
            raise CommandError("Daphne did not start; see var/bench-daphne.log")
        return proc

    def _queue(self, lab, a, b, user, bandwidth):
        lab.reset_guest(GUEST)
        return queue_on_lab(a, b, user, GUEST, bandwidth_mib_s=bandwidth)

    def _latency_run(self, lab, a, b, user, port, bandwidth) -> tuple[list[float], float]:
        migration = self._queue(lab, a, b, user, bandwidth)
        session = SessionStore()
        session["_auth_user_id"] = str(user.pk)
        session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        session["_auth_user_hash"] = user.get_session_auth_hash()
        session.save()
        latencies: list[float] = []
        ready = threading.Event()
        done = threading.Event()

        async def listen() -> None:
            import websockets

            url = f"ws://127.0.0.1:{port}/ws/migrations/{migration.pk}/"
            headers = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={session.session_key}"}
            async with websockets.connect(url, additional_headers=headers, origin=f"http://127.0.0.1:{port}") as ws:
                ready.set()
                while not done.is_set():
                    try:
                        raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
                    except TimeoutError:
                        continue
                    received = time.time()
                    message = json.loads(raw)
                    if message.get("type") == "sample" and message.get("read_at"):
                        latencies.append(received - message["read_at"])
                    if message.get("type") == "state" and not message["migration"]["active"]:
                        return

        thread = threading.Thread(target=lambda: asyncio.run(listen()), daemon=True)
        thread.start()
        if not ready.wait(20):
            raise CommandError("The websocket client could not connect to Daphne.")
        started = time.monotonic()
        migration = run_here(migration)
        elapsed = time.monotonic() - started
        time.sleep(1)
        done.set()
        thread.join(10)
        if migration.state != "succeeded":
            raise CommandError(f"The benchmark migration {migration.state}: {migration.error_message}")
        return latencies, elapsed

    def _monitored_run(self, lab, a, b, user, bandwidth) -> float:
        migration = self._queue(lab, a, b, user, bandwidth)
        started = time.monotonic()
        migration = run_here(migration)
        elapsed = time.monotonic() - started
        if migration.state != "succeeded":
            raise CommandError(f"A monitored migration {migration.state}: {migration.error_message}")
        return migration.final_stats.get("wall_time_ms", elapsed * 1000) / 1000

    def _bare_run(self, lab, a, b, bandwidth) -> float:
        """migrateToURI3 alone: no sampling thread, no database, no channel layer."""
        lab.reset_guest(GUEST)
        spec = gateway.MigrationSpec(
            dconnuri=b.effective_peer_uri,
            migrate_uri=f"tcp://{b.migration_address}",
            bandwidth_mib_s=bandwidth,
            max_downtime_ms=500,
            unsafe=True,
        )
        started = time.monotonic()
        gateway.migrate_domain(lab.uri("A"), GUEST, spec)
        return time.monotonic() - started


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
