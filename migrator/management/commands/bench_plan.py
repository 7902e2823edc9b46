"""Times the evacuation planner: one source with 100 running VMs, 49 other
hosts, all simulated with stored inventory (libvirt's test driver URI, never
opened) in a transaction that is rolled back, so nothing stays behind. The
plan reads the database only; the figure is the median of several runs."""

from __future__ import annotations

import statistics
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from hosts import gateway
from hosts.models import Host, StorageClass, VirtualMachine
from migrator.models import DirtyRateMeasurement
from migrator.planning.evacuation import plan_evacuation

PREFIX = "bench-plan-"
URI = "test:///default"
GIB_KIB = 2**20
MEMORY_GIB = (1, 2, 4, 8, 16)


def host_info(name: str, *, free_gib: int, bridges=("br0",), cpu_model: str = "EPYC-Rome") -> dict:
    network = gateway.NetworkInfo("default", True, "nat", "virbr0")
    return gateway.HostInfo(
        hostname=name,
        driver="QEMU",
        libvirt_version="9.0.0",
        hypervisor_version="7.2.0",
        host_uuid="",
        arch="x86_64",
        cpu_vendor="AMD",
        cpu_model=cpu_model,
        cpu_sockets=2,
        cpu_cores_per_socket=16,
        cpu_threads_per_core=2,
        numa_nodes=2,
        physical_cores=32,
        logical_cpus=64,
        memory_total_kib=256 * GIB_KIB,
        memory_free_kib=free_gib * GIB_KIB,
        networks=["default"],
        bridges=list(bridges),
        network_details={"default": network},
        net_devices=["eth0", *bridges],
        net_devices_known=True,
        bridges_known=True,
    ).as_dict()


def build(vm_count: int, host_count: int) -> tuple[Host, list[Host]]:
    """The source and its destinations: most with room to spare, every
    seventh nearly full, one without bridge br0, one with another CPU."""
    now = timezone.now()
    hosts = []
    for i in range(host_count):
        name = f"{PREFIX}{i:02d}"
        info = host_info(
            name,
            free_gib=4 if i % 7 == 6 else 64,
            bridges=() if i == 13 else ("br0",),
            cpu_model="EPYC-Milan" if i == 17 else "EPYC-Rome",
        )
        hosts.append(
            Host.objects.create(name=name, uri=URI, shared_prefixes="/mnt/nfs\n", info=info, inventory_refreshed_at=now)
        )
    source = hosts[0]
    for i in range(vm_count):
        shared = i % 3 != 0
        path = f"/mnt/nfs/{PREFIX}vm-{i:03d}.qcow2" if shared else f"/var/lib/libvirt/images/{PREFIX}vm-{i:03d}.qcow2"
        nic = (
            {"type": "bridge", "source": "br0", "mac": f"52:54:00:00:{i // 256:02x}:{i % 256:02x}", "target": "vnet0"}
            if i % 4 == 0
            else {"type": "network", "source": "default", "mac": f"52:54:00:01:{i // 256:02x}:{i % 256:02x}"}
        )
        vm = VirtualMachine.objects.create(
            host=source,
            uuid=f"00000000-0000-4000-8000-{i:012d}",
            name=f"{PREFIX}vm-{i:03d}",
            state="running",
            vcpus=2,
            memory_kib=MEMORY_GIB[i % len(MEMORY_GIB)] * GIB_KIB,
            domain_type="kvm",
            storage_class=StorageClass.SHARED if shared else StorageClass.NON_SHARED,
            disks=[
                {
                    "target": "vda",
                    "device": "disk",
                    "type": "file",
                    "source": path,
                    "format": "qcow2",
                    "bus": "virtio",
                    "capacity_bytes": 20 * 2**30,
                }
            ],
            interfaces=[nic],
            details={"arch": "x86_64", "cpu_xml": "", "hugepages": False},
        )
        if i % 2 == 0:
            for window, rate in ((1, 4.0 + i % 11), (2, 3.0 + i % 11), (4, 2.0 + i % 11)):
                DirtyRateMeasurement.objects.create(
                    vm_uuid=vm.uuid,
                    vm_name=vm.name,
                    host=source,
                    host_name=source.name,
                    series=f"{PREFIX}{i}",
                    window_s=window,
                    dirty_rate_mib_s=rate,
                )
    return source, hosts[1:]


class Command(BaseCommand):
    help = (
        "Benchmark the evacuation planner: 100 VMs on one host over 49 destinations, from stored inventory "
        "(rolled back afterwards)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--vms", type=int, default=100, help="running VMs on the source")
        parser.add_argument("--hosts", type=int, default=50, help="hosts in all, the source included")
        parser.add_argument("--repeat", type=int, default=5, help="plans to time; the median is reported")

    def handle(self, vms: int, hosts: int, repeat: int, **options):
        if vms < 1 or hosts < 2 or repeat < 1:
            raise CommandError("Use --vms 1 or more, --hosts 2 or more (the source and a destination), --repeat 1+.")
        if Host.objects.filter(name__startswith=PREFIX).exists():
            raise CommandError(f"Hosts named {PREFIX}* exist already; remove them, the benchmark creates its own.")
        times: list[float] = []
        with transaction.atomic():
            source, destinations = build(vms, hosts)
            for _ in range(repeat):
                started = time.perf_counter()
                plan = plan_evacuation(source, destinations=destinations)
                times.append((time.perf_counter() - started) * 1000)
            transaction.set_rollback(True)
        used = len({s.destination_id for s in plan.steps})
        self.stdout.write(f"{vms} VMs on {source.name}, {hosts - 1} destinations (stored inventory, rolled back)")
        self.stdout.write(
            f"plan: {len(plan.steps)} steps to {used} hosts, {len(plan.unmovable)} cannot move, predicted total "
            f"{plan.predicted_total_s:.0f} s with {plan.limits['outgoing']} at once out of the source"
        )
        self.stdout.write("runs (ms): " + ", ".join(f"{t:.0f}" for t in times))
        self.stdout.write(f"vms={vms} hosts={hosts} plan_ms={statistics.median(times):.0f}")
