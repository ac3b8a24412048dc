#!/usr/bin/env bash
# bench/archive.sh — issue 11: synchronous `archive-push` to a local store and `archive-get`,
# one process per segment as PostgreSQL calls them, side by side with `cp` + `sync` and
# `zstd -3` + `sync` on the same segments, and with pgBackRest's `archive-push` and
# `archive-get` (Debian's 2.45, installed if missing) in the same run.
#
# On a throwaway PostgreSQL 15 cluster (fsync on, archive_mode off, no checkpoint), writes
# SEGS segments of table inserts, copies them (closed segments) to WORK/segs, `sync`, then
# per round and per side, as the postgres OS user, one process per segment:
#   cp      cp SEG DST/ && sync DST/SEG
#   zstd    zstd -3 -q -f SEG -o DST/SEG.zst && sync DST/SEG.zst
#   push    (cwd = PGDATA) pgbookend archive-push SEG --store STORE   (a fresh store per round)
#   get     (cwd = a scratch PGDATA with a copy of pg_control; pg_wal/RECOVERYXLOG removed
#           before each call, as PostgreSQL does, outside the timing: segments/s is the
#           segments over the sum of the calls' own times, each call timed alone)
#           pgbookend archive-get NAME pg_wal/RECOVERYXLOG --store STORE
#   get --prefetch 8   the same, with the background worker fetching 8 segments ahead
#   pgbr    pgbackrest archive-push SEG (zst level 3, a fresh repository and stanza per round)
#           and pgbackrest archive-get NAME pg_wal/RECOVERYXLOG (pg1-path = the scratch)
# Median segments/s over the rounds; peak RSS of one push and one get (/usr/bin/time -v).
#
# Usage: bench/archive.sh [--rounds N] [--segments N] [--tmpdir DIR] [--keep]
set -euo pipefail

ROUNDS=3 SEGS=24
PM_STOP_MODE=immediate
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_parse "rounds segments tmpdir keep" "$@"
bench_pg_major 15
bench_need zstd
bench_need_time
bench_need_pgbackrest "its columns are"

bench_binary archbench
mkdir -p "$WORK/segs" "$WORK/scratch/global" "$WORK/scratch/pg_wal" "$WORK/pgbr"
if [ "$(id -u)" = 0 ]; then chown -R postgres: "$WORK"; chown root: "$BIN"; fi

bench_start_cluster -- -c max_wal_size=32GB -c checkpoint_timeout=1d
# SEGS closed segments: the first SEGS of pg_wal once the switch has closed the last.
bench_write_segments "$SEGS"
q -c "SELECT pg_switch_wal()" >/dev/null
for f in $(ls "$WORK/data/pg_wal" | grep '^[0-9A-F]\{24\}$' | sort | head -n "$SEGS"); do
  cp "$WORK/data/pg_wal/$f" "$WORK/segs/$f"
done
cp "$WORK/data/global/pg_control" "$WORK/scratch/global/pg_control"
[ "$(id -u)" = 0 ] && chown -R postgres: "$WORK/segs" "$WORK/scratch"
sync
NAMES=$(ls "$WORK/segs")
COUNT=$(echo "$NAMES" | wc -l)
note "$COUNT segments, $(du -sm "$WORK/segs" | cut -f1) MB"

