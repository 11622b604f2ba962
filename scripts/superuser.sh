#!/usr/bin/env bash
# An admin account, before or after the first `make run`: the database is set up first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
.venv/bin/python manage.py migrate --noinput --verbosity 0
exec .venv/bin/python manage.py createsuperuser "$@"
