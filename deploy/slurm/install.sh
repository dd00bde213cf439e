#!/bin/bash
# Install Debian's Slurm (22.05 on Debian 12) with munge, slurmrestd and the JWT plugin,
# without starting any daemon. Run as root; safe to run again (apt-get skips what is there).
#
#   deploy/slurm/install.sh && deploy/slurm/up.sh
#
# Verified recipe: ../shared/notes/slurm-prometheus.md (Recipe 1). Prometheus is not ours.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: must run as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive

# Maintainer scripts call invoke-rc.d / deb-systemd-invoke to start munge, slurmctld and slurmd.
# In a container without systemd that fails or starts daemons with the wrong config; on a
# systemd host it starts units that would fight with up.sh. policy-rc.d=101 forbids both.
if [ ! -x /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
fi

# slurm-wlm-jwt-plugin provides auth_jwt.so: rest_auth/jwt alone is not enough for slurmrestd.
# curl is used by up.sh to wait for slurmrestd; util-linux gives setpriv (essential, but be sure).
PKGS=(munge slurmctld slurmd slurm-client slurmrestd slurm-wlm-jwt-plugin curl util-linux)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install.sh: all packages present: $(dpkg-query -W -f='${Version}' slurmctld) slurm"
  exit 0
fi

# A fresh CI image often has empty apt lists; update only then (or when install fails).
if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
  apt-get update -q
fi
if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
echo "install.sh: installed ${missing[*]}; slurm $(dpkg-query -W -f='${Version}' slurmctld)"
