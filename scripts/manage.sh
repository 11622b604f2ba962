#!/usr/bin/env bash
# manage.py with the same environment as `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
exec .venv/bin/python manage.py "$@"
