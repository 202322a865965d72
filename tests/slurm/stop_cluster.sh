#!/usr/bin/env bash
# Stop the single-node test cluster started by tests/slurm/start_cluster.sh.
#
#   tests/slurm/stop_cluster.sh           # stop the daemons (keeps configs, logs and the accounting database)
#   tests/slurm/stop_cluster.sh --purge   # ... and delete the state dir
#
# Daemons are stopped by their pid files in $SLURM_STATE_DIR/run (default /tmp/mae-slurm/run), in the reverse
# start order, and only if /proc/PID/comm names the expected daemon -- never by process name, so other
# SLURM/MariaDB/munge processes on the machine are left alone. Idempotent: a stopped cluster is fine.
set -euo pipefail

STATE=${SLURM_STATE_DIR:-/tmp/mae-slurm}
PURGE=0
case ${1:-} in
--purge) PURGE=1 ;;
"") ;;
*)
    echo "usage: $0 [--purge]" >&2
    exit 2
    ;;
esac

say() { printf '[stop_cluster] %s\n' "$*"; }

# stop NAME: TERM the pid in $STATE/run/NAME.pid if its comm is NAME; wait up to 20 s, then KILL.
stop() {
    local name=$1 file=$STATE/run/$1.pid pid i
    [ -s "$file" ] || return 0
    pid=$(tr -dc '0-9' <"$file")
    if [ -z "$pid" ] || [ ! -r "/proc/$pid/comm" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
        rm -f "$file" # stale: the process is gone or the pid was reused by something else
        return 0
    fi
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || break
        sleep 0.5
    done
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
        say "$name (pid $pid) ignored TERM for 20 s; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

if [ -d "$STATE/run" ]; then
    for d in slurmd slurmctld slurmdbd mariadbd munged; do stop "$d"; done
fi
# the symlink start_cluster.sh made (only if it points into our state dir)
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$STATE/etc/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
fi
if [ "$PURGE" = 1 ] && [ -d "$STATE" ]; then
    say "removing $STATE"
    rm -rf -- "$STATE"
fi
exit 0
