#!/usr/bin/env bash
# bench/archive.sh — issue 11: synchronous `archive-push` to a local store and `archive-get`,
# one process per segment as PostgreSQL calls them, side by side with `cp` + `sync` and
# `zstd -3` + `sync` on the same segments (pgBackRest is not installed here: its anchors,
# measured on this machine kind, are quoted in bench/RESULTS.md).
#
# On a throwaway PostgreSQL 15 cluster (fsync on, archive_mode off, no checkpoint), writes
# SEGS segments of table inserts, copies them (closed segments) to WORK/segs, `sync`, then
# per round and per side, as the postgres OS user, one process per segment:
#   cp      cp SEG DST/ && sync DST/SEG
#   zstd    zstd -3 -q -f SEG -o DST/SEG.zst && sync DST/SEG.zst
#   push    (cwd = PGDATA) pgbookend archive-push SEG --store STORE   (a fresh store per round)
#   get     (cwd = a scratch PGDATA with a copy of pg_control)
#           pgbookend archive-get NAME pg_wal/RECOVERYXLOG --store STORE
# Median segments/s over the rounds; peak RSS of one push and one get (/usr/bin/time -v).
#
# Usage: bench/archive.sh [--rounds N] [--segments N] [--tmpdir DIR] [--keep]
set -euo pipefail

ROUNDS=3
SEGS=24
TMPBASE=${TMPDIR:-/tmp}
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --segments) SEGS=$2; shift 2 ;;
    --tmpdir) TMPBASE=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "usage: bench/archive.sh [--rounds N] [--segments N] [--tmpdir DIR] [--keep]" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
PSQL=$PGBIN/psql
[ -x "$PGBIN/postgres" ] || { echo "archive.sh: PostgreSQL 15 missing in $PGBIN" >&2; exit 4; }
command -v zstd >/dev/null || { echo "archive.sh: needs zstd" >&2; exit 4; }
[ -n "${EPOCHREALTIME:-}" ] || { echo "archive.sh: needs bash >= 5" >&2; exit 4; }

WORK=
PM_PID=
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if alive "$PM_PID"; then
    as_owner "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate -w -t 60 stop >/dev/null 2>&1
    alive "$PM_PID" && kill -KILL "$PM_PID" 2>/dev/null
  fi
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$KEEP" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
die() { echo "archive.sh: $*" >&2; exit 1; }
note() { echo "# $*" >&2; }
now_us() { echo "${EPOCHREALTIME/./}"; }

note "building: cargo build --release -p pgbookend"
(cd "$ROOT" && cargo build --release --quiet -p pgbookend) || die "build failed"
WORK=$(mktemp -d "$TMPBASE/pgbookend-archbench.XXXXXX")
chmod 755 "$WORK"
BIN=$WORK/pgbookend
cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/pgbookend" "$BIN"
mkdir -p "$WORK/sock" "$WORK/segs" "$WORK/scratch/global" "$WORK/scratch/pg_wal"
mkdir -m 700 "$WORK/data"
touch "$WORK/server.log"
if [ "$(id -u)" = 0 ]; then chown -R postgres: "$WORK"; chown root: "$BIN"; fi

note "initdb in $WORK/data"
as_owner "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust -E UTF8 --locale=C \
  >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
as_owner "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 60 start -o \
  "-c listen_addresses='' -c unix_socket_directories='$WORK/sock' -c port=5432 -c wal_level=replica -c archive_mode=off -c max_wal_size=32GB -c checkpoint_timeout=1d" \
  >/dev/null || { cat "$WORK/server.log" >&2; die "server did not start"; }
PM_PID=$(head -1 "$WORK/data/postmaster.pid")
for v in $(env | sed -n 's/^\(PG[A-Z_]*\)=.*/\1/p'); do unset "$v"; done
export PGHOST=$WORK/sock PGPORT=5432 PGUSER=postgres PGDATABASE=postgres
q() { "$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 -c "$1"; }

note "writing $SEGS segments of inserts"
q "CREATE TABLE t (i bigint PRIMARY KEY, s text, ts timestamptz)"
i=0
while :; do
  q "INSERT INTO t SELECT g, md5(g::text), now() FROM generate_series($i + 1, $i + 200000) g"
  i=$((i + 200000))
  [ "$(ls "$WORK/data/pg_wal" | grep -c '^[0-9A-F]\{24\}$')" -gt $((SEGS + 1)) ] && break
done
q "SELECT pg_switch_wal()" >/dev/null
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
    push) as_owner bash -c 'cd '"$WORK"'/data && for f in '"$WORK"'/segs/*; do '"$BIN"' archive-push "$f" --store '"$dst"' || exit 1; done' ;;
  esac
  t1=$(now_us)
  echo "$COUNT $t0 $t1" | awk '{ printf "%.2f", $1 / (($3 - $2) / 1e6) }'
}
get_side() {
  local store=$1 t0 t1
  sync
  t0=$(now_us)
  as_owner bash -c 'cd '"$WORK"'/scratch && for f in '"$NAMES_LINE"'; do '"$BIN"' archive-get "$f" pg_wal/RECOVERYXLOG --store '"$store"' || exit 1; done'
  t1=$(now_us)
  echo "$COUNT $t0 $t1" | awk '{ printf "%.2f", $1 / (($3 - $2) / 1e6) }'
}
NAMES_LINE=$(echo $NAMES)
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
: >"$WORK/cp"; : >"$WORK/zstd"; : >"$WORK/push"; : >"$WORK/get"
for r in $(seq "$ROUNDS"); do
  for s in cp zstd push; do
    v=$(side "$s" "$WORK/out-$s"); echo "$v" >>"$WORK/$s"; note "round $r $s: $v segments/s"
  done
  v=$(get_side "$WORK/out-push"); echo "$v" >>"$WORK/get"; note "round $r get: $v segments/s"
done
one=$(echo "$NAMES" | head -1)
as_owner mkdir -p "$WORK/mem"
rss_push=$(cd "$WORK/data" && as_owner /usr/bin/time -v "$BIN" archive-push "$WORK/segs/$one" --store "$WORK/mem" 2>&1 | sed -n 's/.*Maximum resident set size (kbytes): //p')
rss_get=$(cd "$WORK/scratch" && as_owner /usr/bin/time -v "$BIN" archive-get "$one" pg_wal/RECOVERYXLOG --store "$WORK/mem" 2>&1 | sed -n 's/.*Maximum resident set size (kbytes): //p')
ratio=$(du -sk "$WORK/out-push" | cut -f1)
orig=$(du -sk "$WORK/segs" | cut -f1)

echo "### archive-push / archive-get — PostgreSQL 15, $COUNT segments of inserts"
echo
echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, kernel $(uname -r), work dir on $(df -T "$WORK" | awk 'NR==2 {print $2}'); $ROUNDS rounds, median; one process per segment"
echo
echo "| side | segments/s |"
echo "|---|---|"
echo "| cp + sync | $(median <"$WORK/cp") |"
echo "| zstd -3 + sync | $(median <"$WORK/zstd") |"
echo "| pgbookend archive-push (local store) | $(median <"$WORK/push") |"
echo "| pgbookend archive-get (local store) | $(median <"$WORK/get") |"
echo
echo "- archived size: $ratio KiB for $orig KiB of WAL; peak RSS: archive-push ${rss_push} KiB, archive-get ${rss_get} KiB"
