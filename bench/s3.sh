#!/usr/bin/env bash
# bench/s3.sh — issue 6 benchmark of S3 stores, on a throwaway cluster and a real local S3
# server (moto_server, installed by scripts/install-deps):
#
#  1. Time of `pgbookend stop` storing a bundle with 64 WAL segments (--wal collect), side by
#     side in one run: into the local-directory store, into the S3 server (S3 only: staged in
#     $TMPDIR, uploaded in parts, every object verified, bundle.json last), and into both at
#     once. The WAL is filled with random bytes (gen_random_bytes), so zstd cannot shrink it:
#     the worst case for the upload's size and memory. Sides alternate each round.
#  2. Peak memory of the agent during that stop (VmHWM, sampled from /proc every 20 ms
#     until the agent exits). Target: <= 64 MB whatever the WAL size.
#  3. Resident memory (VmRSS) of an idle agent holding a backup, for each side (after the
#     WAL was written and a few heartbeats). Target: <= 10 MB.
#
# Usage: bench/s3.sh [--major N] [--rounds N] [--segments N] [--bin PATH] [--tmpdir DIR] [--keep]
#   --major N     server major (13-18; default 15, whose pgcrypto comes with Debian's contrib)
#   --rounds N    measured rounds, each storing one bundle per side (default 3)
#   --segments N  WAL segments per bundle (default 64)
#   --bin PATH    use this pgbookend binary instead of building target/release/pgbookend
#   --tmpdir DIR  where the cluster, stores, run dir and staging live (default $TMPDIR or /tmp)
#   --keep        keep the work directory (logs, samples)
#
# Everything it starts (postgres, moto_server, agents) is stopped by pid on exit, also on
# failure or Ctrl-C. Runs as root (servers run as `postgres` via runuser) or as a user.
set -euo pipefail

MAJOR=15
ROUNDS=3
SEGMENTS=64
BIN_ARG=
TMPBASE=${TMPDIR:-/tmp}
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --major) MAJOR=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --segments) SEGMENTS=$2; shift 2 ;;
    --bin) BIN_ARG=$2; shift 2 ;;
    --tmpdir) TMPBASE=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "s3.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$MAJOR" in 13|14|15|16|17|18) ;; *) echo "s3.sh: --major must be 13..18" >&2; exit 2 ;; esac

NAME=s3.sh
CLIENT_BIN=/usr/lib/postgresql/15/bin
if [ "$MAJOR" = 15 ] && [ -x /usr/lib/postgresql/15/bin/postgres ]; then
  PGBIN=/usr/lib/postgresql/15/bin
else
  PGBIN=${PGBOOKEND_PG_DIR:-/var/cache/pgbookend/pg}/$MAJOR/bin
fi
PSQL=$CLIENT_BIN/psql
MOTO_PID=
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
for f in "$PGBIN/initdb" "$PGBIN/pg_ctl" "$PGBIN/postgres" "$PSQL"; do
  if [ -z "$f" ] || [ ! -x "$f" ]; then echo "s3.sh: $f missing (run scripts/install-deps)" >&2; exit 4; fi
done
command -v curl >/dev/null || { echo "s3.sh: curl missing (run scripts/install-deps)" >&2; exit 4; }
[ -n "${EPOCHREALTIME:-}" ] || { echo "s3.sh: needs bash >= 5 (EPOCHREALTIME)" >&2; exit 4; }
# ---------------------------------------------------------------- build
if [ -n "$BIN_ARG" ]; then
  SRC_BIN=$BIN_ARG
else
  bench_build
  SRC_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/pgbookend
fi
[ -x "$SRC_BIN" ] || die "$SRC_BIN is not executable"

bench_workdir bench-s3
BIN=$WORK/pgbookend          # a private copy: a rebuild cannot swap it under a running agent
cp "$SRC_BIN" "$BIN"
BIN_SHA=$(sha256sum "$BIN" | cut -c1-12)
BIN_VERSION=$("$BIN" --version 2>/dev/null | head -1 || echo "?")
RUNDIR=$WORK/run
STORE=$WORK/bundles
mkdir -p "$WORK/samples" "$WORK/tmp" "$WORK/moto"
export PGBOOKEND_STATE_DIR=$WORK/state