side() { # side NAME DST -> segments/s
  local name=$1 dst=$2 t0 t1 f
  as_owner rm -rf "$dst"; as_owner mkdir -p "$dst"
  sync
  t0=$(now_us)
  case "$name" in
    cp) as_owner bash -c 'for f in '"$WORK"'/segs/*; do cp "$f" '"$dst"'/ && sync '"$dst"'/"${f##*/}"; done' ;;
    zstd) as_owner bash -c 'for f in '"$WORK"'/segs/*; do zstd -3 -q -f "$f" -o '"$dst"'/"${f##*/}".zst && sync '"$dst"'/"${f##*/}".zst; done' ;;
    pgbr) pgbr_stanza "$dst"
      as_owner bash -c 'for f in '"$WORK"'/segs/*; do '"$PGBR_BIN"' --config='"$WORK"'/pgbr/pgbackrest.conf --repo1-path='"$dst"' --stanza=bench archive-push "$f" || exit 1; done' ;;
    push) as_owner bash -c 'cd '"$WORK"'/data && for f in '"$WORK"'/segs/*; do '"$BIN"' archive-push "$f" --store '"$dst"' || exit 1; done' ;;
  esac
  t1=$(now_us)
  echo "$COUNT $t0 $t1" | awk '{ printf "%.2f", $1 / (($3 - $2) / 1e6) }'
}
# pgbr_stanza REPO: a pgBackRest repository with the stanza of the cluster (zst level 3, as
# the store's default), its logs off so that only the work is measured.
pgbr_stanza() {
  as_owner mkdir -p "$1"
  bench_pgbr_wal_conf "$WORK/pgbr/pgbackrest.conf"
  as_owner "$PGBR_BIN" --config="$WORK/pgbr/pgbackrest.conf" --repo1-path="$1" --stanza=bench stanza-create >/dev/null ||
    die "pgbackrest stanza-create failed"
}
get_side() { # get_side pgbookend|pgbr STORE -> segments/s
  local tool=$1 store=$2 cmd
  if [ "$tool" = prefetch ]; then
    cmd="$BIN archive-get --prefetch 8"
  elif [ "$tool" = pgbr ]; then
    cmd="$PGBR_BIN --config=$WORK/pgbr/pgbackrest.conf --repo1-path=$store --pg1-path=$WORK/scratch --stanza=bench archive-get"
  else
    cmd="$BIN archive-get"
  fi
  sync
  # PostgreSQL removes %p before each call (RestoreArchivedFile), in its own process:
  # so does this loop, with `rm`, outside the timing; each call is timed alone and the
  # rate is the segments over the sum of the calls' times.
  as_owner bash -c 'cd '"$WORK"'/scratch && s=0; for f in '"$NAMES_LINE"'; do rm -f pg_wal/RECOVERYXLOG; t0=${EPOCHREALTIME/./}; '"$cmd"' "$f" pg_wal/RECOVERYXLOG '"$([ "$tool" = pgbr ] || echo "--store $store")"' || exit 1; t1=${EPOCHREALTIME/./}; s=$((s + t1 - t0)); done; echo $s' |
    awk -v n="$COUNT" '{ printf "%.2f", n / ($1 / 1e6) }'
}
NAMES_LINE=$(echo $NAMES)
SIDES="cp zstd push"
[ -n "$PGBR_BIN" ] && SIDES="$SIDES pgbr"
: >"$WORK/cp"; : >"$WORK/zstd"; : >"$WORK/push"; : >"$WORK/get"; : >"$WORK/pgbr-push"; : >"$WORK/pgbr-get"; : >"$WORK/get-prefetch"
for r in $(seq "$ROUNDS"); do
  for s in $SIDES; do
    v=$(side "$s" "$WORK/out-$s"); echo "$v" >>"$WORK/${s/#pgbr/pgbr-push}"; note "round $r $s: $v segments/s"
  done
  v=$(get_side pgbookend "$WORK/out-push"); echo "$v" >>"$WORK/get"; note "round $r get: $v segments/s"
  v=$(get_side prefetch "$WORK/out-push"); echo "$v" >>"$WORK/get-prefetch"; note "round $r get --prefetch 8: $v segments/s"
  if [ -n "$PGBR_BIN" ]; then
    v=$(get_side pgbr "$WORK/out-pgbr"); echo "$v" >>"$WORK/pgbr-get"; note "round $r pgbackrest get: $v segments/s"
  fi
done
one=$(echo "$NAMES" | head -1)
as_owner mkdir -p "$WORK/mem"
rss_push=$(cd "$WORK/data" && as_owner /usr/bin/time -v "$BIN" archive-push "$WORK/segs/$one" --store "$WORK/mem" 2>&1 | sed -n 's/.*Maximum resident set size (kbytes): //p')
rss_get=$(cd "$WORK/scratch" && as_owner /usr/bin/time -v "$BIN" archive-get "$one" pg_wal/RECOVERYXLOG --store "$WORK/mem" 2>&1 | sed -n 's/.*Maximum resident set size (kbytes): //p')
ratio=$(du -sk "$WORK/out-push" | cut -f1)
orig=$(du -sk "$WORK/segs" | cut -f1)

echo "### archive-push / archive-get — PostgreSQL 15, $COUNT segments of inserts"
echo
echo "- $(bench_when), $(nproc) CPUs, kernel $(uname -r), work dir on $(bench_fs); $ROUNDS rounds, median; one process per segment"
echo
bench_table "side" "segments/s"
echo "| cp + sync | $(median 2 <"$WORK/cp") |"
echo "| zstd -3 + sync | $(median 2 <"$WORK/zstd") |"
echo "| pgbookend archive-push (local store) | $(median 2 <"$WORK/push") |"
echo "| pgbookend archive-get (local store) | $(median 2 <"$WORK/get") |"
echo "| pgbookend archive-get --prefetch 8 (local store) | $(median 2 <"$WORK/get-prefetch") |"
if [ -n "$PGBR_BIN" ]; then
  echo "| pgBackRest $("$PGBR_BIN" version | awk '{ print $2 }') archive-push (sync, zst 3) | $(median 2 <"$WORK/pgbr-push") |"
  echo "| pgBackRest archive-get | $(median 2 <"$WORK/pgbr-get") |"
  echo
  echo "- ratios, same run: archive-push / pgBackRest's = $(awk -v a="$(median 2 <"$WORK/push")" -v b="$(median 2 <"$WORK/pgbr-push")" 'BEGIN { printf "%.2f", a / b }')x; archive-get / pgBackRest's = $(awk -v a="$(median 2 <"$WORK/get")" -v b="$(median 2 <"$WORK/pgbr-get")" 'BEGIN { printf "%.2f", a / b }')x; with --prefetch 8: $(awk -v a="$(median 2 <"$WORK/get-prefetch")" -v b="$(median 2 <"$WORK/pgbr-get")" 'BEGIN { printf "%.2f", a / b }')x"
fi
echo
echo "- archived size: $ratio KiB for $orig KiB of WAL; peak RSS: archive-push ${rss_push} KiB, archive-get ${rss_get} KiB"
