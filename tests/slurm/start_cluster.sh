#!/usr/bin/env bash
# Start a real single-node SLURM cluster (with accounting) on this machine, for the cluster-profile test.
#
#   sudo tests/slurm/start_cluster.sh          # installs packages if missing, starts the daemons, waits for `idle`
#   source "${SLURM_STATE_DIR:-/tmp/mae-slurm}/env.sh"   # exports SLURM_CONF for sinfo/sbatch/sacct/snakemake
#   tests/slurm/stop_cluster.sh [--purge]
#
# Everything lives in one state dir ($SLURM_STATE_DIR, default /tmp/mae-slurm): configs, logs, pid files,
# spool, the munge socket and the MariaDB data dir. Nothing under /etc is written (the packages' post-install
# scripts create /etc/munge/munge.key and the service users; the daemons they would start need systemd and
# are not started) except the symlink /etc/slurm/slurm.conf -> $SLURM_STATE_DIR/etc/slurm.conf (created only
# where no slurm.conf exists; jobs' client commands need it) and munged's default socket dir /run/munge. Idempotent: a running, healthy cluster is left as it is.
#
# Why accounting (slurmdbd + MariaDB) and not "no accounting + squeue": snakemake-executor-plugin-slurm
# polls job status with `sacct` whenever the `sacct` binary exists (the slurm-client package always installs
# it); without slurmdbd every poll fails silently and Snakemake waits forever. With slurmdbd the plugin runs
# its default code path -- the one real clusters use -- and `sacct` keeps a record of every job for the test.
#
# Environment:
#   SLURM_STATE_DIR        state dir (default /tmp/mae-slurm)
#   MAE_SLURM_PORT_BASE    slurmctld port; slurmd, slurmdbd, mariadb use +1, +2, +3 (default 6817)
#   MAE_SLURM_NO_INSTALL=1 never call apt-get (fail if a package is missing)
#   MAE_SLURM_TIMEOUT      seconds to wait for each daemon / for the node to be idle (default 60)
set -euo pipefail

STATE=${SLURM_STATE_DIR:-/tmp/mae-slurm}
PORT_BASE=${MAE_SLURM_PORT_BASE:-6817}
CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_PORT=$((PORT_BASE + 3))
TIMEOUT=${MAE_SLURM_TIMEOUT:-60}
CLUSTER=maetest
PARTITION=debug
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)
DB_PASS=mae-slurm-test   # local test database bound to 127.0.0.1 only

