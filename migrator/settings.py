"""Settings for the migration dashboard, read from the environment.

Safe by default: outside the demo (DEMO=1, set by `make demo` and `make test`)
and the test suite, the dashboard refuses to start without a real SECRET_KEY
and SECRETS_KEYS, and it runs with DEBUG off, secure cookies and HSTS. The
demo keeps its conveniences: a demo secret key, a generated key file for
private keys, libvirt's test driver and the lab's sockets. README, "Running
in production", lists what to set.
"""

import os
import sys
from datetime import timedelta
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: str) -> bool:
    return os.getenv(name, default).strip().lower() in ("1", "true", "yes", "on")


def envint(name: str, default: str) -> int:
    return int(os.getenv(name, default))


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.getenv(name, default).split(",") if item.strip()]


# Under pytest, another Redis database and channel prefix: a demo's worker must
# never run a test's job, nor a test a demo's.
TESTING = "pytest" in sys.modules
# The demo lab and the test suite: the only places where the development
# defaults below apply.
DEMO = envbool("DEMO", "False")
DEVELOPMENT = DEMO or TESTING

DEMO_SECRET_KEY = "demo-only-secret-key-change-me"
SECRET_KEY = os.getenv("SECRET_KEY", "") or (DEMO_SECRET_KEY if DEVELOPMENT else "")
# Fernet key(s) that encrypt private keys at rest; comma-separated for
# rotation (the first encrypts, all decrypt; `manage.py rotate_secrets`
# re-encrypts under the first). Only the demo generates a key file.
SECRETS_KEYS = envlist("SECRETS_KEYS", "")
SECRETS_KEY_FILE = Path(os.getenv("SECRETS_KEY_FILE", str(BASE_DIR / "var" / "secrets.key")))


def _refuse_unsafe_start() -> None:
    missing = []
    if not SECRET_KEY or SECRET_KEY == DEMO_SECRET_KEY:
        missing.append("SECRET_KEY (a long random string)")
    if not SECRETS_KEYS:
        missing.append("SECRETS_KEYS (Fernet keys, comma-separated)")
    if missing:
        sys.exit(
            f"VM Migrator refuses to start: set {' and '.join(missing)} in the environment "
            "(README, 'Running in production'), or DEMO=1 for the demo lab."
        )


if not DEVELOPMENT:
    _refuse_unsafe_start()

DEBUG = envbool("DEBUG", "False")
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")
SITE_NAME = os.getenv("SITE_NAME", "VM Migrator")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_rq",
    "bootstrap4",
    "axes",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "migrator.audit",
    "hosts",
    "hosts.certificates",
    "migrator",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "migrator.middleware.RequestSizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its 429 page.
    "axes.middleware.AxesMiddleware",
]

# Login throttling (django-axes, stored in the database so every Daphne
# process and machine counts the same failures): AXES_FAILURE_LIMIT wrong
# passwords for one user name from one address lock that pair out for
# AXES_COOLOFF_MINUTES. A lock-out is audited (auth.locked_out).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = envint("AXES_FAILURE_LIMIT", "5")
AXES_COOLOFF_TIME = timedelta(minutes=envint("AXES_COOLOFF_MINUTES", "15"))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
# Behind a TLS proxy every request comes from the proxy: count the client's
# address from X-Forwarded-For instead (the proxy must overwrite it).
AXES_IPWARE_PROXY_COUNT = envint("AXES_IPWARE_PROXY_COUNT", "0") or None
if AXES_IPWARE_PROXY_COUNT:
    AXES_IPWARE_META_PRECEDENCE_ORDER = ("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR")
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"

ROOT_URLCONF = "migrator.urls"
ASGI_APPLICATION = "migrator.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "migrator.roles.roles_context",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.getenv("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=envint("DB_CONN_MAX_AGE", "0"),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # RQ workers and Daphne write to the same file; wait instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    # Writers take the lock when a transaction begins, so two processes never
    # chain audit events to the same predecessor.
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    # A file, not memory: the browser test's Daphne process must see the test data.
    DATABASES["default"]["TEST"] = {"NAME": os.getenv("TEST_DATABASE_FILE", str(BASE_DIR / "var" / "test-db.sqlite3"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.getenv("REDIS_URL", "redis://127.0.0.1:6379/15" if TESTING else "redis://127.0.0.1:6379/0")
RQ_QUEUES = {
    "default": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": envint("RQ_DEFAULT_TIMEOUT", "7200")},
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": os.getenv("CHANNELS_PREFIX", "test-asgi" if TESTING else "asgi")},
    }
}

# The API's rate limits count in Redis, shared by every web process and machine.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "api": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] + "-api",
    },
}

