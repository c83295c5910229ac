#!/usr/bin/env bash
# slurm_up.sh - bring up a single-node Slurm cluster (slurmctld + slurmd + slurmdbd/MariaDB
# accounting, so that `sacct` and therefore submitit's job-state queries work) inside a
# root container without systemd (Debian 12 / Slurm 22.05 packages).
#
# Idempotent: installs what is missing, (re)writes configs only when their content changes,
# starts only daemons that are not running, restarts the Slurm daemons when their config
# changed, and finally checks the node is idle and a trivial sbatch job completes.
#
# Environment knobs:
#   SLURM_CLUSTER_NAME   (default prunelab)
#   SLURM_PARTITION      (default debug)
#   SLURM_UP_TIMEOUT     seconds to wait for each daemon / the node (default 60)
#   SLURM_UP_SMOKE=0     skip the final `sbatch --wrap hostname` smoke test
#   SLURM_UP_VENV        venv into which submitit is pip-installed if missing
#                        (default: none; prunelab depends on submitit itself)
#
# Exit status: 0 when the cluster is up and verified, non-zero with an "ERROR:" line otherwise.
set -euo pipefail

CLUSTER="${SLURM_CLUSTER_NAME:-prunelab}"
PARTITION="${SLURM_PARTITION:-debug}"
TIMEOUT="${SLURM_UP_TIMEOUT:-60}"
SMOKE="${SLURM_UP_SMOKE:-1}"
SCHED_PARAMS="${SLURM_SCHED_PARAMS:-batch_sched_delay=0,sched_interval=10,bf_interval=5}"
VENV="${SLURM_UP_VENV-}"

CONF_DIR=/etc/slurm
SLURM_CONF="$CONF_DIR/slurm.conf"
DBD_CONF="$CONF_DIR/slurmdbd.conf"
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS_FILE=/etc/slurm/.dbpass
MARIADB_CNF=/etc/mysql/mariadb.conf.d/90-slurm.cnf

log()  { printf '[slurm_up %(%H:%M:%S)T] %s\n' -1 "$*"; }
die()  { printf '[slurm_up] ERROR: %s\n' "$*" >&2; exit 1; }
show_log() { # show_log FILE  -> last lines of a log, to stderr, to help diagnose a failure
    [ -f "$1" ] && { echo "---- last lines of $1 ----" >&2; tail -n 25 "$1" >&2; echo "----" >&2; } || true
}
# wait_for SECONDS DESCRIPTION CMD...   -> polls CMD every 0.5 s until it succeeds
wait_for() {
    local secs=$1 what=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.5
    done
    return 0
}
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

# ---------------------------------------------------------------- 1. packages
need_pkgs=()
command -v sbatch     >/dev/null 2>&1 || need_pkgs+=(slurm-wlm)
command -v slurmctld  >/dev/null 2>&1 || need_pkgs+=(slurm-wlm)
command -v munged     >/dev/null 2>&1 || need_pkgs+=(munge)
command -v slurmdbd   >/dev/null 2>&1 || need_pkgs+=(slurmdbd)
command -v mariadbd   >/dev/null 2>&1 || need_pkgs+=(mariadb-server)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    pkgs=$(printf '%s\n' "${need_pkgs[@]}" | sort -u | tr '\n' ' ')
    log "installing packages: $pkgs"
    apt-get update -qq || die "apt-get update failed"
    # policy-rc.d in containers denies service starts; that is fine, we start daemons ourselves
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/tmp/slurm_up_apt.log 2>&1 \
        || { tail -n 20 /tmp/slurm_up_apt.log >&2; die "apt-get install $pkgs failed (log: /tmp/slurm_up_apt.log)"; }
else
    log "packages present: slurm-wlm munge slurmdbd mariadb-server ($(sinfo -V 2>/dev/null))"
fi

if [ -n "$VENV" ] && [ -x "$VENV/bin/python" ]; then
    if "$VENV/bin/python" -c 'import submitit' 2>/dev/null; then
        log "submitit present in $VENV"
    else
        log "pip installing submitit into $VENV"
        "$VENV/bin/pip" install -q submitit || die "pip install submitit failed"
    fi
fi

# ---------------------------------------------------------------- 2. munge
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null 2>&1; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/log/munge; chmod 0711 /var/lib/munge; chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if munge_ok; then
    log "munged already running"
else
    log "starting munged (as user munge)"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged || die "munged failed to start"
    wait_for "$TIMEOUT" munged munge_ok || { show_log /var/log/munge/munged.log; die "munge credential round-trip fails"; }
fi

# ---------------------------------------------------------------- 3. MariaDB (accounting storage)
mkdir -p /run/mysqld /var/log/mysql
chown mysql:mysql /run/mysqld; chown mysql:adm /var/log/mysql
MARIADB_CNF_CONTENT='# written by slurm_up.sh: values Slurm recommends for slurmdbd
[mysqld]
innodb_buffer_pool_size=1024M
innodb_lock_wait_timeout=900
log_error=/var/log/mysql/error.log
'
if [ "$(cat "$MARIADB_CNF" 2>/dev/null)" != "$(printf '%s' "$MARIADB_CNF_CONTENT")" ]; then
    printf '%s' "$MARIADB_CNF_CONTENT" >"$MARIADB_CNF"
    log "wrote $MARIADB_CNF (takes effect at next MariaDB start)"
