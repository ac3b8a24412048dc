#!/usr/bin/env bash
# bench/recovery.sh — issue 11, recovery through `archive-get`: PostgreSQL's archive recovery
# of SEGS (>= 256) segments with `pgbookend archive-get --prefetch 8` as restore_command,
# side by side in one run with `cp` from a directory of uncompressed segments (the issue's
# reference) and pgBackRest 2.45's `archive-get` (Debian's, installed if missing).
# Targets: pgbookend within 1.2x of `cp`, faster than pgBackRest (the ratio is reported);
# peak memory of one archive-get call <= 64 MB. `cp` is not quite the floor: the server
# waits for each copy before replaying it, so a prefetching restore_command can beat it;
# the row `replay` (segments already in pg_wal) is the floor, replay alone.
#
# One throwaway PostgreSQL 15 cluster (wal_compression off, no checkpoint while writing)
# whose archive_command writes every segment to three archives: `cp` into a directory,
# `pgbookend archive-push` into a local store, and `pgbackrest archive-push` (a local
# repository, zst level 3). A base backup (pg_basebackup -X none: the WAL comes from the
# archives), then SEGS segments of table inserts, pg_switch_wal(), every segment archived,
# the cluster stopped, every archive read once (warm cache). Then --runs times each side,
# the order shuffled per run: the base backup copied to a fresh directory (not timed),
# recovery.signal and restore_command written, the server started (pg_ctl without -w) and
# timed until its log says "archive recovery complete" (polled every 50 ms; the
# end-of-recovery checkpoint is not counted), stopped (immediate), the directory removed.
# Sides (restore_command):
#   replay                false: every segment already in the copy's pg_wal (copied there
#                         before the clock starts), the true floor: replay alone
#   cp                    cp ARCHIVE/%f %p
#   pgbookend             pgbookend archive-get %f %p --store STORE --prefetch 8
#   pgbookend-noprefetch  pgbookend archive-get %f %p --store STORE
#   pgbackrest            pgbackrest ... archive-get %f "%p"
#   pgbackrest-async      the same with --archive-async --process-max=2 (pgBackRest's own
#                         prefetch: its queue, 128 MiB by default, is 8 segments, as
#                         --prefetch 8; added so that prefetch is also compared with prefetch)
# The first recovery of each side is checked (not timed): count(*) of the table equals the
# source's, so that a side that stopped early cannot look fast.
# Peak RSS (/usr/bin/time -v) of one archive-get call without prefetch, and the peak
# (VmHWM, sampled every 20 ms) of the prefetch worker one call with --prefetch 8 starts.
# Without pgbackrest its rows are left out.
#
# Usage: bench/recovery.sh [--segments N] [--runs N] [--sides A,B,...] [--bin BIN] [--tmpdir DIR] [--keep]
#   --segments 256, --runs 3, --sides all of the above; --bin defaults to this tree's release
#   build (built here).
# Everything it starts (servers, prefetch workers) is stopped by pid on exit, also on failure.
set -euo pipefail

SEGS=256 RUNS=3 SIDES_OPT=
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_parse "segments runs bin tmpdir keep --sides:SIDES_OPT" "$@"
bench_pg_major 15
bench_need_time
bench_need_pgbackrest "its rows are"
ALL_SIDES=(replay cp pgbookend pgbookend-noprefetch)
[ -n "$PGBR_BIN" ] && ALL_SIDES+=(pgbackrest pgbackrest-async)
SIDES=("${ALL_SIDES[@]}")
[ -n "$SIDES_OPT" ] && IFS=, read -r -a SIDES <<<"$SIDES_OPT"
for s in "${SIDES[@]}"; do
  [[ " ${ALL_SIDES[*]} " = *" $s "* ]] || die "unknown or unavailable side $s (sides: ${ALL_SIDES[*]})"
done
# WAL in pg_wal, the plain archive and the replay side's copy, two compressed archives, the
# base backup and its copies.
bench_room $((SEGS * 16384 * 6 + 4194304))

