#!/usr/bin/env bash
# bench/hardening.sh — issue 9: "`prepare` on a 5 GB copy and `verify` of a bundle with 64 WAL
# segments: time and peak RSS before and after the change, side by side; hardening must not
# cost more than 10% time, and verify's peak memory must stay under 64 MB whatever the bundle."
#
# One throwaway PostgreSQL 15 cluster (fsync on, wal_level replica). pgbench -i -s SCALE
# (340: about 5 GB), CHECKPOINT; then one backup made with the BEFORE binary:
#   start --id ID --store STORE; cp -a PGDATA COPY0; write and switch WAL until the window
#   holds SEGMENTS segments; stop --id ID (default --wal collect: the segments are in the bundle)
# Then, interleaved (before, after, before, after, ...), --runs times each:
#   verify --store STORE --id ID         (decompresses and hashes every WAL file of the bundle)
#   prepare --pgdata COPY --store STORE  (on a fresh `cp -a COPY0 COPY` each time, after sync)
# and reports medians, the after/before ratios and the peak RSS of each (/usr/bin/time -v).
# The last copy prepared by the AFTER binary is started as a check (it must recover).
#
# Usage: bench/hardening.sh --before BIN [--after BIN] [--scale N] [--segments N] [--runs N]
#                           [--tmpdir DIR] [--keep]
#   --after defaults to this tree's release build (built here).
# Everything it starts (postgres servers, agents) is stopped by pid on exit, also on failure.
set -euo pipefail

SCALE=340
SEGMENTS=64
RUNS=3
TMPBASE=${TMPDIR:-/tmp}
KEEP=0
BEFORE=
AFTER=
while [ $# -gt 0 ]; do
  case "$1" in
    --before) BEFORE=$2; shift 2 ;;
    --after) AFTER=$2; shift 2 ;;
    --scale) SCALE=$2; shift 2 ;;
    --segments) SEGMENTS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --tmpdir) TMPBASE=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "hardening.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
NAME=hardening.sh
PGBIN=/usr/lib/postgresql/15/bin
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
[ -n "$BEFORE" ] || die "--before BIN is required (the binary of the commit before the change)"
[ -x "$BEFORE" ] || die "--before $BEFORE is not an executable"
[ -x "$PGBIN/postgres" ] || die "PostgreSQL 15 missing in $PGBIN"
[ -n "${EPOCHREALTIME:-}" ] || die "needs bash >= 5"
bench_need_time
bench_room $((SCALE * 15 * 1024 * 4))

if [ -z "$AFTER" ]; then
  bench_build
  AFTER=$ROOT/target/release/pgbookend
fi
bench_workdir hardbench
cp "$BEFORE" "$WORK/before"; cp "$AFTER" "$WORK/after"
SHA_B=$(sha256sum "$WORK/before" | cut -c1-12); SHA_A=$(sha256sum "$WORK/after" | cut -c1-12)
RUNDIR=$WORK/run
STORE=$WORK/store
mkdir -p "$STORE"
bench_start_cluster -k -- -c max_wal_size=4GB
export PGBOOKEND_STATE_DIR=$WORK/state
maxv() { sort -g | tail -1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1024 }'; }

note "pgbench -i -s $SCALE"
"$PGBIN/pgbench" -i -q -s "$SCALE" >"$WORK/pgbench.log" 2>&1 || { tail "$WORK/pgbench.log" >&2; die "pgbench -i failed"; }
q -c "CHECKPOINT" >/dev/null
DATA_KB=$(du -sk --exclude=pg_wal "$WORK/data" | cut -f1)
ID=hard-$RANDOM
"$WORK/before" start --id "$ID" --store "$STORE" --run-dir "$RUNDIR" >"$WORK/start.out" 2>&1 ||
  { cat "$WORK/start.out" >&2; die "start failed"; }
