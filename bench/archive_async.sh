#!/usr/bin/env bash
# bench/archive_async.sh — issue 11: asynchronous `archive-push --async` (a local spool and
# a background pusher, --jobs 2) under a WAL burst, side by side in one run with
# pgBackRest 2.45's asynchronous archive-push (archive-async=y, process-max=2); zstd level 3
# for both, every segment to a local directory. Targets: the archiver keeps up (no growing
# `.ready` backlog), drains a backlog >= 2x as fast as pgBackRest's, pusher peak RSS <= 64 MB.
#
# One throwaway PostgreSQL 15 cluster (fsync on, archive_mode=on, wal_compression=off,
# max_wal_size 64GB and checkpoint_timeout 1d: no checkpoint while measuring). The sides
# take turns through `ALTER SYSTEM SET archive_command` + `pg_reload_conf()`; per run, in an
# order that alternates between runs, each side gets a fresh store / repository and spool,
# and before each measurement the table is truncated, CHECKPOINT recycles pg_wal and `sync`
# writes back dirty pages. WAL is written by two sessions inserting rows (no index) in
# 100,000-row transactions until SEGS segments are written, then pg_switch_wal().
#   drain  archiving paused (archive_command = '': PostgreSQL 15 keeps the segments .ready,
#          logs about one WARNING per segment and neither fails nor sleeps, so the reload
#          takes effect at once; 'false' would fail and sleep 1 s per retry), SEGS
#          segments written; then the side's archive_command and a reload: the time until
#          no pg_wal/archive_status/*.ready is left AND the side's archive holds every one
#          of them -> segments/s.
#   burst  the side's archive_command active from the start (one segment archived just
#          before), SEGS segments written as fast as the cluster can; the number of .ready files sampled every 100 ms: its maximum (overall and
#          in each half of the burst: "keeps up" = a small maximum that does not grow), and
#          the lag from the end of the burst until none is left and the archive holds all.
# The pusher's peak RSS is its VmHWM in /proc/PID/status (PID from SPOOL/SYSID/pid), sampled
# every 100 ms while it runs, with its CPU time and the files in its spool's ready/ (copies
# the server's calls made before the pusher got to the segment); archiver failures are
# pg_stat_archiver's failed_count.
# Every pusher and pgBackRest process is stopped by pid after each measurement and on exit.
#
# Usage: bench/archive_async.sh [--segments N] [--runs N] [--tmpdir DIR] [--keep] [--bin BIN]
#   --segments 256, --runs 2; --bin defaults to this tree's release build (built here).
#   Needs about 3 x SEGS x 16 MiB free in --tmpdir; ~1 min per 32 segments per run.
set -euo pipefail

SEGS=256 RUNS=2
# WAL names compare the same in sort, comm and the server (C collation).
export LC_ALL=C
# At exit the server stops at once: no final archiving cycle to wait for.
PM_STOP_MODE=immediate
SAMPLER_PID=
WRITER_PIDS=()
SPOOLS=()
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_parse "segments runs tmpdir keep bin" "$@"
[ "$SEGS" -ge 4 ] || bench_usage "--segments must be a number >= 4"
bench_pg_major 15
bench_need_pgbackrest "its rows are"
PGBACKREST=$PGBR_BIN
bench_room $((SEGS * 16384 * 3))
bench_binary archasync
# A = what the server's user writes: stores, repositories, spools, pgBackRest's locks.
A=$WORK/arch
mkdir -p "$A" "$WORK/raw"
[ "$(id -u)" = 0 ] && chown postgres: "$A"

# ---- processes we start, stopped by pid ----------------------------------------------

