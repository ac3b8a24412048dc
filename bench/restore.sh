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
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "restore.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
NAME=restore.sh
PGBIN=/usr/lib/postgresql/15/bin
. "$(dirname "$0")/lib.sh"
[ -x "$PGBIN/postgres" ] || die "PostgreSQL 15 missing in $PGBIN"
[ -n "${EPOCHREALTIME:-}" ] || die "needs bash >= 5"
command -v zstd >/dev/null || die "zstd missing"
HAVE_PGBR=1
command -v pgbackrest >/dev/null || { HAVE_PGBR=0; note "pgbackrest missing: its row is left out"; }
bench_need_time
bench_room $((SCALE * 17 * 1024 * 5))

if [ -z "$BIN" ]; then
  bench_build
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/pgbookend
fi
[ -x "$BIN" ] || die "$BIN is not an executable"
bench_workdir restore
cp "$BIN" "$WORK/pgbookend"
BIN=$WORK/pgbookend
export PGBOOKEND_RUN_DIR=$WORK/run PGBOOKEND_STATE_DIR=$WORK/state

bench_pgbr_cluster
note "PostgreSQL $PGV, pgbench scale $SCALE"
as_owner "$PGBIN/pgbench" -i -q -s "$SCALE" >/dev/null 2>&1
q -c CHECKPOINT
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
  echo "$US" >>"$WORK/us-$tool"
  echo "$HWM" >>"$WORK/rss-$tool"
  echo "$CPU" >>"$WORK/cpu-$tool"
  rm -rf "$dest"
  sync
}
TOOLS=(pgbookend floor)
[ "$HAVE_PGBR" = 1 ] && TOOLS+=(pgbackrest)
for n in $(seq "$RUNS"); do
  for i in "${!TOOLS[@]}"; do
    t=${TOOLS[$(((i + n) % ${#TOOLS[@]}))]}
    run_one "$t" "$n"
    note "run $n $t: $(sec "$US"), $CPU CPU-s"
  done
done
printf '%-12s %10s %8s %10s %8s %10s\n' tool median ratio cpu_s ratio peak_rss
floor=$(median <"$WORK/us-floor")
floor_cpu=$(median 2 <"$WORK/cpu-floor")
for t in "${TOOLS[@]}"; do
  m=$(median <"$WORK/us-$t")
  c=$(median 2 <"$WORK/cpu-$t")
  printf '%-12s %10s %8s %10s %8s %8s MB\n' "$t" "$(sec "$m")" "$(awk -v a="$m" -v b="$floor" 'BEGIN { printf "%.2fx", a / b }')" \
    "$c" "$(awk -v a="$c" -v b="$floor_cpu" 'BEGIN { printf "%.2fx", a / b }')" \
    "$(( $(median <"$WORK/rss-$t") / 1024 ))"
done
