"""/metrics: who may scrape it, and the figures it reads from the database
(outcomes, histograms, the queue per host, slots, hosts, dirty rates,
certificates), as valid Prometheus text; and the Grafana dashboard that
reads them."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from hosts.certificates import store as certstore
from hosts.models import Host
from migrator.api import metrics
from migrator.models import ApiToken, DirtyRateMeasurement, Migration, MigrationState
from tests import pki
from tests.api_helpers import anonymous, token_client
from tests.test_migration_model import make_migration

pytestmark = pytest.mark.django_db

URL = "/metrics"
DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"


def migration(**fields) -> Migration:
    fields.setdefault("vm_uuid", str(uuid.uuid4()))
    return make_migration(**fields)


@pytest.fixture
def operator_client(users):
    return token_client(users["operator"], "prometheus")


@pytest.fixture
def scrape(operator_client):
    """Read /metrics as Prometheus does, with an operator's token."""
    return lambda: operator_client.get(URL)


def families(response) -> dict:
    assert response.status_code == 200, response.content
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def samples(response) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) → value."""
    found = {}
    for family in families(response).values():
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found[(name, tuple(sorted(labels.items())))]


# ------------------------------------------------------------------ access


def test_anonymous_gets_401_saying_how_to_get_access():
    response = anonymous().get(URL)
    assert response.status_code == 401
    assert response["Content-Type"].startswith("text/plain")
    assert response["WWW-Authenticate"].startswith("Bearer")
    text = response.content.decode()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert "/account/tokens/" in text and "METRICS_ALLOWED_NETWORKS" in text


def test_a_token_of_a_user_without_a_role_gets_403(users):
    response = token_client(users["outsider"]).get(URL)
    assert response.status_code == 403
    assert "role" in response.content.decode()


@pytest.mark.parametrize("role", ["operator", "auditor", "security", "admin"])
def test_a_token_of_any_role_reads_the_metrics(users, role):
    client = token_client(users[role])
    response = client.get(URL)
    assert response.status_code == 200
    assert response["Content-Type"] == CONTENT_TYPE_LATEST
    assert response["Cache-Control"] == "no-store"
    assert "vm_migrator_migrations_total" in families(response)["vm_migrator_migrations"].samples[0].name


def test_a_scrape_records_the_tokens_use(operator_client):
    token = ApiToken.objects.get(name="prometheus")
    assert token.last_used_at is None
    assert operator_client.get(URL).status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_a_revoked_or_expired_token_gets_401(users, settings):
    revoked = token_client(users["operator"], "revoked")
    ApiToken.objects.get(name="revoked").revoke()
    expired = token_client(users["operator"], "expired")
    ApiToken.objects.filter(name="expired").update(expires_at=timezone.now() - dt.timedelta(minutes=1))
    # A token that does not work is refused even from an allowed network.
    settings.METRICS_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    for client in (revoked, expired):
        response = client.get(URL)
        assert response.status_code == 401
        assert "revoked or expired" in response.content.decode()


def test_a_malformed_bearer_header_gets_401():
    response = anonymous().get(URL, HTTP_AUTHORIZATION="Bearer")
    assert response.status_code == 401
    assert "Authorization: Bearer <token>" in response.content.decode()
    assert anonymous().get(URL, HTTP_AUTHORIZATION="Bearer vmm_not-a-token").status_code == 401


def test_the_address_allow_list_admits_without_a_token(settings):
    settings.METRICS_ALLOWED_NETWORKS = ["not-a-network", "10.20.0.0/16", "fd00:1::/64", "192.0.2.7"]
    for address in ("10.20.3.4", "fd00:1::9", "192.0.2.7", "::ffff:10.20.0.1"):
        response = anonymous().get(URL, REMOTE_ADDR=address)
        assert response.status_code == 200, address
        assert response["Content-Type"] == CONTENT_TYPE_LATEST
    for address in ("10.21.0.1", "192.0.2.8", "fd00:2::1", "127.0.0.1"):
        assert anonymous().get(URL, REMOTE_ADDR=address).status_code == 401, address


def test_with_no_allowed_networks_only_credentials_admit(settings):
    settings.METRICS_ALLOWED_NETWORKS = []
    assert anonymous().get(URL, REMOTE_ADDR="10.20.3.4").status_code == 401


def test_a_basic_auth_header_is_no_token_and_the_allow_list_still_applies(settings):
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    assert anonymous().get(URL, REMOTE_ADDR="10.1.1.1", HTTP_AUTHORIZATION="Basic Zm9vOmJhcg==").status_code == 200
    assert anonymous().get(URL, REMOTE_ADDR="11.1.1.1", HTTP_AUTHORIZATION="Basic Zm9vOmJhcg==").status_code == 401


def test_a_signed_in_user_with_a_role_reads_and_one_without_gets_403(login):
    assert login("auditor").get(URL).status_code == 200
    assert login("outsider").get(URL).status_code == 403


def test_only_reads_are_answered(operator_client):
    assert operator_client.post(URL).status_code == 405
    assert operator_client.head(URL).status_code == 200


# ------------------------------------------------------------------ figures


def test_outcomes_count_every_final_state(scrape):
    for _ in range(4):
        migration(state=MigrationState.SUCCEEDED)
    for _ in range(2):
        migration(state=MigrationState.FAILED)
    migration(state=MigrationState.CANCELLED)
    migration(state=MigrationState.RUNNING)
    migration(state=MigrationState.WAITING)
    migration(state=MigrationState.WAITING)
    migration(state=MigrationState.ATTENTION)

    found = samples(scrape())
    assert value(found, "vm_migrator_migrations_total", outcome="succeeded") == 4
    assert value(found, "vm_migrator_migrations_total", outcome="failed") == 2
    assert value(found, "vm_migrator_migrations_total", outcome="cancelled") == 1
    assert value(found, "vm_migrator_migrations_active", state="waiting") == 2
    assert value(found, "vm_migrator_migrations_active", state="running") == 1
    assert value(found, "vm_migrator_migrations_active", state="attention") == 1
    assert value(found, "vm_migrator_migrations_active", state="queued") == 0
    assert value(found, "vm_migrator_migrations_active", state="interrupted") == 0
    assert ("vm_migrator_migrations_active", (("state", "succeeded"),)) not in found


def test_histograms_of_succeeded_migrations_are_cumulative_with_count_and_sum(scrape):
    for seconds, downtime in ((3, 3), (7, 120), (45, 2000), (400, None), (9000, 40)):
        migration(
            state=MigrationState.SUCCEEDED,
            total_time_ms=seconds * 1000,
            downtime_ms=downtime,
            data_processed_bytes=seconds * 1_000_000,
        )
    migration(state=MigrationState.SUCCEEDED)  # settled by hand: no statistics
    migration(state=MigrationState.FAILED, total_time_ms=50, downtime_ms=5, data_processed_bytes=999)

    response = scrape()
    found = samples(response)
    duration = {
        labels[0][1]: v
        for (name, labels), v in found.items()
        if name == "vm_migrator_migration_duration_seconds_bucket"
    }
    assert duration == {
        "5.0": 1,
        "10.0": 2,
        "30.0": 2,
        "60.0": 3,
        "120.0": 3,
        "300.0": 3,
        "600.0": 4,
        "1200.0": 4,
        "1800.0": 4,
        "3600.0": 4,
        "7200.0": 4,
        "14400.0": 5,
        "+Inf": 5,
    }
    assert value(found, "vm_migrator_migration_duration_seconds_count") == 5
    assert value(found, "vm_migrator_migration_duration_seconds_sum") == pytest.approx(3 + 7 + 45 + 400 + 9000)

    downtime = {
        labels[0][1]: v
        for (name, labels), v in found.items()
        if name == "vm_migrator_migration_downtime_seconds_bucket"
    }
    assert downtime["0.005"] == 1 and downtime["0.025"] == 1 and downtime["0.05"] == 2
    assert downtime["0.25"] == 3 and downtime["2.5"] == 4 and downtime["+Inf"] == 4
    counts = [downtime[le] for le in sorted(downtime, key=lambda le: float(le))]
    assert counts == sorted(counts)
    assert value(found, "vm_migrator_migration_downtime_seconds_count") == 4
    assert value(found, "vm_migrator_migration_downtime_seconds_sum") == pytest.approx(2.163)

    assert value(found, "vm_migrator_migration_data_bytes_total") == (3 + 7 + 45 + 400 + 9000) * 1_000_000
    assert families(response)["vm_migrator_migration_duration_seconds"].type == "histogram"


def test_the_queue_per_host_waiting_oldest_wait_running_and_slots(settings, scrape):
    settings.MIGRATION_MAX_OUTGOING = 2
    settings.MIGRATION_MAX_INCOMING = 2
    settings.MIGRATION_MAX_TOTAL = 10
    Host.objects.create(name="a", uri="qemu:///a", max_outgoing=3)
    Host.objects.create(name="b", uri="qemu:///b", max_incoming=5)
    now = timezone.now()
    migration(state=MigrationState.WAITING, created_at=now - dt.timedelta(minutes=10))
    migration(state=MigrationState.WAITING, created_at=now - dt.timedelta(minutes=3))
    # Scheduled for later: it waits, but not for a slot yet.
    migration(
        state=MigrationState.WAITING,
        created_at=now - dt.timedelta(hours=5),
        not_before=now + dt.timedelta(hours=1),
    )
    # Scheduled an hour ago, created long before: it has waited an hour.
    migration(
        state=MigrationState.WAITING,
        source_name="b",
        destination_name="a",
        created_at=now - dt.timedelta(days=1),
        not_before=now - dt.timedelta(hours=1),
    )
    migration(state=MigrationState.RUNNING)
    migration(state=MigrationState.CANCELLING)
    migration(state=MigrationState.QUEUED)
    migration(state=MigrationState.QUEUED, source_name="gone", destination_name="b")
    migration(state=MigrationState.SUCCEEDED)

    found = samples(scrape())
    assert value(found, "vm_migrator_migrations_waiting", host="a") == 3
    assert value(found, "vm_migrator_migrations_waiting", host="b") == 1
    assert value(found, "vm_migrator_migrations_waiting", host="gone") == 0
    assert 600 <= value(found, "vm_migrator_oldest_wait_seconds", host="a") < 660
    assert 3600 <= value(found, "vm_migrator_oldest_wait_seconds", host="b") < 3660
    assert value(found, "vm_migrator_oldest_wait_seconds", host="gone") == 0
    assert value(found, "vm_migrator_migrations_running", host="a") == 2
    assert value(found, "vm_migrator_migrations_running", host="b") == 0

    assert value(found, "vm_migrator_host_slots", host="a", direction="outgoing") == 3
    assert value(found, "vm_migrator_host_slots", host="a", direction="incoming") == 2
    assert value(found, "vm_migrator_host_slots", host="b", direction="incoming") == 5
    # A deleted host's records still count, against the site's default limits.
    assert value(found, "vm_migrator_host_slots", host="gone", direction="outgoing") == 2
    assert value(found, "vm_migrator_host_slots_used", host="a", direction="outgoing") == 3
    assert value(found, "vm_migrator_host_slots_used", host="b", direction="incoming") == 4
    assert value(found, "vm_migrator_host_slots_used", host="gone", direction="outgoing") == 1
    assert value(found, "vm_migrator_host_slots_used", host="b", direction="outgoing") == 0
    assert value(found, "vm_migrator_site_slots") == 10
    assert value(found, "vm_migrator_site_slots_used") == 4


def test_hosts_by_state(scrape):
    now = timezone.now()
    Host.objects.create(name="up", uri="qemu:///1", inventory_refreshed_at=now)
    Host.objects.create(name="up2", uri="qemu:///2", inventory_refreshed_at=now)
    Host.objects.create(name="new", uri="qemu:///3")
    Host.objects.create(name="down", uri="qemu:///4", inventory_refreshed_at=now, inventory_error="no route")
    Host.objects.create(name="maint", uri="qemu:///5", inventory_refreshed_at=now, in_maintenance=True)
    Host.objects.create(name="off", uri="qemu:///6", enabled=False, in_maintenance=True)

    found = samples(scrape())
    assert {state: value(found, "vm_migrator_hosts", state=state) for state in metrics.HOST_STATES} == {
        "online": 2,
        "unknown": 1,
        "unreachable": 1,
        "maintenance": 1,
        "disabled": 1,
    }


def test_the_latest_dirty_rate_of_each_vm(scrape):
    now = timezone.now()
    host = Host.objects.create(name="a", uri="qemu:///a")

    def reading(vm: str, uid: str, mib_s: float, ago_s: int) -> None:
        DirtyRateMeasurement.objects.create(
            vm_uuid=uid,
            vm_name=vm,
            host=host,
            host_name="a",
            series=str(uuid.uuid4()),
            measured_at=now - dt.timedelta(seconds=ago_s),
            window_s=1,
            dirty_rate_mib_s=mib_s,
        )

    reading("web", "u-web", 10.0, 30)
    reading("web", "u-web", 2.5, 5)  # the latest
    reading("web", "u-web", 99.0, 300)  # older, written last
    reading('db "main"', "u-db", 1.0, 60)

    found = samples(scrape())
    rates = {
        dict(labels)["vm"]: v
        for (name, labels), v in found.items()
        if name == "vm_migrator_vm_dirty_rate_bytes_per_second"
    }
    assert rates == {"web": 2.5 * 1024 * 1024, 'db "main"': 1024 * 1024}
    assert value(
        found, "vm_migrator_vm_dirty_rate_measured_timestamp_seconds", vm="web", vm_uuid="u-web", host="a"
    ) == pytest.approx((now - dt.timedelta(seconds=5)).timestamp())


def test_certificate_expiry_days_with_escaped_labels(settings, tmp_path, scrape):
    from cryptography.fernet import Fernet

    settings.SECRETS_KEYS = [Fernet.generate_key().decode()]
    settings.TLS_PKI_DIR = str(tmp_path / "pki")
    host = Host.objects.create(name="host-a", uri="test:///default", migration_address="10.0.0.1")
    now = dt.datetime.now(dt.UTC)
    ca = pki.make_ca("Lab CA")
    ca_row = certstore.store_upload("ca", ca.pem, name='Lab "root" \\ CA')
    server = pki.make_server(
        ca, "10.0.0.1", "host-a", cn="host-a", not_before=now - pki.DAY, not_after=now + 20 * pki.DAY
    )
    server_row = certstore.store_upload("server", server.pem, ca=ca_row, host=host, name="host-a migration")

    response = scrape()
    text = response.content.decode()
    assert 'name="Lab \\"root\\" \\\\ CA"' in text
    found = samples(response)
    days = {
        dict(labels)["id"]: (dict(labels), v)
        for (name, labels), v in found.items()
        if name == "vm_migrator_certificate_expiry_days"
    }
    labels, left = days[str(server_row.pk)]
    assert labels == {
        "id": str(server_row.pk),
        "kind": "server",
        "name": "host-a migration",
        "subject": server_row.subject,
        "host": "host-a",
    }
    assert 19.9 < left <= 20
    labels, left = days[str(ca_row.pk)]
    assert labels["kind"] == "ca" and labels["name"] == 'Lab "root" \\ CA' and labels["host"] == ""
    assert 3649 < left <= 3650


def test_label_values_are_escaped_and_the_output_parses(scrape):
    Host.objects.create(name='we"ird\\host\nname', uri="qemu:///x")
    migration(state=MigrationState.WAITING, source_name='we"ird\\host\nname')
    found = samples(scrape())
    assert value(found, "vm_migrator_migrations_waiting", host='we"ird\\host\nname') == 1


def test_the_queries_do_not_grow_with_the_records(scrape):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert scrape().status_code == 200
        return len(captured)

    migration(state=MigrationState.SUCCEEDED, total_time_ms=1000, downtime_ms=10)
    queries()  # the token's first use is written once
    few = queries()
    assert few <= 10
    for i in range(30):
        migration(state=MigrationState.SUCCEEDED, total_time_ms=1000 * i, downtime_ms=i)
        migration(state=MigrationState.WAITING, source_name=f"h{i % 3}")
    assert queries() == few


def test_the_same_numbers_from_any_process():
    """Nothing is counted in memory: two collectors read the same database."""
    migration(state=MigrationState.SUCCEEDED, total_time_ms=1000)
    at = timezone.now()
    assert metrics.exposition(at) == metrics.exposition(at)


# ------------------------------------------------------------------ the Grafana dashboard


def exported_names(response) -> set[str]:
    names = set()
    for family in families(response).values():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_the_grafana_dashboard_is_valid_json_and_reads_only_exported_metrics(scrape):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    assert any(i["name"] == "DS_PROMETHEUS" and i["pluginId"] == "prometheus" for i in dashboard["__inputs"])

    exprs = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", []) if target.get("expr")
    ]
    exprs += [
        v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        for v in dashboard["templating"]["list"]
        if v.get("type") == "query"
    ]
    used = {name for expr in exprs for name in re.findall(r"\bvm_migrator_[a-z_]+", expr)}
    exported = exported_names(scrape())
    assert used and used <= exported, used - exported
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("outcome", "duration", "downtime", "waiting", "oldest", "slots", "dirty", "certificate", "hosts"):
        assert topic in titles, topic
