#!/usr/bin/env bash
# bench/prepare.sh — "`prepare` on a 5 GB copy: its cost must not grow with the data size
# except for the file-list check; report the time for 1 GB and 5 GB side by side, and the
# file-list check against `find` on the same tree."
#
# One throwaway PostgreSQL 15 cluster (fsync on, wal_level replica, default max_wal_size).
# For each pgbench scale (default 70, about 1 GB, and 340, about 5 GB):
#   pgbench -i -s SCALE; CHECKPOINT; du of PGDATA
#   pgbookend start --id ID --store STORE    (default --wal collect; the cluster stays idle)
#   cp -a PGDATA COPY0                       (the copy, during the window)
#   pgbookend stop --id ID --no-wait-archive; sync
#   then, on COPY0 (same filesystem, page cache warm), interleaved, --runs times:
#     find COPY0 -type f | wc -l
#     pgbookend prepare --pgdata COPY0 --store STORE --dry-run    (every check, no change)
#   and `prepare` itself (it changes the copy, so each run gets a fresh `cp -a COPY0 COPY`):
#     once right after the cp (the copy's data still dirty in the page cache), then --runs
#     times after a `sync` (timed, peak RSS)
#   then a server is started on the last prepared COPY (other port) as a sanity check: it must
#   recover and count SCALE rows in pgbench_branches; stopped; the copies and bundle removed.
# Prints a Markdown table on stdout, progress on stderr. Needs about 5x the largest data size
# free on --tmpdir (data + its WAL + two copies); checks `df` first.
#
# Usage: bench/prepare.sh [--scales "70 340"] [--runs N] [--tmpdir DIR] [--keep]
# Everything it starts (postgres servers, agents) is stopped by pid on exit, also on failure.
set -euo pipefail

SCALES="70 340"
RUNS=3
TMPBASE=${TMPDIR:-/tmp}
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --scales) SCALES=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --tmpdir) TMPBASE=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "prepare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
NAME=prepare.sh
PGBIN=/usr/lib/postgresql/15/bin
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
[ -x "$PGBIN/postgres" ] || die "PostgreSQL 15 missing in $PGBIN"
[ -n "${EPOCHREALTIME:-}" ] || die "needs bash >= 5"
bench_need_time

# Room: the largest scale takes about 15 MB per scale unit, three times over (data, WAL, copy).
MAXS=$(echo "$SCALES" | tr ' ' '\n' | sort -n | tail -1)
bench_room $((MAXS * 15 * 1024 * 5))

