#!/usr/bin/env bash
# The suite on SQLite and on PostgreSQL + Redis, side by side.
#
# The second run uses TEST_DATABASE_URL and TEST_REDIS_URL, by default the local
# servers (postgres://postgres@127.0.0.1:5432/postgres, redis://127.0.0.1:6379/15).
# If they do not answer it is left out with a notice, except in CI (CI=true) or when
# TEST_DATABASE_URL is set, where that is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export SECRET_KEY="${SECRET_KEY:-tests-only-not-a-secret}"
PG_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
REDIS="${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}"

# The browser tests drive Debian's Chromium (never a downloaded browser build).
if [ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "=== Installing Chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "The browser tests need Chromium: run 'sudo apt-get install chromium' (or set CHROMIUM_PATH)." >&2
  fi
fi

# The speed mode's tests compile for real: torch.compile's CPU code needs a C++ compiler.
if ! command -v g++ >/dev/null; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "=== Installing a C++ compiler for torch.compile"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
  else
    echo "The speed mode's tests need a C++ compiler: run 'sudo apt-get install g++'." >&2
  fi
fi

# Each run has a data folder of its own (its SQLite files, media, locks); the models the
# tests build (the demo model, the tiny ones, their LoRAs) are shared, each published
# whole by a rename, and the static files are collected once, before either run starts.
MODELS="${IMAGEGEN_MODEL_CACHE:-$PWD/var/models}"
mkdir -p var
env -u DATABASE_URL -u REDIS_URL IMAGEGEN_MODEL_CACHE="$MODELS" .venv/bin/python manage.py collectstatic --noinput -v0

sqlite_run() {
  env -u DATABASE_URL -u REDIS_URL DATA_DIR="$PWD/var/test-sqlite" IMAGEGEN_MODEL_CACHE="$MODELS" \
    .venv/bin/python -m pytest "$@"
}
postgres_run() {
  DATABASE_URL="$PG_URL" REDIS_URL="$REDIS" DATA_DIR="$PWD/var/test-postgres" IMAGEGEN_MODEL_CACHE="$MODELS" \
    .venv/bin/python -m pytest "$@"
}

if .venv/bin/python scripts/services_up.py "$PG_URL" "$REDIS"; then
  # The two runs share nothing but the machine, and most of a test's time is spent
  # waiting (on a worker, a browser, a server): they run side by side, each into its
  # own log, shown whole when both have ended.
  echo "=== Tests on SQLite with the embedded defaults, and on PostgreSQL + Redis, side by side"
  sqlite_run "$@" > var/test-sqlite.log 2>&1 &
  sqlite_pid=$!
  postgres_run "$@" > var/test-postgres.log 2>&1 &
  postgres_pid=$!
  sqlite_status=0
  postgres_status=0
  wait "$sqlite_pid" || sqlite_status=$?
  wait "$postgres_pid" || postgres_status=$?
  echo "=== Tests on SQLite with the embedded defaults"
  cat var/test-sqlite.log
  echo "=== Tests on PostgreSQL + Redis"
  cat var/test-postgres.log
  echo "=== SQLite: $(tail -n 1 var/test-sqlite.log)"
  echo "=== PostgreSQL + Redis: $(tail -n 1 var/test-postgres.log)"
  [ "$sqlite_status" = 0 ] && [ "$postgres_status" = 0 ]
elif [ "${CI:-}" = "true" ] || [ -n "${TEST_DATABASE_URL:-}" ]; then
  echo "PostgreSQL or Redis is not answering, and this run requires them." >&2
  exit 1
else
  echo "=== Tests on SQLite with the embedded defaults"
  sqlite_run "$@"
  echo "=== PostgreSQL or Redis is not answering on localhost: that run was left out."
fi
