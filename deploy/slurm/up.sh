#!/bin/bash
# Start a single-node Slurm on loopback: munged, slurmctld, slurmd, and slurmrestd twice
# (unix socket with rest_auth/local, 127.0.0.1:6820 with rest_auth/jwt). Run as root after
# install.sh. No systemd needed. Idempotent: what already runs with the same config is left
# alone; a changed config restarts slurmctld and slurmd. A fresh JWT is written every run.
#
# Knobs (environment, all optional):
#   MEDCTL_SLURM_NODE       node name              (default: hostname -s)
#   MEDCTL_SLURM_CPUS       CPUs advertised        (default: nproc)
#   MEDCTL_SLURM_MEM_MB     RealMemory in MB       (default: 90% of MemTotal)
#   MEDCTL_SLURM_GPUS       count-only GPUs (gres) (default: 0 -> GPU requests are rejected)
#   MEDCTL_SLURM_API_USER   slurmrestd's user      (default: slurmapi)
#   MEDCTL_SLURMRESTD_PORT  JWT REST port          (default: 6820, bound to 127.0.0.1 only)
#   MEDCTL_SLURM_TOKEN_TTL  token lifespan in s    (default: 86400)
#
# Output for clients: /run/slurmrestd/token.env (root-only, KEY=VALUE lines):
#   SLURMRESTD_URL, SLURMRESTD_SOCKET, SLURMRESTD_USER, SLURMRESTD_API_VERSION, SLURM_JWT
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOST=$(hostname -s)   # slurmctld only runs on the host SlurmctldHost names
NODE=${MEDCTL_SLURM_NODE:-$HOST}
CPUS=${MEDCTL_SLURM_CPUS:-$(nproc)}
MEM=${MEDCTL_SLURM_MEM_MB:-$(awk '/MemTotal/{print int($2/1024*0.9)}' /proc/meminfo)}
GPUS=${MEDCTL_SLURM_GPUS:-0}
API_USER=${MEDCTL_SLURM_API_USER:-slurmapi}
PORT=${MEDCTL_SLURMRESTD_PORT:-6820}
TTL=${MEDCTL_SLURM_TOKEN_TTL:-86400}
RUN=/run/slurmrestd
JWT_KEY=/var/lib/slurm/slurmctld/jwt_hs256.key
# Every openapi/v0.0.x we have; the default set also loads dbv0.0.x, which is fatal without slurmdbd.
PLUGINS=${MEDCTL_SLURMRESTD_PLUGINS:-openapi/v0.0.36,openapi/v0.0.37,openapi/v0.0.38}
API_VERSION=${PLUGINS##*/}

die() { echo "up.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root"
command -v slurmctld >/dev/null || die "Slurm is not installed; run deploy/slurm/install.sh first"
# These values land in slurm.conf and on command lines: accept only what they can be.
[[ $NODE =~ ^[A-Za-z0-9][A-Za-z0-9-]{0,62}$ ]] || die "bad node name: $NODE"
[[ $HOST =~ ^[A-Za-z0-9][A-Za-z0-9-]{0,62}$ ]] || die "bad host name: $HOST (set one with hostname)"
[[ $API_USER =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "bad user name: $API_USER"
for v in CPUS MEM GPUS PORT TTL; do [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number: ${!v}"; done

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop_pidfile() {  # stop_pidfile FILE: SIGTERM, wait up to 10 s, then SIGKILL
  local pid
  alive "$1" || { rm -f "$1"; return 0; }
  pid=$(cat "$1"); kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}

# --- munge ------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then   # the postinst normally creates it
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge   # systemd-tmpfiles would create it
if ! alive /run/munge/munged.pid; then
  rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 1 40); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.25; done
munge -n </dev/null | unmunge >/dev/null || die "munge does not work"

# --- config -----------------------------------------------------------------------------
install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
install -d -m 0755 /etc/slurm
if [ ! -s "$JWT_KEY" ]; then
  dd if=/dev/urandom of="$JWT_KEY" bs=32 count=1 status=none
fi
chown slurm:slurm "$JWT_KEY"; chmod 0600 "$JWT_KEY"

GRES="" GRESTYPES=""
if [ "$GPUS" -gt 0 ]; then
  # Fake GPUs: jobs may ask for --gpus-per-node=N and are scheduled (CUDA_VISIBLE_DEVICES is
  # set) but see no device. Enough to try the control plane's GPU paths on a CPU box.
  GRES="Gres=gpu:$GPUS" GRESTYPES="GresTypes=gpu"
fi
conf=$(sed -e "s|@HOST@|$HOST|g" -e "s|@NODE@|$NODE|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM@|$MEM|g" \
  -e "s|@GRES@|$GRES|g" -e "s|@GRESTYPES@|$GRESTYPES|g" -e "s|@JWT_KEY@|$JWT_KEY|g" \
  "$HERE/slurm.conf.in")
gres_conf=""
if [ "$GPUS" -gt 0 ]; then
  # slurmd insists that a GPU's File is a character device; /dev/null's numbers (1,3) do.
  install -d -m 0755 /var/lib/slurm/fake-gpu
  for i in $(seq 0 $((GPUS - 1))); do
    [ -c "/var/lib/slurm/fake-gpu/gpu$i" ] || mknod -m 0666 "/var/lib/slurm/fake-gpu/gpu$i" c 1 3
  done
  gres_conf="NodeName=$NODE Name=gpu File=/var/lib/slurm/fake-gpu/gpu[0-$((GPUS - 1))]"
fi

changed=0
if [ "$conf" != "$(cat /etc/slurm/slurm.conf 2>/dev/null)" ]; then
  printf '%s\n' "$conf" > /etc/slurm/slurm.conf.new && mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
  changed=1
fi
if [ "$gres_conf" != "$(cat /etc/slurm/gres.conf 2>/dev/null)" ]; then
  if [ -n "$gres_conf" ]; then printf '%s\n' "$gres_conf" > /etc/slurm/gres.conf; else rm -f /etc/slurm/gres.conf; fi
  changed=1
fi
if [ "$changed" -eq 1 ] && { alive /run/slurmctld.pid || alive /run/slurmd.pid; }; then
  echo "up.sh: configuration changed; restarting slurmctld and slurmd"
  stop_pidfile /run/slurmd.pid
  stop_pidfile /run/slurmctld.pid
fi

# --- daemons (they daemonise and write their own pid files) ------------------------------
# slurmctld runs as SlurmUser and cannot remove its pid file in /run; a stale one is harmless
# to us but breaks `apt-get remove slurmctld`, so clear it before starting.
alive /run/slurmctld.pid || { rm -f /run/slurmctld.pid; slurmctld; }
alive /run/slurmd.pid || { rm -f /run/slurmd.pid; slurmd -N "$NODE"; }

state=""
for i in $(seq 1 120); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
  case "$state" in
    idle|mixed|allocated|completing) break ;;
    # Drained or down by an earlier config or crash: we own this node, so bring it back.
    drain*|down*|inval*) [ $((i % 8)) -eq 0 ] && scontrol update nodename="$NODE" state=resume 2>/dev/null ;;
  esac
  sleep 0.25
done
case "$state" in
  idle|mixed|allocated|completing) ;;
  *) die "node $NODE is '$state' (see /var/log/slurm/slurmctld.log and slurmd.log)" ;;
