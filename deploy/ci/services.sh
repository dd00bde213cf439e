#!/usr/bin/env bash
# Installs and starts the real services the test suite uses, from nothing, on Debian 12 as
# root: PostgreSQL and Redis (usually already running on CI machines), Debian's Chromium for
# Playwright, CJK fonts for the OCR test images, and a single-node Slurm on loopback.
# Idempotent: safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive

# libgl1/libglib2.0-0: opencv (RapidOCR) needs them on slim systems.
PKGS="chromium fonts-noto-cjk fonts-wqy-zenhei gettext libgl1 libglib2.0-0"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# PostgreSQL and Redis are started before CI on these machines; start them if they are not.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
fi
if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
fi

if [ -x deploy/slurm/install.sh ]; then
  deploy/slurm/install.sh
  deploy/slurm/up.sh
fi
echo "services: ready"
