#!/bin/bash
# Stop what up.sh started, by pid file. Jobs and job ids survive in
# /var/lib/slurm/slurmctld; pass --wipe to forget them too (the JWT key is kept).
set -uo pipefail
[ "$(id -u)" -eq 0 ] || { echo "down.sh: must run as root" >&2; exit 1; }
RUN=/run/slurmrestd

stop_pidfile() {  # SIGTERM, wait up to 10 s, then SIGKILL
  [ -s "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$1"
}

stop_pidfile "$RUN/jwt.pid"
stop_pidfile "$RUN/unix.pid"
stop_pidfile /run/slurmd.pid
stop_pidfile /run/slurmctld.pid   # also clears the stale file that breaks `apt-get remove`
stop_pidfile /run/munge/munged.pid   # munged takes 2-4 s to exit
rm -f "$RUN/rest.sock" "$RUN/token.env"

if [ "${1:-}" = "--wipe" ]; then
  find /var/lib/slurm/slurmctld -mindepth 1 ! -name jwt_hs256.key -delete
  rm -rf /var/lib/slurm/slurmd/*
  echo "down.sh: stopped; job state wiped"
else
  echo "down.sh: stopped"
fi
