"""Finding a guest kernel's panic in the lab's serial logs (no lab needed:
the logs are files under the lab's root)."""

from __future__ import annotations

import os
import time

from hosts.lab import Lab
from hosts.lab.layout import SERIAL_LOG_DIR

PANIC = "[   20.545179] Kernel panic - not syncing: Fatal exception in interrupt"


def write_log(lab: Lab, host: str, guest: str, text: str, age_s: float = 0.0) -> None:
    directory = lab.host_path(host, SERIAL_LOG_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / f"{guest}-serial.log"
    log.write_text(text)
    then = time.time() - age_s
    os.utime(log, (then, then))


def test_it_names_each_guest_whose_kernel_panicked_since_the_test_began(tmp_path):
    lab = Lab(root=tmp_path)
    started = time.time() - 60
    write_log(lab, "B", "queue-2", f"tick uptime=19.56\n{PANIC}\n")
    write_log(lab, "C", "queue-3", "tick uptime=90.26\n")
    write_log(lab, "A", "old", f"{PANIC}\n", age_s=3600)  # before the test: not its doing
    assert lab.kernel_panics(since=started) == [f"queue-2 on B: {PANIC}"]
