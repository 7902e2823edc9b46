import importlib.util

import pytest
from django.contrib.auth.models import Group, User

from hosts import inventory
from hosts.models import Host
from migrator.roles import AUDITORS, OPERATORS, SECURITY_ADMINS

pytest_plugins = ["tests.browser_fixtures", "tests.worker_fixtures"]
if importlib.util.find_spec("tests.lab_fixtures"):
    pytest_plugins.append("tests.lab_fixtures")

PASSWORD = "pass-word-123"


@pytest.fixture(autouse=True)
def audit_anchors_elsewhere(settings, tmp_path_factory):
    """The tests' audit anchors never land beside the demo's."""
    settings.AUDIT_ANCHOR_DIR = tmp_path_factory.mktemp("audit-anchors")


@pytest.fixture(autouse=True)
def api_rate_counts_cleared(settings):
    """Each test starts with no API requests counted against its rate limits."""
    import redis

    prefix = settings.CACHES["api"]["KEY_PREFIX"]
    client = redis.Redis.from_url(settings.CACHES["api"]["LOCATION"])
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    # Production's PBKDF2 costs ~0.3 s per user; tests make many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_user(username: str, *roles: str, superuser: bool = False) -> User:
    user = User.objects.create_user(username, password=PASSWORD, is_superuser=superuser, is_staff=superuser)
    for role in roles:
        # get_or_create: transactional tests flush the groups the data migration made.
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


@pytest.fixture
def users(db):
    """An owner of each role, a superuser and an outsider with no role."""
    return {
        "operator": make_user("olivia", OPERATORS),
        "auditor": make_user("arthur", AUDITORS),
        "security": make_user("sam", SECURITY_ADMINS),
        "admin": make_user("root-admin", superuser=True),
        "outsider": make_user("nobody"),
    }


@pytest.fixture
def login(client, users):
    def as_(role: str):
        client.force_login(users[role])
        return client

    return as_


@pytest.fixture
def test_host(db):
    """libvirt's built-in test driver: real libvirt, no daemon needed."""
    host = Host.objects.create(name="testhost", uri="test:///default", shared_prefixes="/shared\n")
    inventory.refresh_host(host)
    return host


@pytest.fixture
def two_hosts(test_host):
    """The test host and a second one on the same driver (the pre-checks see one host)."""
    other = Host.objects.create(name="other", uri="test:///default")
    inventory.refresh_host(other)
    return test_host, other
