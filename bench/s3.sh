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

MAJOR=15 ROUNDS=3 SEGS=64
MOTO_PID=
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_parse "rounds segments bin tmpdir keep --major:MAJOR" "$@"
bench_pg_major "$MAJOR"
bench_need curl
bench_binary bench-s3
mkdir -p "$WORK/samples" "$WORK/tmp" "$WORK/moto"

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
bench_start_cluster -- -c max_wal_size=4GB -c wal_compression=off
printf 's3_retry_timeout = "2m"\n' >"$WORK/pgbookend.toml"
export PGBOOKEND_CONFIG=$WORK/pgbookend.toml
q -c "CREATE EXTENSION IF NOT EXISTS pgcrypto" >/dev/null
q -c "CREATE TABLE w (b bytea); ALTER TABLE w ALTER COLUMN b SET STORAGE EXTERNAL" >/dev/null

# Writes random rows until the WAL has moved SEGS-1 segments past the start segment.
fill_wal() { # fill_wal START_WAL_FILE
  local start=$1 cur
  local start_seg=$(( 16#${start:8:8} * 256 + 16#${start:16:8} ))
  while :; do
    cur=$(q -c "SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
    [ $(( 16#${cur:8:8} * 256 + 16#${cur:16:8} - start_seg )) -ge $((SEGS - 1)) ] && break
    q -c "INSERT INTO w SELECT gen_random_bytes(1024) FROM generate_series(1, 4096)" >/dev/null
  done
  q -c "TRUNCATE w" >/dev/null
}

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
LOAD_BEFORE=$(bench_load)
note "binary $BIN_VERSION ($BIN_SHA); $ROUNDS rounds of ${SIDES[*]}, $SEGS segments each"
one local 0 >/dev/null   # warm-up (not recorded below)
: >"$WORK/samples/results"
for n in $(seq 1 "$ROUNDS"); do
  for j in 0 1 2; do one "${SIDES[$(((n + j) % 3))]}" "$n"; done
done
LOAD_AFTER=$(bench_load)

# ---------------------------------------------------------------- report
col() { awk -v s="$1" -v c="$2" '$1 == s { print $c }' "$WORK/samples/results"; }
max() { sort -n | tail -1; }
LOCAL_MS=$(col local 3 | median)
bench_heading "### S3 stores (issue 6): \`stop\` with $SEGS WAL segments, local vs S3"
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $BIN_VERSION (binary sha256 $BIN_SHA…), PostgreSQL $PGV, moto_server $MOTO_VERSION on 127.0.0.1,"
echo "$(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo) RAM, work dir on $(bench_fs),"
echo "load $LOAD_BEFORE -> $LOAD_AFTER. $ROUNDS rounds, sides rotated each round; WAL of random bytes (incompressible)."
echo
bench_table "store" "stop, median (ms)" "vs local" "agent VmHWM during stop, max" "<= 64 MB" "WAL stored"
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
