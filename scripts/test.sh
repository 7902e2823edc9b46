#!/bin/bash
# The whole suite, on SQLite and on PostgreSQL, with the lab up once.
set -euo pipefail
cd "$(dirname "$0")/.."
# The demo lab's settings: a demo secret key and key file, the lab's sockets (README, "Running in production").
export DEMO="${DEMO:-1}"
scripts/bootstrap.sh
export LAB_DOWN_AT_END=0
PYTEST=(.venv/bin/pytest -p no:cacheprovider --durations=20)

.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== tests on SQLite"
sqlite_status=0
# Lab tests run once, on PostgreSQL, but those whose outcome depends on the
# database (README, "What runs where").
mkdir -p var
DATABASE_URL="sqlite:///$PWD/var/test.sqlite3" "${PYTEST[@]}" -m "not lab or database" "$@" || sqlite_status=$?

echo "== tests on PostgreSQL"
pg_status=0
if pg_isready -q -h 127.0.0.1 -p 5432; then
  # The database-dependent lab tests first (README, "What runs where").
  DATABASE_URL="postgres://$(id -un)@127.0.0.1:5432/vmmigrator" "${PYTEST[@]}" -m database "$@" || pg_status=$?
  DATABASE_URL="postgres://$(id -un)@127.0.0.1:5432/vmmigrator" LAB_DOWN_AT_END=1 "${PYTEST[@]}" -m "not database" "$@" \
    || pg_status=$?
else
  echo "PostgreSQL is not running on 127.0.0.1:5432: cannot run the suite on it."
  pg_status=1
fi
.venv/bin/python manage.py lab down >/dev/null 2>&1 || true
echo "SQLite run exit $sqlite_status, PostgreSQL run exit $pg_status"
[ "$sqlite_status" -eq 0 ] && [ "$pg_status" -eq 0 ]
