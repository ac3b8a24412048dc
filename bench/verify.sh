#!/usr/bin/env bash
# bench/verify.sh — issue 12: the page check of `verify --pgdata` against `pg_checksums --check`
# (the same data, shut down cleanly, single-threaded) and against `cat` of the same files to
# /dev/null (the read floor), side by side, page cache warm. Target: <= 1.3x cat.
#
# One throwaway PostgreSQL 15 cluster with data checksums (initdb -k, fsync on).
# pgbench -i -s SCALE (100: about 1.5 GB of base/), CHECKPOINT; one backup:
#   start --id ID --store STORE; cp -a PGDATA COPY; stop --id ID (--wal collect)
# then the server is stopped cleanly (for pg_checksums), every file is read once (warm cache),
# and, --runs times each, rotating the order:
#   pgbookend verify --pgdata COPY --store STORE --json  (its "pages" part: the page check)
#   pg_checksums --check -D PGDATA                       (as postgres)
#   cat of every file below COPY/base and COPY/global > /dev/null
# It reports medians, ratios and peak RSS (/usr/bin/time -v).
#
# Usage: bench/verify.sh [--bin BIN] [--scale N] [--runs N] [--tmpdir DIR] [--keep]
#   --bin defaults to this tree's release build (built here).
# Everything it starts (the server, the agent) is stopped by pid on exit, also on failure.
set -euo pipefail

SCALE=100
RUNS=3
TMPBASE=${TMPDIR:-/tmp}
KEEP=0
BIN=
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift 2 ;;
    --scale) SCALE=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --tmpdir) TMPBASE=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "verify.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
die() { echo "verify.sh: $*" >&2; exit 1; }
note() { echo "# $*" >&2; }
now_us() { echo "${EPOCHREALTIME/./}"; }
[ -x "$PGBIN/postgres" ] || die "PostgreSQL 15 missing in $PGBIN"
[ -x "$PGBIN/pg_checksums" ] || die "pg_checksums missing in $PGBIN"
[ -n "${EPOCHREALTIME:-}" ] || die "needs bash >= 5"
if [ ! -x /usr/bin/time ]; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q time >/dev/null 2>&1 || true; fi
  [ -x /usr/bin/time ] || die "needs /usr/bin/time (apt-get install time)"
fi
NEED_KB=$((SCALE * 15 * 1024 * 3))
AVAIL_KB=$(df -Pk "$TMPBASE" | awk 'NR == 2 { print $4 }')
[ "$AVAIL_KB" -gt "$NEED_KB" ] || die "not enough room on $TMPBASE (need about $((NEED_KB / 1048576)) GiB)"

WORK=
PM_PID=
AGENT_PIDS=()
OWNER=(); if [ "$(id -u)" = 0 ]; then OWNER=(runuser -u postgres --); fi
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
is_agent() { alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "__agent "; }
stop_pm() { # stop_pm DATADIR PID
  if alive "$2"; then
    as_owner "$PGBIN/pg_ctl" -D "$1" -m fast -w -t 60 stop >/dev/null 2>&1
    alive "$2" && kill -KILL "$2" 2>/dev/null
  fi
  return 0
}
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  set +e
  for p in "${AGENT_PIDS[@]}"; do is_agent "$p" && kill -TERM "$p" 2>/dev/null; done
  for p in "${AGENT_PIDS[@]}"; do
    for _ in $(seq 50); do is_agent "$p" || break; sleep 0.1; done
    is_agent "$p" && kill -KILL "$p" 2>/dev/null
  done
  stop_pm "$WORK/data" "$PM_PID"
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$KEEP" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "$BIN" ]; then
  note "building: cargo build --release -p pgbookend"
  (cd "$ROOT" && cargo build --release --quiet -p pgbookend) || die "build failed"
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/pgbookend
fi
[ -x "$BIN" ] || die "$BIN is not an executable"
WORK=$(mktemp -d "$TMPBASE/pgbookend-verifybench.XXXXXX")
chmod 755 "$WORK"
cp "$BIN" "$WORK/pgbookend"
SHA=$(sha256sum "$WORK/pgbookend" | cut -c1-12)
RUNDIR=$WORK/run
STORE=$WORK/store
mkdir -p "$WORK/sock" "$STORE"
mkdir -m 700 "$WORK/data"
touch "$WORK/server.log"
if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK/sock" "$WORK/data" "$WORK/server.log"; fi
as_owner "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust -E UTF8 --locale=C -k \
  >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
