"""Settings for the migration dashboard, read from the environment.

Every value has a default that runs the demo with no configuration (SQLite,
local Redis). Production sets SECRET_KEY, DEBUG=False, ALLOWED_HOSTS and a
DATABASE_URL; `python manage.py check --deploy` warns about what is unsafe.
"""

import os
import sys
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: str) -> bool:
    return os.getenv(name, default).strip().lower() in ("1", "true", "yes", "on")


def envint(name: str, default: str) -> int:
    return int(os.getenv(name, default))


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.getenv(name, default).split(",") if item.strip()]


DEMO_SECRET_KEY = "demo-only-secret-key-change-me"
SECRET_KEY = os.getenv("SECRET_KEY", DEMO_SECRET_KEY)
DEBUG = envbool("DEBUG", "True")
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
    "migrator.audit",
    "hosts",
    "hosts.certificates",
    "migrator",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

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

# Under pytest, another Redis database and channel prefix: a demo's worker must
# never run a test's job, nor a test a demo's.
TESTING = "pytest" in sys.modules
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

SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", "False")
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", "False")

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

LAB_DIR = Path(os.getenv("LAB_DIR", str(BASE_DIR / ".lab")))
# Fernet key(s) that encrypt private keys at rest; comma-separated for rotation.
SECRETS_KEY_FILE = Path(os.getenv("SECRETS_KEY_FILE", str(BASE_DIR / "var" / "secrets.key")))
SECRETS_KEYS = envlist("SECRETS_KEYS", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.getenv("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}

BOOTSTRAP4 = {
    "css_url": {"url": STATIC_URL + "vendor/bootstrap/bootstrap.min.css"},
    "javascript_url": {"url": STATIC_URL + "vendor/bootstrap/bootstrap.bundle.min.js"},
    "jquery_url": {"url": STATIC_URL + "vendor/jquery/jquery.min.js"},
    "jquery_slim_url": {"url": STATIC_URL + "vendor/jquery/jquery.min.js"},
}

if os.path.exists(BASE_DIR / "migrator" / "local_settings.py"):
    from .local_settings import *  # noqa: F403
