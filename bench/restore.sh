#!/usr/bin/env bash
# bench/restore.sh — issue 13, restore side: `pgbookend restore` (2 jobs, local store, every
# file fsynced) of a built-in backup into a fresh directory, side by side in one run with
# the floor `zstd -d < data.tar.zst | tar -x` then `sync -f` of the target (so both make
# the copy durable), and pgBackRest restore (process-max 2) of its own full backup when
# pgbackrest is installed. Target: pgbookend <= 1.1x the floor, faster than pgBackRest.
#
# One throwaway PostgreSQL 15 cluster with data checksums; pgbench -i -s SCALE (100: about
# 1.7 GB), CHECKPOINT; one backup of each kind (pgbookend backup zstd 3, tar | zstd -3,
# pgBackRest full zst 3), every stored file read once (warm cache); then --runs restores of
# each, rotating the order, each into a fresh directory removed (and synced away) after
# the run. Reports medians of wall time and CPU seconds (user + system, children
# included), and peak RSS (/usr/bin/time -v).
#
# Usage: bench/restore.sh [--bin BIN] [--scale N] [--runs N] [--tmpdir DIR] [--keep]
#   --bin defaults to this tree's release build (built here).
# Everything it starts (the server) is stopped by pid on exit, also on failure.
set -euo pipefail

SCALE=100 RUNS=3
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_parse "bin scale runs tmpdir keep" "$@"
bench_pg_major 15
bench_need zstd
bench_need_pgbackrest "its row is"
bench_need_time
bench_room $((SCALE * 17 * 1024 * 5))
bench_binary restore

bench_pgbr_cluster
note "PostgreSQL $PGV, pgbench scale $SCALE"
bench_pgbench_init "$SCALE"
SIZE=$(du -sb --exclude=pg_wal "$WORK/data" | awk '{ print $1 }')
note "data directory without pg_wal: $((SIZE / 1048576)) MiB"

# The three backups restored below, each made once.
mkdir -p "$WORK/store" "$WORK/floor" "$WORK/out"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK/out"
"$BIN" backup --id r1 --store "$WORK/store" --jobs 2 --compress zstd:3 --json >/dev/null \
  || die "pgbookend backup failed"
tar -cf - -C "$WORK/data" --exclude='./pg_wal/*' . | zstd -3 -T2 -q -o "$WORK/floor/data.tar.zst"
[ "$HAVE_PGBR" = 1 ] && { "${PGBR[@]}" --type=full backup >/dev/null || die "pgBackRest backup failed"; }
find "$WORK/store" "$WORK/floor" "$WORK/pgbr/repo" -type f -exec cat {} + >/dev/null
sync

run_one() {
  local tool=$1 n=$2 dest="$WORK/out/$1-$2"
  case "$tool" in
    pgbookend)
      timed "$BIN" restore --pgdata "$dest" --store "$WORK/store" --id r1 --jobs 2 --json ;;
    floor)
      mkdir -m 700 "$dest"
      timed bash -c "zstd -d -q < '$WORK/floor/data.tar.zst' | tar -xf - -C '$dest' && sync -f '$dest'" ;;
    pgbackrest)
      mkdir -m 700 "$dest"
      [ "$(id -u)" = 0 ] && chown postgres: "$dest"
      timed "${PGBR[@]}" --pg1-path="$dest" --process-max=2 restore ;;
  esac
  [ "$RC" = 0 ] || { cat "$WORK/err.txt" >&2; die "$tool run $n failed ($RC)"; }
  bench_record "$tool"
  rm -rf "$dest"
  sync
}
TOOLS=(pgbookend floor)
[ "$HAVE_PGBR" = 1 ] && TOOLS+=(pgbackrest)
bench_run_tools bench_order "${TOOLS[@]}"
bench_tool_table "${TOOLS[@]}"