bench_binary recovery
COPY=$WORK/copy
mkdir -p "$WORK/arch-cp" "$WORK/store" "$WORK/pgbr/repo" "$WORK/pgbr/spool" "$WORK/pgbr/lock" \
  "$WORK/scratch/global" "$WORK/scratch/pg_wal"
if [ "$(id -u)" = 0 ]; then chown -R postgres: "$WORK"; chown root: "$BIN"; fi

# Processes of ours that outlive a recovery: pgbookend's prefetch workers (our private copy
# of the binary) and pgBackRest's asynchronous archive-get (our private configuration).
our_workers() {
  local p args
  for p in /proc/[0-9]*; do
    # No process per entry (mapfile is a builtin): a scan takes milliseconds.
    mapfile -d '' -t args 2>/dev/null <"$p/cmdline" || continue
    if [ "${args[0]:-}" = "$WORK/pgbookend" ] && [ "${args[1]:-}" = __archive-prefetch ]; then
      echo "${p#/proc/}"
    elif [ "${args[0]:-}" = "$PGBR_BIN" ] && [[ " ${args[*]} " = *" --config=$WORK/pgbr/pgbackrest.conf "* ]]; then
      echo "${p#/proc/}"
    fi
  done
}
# reap_workers: waits up to 10 s for them to finish, then kills what is left, by pid.
reap_workers() {
  local p left
  for _ in $(seq 100); do
    left=$(our_workers)
    [ -z "$left" ] && return 0
    sleep 0.1
  done
  for p in $left; do kill -KILL "$p" 2>/dev/null || true; done
}
bench_cleanup_first() { [ -n "$WORK" ] || return 0; stop_pm "$COPY" "$PM2_PID" immediate; reap_workers; }

# archive_command: every segment into the three archives (each idempotent for the same bytes).
cat >"$WORK/archive-cmd" <<CMD
#!/bin/sh
set -e
cp "\$1" "$WORK/arch-cp/\$2"
"$BIN" archive-push "\$1" --store "$WORK/store"
if [ -n "$PGBR_BIN" ]; then "$PGBR_BIN" --config="$WORK/pgbr/pgbackrest.conf" --stanza=bench archive-push "\$1"; fi
CMD
chmod 755 "$WORK/archive-cmd"
bench_pgbr_wal_conf "$WORK/pgbr/pgbackrest.conf" "repo1-path=$WORK/pgbr/repo"
SERVER_OPTS="-c max_wal_size=32GB -c checkpoint_timeout=1d -c wal_compression=off"
# shellcheck disable=SC2086
bench_start_cluster -- -c archive_mode=on -c "archive_command='$WORK/archive-cmd %p %f'" $SERVER_OPTS
if [ -n "$PGBR_BIN" ]; then
  as_owner "$PGBR_BIN" --config="$WORK/pgbr/pgbackrest.conf" --stanza=bench stanza-create >/dev/null ||
    die "pgbackrest stanza-create failed"
fi

note "base backup (pg_basebackup -X none)"
as_owner "$PGBIN/pg_basebackup" -D "$WORK/base" -X none -c fast || die "pg_basebackup failed"
FIRST=$(sed -n 's/^START WAL LOCATION: .*(file \([0-9A-F]\{24\}\)).*/\1/p' "$WORK/base/backup_label")
[ -n "$FIRST" ] || die "no start segment in the base backup's backup_label"
cp "$WORK/base/global/pg_control" "$WORK/scratch/global/pg_control"
[ "$(id -u)" = 0 ] && chown -R postgres: "$WORK/scratch"

bench_write_segments "$SEGS"
LAST=$(q -c "SELECT pg_walfile_name(pg_switch_wal())")
ROWS=$(q -c "SELECT count(*) FROM t")
note "waiting until $LAST is archived"
for _ in $(seq 18000); do
  [ "$(q -c "SELECT coalesce(last_archived_wal, '') >= '$LAST' FROM pg_stat_archiver")" = t ] && break
  sleep 0.1
done
[ "$(q -c "SELECT coalesce(last_archived_wal, '') >= '$LAST' FROM pg_stat_archiver")" = t ] ||
  die "$LAST not archived: $(q -c "SELECT last_failed_wal FROM pg_stat_archiver")"