apid=$("$WORK/before" status --id "$ID" --json --run-dir "$RUNDIR" | sed -n 's/.*"agent_pid": *\([0-9]*\).*/\1/p' | head -1)
[ -n "$apid" ] && AGENT_PIDS+=("$apid")
cp -a "$WORK/data" "$WORK/copy0"
note "writing WAL until the window holds $SEGMENTS segments"
q -c "CREATE TABLE walfill (x bigint, pad text)" >/dev/null
START_SEG=$(q -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
for _ in $(seq 1 "$((SEGMENTS * 2))"); do
  q -c "INSERT INTO walfill SELECT g, md5(g::text) FROM generate_series(1, 100000) g" >/dev/null
  CUR=$(q -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
  N=$(( 16#${CUR:16:8} + 16#${CUR:8:8} * 256 - 16#${START_SEG:16:8} - 16#${START_SEG:8:8} * 256 ))
  [ "$N" -ge "$SEGMENTS" ] && break
done
"$WORK/before" stop --id "$ID" --no-wait-archive --json --run-dir "$RUNDIR" >"$WORK/stop.json" 2>"$WORK/stop.err" ||
  { cat "$WORK/stop.json" "$WORK/stop.err" >&2; die "stop failed"; }
WSEG=$(sed -n 's/.*"wal_segments": *\([0-9]*\).*/\1/p' "$WORK/stop.json" | head -1)
sync
note "bundle holds $WSEG WAL segments; PGDATA $(mb "$DATA_KB")"

for side in before after; do : >"$WORK/verify.$side"; : >"$WORK/vhwm.$side"; : >"$WORK/prep.$side"; : >"$WORK/phwm.$side"; done
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq 1 "$RUNS"); do
  for side in before after; do
    timed "$WORK/$side" verify --store "$STORE" --id "$ID"
    [ "$RC" = 0 ] || { cat "$WORK/out.txt" "$WORK/err.txt" >&2; die "$side verify exited $RC"; }
    echo "$US" >>"$WORK/verify.$side"; echo "$HWM" >>"$WORK/vhwm.$side"
    rm -rf "$WORK/copy"; cp -a "$WORK/copy0" "$WORK/copy"; sync
    timed "$WORK/$side" prepare --pgdata "$WORK/copy" --store "$STORE"
    [ "$RC" = 0 ] || { cat "$WORK/out.txt" "$WORK/err.txt" >&2; die "$side prepare exited $RC"; }
    echo "$US" >>"$WORK/prep.$side"; echo "$HWM" >>"$WORK/phwm.$side"
    note "run $r $side: verify $(sec "$(tail -1 "$WORK/verify.$side")"), prepare $(sec "$US")"
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# Sanity: the copy prepared last (by the after binary) recovers.
as_owner "$PGBIN/pg_ctl" -D "$WORK/copy" -l "$WORK/server2.log" -w -t 300 start -o \
  "-c listen_addresses='' -c unix_socket_directories='$WORK/sock' -c port=5433 -c archive_mode=off" \
  >/dev/null || { tail -20 "$WORK/server2.log" >&2; die "the prepared copy did not start"; }
PM2_PID=$(head -1 "$WORK/copy/postmaster.pid")
for _ in $(seq 300); do [ "$(q -p 5433 -c 'SELECT pg_is_in_recovery()')" = f ] && break; sleep 0.2; done
BR=$(q -p 5433 -c 'SELECT count(*) FROM pgbench_branches')
[ "$BR" = "$SCALE" ] || die "the prepared copy has $BR branches, expected $SCALE"
stop_pm "$WORK/copy" "$PM2_PID"; PM2_PID=

VB=$(median <"$WORK/verify.before"); VA=$(median <"$WORK/verify.after")
PB=$(median <"$WORK/prep.before"); PA=$(median <"$WORK/prep.after")
echo
echo "## Hardening (issue 9): \`prepare\` on a $(mb "$DATA_KB") copy and \`verify\` of a $WSEG-segment bundle, before and after (PostgreSQL $PGV)"
echo
echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, work dir on $(df -T "$WORK" | awk 'NR == 2 { print $2 }'); before sha256 $SHA_B…, after sha256 $SHA_A…; medians of $RUNS interleaved runs; load average before / after: $LOAD_BEFORE / $LOAD_AFTER"
echo "- the last copy prepared by the after binary was started and recovered ($BR branches)"
echo
echo "| what | before | after | after / before | peak RSS before | peak RSS after |"
echo "|---|---|---|---|---|---|"
echo "| \`verify --store --id\` ($WSEG WAL segments) | $(sec "$VB") | $(sec "$VA") | $(ratio "$VA" "$VB") | $(mb "$(maxv <"$WORK/vhwm.before")") | $(mb "$(maxv <"$WORK/vhwm.after")") |"
echo "| \`prepare\` (fresh \`cp -a\` copy, after sync) | $(sec "$PB") | $(sec "$PA") | $(ratio "$PA" "$PB") | $(mb "$(maxv <"$WORK/phwm.before")") | $(mb "$(maxv <"$WORK/phwm.after")") |"
echo
echo "Raw µs (verify before / after; prepare before / after): $(paste -sd/ "$WORK/verify.before"); $(paste -sd/ "$WORK/verify.after"); $(paste -sd/ "$WORK/prep.before"); $(paste -sd/ "$WORK/prep.after")"