# pusher_pid TAG: the pid of the pusher of spool TAG while it is ours and alive.
pusher_pid() {
  local pid a0 a1 f
  for f in "$A/spool-$1"/*/pid; do
    read -r pid 2>/dev/null <"$f" || continue
    { read -r -d '' a0; read -r -d '' a1; } 2>/dev/null <"/proc/$pid/cmdline" || continue
    [ "$a0" = "$BIN" ] && [ "$a1" = __archive-pusher ] && echo "$pid"
  done
  return 0
}

# pgbr_pids: pgBackRest processes running with this bench's configuration (the archiver's
# archive-push calls and their async process).
pgbr_pids() {
  local d arg
  for d in /proc/[0-9]*; do
    while IFS= read -r -d '' arg; do
      if [ "$arg" = "--config=$WORK/pgbr.conf" ]; then echo "${d#/proc/}"; break; fi
    done 2>/dev/null <"$d/cmdline" || true
  done
}

# stop_pids PID...: TERM, up to 5 s to exit, then KILL.
stop_pids() {
  local p
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 50); do
    for p in "$@"; do alive "$p" && break; done
    alive "$p" || return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
}

# stop_archivers TAG: the side's leftovers after a measurement: the pusher (it would exit
# 10 s after its last push) and pgBackRest's async process (it exits once idle: 30 s).
stop_archivers() {
  # shellcheck disable=SC2046
  stop_pids $(pusher_pid "$1")
  for _ in $(seq 300); do
    [ -z "$(pgbr_pids)" ] && return 0
    sleep 0.1
  done
  note "pgBackRest processes still running after 30 s: stopping them"
  # shellcheck disable=SC2046
  stop_pids $(pgbr_pids)
}

bench_cleanup_first() {
  alive "$SAMPLER_PID" && kill "$SAMPLER_PID" 2>/dev/null
  local p
  for p in "${WRITER_PIDS[@]}"; do alive "$p" && kill "$p" 2>/dev/null; done
  return 0
}
# After the server has stopped (no archive_command can start a pusher any more).
bench_cleanup_last() {
  local t
  for t in "${SPOOLS[@]}"; do
    # shellcheck disable=SC2046
    stop_pids $(pusher_pid "$t")
  done
  # shellcheck disable=SC2046
  [ -n "$PGBACKREST" ] && stop_pids $(pgbr_pids)
  return 0
}

# ---- the cluster -------------------------------------------------------------------------

bench_start_cluster -- -c archive_mode=on -c wal_compression=off -c max_wal_size=64GB \
  -c checkpoint_timeout=1d
STATUS=$WORK/data/pg_wal/archive_status
SEGSIZE=$(q -c "SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
q -c "CREATE TABLE t (i bigint, s text, ts timestamptz)"
if [ -n "$PGBACKREST" ]; then
  PGBR_VERSION=$("$PGBACKREST" version | awk '{ print $2 }')
  bench_pgbr_wal_conf "$WORK/pgbr.conf" archive-async=y process-max=2 "log-path=$A/pgbr-log"
fi
note "PostgreSQL $PGV, segments of $((SEGSIZE / 1048576)) MiB, pgBackRest ${PGBR_VERSION:-none}"

ready_count() {
  local f=("$STATUS"/*.ready)
  if [ -e "${f[0]}" ]; then echo "${#f[@]}"; else echo 0; fi
}
failed_count() { q -c "SELECT failed_count FROM pg_stat_archiver"; }

# set_archive CMD [reload]: ALTER SYSTEM SET archive_command (the reload is separate, so
# that it can be timed alone).
set_archive() {
  q -c "ALTER SYSTEM SET archive_command = '$1'"
  [ "${2:-reload}" = reload ] && q -c "SELECT pg_reload_conf()" >/dev/null
  return 0
}

# side_prepare SIDE TAG: a fresh, empty archive (and pgBackRest's stanza in it).
side_prepare() {
  as_owner mkdir "$A/store-$2"
  SPOOLS+=("$2")
  if [ "$1" = pgbackrest ]; then
    as_owner "$PGBACKREST" --config="$WORK/pgbr.conf" --stanza=bench --repo1-path="$A/store-$2" \
      stanza-create >/dev/null || die "pgbackrest stanza-create failed"
  fi
}

# side_command SIDE TAG: the side's archive_command.
side_command() {
  case "$1" in
    pgbookend) echo "$BIN archive-push --async --spool $A/spool-$2 --jobs 2 --compress-level 3 --store $A/store-$2 %p" ;;
    pgbackrest) echo "$PGBACKREST --config=$WORK/pgbr.conf --stanza=bench --repo1-path=$A/store-$2 --spool-path=$A/spool-$2 archive-push %p" ;;
  esac
}

# archived TAG: the WAL names the side's archive holds (both name objects NAME-HASH.zst).
archived() {
  find "$A/store-$1/archive" -name '*.zst' -printf '%f\n' 2>/dev/null |
    sed -n 's/^\([0-9A-F]\{24\}\)-[0-9a-f]*\.zst$/\1/p' | sort -u
}

# wait_archived TAG NAMES_FILE: waits until no .ready is left and the archive holds every
# name of NAMES_FILE (sorted); dies after a timeout that grows with the segment count.
wait_archived() {
  local deadline=$(($(now_us) + (120 + 2 * SEGS) * 1000000))
  while [ "$(now_us)" -lt "$deadline" ]; do
    if [ "$(ready_count)" = 0 ] && [ -z "$(comm -23 "$2" <(archived "$1"))" ]; then return 0; fi
    sleep 0.05
  done
  q -c "SELECT * FROM pg_stat_archiver" >&2
  tail -5 "$WORK/server.log" >&2
  die "$1: not archived after $((120 + 2 * SEGS)) s ($(ready_count) .ready left)"
}

# sampler OUT TAG: every 100 ms, "time_us ready_count" and, while the pusher of spool TAG
# runs, "VmHWM_kB cpu_ticks spooled_files pid" (else "0 0 0 0"); builtins only (no fork
# but sleep), so that it costs next to nothing.
sampler() {
  local f n p pid hwm k v a0 a1 st r
  while :; do
    f=("$STATUS"/*.ready)
    n=${#f[@]}; [ -e "${f[0]}" ] || n=0
    r="0 0 0 0"
    for p in "$A/spool-$2"/*/pid; do
      read -r pid 2>/dev/null <"$p" || continue
      { read -r -d '' a0; read -r -d '' a1; } 2>/dev/null <"/proc/$pid/cmdline" || continue
      if [ "$a0" != "$BIN" ] || [ "$a1" != __archive-pusher ]; then continue; fi
      hwm=0
      while read -r k v _; do [ "$k" = VmHWM: ] && hwm=$v; done 2>/dev/null <"/proc/$pid/status" || true
      read -r -a st 2>/dev/null <"/proc/$pid/stat" || continue
      f=("${p%/pid}"/ready/*)
      k=${#f[@]}; [ -e "${f[0]}" ] || k=0
      r="$hwm $((st[13] + st[14])) $k $pid"
    done
    echo "${EPOCHREALTIME/./} $n $r"
    sleep 0.1
  done >"$1"
}
sampler_start() { sampler "$1" "$2" & SAMPLER_PID=$!; }
sampler_stop() { kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=; }

# write_wal: two sessions insert rows, 100,000 per transaction, until SEGS segments of WAL
# are written from now.
write_wal() {
  local start p rc=0
  start=$(q -c "SELECT pg_current_wal_lsn()")
  WRITER_PIDS=()
  for _ in 1 2; do
    q -c "DO \$\$ BEGIN
            WHILE pg_current_wal_lsn() - '$start'::pg_lsn < $SEGS::numeric * $SEGSIZE LOOP
              INSERT INTO t SELECT g, md5(g::text), now() FROM generate_series(1, 100000) g;
              COMMIT;
            END LOOP;
          END \$\$" &
    WRITER_PIDS+=($!)
  done
  for p in "${WRITER_PIDS[@]}"; do wait "$p" || rc=$?; done
  WRITER_PIDS=()
  [ "$rc" = 0 ] || die "writing WAL failed"
}

# fresh_start: an empty table, a checkpoint that recycles pg_wal, dirty pages written back.
fresh_start() {
  q -c "TRUNCATE t"
  q -c "CHECKPOINT"
  sync
}

# finish SIDE TAG SAMPLES: after a measurement: STATS = its archive size (KiB), and from the
# samples the pusher's VmHWM (kB), CPU seconds (user + system, during the measurement) and
# most files in its spool; then the side's processes are stopped and the archive removed.
finish() {
  STATS="$(du -sk "$A/store-$2" | cut -f1) $(awk -v hz="$(getconf CLK_TCK)" '
    NR == 1 { p0 = $6; c0 = $4 }
    $3 > h { h = $3 } $5 > s { s = $5 }
    $6 != 0 { p = $6; c = $4 }
    END { if (p != p0) c0 = 0; printf "%d %.2f %d", h, (c - c0) / hz, s }' "$3")"
  stop_archivers "$2"
  rm -rf "$A/store-$2" "$A/spool-$2"
}

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1e6 }'; }

# drain SIDE RUN: archiving paused, SEGS segments written, then the side's archive_command;
# appends "drain SIDE RUN COUNT SECONDS SEG/S - - - - FAILED STATS" to $WORK/results.
drain() {
  local side=$1 run=$2 tag="drain-$1-$2" t0 t1 f0 count
  set_archive ''
  fresh_start
  write_wal
  q -c "SELECT pg_switch_wal()" >/dev/null
  find "$STATUS" -name '*.ready' -printf '%f\n' | sed -n 's/^\([0-9A-F]\{24\}\)\.ready$/\1/p' | sort >"$WORK/raw/$tag.names"
  count=$(wc -l <"$WORK/raw/$tag.names")
  side_prepare "$side" "$tag"
  sync
  f0=$(failed_count)
  set_archive "$(side_command "$side" "$tag")" no
  sampler_start "$WORK/raw/$tag.samples" "$tag"
  t0=$(now_us)
  q -c "SELECT pg_reload_conf()" >/dev/null
  wait_archived "$tag" "$WORK/raw/$tag.names"
  t1=$(now_us)
  sampler_stop
  finish "$side" "$tag" "$WORK/raw/$tag.samples"
  echo "drain $side $run $count $(elapsed "$t0" "$t1") $(awk -v n="$count" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", n / ((b - a) / 1e6) }') - - - - $(($(failed_count) - f0)) $STATS" >>"$WORK/results"
  note "run $run drain $side: $count segments in $(elapsed "$t0" "$t1") s"
}

# burst SIDE RUN: the side archiving from the start, SEGS segments written as fast as the
# cluster can; appends "burst SIDE RUN COUNT SECONDS WRITE_SEG/S MAX MAX1 MAX2 LAG FAILED
# STATS" (MAX1/MAX2: the maximum backlog in each half of the burst) to $WORK/results.
burst() {
  local side=$1 run=$2 tag="burst-$1-$2" start end t0 t1 t2 f0 count s
  side_prepare "$side" "$tag"
  set_archive "$(side_command "$side" "$tag")"
  fresh_start
  q -c "SELECT pg_switch_wal()" >/dev/null
  for _ in $(seq 600); do [ "$(ready_count)" = 0 ] && break; sleep 0.1; done
  [ "$(ready_count)" = 0 ] || die "$side: the segment before the burst was not archived"
  f0=$(failed_count)
  start=$(q -c "SELECT pg_current_wal_lsn()")
  sampler_start "$WORK/raw/$tag.samples" "$tag"
  t0=$(now_us)
  write_wal
  end=$(q -c "SELECT pg_switch_wal()")
  t1=$(now_us)
  q -c "SELECT DISTINCT pg_walfile_name('0/0'::pg_lsn + g)
          FROM generate_series('$start'::pg_lsn - '0/0', '$end'::pg_lsn - '0/0', $SEGSIZE) g
        UNION SELECT pg_walfile_name('$end') ORDER BY 1" >"$WORK/raw/$tag.names"
  count=$(wc -l <"$WORK/raw/$tag.names")
  wait_archived "$tag" "$WORK/raw/$tag.names"
  t2=$(now_us)
  sampler_stop
  s=$(awk -v a="$t0" -v b="$t1" '
    $1 <= b && $2 > m { m = $2 }
    $1 <= (a + b) / 2 && $2 > m1 { m1 = $2 }
    $1 > (a + b) / 2 && $1 <= b && $2 > m2 { m2 = $2 }
    END { print m + 0, m1 + 0, m2 + 0 }' "$WORK/raw/$tag.samples")
  finish "$side" "$tag" "$WORK/raw/$tag.samples"
  echo "burst $side $run $count $(elapsed "$t0" "$t1") $(awk -v n="$count" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", n / ((b - a) / 1e6) }') $s $(elapsed "$t1" "$t2") $(($(failed_count) - f0)) $STATS" >>"$WORK/results"
  note "run $run burst $side: $count segments in $(elapsed "$t0" "$t1") s, max backlog $s, lag $(elapsed "$t1" "$t2") s"
}

# ---- the runs ------------------------------------------------------------------------------

SIDES=(pgbookend)
[ -n "$PGBACKREST" ] && SIDES+=(pgbackrest)
: >"$WORK/results"
warn0=$(grep -c 'yet archiving is not configured' "$WORK/server.log" || true)
for run in $(seq "$RUNS"); do
  order=("${SIDES[@]}")
  if [ $((run % 2)) = 0 ] && [ "${#SIDES[@]}" = 2 ]; then order=(pgbackrest pgbookend); fi
  for side in "${order[@]}"; do drain "$side" "$run"; done
  for side in "${order[@]}"; do burst "$side" "$run"; done
done
warns=$(($(grep -c 'yet archiving is not configured' "$WORK/server.log" || true) - warn0))

# ---- the report ------------------------------------------------------------------------------

# col KIND SIDE FIELD: the field (1-based, of the results line) of every run, one per line.
col() { awk -v k="$1" -v s="$2" -v f="$3" '$1 == k && $2 == s { print $f }' "$WORK/results"; }
label() {
  case "$1" in
    pgbookend) echo "pgbookend archive-push --async (--jobs 2, zstd 3)" ;;
    pgbackrest) echo "pgBackRest $PGBR_VERSION archive-push, archive-async (process-max 2, zst 3)" ;;
  esac
}
runs_of() { col "$@" | paste -sd / | sed 's,/, / ,g'; }
d_ours=$(col drain pgbookend 6 | median 2)
echo "### archive-push --async under a WAL burst — PostgreSQL $PGV, $SEGS segments per measurement"
echo
echo "- $(bench_when), $(nproc) CPUs, kernel $(uname -r), work dir on $(bench_fs); $RUNS runs (order alternating), median; wal_compression off, inserts without an index; 2 writing sessions"
echo
echo "Backlog drain (archiving paused while the segments are written, then switched on):"
echo
bench_table "side" "segments/s drained" "runs" "ratio to pgBackRest"
for side in "${SIDES[@]}"; do
  v=$(col drain "$side" 6 | median 2)
  r="—"
  [ -n "$PGBACKREST" ] && r=$(awk -v a="$v" -v b="$(col drain pgbackrest 6 | median 2)" 'BEGIN { printf "%.2fx", a / b }')
  echo "| $(label "$side") | $v | $(runs_of drain "$side" 6) | $r |"
done
echo
echo "Live burst (the side archiving from the start; .ready files sampled every 100 ms):"
echo
bench_table "side" "burst write rate (segments/s)" "max backlog (.ready)" "max in 1st / 2nd half of the burst" "lag after the burst (s)"
for side in "${SIDES[@]}"; do
  echo "| $(label "$side") | $(col burst "$side" 6 | median 2) | $(col burst "$side" 7 | median) ($(runs_of burst "$side" 7)) | $(awk -v k=burst -v s="$side" '$1 == k && $2 == s { printf "%s%s / %s", (n++ ? ", " : ""), $8, $9 }' "$WORK/results") | $(col burst "$side" 10 | median 2) ($(runs_of burst "$side" 10)) |"
done
echo
echo "Raw runs (seconds: of the drain, or of the burst's writing; lag: from the end of the burst):"
echo
bench_table "run" "measurement" "side" "segments" "seconds" "segments/s" "max backlog" "lag (s)" "archiver failures" "archive KiB" "pusher VmHWM kB" "pusher CPU s" "most files in the spool"
sort -k3,3n -k1,1 "$WORK/results" | awk '{ o = $2 == "pgbookend"; printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $3, $1, $2, $4, $5, $6, $7, $10, $11, $12, (o ? $13 : "—"), (o ? $14 : "—"), (o ? $15 : "—") }'
echo
hwm=$(awk '$2 == "pgbookend" && $13 > m { m = $13 } END { print m + 0 }' "$WORK/results")
echo "- pusher peak RSS (VmHWM, largest over all measurements): $hwm kB ($(awk -v k="$hwm" 'BEGIN { printf "%.1f", k / 1024 }') MiB; target <= 64 MB)"
echo "- drain ratio pgbookend / pgBackRest: $([ -n "$PGBACKREST" ] && awk -v a="$d_ours" -v b="$(col drain pgbackrest 6 | median 2)" 'BEGIN { printf "%.2fx", a / b }' || echo "—") (target >= 2x)"
echo "- while archiving was paused the server logged $warns 'yet archiving is not configured' warnings"
