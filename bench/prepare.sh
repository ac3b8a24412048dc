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

SCALES="70 340" RUNS=3
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_parse "runs tmpdir keep --scales:SCALES" "$@"
bench_pg_major 15
bench_need_time

# Room: the largest scale takes about 15 MB per scale unit, three times over (data, WAL, copy).
MAXS=$(echo "$SCALES" | tr ' ' '\n' | sort -n | tail -1)
bench_room $((MAXS * 15 * 1024 * 5))

bench_binary prepbench
bench_start_cluster
kb_h() { awk -v k="$1" 'BEGIN { if (k >= 1048576) printf "%.2f GiB", k / 1048576; else printf "%.0f MiB", k / 1024 }'; }

LOAD_BEFORE=$(bench_load)
: >"$WORK/rows"
for S in $SCALES; do
  t0=$(now_us)
  bench_pgbench_init "$S"
  t1=$(now_us)
  DATA_KB=$(du -sk --exclude=pg_wal "$WORK/data" | cut -f1)
  note "scale $S: loaded in $(( (t1 - t0) / 1000000 )) s, PGDATA without pg_wal $(kb_h "$DATA_KB")"
  ID=prep-s$S-$RANDOM
  bench_agent_start "$BIN" "$ID"
  t0=$(now_us)
  cp -a "$WORK/data" "$WORK/copy0"
  t1=$(now_us)
  CP_US=$((t1 - t0))
  bench_agent_stop "$BIN" "$ID"
  FL_COUNT=$(json_field file_list_count "$WORK/stop.json")
  WSEG=$(json_field wal_segments "$WORK/stop.json")
  sync
  COPY_KB=$(du -sk "$WORK/copy0" | cut -f1)
  COPY_WAL=$(find "$WORK/copy0/pg_wal" -maxdepth 1 -type f | wc -l)
  "$BIN" cleanup --run-dir "$RUNDIR" >/dev/null 2>&1 || true
  note "scale $S: copy $(kb_h "$COPY_KB") in $((CP_US / 1000000)) s; file list $FL_COUNT, bundle WAL $WSEG segments, copy's pg_wal $COPY_WAL files"

  : >"$WORK/find.$S"; : >"$WORK/dry.$S"
  for r in $(seq 1 "$RUNS"); do
    timed bash -c "find '$WORK/copy0' -type f | wc -l"; echo "$US" >>"$WORK/find.$S"; NFILES=$(cat "$WORK/out.txt")
    timed_ok "prepare --dry-run" "$BIN" prepare --pgdata "$WORK/copy0" --store "$STORE" --dry-run
    echo "$US" >>"$WORK/dry.$S"; DRY_HWM=$HWM
  done
  : >"$WORK/prep.$S"
  for r in $(seq 0 "$RUNS"); do   # run 0: right after the cp, no sync
    rm -rf "$WORK/copy"
    cp -a "$WORK/copy0" "$WORK/copy"
    [ "$r" = 0 ] || sync
    timed_ok prepare "$BIN" prepare --pgdata "$WORK/copy" --store "$STORE"
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
  bench_start_copy "$WORK/sock"
  BR=$(q -p 5433 -c 'SELECT count(*) FROM pgbench_branches')
  [ "$BR" = "$S" ] || die "the prepared copy has $BR branches, expected $S"
  stop_pm "$WORK/copy" "$PM2_PID"; PM2_PID=
  note "scale $S: the prepared copy recovered and holds $BR branches"

  echo "$S $DATA_KB $COPY_KB $NFILES $FL_COUNT $WSEG $COPY_WAL $PREP_US $DRY_MED $FIND_MED $PREP_HWM $DRY_HWM $CP_US $PREP_UNSYNC $(paste -sd/ "$WORK/prep.$S") $(paste -sd/ "$WORK/dry.$S") $(paste -sd/ "$WORK/find.$S")" >>"$WORK/rows"
  rm -rf "$WORK/copy" "$WORK/copy0" "${STORE:?}/$ID"
  : >"$WORK/server2.log"
done
LOAD_AFTER=$(bench_load)

bench_heading "## \`prepare\` on 1 GB and 5 GB copies (PostgreSQL $PGV)"
echo "- $(bench_when), $(nproc) CPUs ($(bench_cpu_model)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, work dir on $(bench_fs); binary sha256 $BIN_SHA…"
echo "- copies made with \`cp -a\` during an idle backup window (default \`--wal collect\`); dry-run and find on that copy, page cache warm, median of $RUNS interleaved runs; \`prepare\` on fresh \`cp -a\` copies of it: median of $RUNS runs after \`sync\`, plus one run right after the cp (dirty page cache); the last prepared copy of each size was started and recovered (pgbench_branches counted)"
echo "- load average before / after: $LOAD_BEFORE / $LOAD_AFTER"
echo
bench_table "pgbench scale" "PGDATA (without pg_wal)" "copy (with pg_wal)" "files in copy (find)" "file-list entries" "WAL segments in bundle" "copy's pg_wal files" "\`prepare\` (after sync)" "\`prepare\` (right after cp)" "\`prepare --dry-run\`" "\`find COPY -type f \\| wc -l\`" "prepare peak RSS"
while read -r S DK CK NF FL WS CW PU DU FU PH _ _ PUN _; do
  echo "| $S | $(kb_h "$DK") | $(kb_h "$CK") | $NF | $FL | $WS | $CW | $(sec "$PU") | $(sec "$PUN") | $(sec "$DU") | $(sec "$FU") | $(mb "$PH") |"
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