# The REST API (/api/v1/, README "The API"): tokens or the session, the
# browser's roles, JSON errors, rate limits per token.
API_RATE_READ = os.getenv("API_RATE_READ", "600/min")
API_RATE_WRITE = os.getenv("API_RATE_WRITE", "60/min")
# A ?wait= long-poll holds a request at most this long.
API_MAX_WAIT_S = envint("API_MAX_WAIT_S", "60")
# How long a create's Idempotency-Key is remembered.
IDEMPOTENCY_KEEP_HOURS = envint("IDEMPOTENCY_KEEP_HOURS", "24")
# /metrics (Prometheus) answers a request with an API token of any role, or
# from these networks (CIDRs, comma-separated; empty = token only).
METRICS_ALLOWED_NETWORKS = envlist("METRICS_ALLOWED_NETWORKS", "")
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "migrator.api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["migrator.api.permissions.ByRole"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["migrator.api.throttling.ReadRate", "migrator.api.throttling.WriteRate"],
    "DEFAULT_THROTTLE_RATES": {"read": API_RATE_READ, "write": API_RATE_WRITE},
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "migrator.api.errors.handle",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "VM Migrator API",
    "DESCRIPTION": "Live migration of libvirt/QEMU virtual machines: hosts, VMs, pre-checks, predictions, "
    "migrations, evacuations, the audit log and certificates. Authenticate with "
    "`Authorization: Bearer <token>` (a token from your API tokens page).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI and Redoc from the drf-spectacular-sidecar package: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "MigrationStateEnum": "migrator.models.MigrationState",
        "BatchStateEnum": "migrator.fleet.models.BatchState",
        "BatchKindEnum": "migrator.fleet.models.BatchKind",
        "ActionKindEnum": "migrator.models.ActionKind",
        "CertificateKindEnum": "hosts.certificates.models.CertificateKind",
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.getenv("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "var" / "static"

# Secure unless the demo or the tests (plain http on localhost) or DEBUG say otherwise.
_SECURE = str(not (DEVELOPMENT or DEBUG))
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", _SECURE)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", _SECURE)
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", _SECURE)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", "31536000" if _SECURE == "True" else "0")
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", "True")
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", "True")
SESSION_COOKIE_HTTPONLY = True
# Behind a TLS proxy: the header it sets on https requests, e.g.
# SECURE_PROXY_SSL_HEADER=HTTP_X_FORWARDED_PROTO (it must strip the client's own).
if os.getenv("SECURE_PROXY_SSL_HEADER"):
    SECURE_PROXY_SSL_HEADER = (os.environ["SECURE_PROXY_SSL_HEADER"], "https")
# Error pages and logs never show connection strings or keys, even with DEBUG on.
DEFAULT_EXCEPTION_REPORTER_FILTER = "migrator.errors.SettingsHidingFilter"

# Request bodies: a certificate is at most 64 KB; nothing the dashboard
# accepts is larger than these. REQUEST_MAX_BODY_BYTES refuses (413) any
# body above it, files included, before it is parsed.
REQUEST_MAX_BODY_BYTES = envint("REQUEST_MAX_BODY_BYTES", str(1024 * 1024))
DATA_UPLOAD_MAX_MEMORY_SIZE = envint("DATA_UPLOAD_MAX_MEMORY_SIZE", str(256 * 1024))
FILE_UPLOAD_MAX_MEMORY_SIZE = envint("FILE_UPLOAD_MAX_MEMORY_SIZE", str(256 * 1024))
DATA_UPLOAD_MAX_NUMBER_FIELDS = envint("DATA_UPLOAD_MAX_NUMBER_FIELDS", "500")

