"""The lab's faults do what they say and their undos undo them; a guest's
health (runs once, ticks on, memory pattern intact) is read from the hosts and
their serial logs."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hosts import gateway
from hosts.lab import HOSTS, DiskSpec, Lab

MIB = 2**20
SHAPING_PROBE_BYTES = 2 * MIB  # 0.7 s at the default 24 Mbit/s; milliseconds over the bare veth
PROBE_PORT = 5201

# Both ends run in the lab's namespaces: the receiver on B acknowledges once it has read everything.
RECEIVER = f"""
import socket
with socket.create_server(("{HOSTS["B"].address}", {PROBE_PORT})) as server:
    print("ready", flush=True)
    conn, _ = server.accept()
    while conn.recv(1 << 16):
        pass
    conn.sendall(b"k")
"""
SENDER = f"""
import socket, sys, time
with socket.create_connection(("{HOSTS["B"].address}", {PROBE_PORT}), timeout=30) as conn:
    start = time.monotonic()
    conn.sendall(bytes(int(sys.argv[1])))
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
    print(time.monotonic() - start)
"""

HOLDER = f"""
import socket
with socket.create_connection(("{HOSTS["B"].address}", {PROBE_PORT}), timeout=30) as conn:
    print("connected", flush=True)
    try:
        conn.recv(1)
        print("closed")
    except OSError as error:
        print(type(error).__name__)