fi
if [ ! -d /var/lib/mysql/mysql ]; then
    log "initialising MariaDB data dir"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/tmp/slurm_up_mariadb_install.log 2>&1 \
        || die "mariadb-install-db failed (/tmp/slurm_up_mariadb_install.log)"
fi
db_ok() { mariadb-admin ping >/dev/null 2>&1; }
if db_ok; then
    log "MariaDB already running"
else
    log "starting MariaDB"
    setsid -f /usr/sbin/mariadbd --user=mysql </dev/null >>/var/log/mysql/stdout.log 2>&1
    wait_for "$TIMEOUT" mariadb db_ok || { show_log /var/log/mysql/error.log; die "MariaDB did not come up within ${TIMEOUT}s"; }
fi
if [ ! -s "$DB_PASS_FILE" ]; then
    head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DB_PASS_FILE"
fi
chmod 600 "$DB_PASS_FILE"
DB_PASS=$(cat "$DB_PASS_FILE")
mariadb <<SQL || die "could not create the $DB_NAME database / $DB_USER user"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL

# ---------------------------------------------------------------- 4. Slurm configs
mkdir -p "$CONF_DIR" "$LOG_DIR" "$RUN_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"
HOST=$(hostname -s)
[ -n "$HOST" ] || die "hostname -s is empty"

# Node hardware: topology from `slurmd -C` (what slurmd will report), fall back to nproc.
HW=$(slurmd -C 2>/dev/null | head -n1 || true)
hw_field() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
CPUS=$(hw_field CPUs); SOCKETS=$(hw_field SocketsPerBoard); CORES=$(hw_field CoresPerSocket); THREADS=$(hw_field ThreadsPerCore)
if [ -z "$CPUS" ] || [ -z "$SOCKETS" ] || [ -z "$CORES" ] || [ -z "$THREADS" ]; then
    CPUS=$(nproc); NODE_TOPO="CPUs=$CPUS"
else
    NODE_TOPO="CPUs=$CPUS Boards=1 SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS"
fi
MEM_TOTAL=$(free -m | awk '/^Mem:/{print $2}')
# leave ~5% (at least 1 GiB) for the OS, MariaDB and the Slurm daemons
MEM_RESERVE=$(( MEM_TOTAL / 20 > 1024 ? MEM_TOTAL / 20 : 1024 ))
REAL_MEM=$(( MEM_TOTAL - MEM_RESERVE ))
[ "$REAL_MEM" -gt 512 ] || die "too little memory ($MEM_TOTAL MiB total)"
# a job that does not ask for memory gets this much per CPU (instead of the whole node)
DEF_MEM_PER_CPU=$(( REAL_MEM / CPUS < 2048 ? REAL_MEM / CPUS : 2048 ))

SLURM_CONF_CONTENT="# written by slurm_up.sh - single-node cluster for local testing
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in this container: processes are tracked via /proc, no CPU/memory confinement
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
ReturnToService=2
# submitit jobs ignore SIGTERM (they wait for SIGUSR2/requeue), so scancel only frees the CPUs
# after KillWait (default 30 s) when SIGKILL follows; 10 s keeps cancels snappy
KillWait=10
SchedulerType=sched/backfill
SchedulerParameters=${SCHED_PARAMS}
# accounting via slurmdbd (MariaDB) so that sacct works (submitit polls job state with sacct)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 $NODE_TOPO RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
"
DBD_CONF_CONTENT="# written by slurm_up.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
"
DBD_CHANGED=0; SLURM_CHANGED=0
if [ "$(cat "$DBD_CONF" 2>/dev/null)" != "$(printf '%s' "$DBD_CONF_CONTENT")" ]; then
    printf '%s' "$DBD_CONF_CONTENT" >"$DBD_CONF"; DBD_CHANGED=1; log "wrote $DBD_CONF"
fi
chown root:root "$DBD_CONF"; chmod 600 "$DBD_CONF"   # slurmdbd insists on 600 + owned by SlurmUser
if [ "$(cat "$SLURM_CONF" 2>/dev/null)" != "$(printf '%s' "$SLURM_CONF_CONTENT")" ]; then
    printf '%s' "$SLURM_CONF_CONTENT" >"$SLURM_CONF"; SLURM_CHANGED=1
    log "wrote $SLURM_CONF (node: $HOST $NODE_TOPO RealMemory=$REAL_MEM)"
else
    log "$SLURM_CONF unchanged"
fi
chmod 644 "$SLURM_CONF"