bench_build
bench_workdir prepbench
BIN=$WORK/pgbookend
cp "$ROOT/target/release/pgbookend" "$BIN"
BIN_SHA=$(sha256sum "$BIN" | cut -c1-12)
RUNDIR=$WORK/run
STORE=$WORK/store
mkdir -p "$STORE"
bench_start_cluster
kb_h() { awk -v k="$1" 'BEGIN { if (k >= 1048576) printf "%.2f GiB", k / 1048576; else printf "%.0f MiB", k / 1024 }'; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$WORK/rows"
for S in $SCALES; do
  note "scale $S: pgbench -i"
  t0=$(now_us)
  "$PGBIN/pgbench" -i -q -s "$S" >"$WORK/pgbench.log" 2>&1 || { tail "$WORK/pgbench.log" >&2; die "pgbench -i failed"; }
  q -c "CHECKPOINT" >/dev/null
  t1=$(now_us)
  DATA_KB=$(du -sk --exclude=pg_wal "$WORK/data" | cut -f1)
  note "scale $S: loaded in $(( (t1 - t0) / 1000000 )) s, PGDATA without pg_wal $(kb_h "$DATA_KB")"
  ID=prep-s$S-$RANDOM
  "$BIN" start --id "$ID" --store "$STORE" --run-dir "$RUNDIR" >"$WORK/start.out" 2>&1 ||
    { cat "$WORK/start.out" >&2; die "start failed"; }
  apid=$("$BIN" status --id "$ID" --json --run-dir "$RUNDIR" | sed -n 's/.*"agent_pid": *\([0-9]*\).*/\1/p' | head -1)
  [ -n "$apid" ] && AGENT_PIDS+=("$apid")
  t0=$(now_us)
  cp -a "$WORK/data" "$WORK/copy0"
  t1=$(now_us)
  CP_US=$((t1 - t0))
  "$BIN" stop --id "$ID" --no-wait-archive --json --run-dir "$RUNDIR" >"$WORK/stop.json" 2>"$WORK/stop.err" ||
    { cat "$WORK/stop.json" "$WORK/stop.err" >&2; die "stop failed"; }
  FL_COUNT=$(sed -n 's/.*"file_list_count": *\([0-9]*\).*/\1/p' "$WORK/stop.json" | head -1)
  WSEG=$(sed -n 's/.*"wal_segments": *\([0-9]*\).*/\1/p' "$WORK/stop.json" | head -1)
  sync
  COPY_KB=$(du -sk "$WORK/copy0" | cut -f1)
  COPY_WAL=$(find "$WORK/copy0/pg_wal" -maxdepth 1 -type f | wc -l)
  "$BIN" cleanup --run-dir "$RUNDIR" >/dev/null 2>&1 || true
  note "scale $S: copy $(kb_h "$COPY_KB") in $((CP_US / 1000000)) s; file list $FL_COUNT, bundle WAL $WSEG segments, copy's pg_wal $COPY_WAL files"

  : >"$WORK/find.$S"; : >"$WORK/dry.$S"
  for r in $(seq 1 "$RUNS"); do
    timed bash -c "find '$WORK/copy0' -type f | wc -l"; echo "$US" >>"$WORK/find.$S"; NFILES=$(cat "$WORK/out.txt")
    timed "$BIN" prepare --pgdata "$WORK/copy0" --store "$STORE" --dry-run
    [ "$RC" = 0 ] || { cat "$WORK/out.txt" "$WORK/err.txt" >&2; die "prepare --dry-run exited $RC"; }
    echo "$US" >>"$WORK/dry.$S"; DRY_HWM=$HWM
  done
  : >"$WORK/prep.$S"
  for r in $(seq 0 "$RUNS"); do   # run 0: right after the cp, no sync
    rm -rf "$WORK/copy"
    cp -a "$WORK/copy0" "$WORK/copy"
    [ "$r" = 0 ] || sync
    timed "$BIN" prepare --pgdata "$WORK/copy" --store "$STORE"
    [ "$RC" = 0 ] || { cat "$WORK/out.txt" "$WORK/err.txt" >&2; die "prepare exited $RC"; }
    if [ "$r" = 0 ]; then PREP_UNSYNC=$US; else echo "$US" >>"$WORK/prep.$S"; PREP_HWM=$HWM; fi
  done
  cp "$WORK/out.txt" "$WORK/prepare.$S.out"
  # Where a prepare's time goes: one more, on a fresh synced copy, under strace -c -w.
  if command -v strace >/dev/null; then
    rm -rf "$WORK/copy"; cp -a "$WORK/copy0" "$WORK/copy"; sync
    strace -f -c -w -o "$WORK/strace.$S" "$BIN" prepare --pgdata "$WORK/copy" --store "$STORE" >/dev/null 2>&1 ||
      die "prepare under strace failed"
    awk '$NF ~ /^[a-z_0-9]+$/ && $NF != "total" && $2 ~ /^[0-9.]+$/ && n < 5 { printf "%s%s %d calls %.0f ms", sep, $NF, $4, $2 * 1000; sep = "; "; n++ }' \
      "$WORK/strace.$S" >"$WORK/strace.$S.sum" || true
  fi
  PREP_US=$(median <"$WORK/prep.$S")
  FIND_MED=$(median <"$WORK/find.$S"); DRY_MED=$(median <"$WORK/dry.$S")
  note "scale $S: find $((FIND_MED / 1000)) ms ($NFILES files), dry-run $((DRY_MED / 1000)) ms, prepare $((PREP_US / 1000)) ms (right after the cp, unsynced: $((PREP_UNSYNC / 1000)) ms)"

  # Sanity: the prepared copy recovers and holds the data.
  as_owner "$PGBIN/pg_ctl" -D "$WORK/copy" -l "$WORK/server2.log" -w -t 300 start -o \
    "-c listen_addresses='' -c unix_socket_directories='$WORK/sock' -c port=5433 -c archive_mode=off" \
    >/dev/null || { tail -20 "$WORK/server2.log" >&2; die "the prepared copy did not start"; }
  PM2_PID=$(head -1 "$WORK/copy/postmaster.pid")
  for _ in $(seq 300); do
    [ "$(q -p 5433 -c 'SELECT pg_is_in_recovery()')" = f ] && break; sleep 0.2
  done
  BR=$(q -p 5433 -c 'SELECT count(*) FROM pgbench_branches')
  [ "$BR" = "$S" ] || die "the prepared copy has $BR branches, expected $S"
  stop_pm "$WORK/copy" "$PM2_PID"; PM2_PID=
  note "scale $S: the prepared copy recovered and holds $BR branches"

  echo "$S $DATA_KB $COPY_KB $NFILES $FL_COUNT $WSEG $COPY_WAL $PREP_US $DRY_MED $FIND_MED $PREP_HWM $DRY_HWM $CP_US $PREP_UNSYNC $(paste -sd/ "$WORK/prep.$S") $(paste -sd/ "$WORK/dry.$S") $(paste -sd/ "$WORK/find.$S")" >>"$WORK/rows"
  rm -rf "$WORK/copy" "$WORK/copy0" "${STORE:?}/$ID"
  : >"$WORK/server2.log"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "## \`prepare\` on 1 GB and 5 GB copies (PostgreSQL $PGV)"
echo
echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, work dir on $(df -T "$WORK" | awk 'NR == 2 { print $2 }'); binary sha256 $BIN_SHA…"
echo "- copies made with \`cp -a\` during an idle backup window (default \`--wal collect\`); dry-run and find on that copy, page cache warm, median of $RUNS interleaved runs; \`prepare\` on fresh \`cp -a\` copies of it: median of $RUNS runs after \`sync\`, plus one run right after the cp (dirty page cache); the last prepared copy of each size was started and recovered (pgbench_branches counted)"
echo "- load average before / after: $LOAD_BEFORE / $LOAD_AFTER"
echo
echo "| pgbench scale | PGDATA (without pg_wal) | copy (with pg_wal) | files in copy (find) | file-list entries | WAL segments in bundle | copy's pg_wal files | \`prepare\` (after sync) | \`prepare\` (right after cp) | \`prepare --dry-run\` | \`find COPY -type f \\| wc -l\` | prepare peak RSS |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
while read -r S DK CK NF FL WS CW PU DU FU PH _ _ PUN _; do
  echo "| $S | $(kb_h "$DK") | $(kb_h "$CK") | $NF | $FL | $WS | $CW | $(sec "$PU") | $(sec "$PUN") | $(sec "$DU") | $(sec "$FU") | $(awk -v k="$PH" 'BEGIN { printf "%.1f MB", k / 1024 }') |"
done <"$WORK/rows"
echo
echo "Raw (scale, data kB, copy kB, files, list, WAL segs, copy pg_wal files, prepare µs median, dry-run µs median, find µs median, prepare kB, dry-run kB, cp -a µs, prepare µs unsynced, prepare µs runs, dry-run µs runs, find µs runs):"
echo
echo '```'
cat "$WORK/rows"
echo '```'
LAST=$(echo "$SCALES" | awk '{ print $NF }')
for S in $SCALES; do
  [ -s "$WORK/strace.$S.sum" ] && echo && echo "Scale $S, one more \`prepare\` under \`strace -f -c -w\` (syscalls by wall time spent in them): $(cat "$WORK/strace.$S.sum")."
done
if [ -f "$WORK/prepare.$LAST.out" ]; then
  echo
  echo "\`prepare\` output (scale $LAST):"
  echo
  echo '```'
  sed "s#$WORK#\$WORK#g" "$WORK/prepare.$LAST.out"
  echo '```'
fi