"""


def seconds_to_send_a_to_b(n_bytes: int) -> float:
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", HOSTS["B"].netns, sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout.readline().strip() == "ready"
        sent = subprocess.run(
            ["ip", "netns", "exec", HOSTS["A"].netns, sys.executable, "-c", SENDER, str(n_bytes)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        return float(sent.stdout)
    finally:
        receiver.kill()
        receiver.wait()


def write_bytes(path: Path, n_bytes: int) -> None:
    with open(path, "wb") as f:
        for _ in range(n_bytes // MIB):
            f.write(os.urandom(MIB))
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------- faults


@pytest.mark.lab
@pytest.mark.faults
def test_a_cut_link_makes_b_unreachable_from_a_until_restored(lab, fault):
    assert fault.link_works("A")

    with fault.link_cut("A"):
        fault.cut_link("A")  # twice is fine

        assert not fault.link_works("A")
        assert not fault.link_works("A", "B") and not fault.link_works("C", "A")
        assert fault.link_works("B", "C") and fault.link_works("C", "B")  # the others still reach each other
        assert "host A's link is cut" in lab.status().faults

    assert fault.link_works("A")
    fault.restore_link("A")
    assert lab.status().healthy


@pytest.mark.lab
@pytest.mark.faults
def test_a_slowed_link_sends_at_its_rate_until_cleared(lab, fault):
    with fault.link_slowed("A"):
        fault.slow_link("A")

        assert "rate 24Mbit" in fault.link_shaping("A")
        assert seconds_to_send_a_to_b(SHAPING_PROBE_BYTES) > 0.4

    assert fault.link_shaping("A") == ""
    assert seconds_to_send_a_to_b(SHAPING_PROBE_BYTES) < 0.3
    fault.clear_link_shaping("A")


@pytest.mark.lab
@pytest.mark.faults
def test_reset_connections_aborts_the_hosts_connections_to_the_others(lab, fault):
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", HOSTS["B"].netns, sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True
    )
    sender = None
    try:
        assert receiver.stdout.readline().strip() == "ready"
        # A connection that stays open until something ends it.
        sender = subprocess.Popen(
            ["ip", "netns", "exec", HOSTS["A"].netns, sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True
        )
        assert sender.stdout.readline().strip() == "connected"

        assert fault.reset_connections("A", "C") == 0  # not the connection to B
        assert fault.reset_connections("A") >= 1

        ended, _ = sender.communicate(timeout=10)
        assert ended.strip() in ("ConnectionAbortedError", "ConnectionResetError"), ended
        assert fault.reset_connections("A") == 0
    finally:
        for proc in (sender, receiver):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.lab
@pytest.mark.faults
def test_a_hung_daemon_accepts_and_never_answers_until_continued(lab, fault):
    with fault.daemon_hung("B"):
        fault.hang_daemon("B")

        assert not gateway.answers(lab.uri("B"), timeout_s=2)
        started = time.monotonic()
        assert ("B", "unknown") in lab.where_running("idle")  # the check itself does not hang
        assert time.monotonic() - started < 1
        assert "libvirtd B is hung" in lab.status().faults

    assert gateway.answers(lab.uri("B"), timeout_s=5)
    fault.unhang_daemon("B")


@pytest.mark.lab
@pytest.mark.faults
def test_a_killed_daemon_is_gone_until_healed(lab, fault):
    old_pid = lab.status().hosts["B"].daemon_pid

    fault.kill_daemon("B")
    fault.kill_daemon("B")

    assert not lab.status().hosts["B"].daemon_alive
    assert not gateway.answers(lab.uri("B"), timeout_s=2)

    status = lab.heal()

    assert status.healthy, status.describe()
    assert status.hosts["B"].daemon_pid != old_pid


@pytest.mark.lab
@pytest.mark.faults
def test_a_restarted_daemon_is_a_new_one_that_answers(lab, fault):
    old_pid = lab.status().hosts["B"].daemon_pid

    fault.restart_daemon("B")

    status = lab.status()
    assert status.hosts["B"].daemon_pid != old_pid
    assert status.healthy, status.describe()


@pytest.mark.lab
@pytest.mark.faults
@pytest.mark.parametrize("host", ["B", "C"])
def test_a_filled_disk_refuses_writes_beyond_what_it_leaves(lab, fault, host):
    # Written where the host's QEMUs write: through its daemon's mount namespace.
    probe = fault.images_dir(host) / "fault-probe"
    try:
        with fault.disk_full(host, 4 * MIB):
            fault.fill_disk(host, 4 * MIB)

            assert 3 * MIB < fault.disk_free_bytes(host) <= 4 * MIB
            assert f"host {host}'s images filesystem is filled" in lab.status().faults
            with pytest.raises(OSError) as full:
                write_bytes(probe, 8 * MIB)
            assert full.value.errno == errno.ENOSPC

        write_bytes(probe, 8 * MIB)
        fault.unfill_disk(host)
    finally:
        probe.unlink(missing_ok=True)


@pytest.mark.lab
@pytest.mark.faults
def test_a_filled_disk_fails_a_disk_copy_with_enospc_and_the_guest_stays(lab, fault):
    name, disk = "fault-disk", DiskSpec("vda", size_mib=32)
    dest = str(lab.image_path(name, disk))
    lab.define_guest(name, 128, dirty_mb=0, disks=[disk])
    try:
        # Data to copy: the block mirror skips what was never written.
        written = subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 16M", str(lab.host_path("A", dest))],
            capture_output=True,
            text=True,
        )
        assert written.returncode == 0, written.stderr
        lab.reset_guest(name)
        since = lab.last_tick(name, "A")
        gateway.create_volume(lab.uri("B"), dest, "qcow2", disk.size_mib * MIB)  # sparse, as the executor does

        with fault.disk_full("B", 4 * MIB), pytest.raises(gateway.GatewayError, match="No space left on device"):
            gateway.migrate_domain(
                lab.uri("A"), name, gateway.MigrationSpec(lab.peer_uri("B"), copy_storage=True, migrate_disks=["vda"])
            )

        health = lab.check_guest(name, since=since)
        assert health.hosts_running == ["A"] and health.runs_once, health.describe()
        assert health.counter_went_on and health.pattern_intact, health.describe()
    finally:
        lab.remove_guest(name)
        gateway.delete_volume(lab.uri("B"), dest)
        lab.host_path("A", dest).unlink(missing_ok=True)


@pytest.mark.lab
@pytest.mark.faults
def test_heal_undoes_every_fault_at_once(lab, fault):
    fault.cut_link("A")
    fault.slow_link("B")
    fault.hang_daemon("A")
    fault.fill_disk("B", 16 * MIB)
    fault.kill_daemon("B")
    assert len(lab.status().faults) == 4

    status = lab.heal()

    assert status.healthy and status.faults == (), status.describe()
    assert fault.link_works("A") and fault.link_works("B") and fault.link_works("C")
    assert fault.disk_free_bytes("B") > 1024 * MIB


# ---------------------------------------------------------------- a guest's health


@pytest.mark.lab
@pytest.mark.faults
def test_a_freshly_booted_guest_runs_once_ticks_and_keeps_its_pattern(lab, guest):
    guest("idle")

    health = lab.check_guest("idle")

    assert health.runs_once and health.counter_went_on and health.pattern_intact, health.describe()
    assert (health.hosts_running, health.hosts_paused, health.problems) == (["A"], [], [])
    assert lab.where_running("idle") == [("A", "running")]

    subprocess.run(["virsh", "-c", lab.uri("A"), "suspend", "idle"], check=True, capture_output=True)

    assert lab.where_running("idle") == [("A", "paused")]


def serial_logs(tmp_path: Path, a: str = "", b: str = "") -> Lab:
    """A lab rooted in tmp_path (nothing started) whose guest `g` wrote these serial logs."""
    lab = Lab(tmp_path)
    for key, text in (("A", a), ("B", b)):
        path = lab.serial_log("g", key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("\n", "\r\n"))
    return lab


BOOT = "PATTERN sum=" + "a" * 32 + " boot=b1 mib=16 md5_s=0.17\n"
CHECK_SAME = "pattern sum=" + "a" * 32 + " boot=b1 uptime=20.1\n"
CHECK_OTHER = "pattern sum=" + "c" * 32 + " boot=b1 uptime=25.1\n"


def test_the_pattern_is_compared_with_the_boot_line_in_the_other_hosts_log(tmp_path):
    lab = serial_logs(tmp_path, a=BOOT + "tick uptime=3.0\n", b="tick uptime=19.0\n" + CHECK_SAME)

    assert lab.pattern_intact("g", "B", timeout=0)
    assert lab.pattern_intact("g", "B", since=19.0, timeout=0)
    assert not lab.pattern_intact("g", "B", since=21.0, timeout=0)  # no check that late yet
    assert not lab.pattern_intact("g", "A", timeout=0)  # no check on A at all


def test_a_changed_pattern_or_one_of_another_boot_is_not_intact(tmp_path):
    changed = serial_logs(tmp_path / "changed", a=BOOT, b=CHECK_SAME + CHECK_OTHER)
    other_boot = serial_logs(tmp_path / "other", a=BOOT.replace("boot=b1", "boot=b0"), b=CHECK_SAME)

    assert not changed.pattern_intact("g", "B", timeout=0)
    assert not other_boot.pattern_intact("g", "B", timeout=0)


def test_the_counter_advances_past_an_uptime(tmp_path):
    lab = serial_logs(tmp_path, a="tick uptime=3.0\ntick uptime=4.1\n", b="tick uptime=9.5\n")

    assert lab.last_tick("g", "A") == 4.1
    assert lab.counter_advanced("g", "B", since=4.1, timeout=0)
    assert not lab.counter_advanced("g", "A", since=4.1, timeout=0)
    assert not lab.counter_advanced("g", "A", timeout=0)  # nothing after its own last tick
