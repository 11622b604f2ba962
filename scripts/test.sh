#!/usr/bin/env bash
# The suite on SQLite, then again on PostgreSQL + Redis.
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

echo "=== Tests on SQLite with the embedded defaults"
env -u DATABASE_URL -u REDIS_URL .venv/bin/python -m pytest "$@"

if .venv/bin/python scripts/services_up.py "$PG_URL" "$REDIS"; then
  echo "=== Tests on PostgreSQL + Redis"
  DATABASE_URL="$PG_URL" REDIS_URL="$REDIS" .venv/bin/python -m pytest "$@"
elif [ "${CI:-}" = "true" ] || [ -n "${TEST_DATABASE_URL:-}" ]; then
  echo "PostgreSQL or Redis is not answering, and this run requires them." >&2
  exit 1
else
  echo "=== PostgreSQL or Redis is not answering on localhost: that run was left out."
fi
