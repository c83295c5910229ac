#!/usr/bin/env bash
# slurm_down.sh - stop the single-node Slurm cluster started by slurm_up.sh.
# Stops slurmd, slurmctld, slurmdbd, MariaDB and munged via their pid files (never by name).
# Running jobs are killed with slurmd (their state is kept in /var/spool/slurm*; slurmctld
# marks them failed/requeued when it comes back). Configs, spool dirs and the accounting DB are
# kept, so slurm_up.sh brings the same cluster back.
#   --keep-db     leave MariaDB running
#   --keep-munge  leave munged running
#   --cancel      scancel all jobs first (clean shutdown)
set -uo pipefail
KEEP_DB=0; KEEP_MUNGE=0; CANCEL=0
for a in "$@"; do
    case "$a" in
        --keep-db) KEEP_DB=1;; --keep-munge) KEEP_MUNGE=1;; --cancel) CANCEL=1;;
        *) echo "usage: $0 [--keep-db] [--keep-munge] [--cancel]" >&2; exit 2;;
    esac
done
log() { printf '[slurm_down %(%H:%M:%S)T] %s\n' -1 "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "[slurm_down] ERROR: must run as root" >&2; exit 1; }

rc=0
# stop NAME PIDFILE [TIMEOUT_S]
stop() {
    local name=$1 pf=$2 t=${3:-15} pid
    if [ ! -f "$pf" ]; then log "$name: no pid file ($pf), not running"; return 0; fi
    pid=$(cat "$pf" 2>/dev/null)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        log "$name: stale pid file, not running"; rm -f "$pf"; return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    local deadline=$((SECONDS + t))
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then
            log "$name did not exit after ${t}s, sending SIGKILL"; kill -KILL "$pid" 2>/dev/null; sleep 0.5
            kill -0 "$pid" 2>/dev/null && { echo "[slurm_down] ERROR: could not stop $name (pid $pid)" >&2; rc=1; }
            break
        fi
        sleep 0.25
    done
    rm -f "$pf"
}

if [ $CANCEL = 1 ] && command -v scancel >/dev/null && scontrol ping 2>/dev/null | grep -q 'is UP'; then
    ids=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${ids// }" ]; then log "cancelling jobs: $ids"; scancel $ids 2>/dev/null; sleep 2; fi
fi
stop slurmd    /run/slurm/slurmd.pid
stop slurmctld /run/slurm/slurmctld.pid
stop slurmdbd  /run/slurm/slurmdbd.pid
[ $KEEP_DB = 0 ]    && stop mariadb /run/mysqld/mysqld.pid 60
[ $KEEP_MUNGE = 0 ] && stop munged  /run/munge/munged.pid
[ $rc = 0 ] && log "done" || log "finished with errors"
exit $rc
