"""Every view: anonymous → login, wrong role → 403, right role → answered."""

import pytest
from django.urls import reverse

from hosts.models import Host
from migrator.models import Migration


@pytest.fixture
def objects(test_host):
    vm = test_host.vms.get(name="test")
    other = Host.objects.create(name="other", uri="test:///default?other", enabled=True)
    migration = Migration.objects.create(
        vm_uuid="00000000-0000-0000-0000-000000000042",
        vm_name="old",
        source_name="a",
        source_uri="x",
        destination_name="b",
        destination_uri="y",
        storage_class="shared",
        started_by_username="someone",
        state="succeeded",
    )
    return {"host": test_host, "vm": vm, "other": other, "migration": migration}


def pages(o):
    """(method, url, roles allowed) for every view."""
    h, vm, m = o["host"].pk, o["vm"].pk, o["migration"].pk
    return [
        ("get", reverse("home"), {"operator", "auditor", "security", "admin"}),
        ("get", reverse("hosts:list"), {"operator", "auditor", "security", "admin"}),
        ("get", reverse("hosts:detail", args=[h]), {"operator", "auditor", "security", "admin"}),
        ("get", reverse("hosts:vm", args=[vm]), {"operator", "auditor", "security", "admin"}),
        ("get", reverse("hosts:add"), {"admin"}),
        ("get", reverse("hosts:edit", args=[h]), {"admin"}),
        ("get", reverse("hosts:remove", args=[h]), {"admin"}),
        ("post", reverse("hosts:test", args=[h]), {"operator", "admin"}),
        ("post", reverse("hosts:refresh", args=[h]), {"operator", "admin"}),
        ("post", reverse("hosts:vm_action", args=[vm]), {"operator", "admin"}),
        ("get", reverse("migrator:list"), {"operator", "auditor", "admin"}),
        ("get", reverse("migrator:detail", args=[m]), {"operator", "auditor", "admin"}),
        ("post", reverse("migrator:cancel", args=[m]), {"operator", "admin"}),
        ("get", reverse("migrator:new"), {"operator", "admin"}),
        ("get", reverse("migrator:new") + f"?vm={vm}", {"operator", "admin"}),
    ]


ROLES = ["operator", "auditor", "security", "admin", "outsider"]


def test_it_sends_anonymous_users_to_the_login_page(client, objects):
    for method, url, _allowed in pages(objects):
        response = getattr(client, method)(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login")), url


@pytest.mark.parametrize("role", ROLES)
def test_it_answers_each_role_as_allowed(login, objects, role):
    client = login(role)
    for method, url, allowed in pages(objects):
        data = {"action": "reboot"} if "action" in url else {}
        response = getattr(client, method)(url, data)
        if role in allowed:
            assert response.status_code in (200, 302), (role, url, response.status_code)
        else:
            assert response.status_code == 403, (role, url, response.status_code)


def test_it_logs_in_and_out(client, users):
    response = client.post(reverse("login"), {"username": "olivia", "password": "pass-word-123"})
    assert response.status_code == 302
    assert client.get(reverse("home")).status_code == 200
    client.post(reverse("logout"))
    assert client.get(reverse("home")).status_code == 302


def test_it_carries_every_parameter_from_review_to_start(objects):
    """The review page resends the checked parameters, so Start migrates what was reviewed."""
    from migrator.forms import MigrationForm
    from migrator.wizard import _post_items

    form = MigrationForm(vm=objects["vm"])
    form.cleaned_data = {
        "destination": objects["other"],
        "disks": ["vda"],
        "max_downtime_ms": 700,
        "auto_converge": True,
        "unsafe": False,
        "timeout_s": None,
        "compression": "",
    }
    items = _post_items(form, {"bandwidth_mib_s": 9})
    assert ("destination", str(objects["other"].pk)) in items
    assert ("disks", "vda") in items and ("max_downtime_ms", "700") in items
    assert ("auto_converge", "on") in items and not any(name == "unsafe" for name, _ in items)
    assert ("bandwidth_mib_s", "9") in items and ("timeout_s", "") in items
