#!/usr/bin/env bash
# bench/backup.sh — issue 13: `pgbookend backup` (zstd 3, 2 jobs, local store, fsync of every
# object) side by side, in one run, with the floor `tar | zstd -3 -T2`,
# `pg_basebackup -Ft --compress=client-zstd:3` and pgBackRest full (zst level 3,
# process-max 2). Target: pgbookend <= 1.15x the floor, >= 1.8x faster than pgBackRest,
# faster than pg_basebackup.
#
# One throwaway PostgreSQL 15 cluster with data checksums; pgbench -i -s SCALE (100: about
# 1.7 GB), CHECKPOINT, every file read once (warm cache); then --runs times each, in a
# shuffled order; before each run the WAL archive catches up and dirty pages are written back
# (bench_settle). Each backup goes to a fresh directory, removed after the run. Reports medians
# of wall time and of CPU seconds (user + system, children included), and peak RSS
# (/usr/bin/time -v). Without pgbackrest installed its row is left out.
#
# Usage: bench/backup.sh [--bin BIN] [--scale N] [--runs N] [--tmpdir DIR] [--keep] [--s3]
#   --bin defaults to this tree's release build (built here).
#   --s3 adds `pgbookend backup` into the local S3 server (moto_server, started here and
#   stopped by pid on exit) as the row `s3` (target: within 1.3x of the local store).
# Everything it starts (the server) is stopped by pid on exit, also on failure.
set -euo pipefail

SCALE=100 RUNS=3 S3=0
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_parse "bin scale runs tmpdir keep --s3:S3=1" "$@"
bench_pg_major 15
bench_need zstd
bench_need_pgbackrest "its row is"
bench_need_time
bench_room $((SCALE * 17 * 1024 * 4))
bench_binary backup

bench_pgbr_cluster
if [ "$HAVE_PGBR" = 1 ]; then
  note "PostgreSQL $PGV, pgbench scale $SCALE, pgBackRest $(pgbackrest version | awk '{ print $2 }')"
else
  note "PostgreSQL $PGV, pgbench scale $SCALE"
fi
bench_pgbench_init "$SCALE"
SIZE=$(du -sb "$WORK/data" | awk '{ print $1 }')
note "data directory: $((SIZE / 1048576)) MiB"
find "$WORK/data" -type f -exec cat {} + >/dev/null

mkdir -p "$WORK/out"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK/out"
run_one() {
  local tool=$1 n=$2 dest="$WORK/out/$1-$2"
  bench_settle
  case "$tool" in
    pgbookend)
      mkdir -p "$dest"
      timed "$BIN" backup --id "b$n" --store "$dest" --jobs 2 --compress zstd:3 --json ;;
    s3)
      local before
      before=$(proc_cpu "$MOTO_PID")
      timed "$BIN" backup --id "s$n" --store "s3://bench/run$n" --jobs 2 --compress zstd:3 --json
      awk -v a="$(proc_cpu "$MOTO_PID")" -v b="$before" 'BEGIN { printf "%.2f\n", a - b }' >>"$WORK/cpu-moto" ;;
    floor)
      mkdir -p "$dest"
      timed bash -c "tar -cf - -C '$WORK' --exclude='data/pg_wal/*' data | zstd -3 -T2 -q -o '$dest/data.tar.zst' && sync -f '$dest/data.tar.zst'" ;;
    basebackup)
      timed "${OWNER[@]}" "$PGBIN/pg_basebackup" -D "$dest" -Ft --compress=client-zstd:3 -c fast ;;
    pgbackrest)
      timed "${PGBR[@]}" --type=full backup ;;
  esac
  [ "$RC" = 0 ] || { cat "$WORK/err.txt" >&2; die "$tool run $n failed ($RC)"; }
  bench_record "$tool"
  case "$tool" in pgbookend | s3) grep -o '"bytes_stored": [0-9]*' "$WORK/out.txt" >&2 ;; esac
  rm -rf "$dest"
  if [ "$tool" = pgbackrest ]; then "${PGBR[@]}" --repo1-retention-full=1 expire >/dev/null 2>&1 || true; fi
}
TOOLS=(pgbookend floor basebackup)
[ "$HAVE_PGBR" = 1 ] && TOOLS+=(pgbackrest)
if [ "$S3" = 1 ]; then
  bench_start_moto
  note "moto_server $MOTO_VERSION on $ENDPOINT (pid $MOTO_PID)"
  TOOLS+=(s3)
fi
bench_run_tools bench_shuffled "${TOOLS[@]}"
bench_tool_table "${TOOLS[@]}"
if [ "$S3" = 1 ]; then
  echo "moto_server CPU-s during the s3 runs (median): $(median 2 <"$WORK/cpu-moto")"
fi