say() { printf '[start_cluster] %s\n' "$*"; }
die() {
    printf '[start_cluster] error: %s\n' "$*" >&2
    exit 1
}
show_logs() {
    local f
    for f in "$STATE"/log/*.log; do
        [ -s "$f" ] || continue
        printf -- '--- last lines of %s ---\n' "$f" >&2
        tail -n 15 "$f" >&2
    done
}

# pid_alive FILE COMM: true if FILE holds the pid of a live process whose /proc/PID/comm is COMM.
pid_alive() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]
}

# wait_for DESCRIPTION COMMAND...: retry COMMAND every 0.5 s until it succeeds or $TIMEOUT s pass.
wait_for() {
    local what=$1 end=$((SECONDS + TIMEOUT))
    shift
    while [ "$SECONDS" -lt "$end" ]; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    show_logs
    die "timed out after ${TIMEOUT}s waiting for $what (logs in $STATE/log)"
}

# ---------------------------------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "must run as root (starts daemons as root/munge/mysql); run it with sudo or in a root CI container"
[ "$(uname -s)" = Linux ] || die "needs Linux (found $(uname -s))"

missing=()
for bin in slurmctld slurmd slurmdbd sacct sinfo munged mariadbd mariadb-install-db mariadb; do
    command -v "$bin" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
export PATH=$PATH:/usr/sbin:/sbin
if [ ${#missing[@]} -gt 0 ]; then
    [ "${MAE_SLURM_NO_INSTALL:-0}" = 1 ] && die "missing ${missing[*]} and MAE_SLURM_NO_INSTALL=1 (install: apt-get install ${PACKAGES[*]})"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get here (Debian/Ubuntu needed: apt-get install ${PACKAGES[*]})"
    say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"${TMPDIR:-/tmp}/mae-slurm-apt.log" 2>&1; then
        apt-get update -q >>"${TMPDIR:-/tmp}/mae-slurm-apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"${TMPDIR:-/tmp}/mae-slurm-apt.log" 2>&1 ||
            { tail -n 20 "${TMPDIR:-/tmp}/mae-slurm-apt.log" >&2; die "apt-get install ${PACKAGES[*]} failed (log: ${TMPDIR:-/tmp}/mae-slurm-apt.log)"; }
    fi
fi
for u in munge mysql; do id "$u" >/dev/null 2>&1 || die "system user '$u' does not exist (the $u package's post-install script creates it)"; done
[ -s /etc/munge/munge.key ] || {
    say "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
}

export SLURM_CONF=$STATE/etc/slurm.conf
P=$STATE/run
# The plugin's job step (srun inside the batch job) runs with every SLURM_* variable removed, SLURM_CONF
# included, so the client commands inside jobs need the config at the compiled-in default path.
link_conf() {
    local etc=/etc/slurm/slurm.conf
    if [ -L "$etc" ] || [ ! -e "$etc" ]; then
        install -d -m 0755 /etc/slurm
        ln -sfn "$SLURM_CONF" "$etc"
    elif ! cmp -s "$etc" "$SLURM_CONF"; then
        die "$etc exists and is not ours (a real SLURM config?); jobs would use it. Move it away to run the test cluster."
    fi
}

if pid_alive "$P/munged.pid" munged && pid_alive "$P/mariadbd.pid" mariadbd && pid_alive "$P/slurmdbd.pid" slurmdbd &&
    pid_alive "$P/slurmctld.pid" slurmctld && pid_alive "$P/slurmd.pid" slurmd &&
    sinfo -h -N -o '%T' 2>/dev/null | grep -qx idle; then
    link_conf
    say "already running (state dir $STATE); export SLURM_CONF=$SLURM_CONF"
    exit 0
fi
# Something is half up (or left over from a crash): stop what is ours, then start cleanly.
SLURM_STATE_DIR=$STATE "$HERE/stop_cluster.sh" >/dev/null
link_conf

T0=$(date +%s%N)
install -d -m 0755 "$STATE" "$STATE/etc" "$STATE/spool" "$STATE/spool/ctld" "$STATE/spool/d"
# pid files and logs of daemons running as root, munge and mysql: sticky + world-writable, like /tmp
install -d -m 1777 "$STATE/log" "$P"
install -d -o munge -g munge -m 0700 "$STATE/munge"
install -d -o mysql -g mysql -m 0750 "$STATE/db"
MUNGE_SOCKET=/run/munge/munge.socket.2 # AuthInfo=socket= is not honoured by the 22.05 clients
DB_SOCKET=$STATE/db/mysqld.sock

# --- configs ---------------------------------------------------------------------------------------------
HOST=$(hostname -s)
NODE_LINE=$(slurmd -C 2>/dev/null | head -n 1)
case $NODE_LINE in NodeName=*) ;; *) die "\`slurmd -C\` printed no NodeName line: '$NODE_LINE'" ;; esac
REAL_MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
[ -n "$REAL_MEM" ] || die "no RealMemory in \`slurmd -C\` output: '$NODE_LINE'"
NODE_LINE=$(sed "s/RealMemory=[0-9]*/RealMemory=$((REAL_MEM * 9 / 10))/" <<<"$NODE_LINE")
NODE_NAME=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$NODE_LINE")

cat >"$STATE/etc/slurm.conf" <<EOF
# Generated by tests/slurm/start_cluster.sh -- single-node test cluster, no systemd, no cgroups.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$P/slurmctld.pid
SlurmdPidFile=$P/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
$NODE_LINE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE_NAME Default=YES MaxTime=INFINITE State=UP
EOF

cat >"$STATE/etc/slurmdbd.conf" <<EOF
# Generated by tests/slurm/start_cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$P/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chown root:root "$STATE/etc/slurmdbd.conf"
chmod 0600 "$STATE/etc/slurmdbd.conf" # slurmdbd refuses a config readable by others

cat >"$STATE/env.sh" <<EOF
# source this file to talk to the test cluster
export SLURM_CONF=$SLURM_CONF
EOF

# --- 1. munged (as user munge, on the default socket that slurm's client commands use) ---------------------
if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munged already serves $MUNGE_SOCKET; using it"
else
    say "starting munged"
    install -d -o munge -g munge -m 0755 "$(dirname "$MUNGE_SOCKET")"
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --pid-file="$P/munged.pid" \
        --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munged.seed" ||
        { show_logs; die "munged failed to start"; }
    wait_for "munged" bash -c 'munge -n </dev/null | unmunge'
fi

# --- 2. mariadbd (does not daemonise: detached, bound to 127.0.0.1) ----------------------------------------
if [ ! -d "$STATE/db/mysql" ]; then
    say "initialising the accounting database in $STATE/db"
    mariadb-install-db --no-defaults --user=mysql --datadir="$STATE/db" --auth-root-authentication-method=socket \
        --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 ||
        { tail -n 20 "$STATE/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
fi
say "starting mariadbd"
setsid mariadbd --no-defaults --user=mysql --datadir="$STATE/db" --socket="$DB_SOCKET" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --pid-file="$P/mariadbd.pid" \
    --log-error="$STATE/log/mariadb.log" --skip-name-resolve --innodb-buffer-pool-size=32M \
    </dev/null >/dev/null 2>&1 &
wait_for "mariadbd" mariadb --no-defaults -S "$DB_SOCKET" -u root -e 'SELECT 1'
mariadb --no-defaults -S "$DB_SOCKET" -u root <<EOF || die "could not create the slurm database user"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF

# --- 3. slurmdbd -> 4. slurmctld -> 5. slurmd ------------------------------------------------------------------
say "starting slurmdbd"
slurmdbd || { show_logs; die "slurmdbd failed to start"; }
wait_for "slurmdbd" sacctmgr -n -P list cluster
say "starting slurmctld"
slurmctld -f "$SLURM_CONF" || { show_logs; die "slurmctld failed to start"; }
wait_for "slurmctld" scontrol ping
say "starting slurmd"
slurmd -f "$SLURM_CONF" || { show_logs; die "slurmd failed to start"; }
wait_for "node $NODE_NAME to be idle" bash -c "sinfo -h -N -o '%T' | grep -qx idle"
# slurmctld adds the cluster and the root account on first contact; make sure root may submit with -A root.
wait_for "the root account in slurmdbd" bash -c "sacctmgr -n -P show assoc where user=root format=account | grep -qx root"

ms=$((($(date +%s%N) - T0) / 1000000))
say "cluster '$CLUSTER' up in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s: $(sinfo -h -N -o '%N %T cpus=%c mem=%mMB')"
say "use it with: export SLURM_CONF=$SLURM_CONF   (or: source $STATE/env.sh)"
