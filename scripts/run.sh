#!/usr/bin/env bash
# Migrate, collect static files, then run the web server and the workers together.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
.venv/bin/python manage.py migrate --noinput
if [ -z "${REDIS_URL:-}" ]; then
  .venv/bin/python manage.py migrate --noinput --database channels
fi
.venv/bin/python manage.py collectstatic --noinput --verbosity 0
# Jobs a previous run left behind: retried or failed, and the queue rung again.
.venv/bin/python manage.py expire_stuck_jobs
echo "Imagegen on http://${WEB_HOST:-127.0.0.1}:${WEB_PORT:-8000}/ (Ctrl-C stops everything)"
# honcho would read .env too, but its values replace the real environment's; settings.py
# reads it (the real environment first) and env.sh exported what the Procfile uses.
exec .venv/bin/honcho --no-prefix start -f Procfile -e /dev/null
