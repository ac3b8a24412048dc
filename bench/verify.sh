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

SCALE=100 RUNS=3 COLD=1
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_parse "bin scale runs tmpdir keep --no-cold:COLD=0" "$@"
bench_pg_major 15
[ -x "$PGBIN/pg_checksums" ] || die "pg_checksums missing in $PGBIN"
bench_need_time
bench_room $((SCALE * 15 * 1024 * 4))
bench_owner
bench_binary verifybench
bench_start_cluster -k -- -c max_wal_size=4GB
MNT=
LOOPDEV=
# The cold-cache filesystem: unmounted and its loop device detached on exit.
bench_cleanup_last() {
  if [ -n "$MNT" ] && mountpoint -q "$MNT"; then umount "$MNT"; fi
  if [ -n "$LOOPDEV" ]; then losetup -d "$LOOPDEV" 2>/dev/null; fi
  return 0
}

bench_pgbench_init "$SCALE"
ID=vb-$RANDOM
bench_agent_start "$BIN" "$ID"
cp -a "$WORK/data" "$WORK/copy"
bench_agent_stop "$BIN" "$ID"
stop_pm "$WORK/data" "$PM_PID"; PM_PID=
BASE_KB=$(du -sk "$WORK/copy/base" | cut -f1)
# Warm the page cache with both trees.
find "$WORK/copy" "$WORK/data" -type f -print0 | xargs -0 cat >/dev/null
catfiles() { find "$WORK/copy/base" "$WORK/copy/global" -type f -print0 | xargs -0 cat >/dev/null; }

for side in pgbookend phase pg_checksums cat; do : >"$WORK/t.$side"; : >"$WORK/m.$side"; done
LOAD_BEFORE=$(bench_load)
run_one() {
  case "$1" in
    pgbookend)
      timed_ok verify "$BIN" verify --pgdata "$WORK/copy" --store "$STORE" --json
      echo "$US" >>"$WORK/t.pgbookend"; echo "$HWM" >>"$WORK/m.pgbookend"
      python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["pages"]; print(int(p["scan_seconds"]*1e6)); print(p["pages"], p["bytes"], p["threads"], p["wal_blocks"], p["block_set_bytes"], p["corrupt_count"], p["torn_covered"], file=open(sys.argv[2],"w"))' \
        "$WORK/out.txt" "$WORK/pages.txt" >>"$WORK/t.phase" ;;
    pg_checksums)
      timed_ok pg_checksums "${OWNER[@]}" "$PGBIN/pg_checksums" --check -D "$WORK/data"
      echo "$US" >>"$WORK/t.pg_checksums"; echo "$HWM" >>"$WORK/m.pg_checksums" ;;
    cat)
      timed bash -c "$(declare -f catfiles); WORK='$WORK' catfiles"
      echo "$US" >>"$WORK/t.cat"; echo "$HWM" >>"$WORK/m.cat" ;;
  esac
}
for r in $(seq 1 "$RUNS"); do
  for side in $(bench_order $((r - 1)) pgbookend pg_checksums cat); do run_one "$side"; done
  note "run $r: verify $(sec "$(tail -1 "$WORK/t.pgbookend")") (pages $(sec "$(tail -1 "$WORK/t.phase")")), pg_checksums $(sec "$(tail -1 "$WORK/t.pg_checksums")"), cat $(sec "$(tail -1 "$WORK/t.cat")")"
done
LOAD_AFTER=$(bench_load)
read -r NPAGES NBYTES THREADS WBLOCKS WBYTES NCORRUPT NTORN <"$WORK/pages.txt"

V=$(median <"$WORK/t.pgbookend"); P=$(median <"$WORK/t.phase")
C=$(median <"$WORK/t.pg_checksums"); K=$(median <"$WORK/t.cat")
bench_heading "## Page check (issue 12): \`verify --pgdata\` on a $(mb "$BASE_KB") base/ (pgbench scale $SCALE, PostgreSQL $PGV, checksums on), page cache warm"
echo "- $(bench_when), $(nproc) CPUs, work dir on $(bench_fs); pgbookend sha256 $BIN_SHA…; medians of $RUNS runs, order rotating; load average before / after: $LOAD_BEFORE / $LOAD_AFTER"
echo "- the page check read $NPAGES pages ($(awk -v b="$NBYTES" 'BEGIN { printf "%.1f MB", b / 1048576 }')) on $THREADS threads; $NCORRUPT corrupt, $NTORN torn and covered; the window's WAL referenced $WBLOCKS blocks (block set ~$(awk -v b="$WBYTES" 'BEGIN { printf "%.2f MB", b / 1048576 }'))"
echo
bench_table "what" "time" "/ cat" "peak RSS"
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
      timed_ok "cold verify" "$BIN" verify --pgdata "$MNT/copy" --store "$STORE" --json
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
bench_table "what" "time" "/ cold cat"
echo "| \`cat\` of base/ and global/ > /dev/null | $(sec "$CK") | 1.00x |"
echo "| pgbookend page check (\`pages.scan_seconds\`) | $(sec "$CP") | $(ratio "$CP" "$CK") |"
echo "| \`pgbookend verify --pgdata\` (whole command) | $(sec "$CV") | $(ratio "$CV" "$CK") |"
echo
echo "Raw µs cold (cat; pages; verify): $(paste -sd/ "$WORK/t.coldcat"); $(paste -sd/ "$WORK/t.coldpages"); $(paste -sd/ "$WORK/t.coldverify")"