# stop_pidfile NAME PIDFILE -> TERM the daemon recorded in PIDFILE and wait for it to exit
stop_pidfile() {
    local name=$1 pf=$2 pid
    pid_alive "$pf" || return 0
    pid=$(cat "$pf"); log "restarting $name (pid $pid): config changed"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && { kill -9 "$pid" 2>/dev/null || true; }
    rm -f "$pf"
}
[ $DBD_CHANGED -eq 1 ] && stop_pidfile slurmdbd "$RUN_DIR/slurmdbd.pid"
if [ $SLURM_CHANGED -eq 1 ]; then
    stop_pidfile slurmctld "$RUN_DIR/slurmctld.pid"
    stop_pidfile slurmd "$RUN_DIR/slurmd.pid"
fi

# ---------------------------------------------------------------- 5. slurmdbd
dbd_ok() { sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }
if pid_alive "$RUN_DIR/slurmdbd.pid" && dbd_ok; then
    log "slurmdbd already running"
else
    pid_alive "$RUN_DIR/slurmdbd.pid" || {
        log "starting slurmdbd"
        slurmdbd || { show_log "$LOG_DIR/slurmdbd.log"; die "slurmdbd failed to start"; }
    }
    wait_for "$TIMEOUT" slurmdbd dbd_ok || { show_log "$LOG_DIR/slurmdbd.log"; die "slurmdbd not answering within ${TIMEOUT}s"; }
fi
if ! sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
    log "registering cluster $CLUSTER in the accounting database"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed"
fi

# ---------------------------------------------------------------- 6. slurmctld + slurmd
ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
if pid_alive "$RUN_DIR/slurmctld.pid" && ctld_ok; then
    log "slurmctld already running"
else
    if ! pid_alive "$RUN_DIR/slurmctld.pid"; then
        log "starting slurmctld"
        slurmctld || { show_log "$LOG_DIR/slurmctld.log"; die "slurmctld failed to start"; }
    fi
    wait_for "$TIMEOUT" slurmctld ctld_ok || { show_log "$LOG_DIR/slurmctld.log"; die "slurmctld not answering (scontrol ping) within ${TIMEOUT}s"; }
fi
if pid_alive "$RUN_DIR/slurmd.pid"; then
    log "slurmd already running"
else
    log "starting slurmd"
    slurmd || { show_log "$LOG_DIR/slurmd.log"; die "slurmd failed to start"; }
    wait_for "$TIMEOUT" slurmd pid_alive "$RUN_DIR/slurmd.pid" \
        || { show_log "$LOG_DIR/slurmd.log"; die "slurmd is not running (no live pid in $RUN_DIR/slurmd.pid after ${TIMEOUT}s)"; }
fi

node_state() { sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -n1; }
node_usable() { case "$(node_state)" in idle|mixed|allocated|completing) return 0;; *) return 1;; esac; }
deadline=$((SECONDS + TIMEOUT)); resumed=0
until node_usable; do
    st=$(node_state)
    case "$st" in
        *drain*|down*|fail*)
            if [ $resumed -eq 0 ] && [ $SECONDS -gt $((deadline - TIMEOUT + 3)) ]; then
                log "node $HOST is '$st' ($(sinfo -h -n "$HOST" -o '%E')), resuming it"
                scontrol update nodename="$HOST" state=resume 2>/dev/null || true
                resumed=1
            fi;;
    esac
    if [ $SECONDS -ge $deadline ]; then
        show_log "$LOG_DIR/slurmd.log"; show_log "$LOG_DIR/slurmctld.log"
        sinfo -N -l >&2 || true
        die "node $HOST not idle after ${TIMEOUT}s (state: '${st:-unknown}', reason: '$(sinfo -h -n "$HOST" -o '%E' 2>/dev/null)')"
    fi
    sleep 0.5
done
log "node $HOST is $(node_state): $(sinfo -h -o '%P %a %l %D %T %N' | tr -s ' ')"

# ---------------------------------------------------------------- 7. smoke test
if [ "$SMOKE" = 1 ]; then
    out=$(mktemp /tmp/slurm_up_smoke.XXXXXX.out)
    t0=$(date +%s.%N)
    jid=$(sbatch --parsable -J slurm_up_smoke -p "$PARTITION" -c 1 --mem=100M -t 1 -o "$out" --wrap 'hostname') \
        || die "sbatch failed"
    deadline=$((SECONDS + TIMEOUT)); state=""
    while :; do
        state=$(sacct -n -X -P -j "$jid" -o State 2>/dev/null | head -n1)
        case "$state" in COMPLETED) break;; FAILED*|CANCELLED*|TIMEOUT|NODE_FAIL|OUT_OF_ME*|BOOT_FAIL|DEADLINE)
            die "smoke job $jid ended in state $state (output: $out)";; esac
        [ $SECONDS -ge $deadline ] && die "smoke job $jid not COMPLETED after ${TIMEOUT}s (sacct state '${state}', squeue: $(squeue -h -j "$jid" -o '%T %r' 2>/dev/null))"
        sleep 0.2
    done
    t1=$(date +%s.%N)
    log "smoke test: sbatch --wrap hostname -> job $jid $state in $(awk "BEGIN{printf \"%.2f\", $t1-$t0}")s, output '$(cat "$out")'"
    rm -f "$out"
fi
log "cluster '$CLUSTER' is up (check: sinfo; scontrol ping; sacct -X | tail)"