as_owner "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 60 start -o \
  "-c listen_addresses='' -c unix_socket_directories='$WORK/sock' -c port=5432 -c wal_level=replica -c archive_mode=off -c max_wal_size=4GB" \
  >/dev/null || { cat "$WORK/server.log" >&2; die "server did not start"; }
PM_PID=$(head -1 "$WORK/data/postmaster.pid")
for v in $(env | sed -n 's/^\(PG[A-Z_]*\)=.*/\1/p'); do unset "$v"; done
export PGHOST=$WORK/sock PGPORT=5432 PGUSER=postgres PGDATABASE=postgres
: >"$WORK/empty.toml"
export PGBOOKEND_CONFIG=$WORK/empty.toml PGBOOKEND_STATE_DIR=$WORK/state
q() { "$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }
PGV=$(q -c 'SHOW server_version' | awk '{ print $1 }')

# timed CMD... -> US (wall), HWM (peak RSS kB), RC
timed() {
  local a b
  a=$(now_us)
  RC=0
  /usr/bin/time -v -o "$WORK/time.txt" "$@" >"$WORK/out.txt" 2>"$WORK/err.txt" || RC=$?
  b=$(now_us)
  US=$((b - a))
  HWM=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$WORK/time.txt")
}
median() { sort -g | awk '{ v[NR] = $1 } END { n = NR; if (n % 2) m = v[(n + 1) / 2]; else m = (v[n / 2] + v[n / 2 + 1]) / 2; printf "%.0f\n", m }'; }
maxv() { sort -g | tail -1; }
sec() { awk -v u="$1" 'BEGIN { printf "%.3f s", u / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1024 }'; }

note "pgbench -i -s $SCALE"
"$PGBIN/pgbench" -i -q -s "$SCALE" >"$WORK/pgbench.log" 2>&1 || { tail "$WORK/pgbench.log" >&2; die "pgbench -i failed"; }
q -c "CHECKPOINT" >/dev/null
ID=vb-$RANDOM
"$WORK/pgbookend" start --id "$ID" --store "$STORE" --run-dir "$RUNDIR" >"$WORK/start.out" 2>&1 ||
  { cat "$WORK/start.out" >&2; die "start failed"; }
apid=$("$WORK/pgbookend" status --id "$ID" --json --run-dir "$RUNDIR" | sed -n 's/.*"agent_pid": *\([0-9]*\).*/\1/p' | head -1)
[ -n "$apid" ] && AGENT_PIDS+=("$apid")
cp -a "$WORK/data" "$WORK/copy"
"$WORK/pgbookend" stop --id "$ID" --no-wait-archive --json --run-dir "$RUNDIR" >"$WORK/stop.json" 2>"$WORK/stop.err" ||
  { cat "$WORK/stop.json" "$WORK/stop.err" >&2; die "stop failed"; }
stop_pm "$WORK/data" "$PM_PID"; PM_PID=
BASE_KB=$(du -sk "$WORK/copy/base" | cut -f1)
# Warm the page cache with both trees.
find "$WORK/copy" "$WORK/data" -type f -print0 | xargs -0 cat >/dev/null
catfiles() { find "$WORK/copy/base" "$WORK/copy/global" -type f -print0 | xargs -0 cat >/dev/null; }

for side in pgbookend phase pg_checksums cat; do : >"$WORK/t.$side"; : >"$WORK/m.$side"; done
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
run_one() {
  case "$1" in
    pgbookend)
      timed "$WORK/pgbookend" verify --pgdata "$WORK/copy" --store "$STORE" --json
      [ "$RC" = 0 ] || { cat "$WORK/out.txt" "$WORK/err.txt" >&2; die "verify exited $RC"; }
      echo "$US" >>"$WORK/t.pgbookend"; echo "$HWM" >>"$WORK/m.pgbookend"
      python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["pages"]; print(int(p["scan_seconds"]*1e6)); print(p["pages"], p["bytes"], p["threads"], p["wal_blocks"], p["block_set_bytes"], p["corrupt_count"], p["torn_covered"], file=open(sys.argv[2],"w"))' \
        "$WORK/out.txt" "$WORK/pages.txt" >>"$WORK/t.phase" ;;
    pg_checksums)
      timed "${OWNER[@]}" "$PGBIN/pg_checksums" --check -D "$WORK/data"
      [ "$RC" = 0 ] || { cat "$WORK/out.txt" "$WORK/err.txt" >&2; die "pg_checksums exited $RC"; }
      echo "$US" >>"$WORK/t.pg_checksums"; echo "$HWM" >>"$WORK/m.pg_checksums" ;;
    cat)
      timed bash -c "$(declare -f catfiles); WORK='$WORK' catfiles"
      echo "$US" >>"$WORK/t.cat"; echo "$HWM" >>"$WORK/m.cat" ;;
  esac
}
for r in $(seq 1 "$RUNS"); do
  case $((r % 3)) in
    1) order="pgbookend pg_checksums cat" ;;
    2) order="pg_checksums cat pgbookend" ;;
    0) order="cat pgbookend pg_checksums" ;;
  esac
  for side in $order; do run_one "$side"; done
  note "run $r: verify $(sec "$(tail -1 "$WORK/t.pgbookend")") (pages $(sec "$(tail -1 "$WORK/t.phase")")), pg_checksums $(sec "$(tail -1 "$WORK/t.pg_checksums")"), cat $(sec "$(tail -1 "$WORK/t.cat")")"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
