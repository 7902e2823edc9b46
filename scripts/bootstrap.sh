#!/bin/bash
# Sets up everything the dashboard needs on Debian 12, idempotently:
# system packages, Redis and PostgreSQL running, the virtualenv, the database.
set -euo pipefail
cd "$(dirname "$0")/.."
# The demo lab's settings: a demo secret key and key file, the lab's sockets (README, "Running in production").
export DEMO="${DEMO:-1}"
mkdir -p var

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PACKAGES=(
  python3 python3-venv python3-dev gcc pkg-config libvirt-dev
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
  busybox-static cpio iproute2 redis-server postgresql chromium chromium-driver
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  # Not libvirt-daemon-system: it pulls in systemd; the lab runs libvirtd itself.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Redis: RQ's queue and the Channels layer.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "Starting Redis on 127.0.0.1:6379"
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/vm-migrator.log
  for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# PostgreSQL: the second database the test suite runs on.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
  if [ -n "$version" ]; then
    echo "Starting PostgreSQL $version"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || $SUDO pg_ctlcluster "$version" main start
    for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.1; done
  fi
fi
as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}
if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  me=$(id -un)
  if ! as_postgres psql -tAc "select 1 from pg_roles where rolname='$me'" 2>/dev/null | grep -q 1; then
    as_postgres createuser --superuser "$me"
  fi
fi

# The virtualenv (.venv/), rebuilt only when requirements.txt changed.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f .venv/.requirements-installed ] || ! cmp -s requirements.txt .venv/.requirements-installed; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  cp requirements.txt .venv/.requirements-installed
fi

.venv/bin/python manage.py migrate --noinput -v0
