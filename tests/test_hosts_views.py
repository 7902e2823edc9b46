from django.urls import reverse

from hosts.models import Host
from migrator.audit.models import AuditEvent
from migrator.models import Migration

from .test_migration_model import make_migration


def test_it_adds_a_test_driver_host_and_shows_its_vms_with_disks(login):
    client = login("admin")
    response = client.post(
        reverse("hosts:add"),
        {"name": "t", "uri": "test:///default", "shared_prefixes": "/guest", "enabled": "on"},
        follow=True,
    )
    assert response.status_code == 200
    host = Host.objects.get(name="t")
    page = response.content.decode()
    assert "test" in page and "Shared storage" in page
    assert AuditEvent.objects.filter(action="host.added", object_id=str(host.pk)).exists()
    vm = host.vms.get(name="test")
    vm_page = client.get(reverse("hosts:vm", args=[vm.pk])).content.decode()
    assert "/guest/diskimage1" in vm_page and "vda" in vm_page


def test_it_rejects_a_bad_uri_with_a_plain_message(login):
    response = login("admin").post(reverse("hosts:add"), {"name": "x", "uri": "http://host", "enabled": "on"})
    assert response.status_code == 200
    assert "Use a libvirt URI such as qemu+ssh://" in response.content.decode()
    assert not Host.objects.filter(name="x").exists()


def test_it_rejects_relative_shared_prefixes(login):
    response = login("admin").post(
        reverse("hosts:add"), {"name": "x", "uri": "test:///default", "shared_prefixes": "mnt/nfs", "enabled": "on"}
    )
    assert "is not an absolute path" in response.content.decode()


def test_it_reports_an_unreachable_host_without_a_stack_trace(login):
    response = login("admin").post(
        reverse("hosts:add"), {"name": "down", "uri": "qemu+tcp://127.0.0.1:1/system", "enabled": "on"}, follow=True
    )
    page = response.content.decode()
    assert "Could not read down" in page and "Traceback" not in page
    assert Host.objects.get(name="down").inventory_error


def test_it_tests_the_connection(login, test_host):
    response = login("operator").post(reverse("hosts:test", args=[test_host.pk]), follow=True)
    assert "Connected to" in response.content.decode()


def test_it_refuses_lifecycle_actions_while_the_vm_migrates(login, test_host):
    vm = test_host.vms.get(name="test")
    migration = make_migration(vm_uuid=vm.uuid)
    response = login("operator").post(reverse("hosts:vm_action", args=[vm.pk]), {"action": "destroy"}, follow=True)
    page = response.content.decode()
    assert "is being migrated" in page and "refused" in page
    assert Host.objects.get(pk=test_host.pk).vms.get(name="test").state == "running"
    assert AuditEvent.objects.filter(action="vm.action_refused").exists()
    assert Migration.objects.get(pk=migration.pk).is_active


def test_it_runs_lifecycle_actions_when_idle(login, test_host):
    vm = test_host.vms.get(name="test")
    client = login("operator")
    client.post(reverse("hosts:vm_action", args=[vm.pk]), {"action": "destroy"})
    assert test_host.vms.get(uuid=vm.uuid).state == "shut off"
    client.post(reverse("hosts:vm_action", args=[vm.pk]), {"action": "start"})
    assert test_host.vms.get(uuid=vm.uuid).state == "running"


def test_it_removes_a_host_and_keeps_its_migrations(login, test_host):
    migration = make_migration(source=test_host, source_name=test_host.name, state="succeeded")
    client = login("admin")
    client.post(reverse("hosts:remove", args=[test_host.pk]))
    assert not Host.objects.filter(pk=test_host.pk).exists()
    migration = Migration.objects.get(pk=migration.pk)
    assert migration.source is None and migration.source_name == "testhost"
    assert client.get(reverse("migrator:detail", args=[migration.pk])).status_code == 200


def test_it_refuses_to_remove_a_host_with_a_running_migration(login, test_host):
    make_migration(source=test_host, source_name=test_host.name)
    response = login("admin").post(reverse("hosts:remove", args=[test_host.pk]), follow=True)
    assert "migrations in progress" in response.content.decode()
    assert Host.objects.filter(pk=test_host.pk).exists()


def test_it_warns_about_demo_settings_in_the_deploy_check(settings):
    settings.DEBUG = True
    from migrator.checks import unsafe_production_settings

    ids = {w.id for w in unsafe_production_settings(None)}
    assert {"migrator.W001", "migrator.W002"} <= ids