# Where libvirt connections give up: a dead host must not hang a page or a job.
LIBVIRT_CONNECT_TIMEOUT_S = envint("LIBVIRT_CONNECT_TIMEOUT_S", "10")
# How long one libvirt read may take before its host counts as not answering;
# long work (a migration, a dirty-rate measurement, creating images) is not cut by it.
LIBVIRT_CALL_TIMEOUT_S = envint("LIBVIRT_CALL_TIMEOUT_S", "10")
# libvirt's keepalive: a daemon silent for INTERVAL × (COUNT + 1) seconds has
# its connections closed, which ends any call stuck on it.
LIBVIRT_KEEPALIVE_INTERVAL_S = envint("LIBVIRT_KEEPALIVE_INTERVAL_S", "5")
LIBVIRT_KEEPALIVE_COUNT = envint("LIBVIRT_KEEPALIVE_COUNT", "3")
# How often the migration job reads libvirt's job statistics.
MIGRATION_SAMPLE_INTERVAL_S = float(os.getenv("MIGRATION_SAMPLE_INTERVAL_S", "0.5"))
INVENTORY_MAX_AGE_S = envint("INVENTORY_MAX_AGE_S", "300")
# A running migration's lease: its worker renews it every HEARTBEAT seconds;
# a record whose lease is older than LEASE seconds has lost its worker.
MIGRATION_HEARTBEAT_S = float(os.getenv("MIGRATION_HEARTBEAT_S", "5"))
MIGRATION_LEASE_S = float(os.getenv("MIGRATION_LEASE_S", "30"))
# No fall in the remaining data for this long is a stall (shown live and recorded).
MIGRATION_STALL_S = float(os.getenv("MIGRATION_STALL_S", "10"))
# A queued record whose RQ job vanished is queued again, at most this many times.
MIGRATION_REQUEUE_LIMIT = envint("MIGRATION_REQUEUE_LIMIT", "3")
# Concurrent migrations: out of one host, into one host (each host may
# override both) and over the whole site. A migration beyond a limit waits.
MIGRATION_MAX_OUTGOING = envint("MIGRATION_MAX_OUTGOING", "2")
MIGRATION_MAX_INCOMING = envint("MIGRATION_MAX_INCOMING", "2")
MIGRATION_MAX_TOTAL = envint("MIGRATION_MAX_TOTAL", "5")
# `manage.py worker` processes per machine: each runs one migration at a time.
MIGRATION_WORKER_PROCESSES = envint("MIGRATION_WORKER_PROCESSES", str(MIGRATION_MAX_TOTAL + 1))

# An open websocket re-checks its user's role and session this often (and at
# once on logout or a role change).
WEBSOCKET_RECHECK_S = float(os.getenv("WEBSOCKET_RECHECK_S", "15"))

LAB_DIR = Path(os.getenv("LAB_DIR", str(BASE_DIR / ".lab")))
# Host URIs (README, "Host URIs"): libvirt's test driver is for the demo and
# the tests only; qemu+unix:// sockets only below these directories.
LIBVIRT_ALLOW_TEST_DRIVER = envbool("LIBVIRT_ALLOW_TEST_DRIVER", str(DEVELOPMENT))
LIBVIRT_SOCKET_DIRS = [Path(d) for d in envlist("LIBVIRT_SOCKET_DIRS", str(LAB_DIR) if DEVELOPMENT else "")]

# The audit chain's HMAC key, kept out of the database. Empty: derived from
# SECRET_KEY (set AUDIT_KEY on its own to change SECRET_KEY without
# re-keying the log). Anchors (signed count + head hash) go to AUDIT_ANCHOR_DIR,
# written by the worker every AUDIT_ANCHOR_INTERVAL_S.
AUDIT_KEY = os.getenv("AUDIT_KEY", "")
AUDIT_ANCHOR_DIR = Path(os.getenv("AUDIT_ANCHOR_DIR", str(BASE_DIR / "var" / "audit-anchors")))
AUDIT_ANCHOR_INTERVAL_S = envint("AUDIT_ANCHOR_INTERVAL_S", "300")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.getenv("LOG_LEVEL", "INFO")},
    # django-axes logs every login at INFO; lock-outs are in the audit log.
    "loggers": {"django.channels.server": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}

BOOTSTRAP4 = {
    "css_url": {"url": STATIC_URL + "vendor/bootstrap/bootstrap.min.css"},
    "javascript_url": {"url": STATIC_URL + "vendor/bootstrap/bootstrap.bundle.min.js"},
    "jquery_url": {"url": STATIC_URL + "vendor/jquery/jquery.min.js"},
    "jquery_slim_url": {"url": STATIC_URL + "vendor/jquery/jquery.min.js"},
}

if os.path.exists(BASE_DIR / "migrator" / "local_settings.py"):
    from .local_settings import *  # noqa: F403
