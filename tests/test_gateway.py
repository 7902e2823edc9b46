import pytest

from hosts import gateway

TEST_URI = "test:///default"

DOMAIN_XML = """
<domain type='kvm'>
  <name>db</name>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <cpu mode='custom' match='exact'><model>Skylake-Server</model></cpu>
  <memoryBacking><hugepages/></memoryBacking>
  <cputune><emulatorpin cpuset='0-1'/></cputune>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/db.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='/mnt/nfs/shared.raw'/><target dev='vdb' bus='virtio'/><shareable/></disk>
    <disk type='block' device='disk'><source dev='/dev/sdb'/><target dev='vdc' bus='virtio'/><readonly/></disk>
    <disk type='network' device='disk'><driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/img'><host name='ceph1'/></source><target dev='vdd' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
    <interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/>
      <model type='virtio'/></interface>
    <interface type='bridge'><mac address='52:54:00:00:00:02'/><source bridge='br0'/></interface>
  </devices>
</domain>
"""


def test_it_reads_host_capabilities():
    info = gateway.host_info(TEST_URI)
    assert info.driver.lower() == "test"
    assert info.hostname
    assert info.physical_cores >= 1
    assert info.logical_cpus >= info.physical_cores
    assert info.memory_total_kib > 0
    assert "." in info.libvirt_version


def test_it_lists_vms_with_disks():
    vms = gateway.list_vms(TEST_URI)
    vm = next(v for v in vms if v.name == "test")
    assert vm.running
    assert vm.vcpus >= 1 and vm.memory_kib > 0
    assert [d.target for d in vm.disks] == ["vda"]
    assert vm.disks[0].type == "file" and vm.disks[0].capacity_bytes


def test_it_finds_vms_by_uuid_and_name_or_none():
    vm = gateway.list_vms(TEST_URI)[0]
    assert gateway.find_vm(TEST_URI, uuid=vm.uuid).name == vm.name
    assert gateway.find_vm(TEST_URI, name=vm.name).uuid == vm.uuid
    assert gateway.find_vm(TEST_URI, name="no-such-vm") is None
    assert gateway.vm_state(TEST_URI, "00000000-0000-0000-0000-00000000dead") is None


def test_it_parses_domain_xml():
    parsed = gateway.parse_domain_xml(DOMAIN_XML)
    disks = {d.target: d for d in parsed.disks}
    assert disks["vda"].format == "qcow2" and disks["vda"].source.endswith("db.qcow2")
    assert disks["vdb"].shareable and not disks["vdb"].readonly
    assert disks["vdc"].type == "block" and disks["vdc"].source == "/dev/sdb" and disks["vdc"].readonly
    assert disks["vdd"].type == "network" and disks["vdd"].source == "rbd://ceph1/pool/img"
    assert disks["sda"].device == "cdrom" and disks["sda"].source == ""
    assert disks["vda"].capacity_bytes is None  # libvirt's number, not the XML's
    assert [(i.type, i.source) for i in parsed.interfaces] == [("network", "default"), ("bridge", "br0")]
    assert parsed.hugepages and parsed.emulator_pin == "0-1"
    assert parsed.domain_type == "kvm" and parsed.machine == "pc-q35-7.2"
    assert "Skylake-Server" in parsed.cpu_xml
    with pytest.raises(AttributeError):
        parsed.arch = "aarch64"


def test_it_raises_one_error_type_with_libvirts_code_domain_and_message():
    with pytest.raises(gateway.GatewayError) as caught:
        gateway.host_info("qemu+tcp://127.0.0.1:1/system")
    error = caught.value
    assert error.code and error.domain is not None and error.message
    assert error.as_dict()["code"] == error.code


def test_it_reports_a_missing_vm_with_its_code():
    with pytest.raises(gateway.GatewayError) as caught:
        gateway.vm_info(TEST_URI, "00000000-0000-0000-0000-00000000dead")
    assert caught.value.code == gateway.ErrorCode.NO_DOMAIN
    assert "not on that host" in caught.value.hint


def test_it_reuses_connections_and_drops_dead_ones():
    with gateway.connection(TEST_URI) as first:
        pass
    with gateway.connection(TEST_URI) as second:
        assert second is first
    gateway.close_all()
    with gateway.connection(TEST_URI) as third:
        assert third is not first


def test_it_runs_lifecycle_actions():
    conn_vm = gateway.find_vm(TEST_URI, name="test")
    gateway.vm_lifecycle(TEST_URI, conn_vm.uuid, "destroy")
    assert gateway.vm_state(TEST_URI, conn_vm.uuid) == "shut off"
    gateway.vm_lifecycle(TEST_URI, conn_vm.uuid, "start")
    assert gateway.vm_state(TEST_URI, conn_vm.uuid) == "running"
    with pytest.raises(gateway.GatewayError):
        gateway.vm_lifecycle(TEST_URI, conn_vm.uuid, "explode")