stop_pm "$WORK/data" "$PM_PID"
segno() { echo $((16#${1:8:8} * 256 + 16#${1:16:8})); }
COUNT=$(($(segno "$LAST") - $(segno "$FIRST") + 1))
[ -f "$WORK/arch-cp/$LAST" ] || die "$LAST is missing from the plain archive"
note "$COUNT segments to replay ($FIRST .. $LAST), $ROWS rows; archives: plain $(du -sm "$WORK/arch-cp" | cut -f1) MB," \
  "pgbookend $(du -sm "$WORK/store" | cut -f1) MB, pgbackrest $(du -sm "$WORK/pgbr/repo" | cut -f1) MB"
find "$WORK/arch-cp" "$WORK/store" "$WORK/pgbr/repo" -type f -exec cat {} + >/dev/null
sync

restore_command() { # restore_command SIDE
  local pgbr="$PGBR_BIN --config=$WORK/pgbr/pgbackrest.conf --stanza=bench --pg1-path=$COPY"
  case "$1" in
    cp) echo "cp $WORK/arch-cp/%f %p" ;;
    pgbookend) echo "$BIN archive-get %f %p --store $WORK/store --prefetch 8" ;;
    pgbookend-noprefetch) echo "$BIN archive-get %f %p --store $WORK/store" ;;
    pgbackrest) echo "$pgbr archive-get %f \"%p\"" ;;
    pgbackrest-async) echo "$pgbr --archive-async --process-max=2 archive-get %f \"%p\"" ;;
    replay) echo "false" ;;
  esac
}
# recover SIDE RUN: one timed recovery; its milliseconds go to $WORK/ms-SIDE.
recover() {
  local side=$1 n=$2 log="$WORK/recovery-$1-$2.log" t0 t1
  rm -rf "$COPY"
  cp -a "$WORK/base" "$COPY"
  # The replay floor: every segment already in pg_wal (restore_command fails, the server
  # falls back to pg_wal), copied, not linked: the server recycles and rewrites them.
  [ "$side" = replay ] && cp "$WORK"/arch-cp/* "$COPY/pg_wal/"
  touch "$COPY/recovery.signal"
  echo "restore_command = '$(restore_command "$side")'" >>"$COPY/postgresql.auto.conf"
  : >"$log"
  [ "$(id -u)" = 0 ] && chown -R postgres: "$COPY" "$log"
  chmod 700 "$COPY"
  sync
  cut -d' ' -f1 /proc/loadavg >>"$WORK/load-$side"
  t0=$(now_us)
  as_owner "$PGBIN/pg_ctl" -D "$COPY" -l "$log" -o \
    "-c listen_addresses='' -c unix_socket_directories='$WORK/sock' -c port=5432 -c archive_mode=off $SERVER_OPTS" \
    start >/dev/null || { cat "$log" >&2; die "$side run $n: the server did not start"; }
  for _ in $(seq 200); do [ -s "$COPY/postmaster.pid" ] && break; sleep 0.05; done
  PM2_PID=$(head -1 "$COPY/postmaster.pid" 2>/dev/null || true)
  alive "$PM2_PID" || { cat "$log" >&2; die "$side run $n: no postmaster"; }
  until grep -q "archive recovery complete" "$log"; do
    alive "$PM2_PID" || { tail -20 "$log" >&2; die "$side run $n: the server stopped during recovery"; }
    sleep 0.05
  done
  t1=$(now_us)
  echo "$(((t1 - t0) / 1000))" >>"$WORK/ms-$side"
  if [ ! -f "$WORK/checked-$side" ]; then
    until grep -q "database system is ready to accept connections" "$log"; do
      alive "$PM2_PID" || die "$side run $n: the server stopped after recovery"
      sleep 0.05
    done
    local got
    got=$(q -c "SELECT count(*) FROM t")
    [ "$got" = "$ROWS" ] || die "$side run $n: $got rows after recovery, the source had $ROWS"
    echo "$got" >"$WORK/checked-$side"
  fi
  stop_pm "$COPY" "$PM2_PID" immediate
  PM2_PID=
  reap_workers
  # pgBackRest's asynchronous queue must not serve the next run.
  rm -rf "$COPY" "$WORK/pgbr/spool/archive"
}

for n in $(seq "$RUNS"); do
  for s in $(bench_shuffled "$n" "${SIDES[@]}"); do
    recover "$s" "$n"
    note "run $n $s: $(tail -1 "$WORK/ms-$s") ms"
  done
done

# Memory: one archive-get call (no prefetch), then the worker one call with --prefetch 8 starts.
rss_get=$(cd "$WORK/scratch" && as_owner /usr/bin/time -v "$BIN" archive-get "$FIRST" pg_wal/RECOVERYXLOG \
  --store "$WORK/store" 2>&1 | sed -n 's/.*Maximum resident set size (kbytes): //p')
(cd "$WORK/scratch" && as_owner "$BIN" archive-get "$FIRST" pg_wal/RECOVERYXLOG --store "$WORK/store" --prefetch 8) ||
  die "archive-get --prefetch 8 failed"
hwm=0
for _ in $(seq 1500); do
  w=$(our_workers)
  [ -z "$w" ] && break
  for p in $w; do
    v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$p/status" 2>/dev/null || true)
    [ -n "$v" ] && [ "$v" -gt "$hwm" ] && hwm=$v
  done
  sleep 0.02
done
reap_workers

ms() { median 0 <"$WORK/ms-$1"; }
# vs A B [NOTE]: "A / B = R", when both sides ran.
vs() { [ -f "$WORK/ms-$1" ] && [ -f "$WORK/ms-$2" ] && echo "- $1 / $2 = $(ratio "$(ms "$1")" "$(ms "$2")")${3:+ ($3)}"; return 0; }
echo "### Recovery through archive-get — PostgreSQL 15, $COUNT segments of inserts"
echo
echo "- $(bench_when), $(nproc) CPUs, kernel $(uname -r), work dir on $(bench_fs); $RUNS runs, median, order shuffled per run;" \
  "time from server start to \"archive recovery complete\"; archives in the page cache"
[ -n "$PGBR_BIN" ] && echo "- pgBackRest $("$PGBR_BIN" version | awk '{ print $2 }')"
echo
bench_table "side" "median recovery (s)" "ratio to cp" "segments/s"
for s in "${SIDES[@]}"; do
  m=$(ms "$s")
  r=-
  [ -f "$WORK/ms-cp" ] && r=$(ratio "$m" "$(ms cp)")
  printf '| %s | %s | %s | %s |\n' "$s" "$(awk -v m="$m" 'BEGIN { printf "%.2f", m / 1000 }')" \
    "$r" "$(awk -v c="$COUNT" -v m="$m" 'BEGIN { printf "%.1f", c / (m / 1000) }')"
done
echo
vs pgbookend cp "target <= 1.2x"
vs pgbookend replay
vs pgbookend-noprefetch cp
vs pgbackrest pgbookend "target > 1"
vs pgbackrest-async pgbookend
vs pgbookend-noprefetch pgbookend "what prefetch buys"
# raw SIDE: "MS (load L), ..." of every run of SIDE, with the 1-minute load average before it.
raw() { paste -d' ' "$WORK/ms-$1" "$WORK/load-$1" | awk '{ printf "%s%s (load %s)", (NR > 1 ? ", " : ""), $1, $2 }'; }
echo "- raw runs, ms (1-minute load average before the run; the machine has $(nproc) CPUs):"
for s in "${SIDES[@]}"; do echo "  - $s: $(raw "$s")"; done
echo "- correctness: after the first recovery of each side count(*) = $ROWS rows, as on the source" \
  "($(for s in "${SIDES[@]}"; do printf '%s %s; ' "$s" "$(cat "$WORK/checked-$s")"; done | sed 's/; $//'))"
echo "- peak RSS: one archive-get call $((rss_get / 1024)) MB; the --prefetch 8 worker (VmHWM, sampled)" \
  "$((hwm / 1024)) MB (target <= 64 MB)"
