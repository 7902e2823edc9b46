#!/bin/bash
# Brings the demo lab up, registers its hosts, creates demo users and runs
# the dashboard (Daphne + an RQ worker) until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
# The demo lab's settings: a demo secret key and key file, the lab's sockets (README, "Running in production").
export DEMO="${DEMO:-1}"
PORT=${PORT:-8000}
BIND=${BIND:-127.0.0.1}
PY=.venv/bin/python

if [ "$(id -u)" -ne 0 ]; then
  echo "The demo lab creates network namespaces and runs libvirtd: run 'sudo make demo'." >&2
  exit 1
fi
$PY manage.py lab up --register

PASSWORD_FILE=var/demo-password
[ -s "$PASSWORD_FILE" ] || $PY -c "import secrets; print(secrets.token_urlsafe(12))" > "$PASSWORD_FILE"
PASSWORD=$(cat "$PASSWORD_FILE")
$PY manage.py create_user admin --role superuser --password "$PASSWORD" >/dev/null
$PY manage.py create_user operator --role operator --password "$PASSWORD" >/dev/null
$PY manage.py create_user auditor --role auditor --password "$PASSWORD" >/dev/null
$PY manage.py create_user security --role security-admin --password "$PASSWORD" >/dev/null

$PY manage.py worker > var/worker.log 2>&1 &
WORKER=$!
trap 'kill $WORKER 2>/dev/null; wait $WORKER 2>/dev/null' EXIT INT TERM

cat <<MSG

  VM Migrator is running at http://$BIND:$PORT/
  Log in as admin / $PASSWORD   (also operator, auditor, security with the same password)
  Worker log: var/worker.log.  Stop with Ctrl-C; remove the lab with: make lab-down

MSG
.venv/bin/daphne -b "$BIND" -p "$PORT" migrator.asgi:application