esac

# --- slurmrestd -------------------------------------------------------------------------
# It refuses to run as root; jobs submitted through it run as the token's user.
id "$API_USER" >/dev/null 2>&1 || useradd -r -m -d "/var/lib/$API_USER" -s /usr/sbin/nologin "$API_USER"
install -d -o "$API_USER" -g "$API_USER" -m 0755 "$RUN"
if [ "$changed" -eq 1 ]; then stop_pidfile "$RUN/unix.pid"; stop_pidfile "$RUN/jwt.pid"; fi
# setpriv and env exec, so $! below is slurmrestd's own pid (a shell function here would
# leave $! pointing at a subshell, and down.sh would stop the wrong process).
# setsid: slurmrestd does not daemonize; its own session keeps it alive when the shell or
# process group that ran this script goes away (a CI step, a terminal closing).
AS_API=(setsid setpriv --reuid="$API_USER" --regid="$API_USER" --init-groups)
if ! alive "$RUN/unix.pid"; then
  rm -f "$RUN/rest.sock"
  # rest_auth/local works only on a unix socket; every request acts as $API_USER.
  "${AS_API[@]}" slurmrestd -s "$PLUGINS" -a rest_auth/local "unix:$RUN/rest.sock" \
    >>/var/log/slurm/slurmrestd-unix.log 2>&1 </dev/null &
  echo $! > "$RUN/unix.pid"
fi
if ! alive "$RUN/jwt.pid"; then
  # SLURM_JWT=daemon: without it slurmrestd rejects every client token (HTTP 401).
  "${AS_API[@]}" env SLURM_JWT=daemon slurmrestd -s "$PLUGINS" -a rest_auth/jwt "127.0.0.1:$PORT" \
    >>/var/log/slurm/slurmrestd-jwt.log 2>&1 </dev/null &
  echo $! > "$RUN/jwt.pid"
fi
ok=0
for _ in $(seq 1 80); do
  if [ -S "$RUN/rest.sock" ] && curl -s -o /dev/null "http://127.0.0.1:$PORT/"; then ok=1; break; fi
  sleep 0.25
done
[ "$ok" -eq 1 ] || die "slurmrestd did not come up (see /var/log/slurm/slurmrestd-*.log)"
# A slurmrestd that could not bind (port taken by a stray one) exits; do not let curl's
# answer from the stray one hide that.
sleep 0.3
for f in unix jwt; do
  alive "$RUN/$f.pid" || die "slurmrestd ($f) exited; see /var/log/slurm/slurmrestd-$f.log"
done

# --- token for clients (tests, a trial control plane) ------------------------------------
token=$(scontrol token username="$API_USER" lifespan="$TTL")
token=${token#SLURM_JWT=}
umask 077
cat > "$RUN/token.env.new" <<ENV
SLURMRESTD_URL=http://127.0.0.1:$PORT
SLURMRESTD_SOCKET=$RUN/rest.sock
SLURMRESTD_USER=$API_USER
SLURMRESTD_API_VERSION=$API_VERSION
SLURM_JWT=$token
ENV
mv "$RUN/token.env.new" "$RUN/token.env"

echo "up.sh: slurm $(sinfo -V | cut -d' ' -f2) node $NODE $state cpus=$CPUS mem=${MEM}M gpus=$GPUS;" \
  "slurmrestd http://127.0.0.1:$PORT + unix:$RUN/rest.sock; token in $RUN/token.env"
