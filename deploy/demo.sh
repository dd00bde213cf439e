#!/usr/bin/env bash
# `make demo`: a single-machine trial on the embedded defaults (SQLite, filesystem broker,
# in-process channel layer, local scheduler). Starts a real Celery worker + beat and the
# ASGI server, prints the URL and the demo logins. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
HOST=${1:-127.0.0.1}
PORT=${2:-8000}
BIN=.venv/bin
export DEBUG=1
mkdir -p var/log

$BIN/python manage.py migrate --noinput >/dev/null
$BIN/python manage.py collectstatic --noinput >/dev/null

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

$BIN/celery -A controlplane worker --beat --loglevel=INFO --concurrency=2 \
  --schedule var/celerybeat-schedule >var/log/worker.log 2>&1 &
pids+=($!)
$BIN/daphne -b "$HOST" -p "$PORT" controlplane.asgi:application >var/log/web.log 2>&1 &
pids+=($!)

for _ in $(seq 1 60); do
  curl -fs "http://$HOST:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.5
done

# The demo's main job runs through the real worker and prints its progress.
$BIN/python manage.py demo --url "http://$HOST:$PORT"

echo "Logs: var/log/web.log, var/log/worker.log. Press Ctrl-C to stop."
wait "${pids[1]}"