read -r NPAGES NBYTES THREADS WBLOCKS WBYTES NCORRUPT NTORN <"$WORK/pages.txt"

V=$(median <"$WORK/t.pgbookend"); P=$(median <"$WORK/t.phase")
C=$(median <"$WORK/t.pg_checksums"); K=$(median <"$WORK/t.cat")
echo
echo "## Page check (issue 12): \`verify --pgdata\` on a $(mb "$BASE_KB") base/ (pgbench scale $SCALE, PostgreSQL $PGV, checksums on), page cache warm"
echo
echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, work dir on $(df -T "$WORK" | awk 'NR == 2 { print $2 }'); pgbookend sha256 $SHA…; medians of $RUNS runs, order rotating; load average before / after: $LOAD_BEFORE / $LOAD_AFTER"
echo "- the page check read $NPAGES pages ($(awk -v b="$NBYTES" 'BEGIN { printf "%.1f MB", b / 1048576 }')) on $THREADS threads; $NCORRUPT corrupt, $NTORN torn and covered; the window's WAL referenced $WBLOCKS blocks (block set ~$(awk -v b="$WBYTES" 'BEGIN { printf "%.2f MB", b / 1048576 }'))"
echo
echo "| what | time | / cat | peak RSS |"
echo "|---|---|---|---|"
echo "| \`cat\` of base/ and global/ > /dev/null | $(sec "$K") | 1.00x | $(mb "$(maxv <"$WORK/m.cat")") |"
echo "| pgbookend page check (the \`pages.scan_seconds\` phase: reading and judging the pages) | $(sec "$P") | $(ratio "$P" "$K") | |"
echo "| \`pgbookend verify --pgdata\` (whole command: bundle, WAL, pages) | $(sec "$V") | $(ratio "$V" "$K") | $(mb "$(maxv <"$WORK/m.pgbookend")") |"
echo "| \`pg_checksums --check\` (clean shutdown) | $(sec "$C") | $(ratio "$C" "$K") | $(mb "$(maxv <"$WORK/m.pg_checksums")") |"
echo
echo "pg_checksums / page check: $(ratio "$C" "$P")"
echo
echo "Raw µs (verify; pages; pg_checksums; cat): $(paste -sd/ "$WORK/t.pgbookend"); $(paste -sd/ "$WORK/t.phase"); $(paste -sd/ "$WORK/t.pg_checksums"); $(paste -sd/ "$WORK/t.cat")"
