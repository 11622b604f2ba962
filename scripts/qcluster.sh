#!/usr/bin/env bash
# Run one django-q2 cluster (`gpu` or `maintenance`) as the Procfile does.
#
# A cluster stops cleanly when its main process gets SIGTERM, but hangs when the signal
# reaches all of its processes at once, which is what process managers and a terminal's
# Ctrl-C do. So the cluster runs in a session of its own, and this script passes
# SIGTERM and SIGINT on to its main process only, after telling the workers (below).
# A cluster still busy after STOP_SECONDS (a worker loading a model, say) is killed with
# all its processes: nothing outlives this script, and the guard puts its job back.
set -u
cd "$(dirname "$0")/.."
# Under honcho's 5 s between SIGTERM and SIGKILL, which would leave a busy cluster behind.
STOP_SECONDS="${STOP_SECONDS:-3}"
# The cluster's workers watch this file: once it exists they claim nothing more and hand
# a running job back to its place in the queue (or finish it, if it ends within
# IMAGEGEN_STOP_GRACE_SECONDS), so the stop below finds them idle.
export IMAGEGEN_STOP_FILE="${DATA_DIR:-var}/run/qcluster-$1-$$.stop"
mkdir -p "$(dirname "$IMAGEGEN_STOP_FILE")"
rm -f "$IMAGEGEN_STOP_FILE"
Q_CLUSTER_NAME="$1" setsid .venv/bin/python manage.py qcluster &
cluster=$!

stop() {
  touch "$IMAGEGEN_STOP_FILE"
  kill -TERM "$cluster" 2>/dev/null
  for _ in $(seq "$((STOP_SECONDS * 10))"); do
    kill -0 "$cluster" 2>/dev/null || break
    sleep 0.1
  done
  # Whatever is left (a worker still busy with a job) goes now.
  kill -KILL -- "-$cluster" 2>/dev/null
  return 0
}
trap stop TERM INT
# If the cluster's main process ends by itself, its workers go with it.
trap 'kill -KILL -- "-$cluster" 2>/dev/null; rm -f "$IMAGEGEN_STOP_FILE"' EXIT

wait "$cluster"
status=$?
# A signal ends the first wait early; the second collects the cluster's exit.
if kill -0 "$cluster" 2>/dev/null; then
  wait "$cluster"
  status=$?
fi
exit "$status"