def test_it_parses_cpu_lists():
    assert gateway.parse_cpuset("0-1,3", 4) == (True, True, False, True)
    with pytest.raises(ValueError):
        gateway.parse_cpuset("0-7", 4)


def test_it_builds_migrate_flags_and_typed_params():
    spec = gateway.MigrationSpec(
        dconnuri="qemu+tcp://b/system",
        bandwidth_mib_s=500,
        copy_storage=True,
        migrate_disks=["vda"],
        parallel_connections=4,
        compression="zstd",
        compression_level=3,
        tls=True,
        unsafe=True,
    )
    flags = spec.flags()
    for flag in (
        gateway.MigrateFlag.LIVE,
        gateway.MigrateFlag.PEER2PEER,
        gateway.MigrateFlag.PERSIST_DEST,
        gateway.MigrateFlag.UNDEFINE_SOURCE,
        gateway.MigrateFlag.UNSAFE,
        gateway.MigrateFlag.NON_SHARED_DISK,
        gateway.MigrateFlag.PARALLEL,
        gateway.MigrateFlag.TLS,
        gateway.MigrateFlag.COMPRESSED,
    ):
        assert flags & flag
    # The guide's defaults: 27 + 512 (LIVE|P2P|PERSIST|UNDEFINE|UNSAFE), +131072 PARALLEL.
    assert gateway.MigrationSpec(dconnuri="x", unsafe=True).flags() == 27 + 512
    params = spec.params()
    assert params[gateway.MigrateParam.BANDWIDTH] == 500
    assert params[gateway.MigrateParam.MIGRATE_DISKS] == ["vda"]
    assert params[gateway.MigrateParam.PARALLEL_CONNECTIONS] == 4
    assert params[gateway.MigrateParam.COMPRESSION] == "zstd"


def test_it_names_the_file_or_device_behind_each_disk():
    from hosts.gateway.domain_xml import disk_files

    # The network disk has neither; the empty CD-ROM has no source at all.
    assert disk_files(DOMAIN_XML) == ["/var/lib/libvirt/images/db.qcow2", "/mnt/nfs/shared.raw", "/dev/sdb", None]


SCRATCH_XML = "<domain type='test'><name>scratch</name><memory>1024</memory><os><type>hvm</type></os></domain>"


def test_it_handles_a_domain_by_name_from_definition_to_removal():
    assert gateway.domain_status(TEST_URI, "scratch") is None
    gateway.define_domain(TEST_URI, SCRATCH_XML)
    try:
        defined = gateway.domain_status(TEST_URI, "scratch")
        assert (defined.state, defined.active, defined.persistent) == (gateway.DomainState.SHUTOFF, False, True)
        assert "<name>scratch</name>" in gateway.read_domain_xml(TEST_URI, "scratch")

        gateway.start_domain(TEST_URI, "scratch")
        assert gateway.domain_status(TEST_URI, "scratch").state == gateway.DomainState.RUNNING
        assert "scratch" in [d.name for d in gateway.list_domains(TEST_URI, active_only=True)]

        gateway.destroy_domain(TEST_URI, "scratch")
        assert "scratch" not in [d.name for d in gateway.list_domains(TEST_URI, active_only=True)]
        assert "scratch" in [d.name for d in gateway.list_domains(TEST_URI)]
        with pytest.raises(gateway.GatewayError) as caught:
            gateway.destroy_domain(TEST_URI, "scratch")
        assert caught.value.code == gateway.ErrorCode.OPERATION_INVALID
    finally:
        gateway.undefine_domain(TEST_URI, "scratch")
    assert gateway.domain_status(TEST_URI, "scratch") is None
    with pytest.raises(gateway.GatewayError) as caught:
        gateway.start_domain(TEST_URI, "scratch")
    assert caught.value.code == gateway.ErrorCode.NO_DOMAIN


def test_it_defines_a_dir_pool_once_and_refreshes_it(tmp_path):
    gateway.ensure_dir_pool(TEST_URI, "scratch-pool", str(tmp_path))
    gateway.ensure_dir_pool(TEST_URI, "scratch-pool", str(tmp_path))  # already there: nothing to do
    gateway.refresh_pool(TEST_URI, "scratch-pool")
    with gateway.connection(TEST_URI) as conn:
        pool = conn.storagePoolLookupByName("scratch-pool")
        assert pool.isActive() and pool.autostart() and pool.isPersistent()
        pool.destroy()
        pool.undefine()
    with pytest.raises(gateway.GatewayError) as caught:
        gateway.refresh_pool(TEST_URI, "scratch-pool")
    assert caught.value.code == gateway.ErrorCode.NO_STORAGE_POOL


def test_it_tells_whether_a_daemon_answers_and_warms_what_supports_it():
    assert gateway.answers(TEST_URI)
    assert not gateway.answers("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    # The test driver has no domain capabilities: the failure comes as a GatewayError.
    with pytest.raises(gateway.GatewayError) as caught:
        gateway.warm(TEST_URI, arch="x86_64", virttype="qemu")
    assert caught.value.code == gateway.ErrorCode.NO_SUPPORT