# ---------------------------------------------------------------- S3 server
bench_start_moto
# Staging for S3-only stores goes to $TMPDIR: same disk as the local store.
export TMPDIR=$WORK/tmp
note "moto_server $MOTO_VERSION on $ENDPOINT (pid $MOTO_PID)"

# Removes every object of a prefix (the bucket is public-read-write: plain curl works).
s3_clear() {
  local k
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    mapfile -t keys < <(curl -sf "$ENDPOINT/bench?list-type=2&prefix=$1/" | grep -o '<Key>[^<]*</Key>' | sed 's/<[^>]*>//g')
    [ "${#keys[@]}" -gt 0 ] || return 0
    for k in "${keys[@]}"; do curl -sf -o /dev/null -X DELETE "$ENDPOINT/bench/$k"; done
  done
}

# ---------------------------------------------------------------- cluster
note "initdb: PostgreSQL $MAJOR from $PGBIN in $WORK/data"
bench_start_cluster -- -c max_wal_size=4GB -c wal_compression=off
printf 's3_retry_timeout = "2m"\n' >"$WORK/pgbookend.toml"
export PGBOOKEND_CONFIG=$WORK/pgbookend.toml
psql_q() { q -c "$1"; }
SERVER_VERSION=$(psql_q 'SHOW server_version' | awk '{ print $1; exit }')
psql_q "CREATE EXTENSION IF NOT EXISTS pgcrypto" >/dev/null
psql_q "CREATE TABLE w (b bytea); ALTER TABLE w ALTER COLUMN b SET STORAGE EXTERNAL" >/dev/null
note "server $SERVER_VERSION up (postmaster pid $PM_PID)"

