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
# It reports medians, ratios and peak RSS (/usr/bin/time -v), and the peak RSS against the
# target: 64 MB plus the window's block set.
# Cold cache (unless --no-cold): the copy (without pg_wal) on an XFS of its own on a loop
# device that reads its backing file with O_DIRECT (losetup --direct-io=on); the filesystem
# is unmounted and mounted again before each run, which empties its page cache, so every
# read goes to the disk. (drop_caches would empty the whole machine's cache, that of the
# other users of the machine included.) --runs times each, order alternating:
#   cat of every file below base/ and global/ > /dev/null, and the page check (verify).
#
# Usage: bench/verify.sh [--bin BIN] [--scale N] [--runs N] [--tmpdir DIR] [--keep] [--no-cold]
#   --bin defaults to this tree's release build (built here).
# Everything it starts (the server, the agent) is stopped by pid on exit, also on failure.
set -euo pipefail

SCALE=100
RUNS=3
TMPBASE=${TMPDIR:-/tmp}
KEEP=0
BIN=
COLD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift 2 ;;
    --scale) SCALE=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --tmpdir) TMPBASE=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --no-cold) COLD=0; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "verify.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
NAME=verify.sh
PGBIN=/usr/lib/postgresql/15/bin
. "$(dirname "$0")/lib.sh"
[ -x "$PGBIN/postgres" ] || die "PostgreSQL 15 missing in $PGBIN"
[ -x "$PGBIN/pg_checksums" ] || die "pg_checksums missing in $PGBIN"
[ -n "${EPOCHREALTIME:-}" ] || die "needs bash >= 5"
bench_need_time
bench_room $((SCALE * 15 * 1024 * 4))
OWNER=(); if [ "$(id -u)" = 0 ]; then OWNER=(runuser -u postgres --); fi

if [ -z "$BIN" ]; then
  bench_build
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/pgbookend
fi
[ -x "$BIN" ] || die "$BIN is not an executable"
bench_workdir verifybench
cp "$BIN" "$WORK/pgbookend"
SHA=$(sha256sum "$WORK/pgbookend" | cut -c1-12)
RUNDIR=$WORK/run
STORE=$WORK/store
mkdir -p "$STORE"
export PGBOOKEND_STATE_DIR=$WORK/state
bench_start_cluster -k -- -c max_wal_size=4GB
MNT=
LOOPDEV=
# The cold-cache filesystem: unmounted and its loop device detached on exit.
bench_cleanup_last() {
  if [ -n "$MNT" ] && mountpoint -q "$MNT"; then umount "$MNT"; fi
  if [ -n "$LOOPDEV" ]; then losetup -d "$LOOPDEV" 2>/dev/null; fi
  return 0
}

maxv() { sort -g | tail -1; }
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

HW=$(maxv <"$WORK/m.pgbookend")
echo
echo "Memory: peak RSS of \`verify --pgdata\` $(mb "$HW") against the target of 64 MB + the block set ($(awk -v b="$WBYTES" 'BEGIN { printf "%.1f MB", 64 + b / 1048576 }')): $(awk -v k="$HW" -v b="$WBYTES" 'BEGIN { if (k / 1024 <= 64 + b / 1048576) print "within"; else print "OVER" }')"

[ "$COLD" = 1 ] || exit 0
note "cold cache: the copy on a loop-mounted XFS with direct I/O"
COPY_KB=$(du -sk --exclude=pg_wal "$WORK/copy" | cut -f1)
truncate -s "$((COPY_KB * 2 + 600 * 1024))K" "$WORK/cold.img"
mkfs.xfs -q -f "$WORK/cold.img" || die "mkfs.xfs failed"
LOOPDEV=$(losetup --direct-io=on -f --show "$WORK/cold.img") || die "losetup failed"
MNT=$WORK/cold
mkdir "$MNT"
mount "$LOOPDEV" "$MNT" || die "mount failed"
rsync -a --exclude='/pg_wal/*' "$WORK/copy/" "$MNT/copy/"
remount() { sync; umount "$MNT"; mount "$LOOPDEV" "$MNT"; }
coldcat() { find "$MNT/copy/base" "$MNT/copy/global" -type f -print0 | xargs -0 cat >/dev/null; }
: >"$WORK/t.coldcat"; : >"$WORK/t.coldpages"; : >"$WORK/t.coldverify"
cold_one() {
  remount
  case "$1" in
    cat)
      timed bash -c "$(declare -f coldcat); MNT='$MNT' coldcat"
      echo "$US" >>"$WORK/t.coldcat" ;;
    pages)
      timed "$WORK/pgbookend" verify --pgdata "$MNT/copy" --store "$STORE" --json
      [ "$RC" = 0 ] || { cat "$WORK/out.txt" "$WORK/err.txt" >&2; die "cold verify exited $RC"; }
      echo "$US" >>"$WORK/t.coldverify"
      python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["pages"]["scan_seconds"]*1e6))' "$WORK/out.txt" >>"$WORK/t.coldpages" ;;
  esac
}
for r in $(seq 1 "$RUNS"); do
  if [ $((r % 2)) = 1 ]; then cold_one cat; cold_one pages; else cold_one pages; cold_one cat; fi
  note "cold run $r: cat $(sec "$(tail -1 "$WORK/t.coldcat")"), page check $(sec "$(tail -1 "$WORK/t.coldpages")")"
done
CK=$(median <"$WORK/t.coldcat"); CP=$(median <"$WORK/t.coldpages"); CV=$(median <"$WORK/t.coldverify")
echo
echo "Cold cache (loop-mounted XFS, direct I/O, remounted before each run; load average now $(cut -d' ' -f1-3 /proc/loadavg)):"
echo
echo "| what | time | / cold cat |"
echo "|---|---|---|"
echo "| \`cat\` of base/ and global/ > /dev/null | $(sec "$CK") | 1.00x |"
echo "| pgbookend page check (\`pages.scan_seconds\`) | $(sec "$CP") | $(ratio "$CP" "$CK") |"
echo "| \`pgbookend verify --pgdata\` (whole command) | $(sec "$CV") | $(ratio "$CV" "$CK") |"
echo
echo "Raw µs cold (cat; pages; verify): $(paste -sd/ "$WORK/t.coldcat"); $(paste -sd/ "$WORK/t.coldpages"); $(paste -sd/ "$WORK/t.coldverify")"