# Writes random rows until the WAL has moved SEGMENTS-1 segments past the start segment.
fill_wal() { # fill_wal START_WAL_FILE
  local start=$1 cur
  local start_seg=$(( 16#${start:8:8} * 256 + 16#${start:16:8} ))
  while :; do
    cur=$(psql_q "SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
    [ $(( 16#${cur:8:8} * 256 + 16#${cur:16:8} - start_seg )) -ge $((SEGMENTS - 1)) ] && break
    psql_q "INSERT INTO w SELECT gen_random_bytes(1024) FROM generate_series(1, 4096)" >/dev/null
  done
  psql_q "TRUNCATE w" >/dev/null
}

json_field() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$2" | head -1; }
status_kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$2/status" 2>/dev/null || true; }

# One backup into SIDE's stores; records stop wall time, VmHWM of the agent, and sizes.
one() { # one SIDE ROUND
  local side=$1 n=$2 id="bench-$1-$2-$RANDOM" stores=() pid t0 t1 rc=0 hwm=0 h idle=""
  case "$side" in
    local) stores=(--store "$STORE") ;;
    s3) stores=(--store "s3://bench/$id") ;;
    both) stores=(--store "$STORE" --store "s3://bench/$id") ;;
  esac
  "$BIN" start --id "$id" "${stores[@]}" --heartbeat 1s --json --run-dir "$RUNDIR" >"$WORK/start.out" 2>"$WORK/start.err" ||
    { cat "$WORK/start.out" "$WORK/start.err" >&2; die "start failed"; }
  pid=$(json_field agent_pid "$WORK/start.out")
  [ -n "$pid" ] && AGENT_PIDS+=("$pid")
  fill_wal "$(json_field start_wal_file "$WORK/start.out")"
  sleep 2; idle=$(status_kb VmRSS "$pid")
  sync
  t0=${EPOCHREALTIME/./}
  "$BIN" stop --id "$id" --json --run-dir "$RUNDIR" >"$WORK/stop.out" 2>"$WORK/stop.err" &
  local stop_pid=$!
  while alive "$pid" && [ -e "/proc/$pid/status" ]; do
    h=$(status_kb VmHWM "$pid"); [ -n "$h" ] && [ "$h" -gt "$hwm" ] && hwm=$h
    sleep 0.02
  done
  wait "$stop_pid" || rc=$?
  t1=${EPOCHREALTIME/./}
  [ "$rc" = 0 ] || { cat "$WORK/stop.out" "$WORK/stop.err" >&2; die "stop ($side) exited $rc"; }
  cp "$RUNDIR/$id/agent.log" "$WORK/samples/agent-$side-$n.log" 2>/dev/null || true
  echo "$side $n $(( (t1 - t0) / 1000 )) $hwm $(json_field wal_segments "$WORK/stop.out") $(json_field wal_bytes_stored "$WORK/stop.out") ${idle:-0}" >>"$WORK/samples/results"
  note "$side round $n: stop $(( (t1 - t0) / 1000 )) ms, agent VmHWM $hwm kB, $(json_field wal_segments "$WORK/stop.out") segments"
  "$BIN" cleanup --run-dir "$RUNDIR" >/dev/null 2>&1 || true
  rm -rf "${STORE:?}/$id"
  s3_clear "$id"
}

SIDES=(local s3 both)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
note "binary $BIN_VERSION ($BIN_SHA); $ROUNDS rounds of ${SIDES[*]}, $SEGMENTS segments each"
one local 0 >/dev/null   # warm-up (not recorded below)
: >"$WORK/samples/results"
for n in $(seq 1 "$ROUNDS"); do
  for j in 0 1 2; do one "${SIDES[$(((n + j) % 3))]}" "$n"; done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
col() { awk -v s="$1" -v c="$2" '$1 == s { print $c }' "$WORK/samples/results"; }
max() { sort -n | tail -1; }
LOCAL_MS=$(col local 3 | median)
echo
echo "### S3 stores (issue 6): \`stop\` with $SEGMENTS WAL segments, local vs S3"
echo
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $BIN_VERSION (binary sha256 $BIN_SHA…), PostgreSQL $SERVER_VERSION, moto_server $MOTO_VERSION on 127.0.0.1,"
echo "$(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo) RAM, work dir on $(df -T "$WORK" | awk 'NR == 2 { print $2 }'),"
echo "load $LOAD_BEFORE -> $LOAD_AFTER. $ROUNDS rounds, sides rotated each round; WAL of random bytes (incompressible)."
echo
echo "| store | stop, median (ms) | vs local | agent VmHWM during stop, max | <= 64 MB | WAL stored |"
echo "|---|---|---|---|---|---|"
for s in "${SIDES[@]}"; do
  ms=$(col "$s" 3 | median); hwm=$(col "$s" 4 | max); seg=$(col "$s" 5 | max); bytes=$(col "$s" 6 | max)
  label=$s
  case "$s" in local) label="local directory" ;; s3) label="S3 only (staged in \$TMPDIR, uploaded)" ;; both) label="local + S3" ;; esac
  awk -v l="$label" -v ms="$ms" -v base="$LOCAL_MS" -v h="$hwm" -v seg="$seg" -v b="$bytes" 'BEGIN {
    printf "| %s | %d | %.2fx | %.1f MB (%d kB) | %s | %d segments, %.0f MB |\n", l, ms, ms / base, h / 1024, h, (h <= 65536) ? "yes" : "no", seg, b / 1048576 }'
done
echo
echo "Idle agent holding the backup (VmRSS after the WAL was written and a few 1 s heartbeats, max over rounds):"
for s in "${SIDES[@]}"; do
  awk -v s="$s" -v r="$(col "$s" 7 | max)" 'BEGIN { printf "%s %.1f MB (%d kB, <= 10 MB: %s)", (s == "local") ? "" : ";", r / 1024, r, (r <= 10240) ? "yes" : "no" }'
  case "$s" in local) printf ' with the local store' ;; s3) printf ' with the S3 store' ;; both) printf ' with both' ;; esac
done
echo "."
echo
echo "Per round (side, round, stop ms, VmHWM kB, segments, WAL bytes stored, idle VmRSS kB):"
echo
echo '```'
cat "$WORK/samples/results"
echo '```'
