#!/usr/bin/env bash
# bench/wal_collect.sh — "Collecting 64 segments: time against `zstd -3` of the same files
# from the command line (target <= 1.2x)".
#
# On a throwaway PostgreSQL 15 cluster (wal_level replica, fsync on, no checkpoint during the
# measurement: max_wal_size 32GB, checkpoint_timeout 1d), each round:
#   1. `pgbookend start --id ID --store STORE` (default --wal collect: a temporary slot keeps
#      the window's WAL in pg_wal);
#   2. writes >= 64 segments (1 GiB) of WAL: INSERT ... SELECT i, md5(i::text), now() FROM
#      generate_series(...) into an indexed table, in chunks, until pg_current_wal_lsn() is
#      64 segments past the start LSN;
#   3. `sync`, then `pgbookend stop --id ID --no-wait-archive --json`: its `duration_s` (the
#      agent's own time for the stop: stop call, WAL compression + SHA-256 + fsync of each
#      segment, file-list walk, bundle.json) and the wall time of the `stop` process;
#   4. on the same segment files, still in pg_wal (no checkpoint ran), read from the page cache
#      just as the agent read them, `sync` first, then:
#        zstd -3 -q -f FILES --output-dir-flat SCRATCH           (the CLI default: -T1, i.e.
#                                                               one compression thread + I/O)
#        zstd -3 -q -f --single-thread FILES --output-dir-flat ... (strictly one thread)
#        each also followed by `sync SCRATCH/*.zst` (fsync of each output, as pgbookend does),
#      SCRATCH on the same filesystem as the store.
# Median over the rounds. Prints a Markdown report on stdout, progress on stderr.
#
# Usage: bench/wal_collect.sh [--rounds N] [--segments N] [--tmpdir DIR] [--perf] [--keep]
#   --rounds N     measured rounds (default 3)
#   --segments N   WAL to write per round, in 16 MiB segments (default 64)
#   --tmpdir DIR   where the cluster, store and scratch live (default $TMPDIR or /tmp)
#   --perf         one more round with `perf record -g` on the agent during the stop, and
#                  `strace -c -f` of it, summarised at the end
#   --keep         keep the work directory
# Everything it starts (postgres, agents, perf) is stopped by pid on exit, also on failure.
set -euo pipefail

ROUNDS=3 SEGS=64 PERF=0
PERF_PID=
PM_STOP_MODE=immediate
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_parse "rounds segments tmpdir keep --perf:PERF=1" "$@"
bench_pg_major 15
bench_need zstd
bench_need_time
bench_cleanup_first() {
  alive "$PERF_PID" && kill -INT "$PERF_PID" 2>/dev/null && sleep 1
  alive "$PERF_PID" && kill -KILL "$PERF_PID" 2>/dev/null
}

bench_binary walbench --examples
SCRATCH=$WORK/scratch
mkdir -p "$SCRATCH" "$WORK/samples"
bench_start_cluster -- -c max_wal_size=32GB -c checkpoint_timeout=1d -c shared_buffers=512MB
q -c "CREATE TABLE w (i bigint, t text, ts timestamptz); CREATE INDEX ON w (i);"
SEG_BYTES=$((16 * 1024 * 1024))
TARGET=$((SEGS * SEG_BYTES))

# One round: start, write WAL, stop, zstd on the same files. Appends a sample line.
one_round() { # one_round N PERF(0/1)
  local n=$1 prof=$2 id="walbench-$1-$RANDOM" start_lsn written=0 next=1 chunk=2000000 t0 t1 rc
  q -c "TRUNCATE w; CHECKPOINT;" >/dev/null
  bench_agent_start "$BIN" "$id" --json
  local apid=$APID
  start_lsn=$(q -c "SELECT pg_current_wal_lsn()")
  note "round $n: backup $id started (agent $apid); writing $SEGS segments of WAL"
  t0=$(now_us)
  while [ "$written" -lt "$TARGET" ]; do
    q -c "INSERT INTO w SELECT i, md5(i::text), now() FROM generate_series($next, $((next + chunk - 1))) i" >/dev/null
    next=$((next + chunk))
    written=$(q -c "SELECT (pg_current_wal_lsn() - '$start_lsn'::pg_lsn)::bigint")
    # the last chunk: just what is missing (about 90 bytes of WAL per row)
    chunk=$(( (TARGET - written) / 90 + 1000 )); [ "$chunk" -gt 2000000 ] && chunk=2000000
  done
  t1=$(now_us)
  note "round $n: $(awk -v b="$written" 'BEGIN { printf "%.0f MiB", b / 1048576 }') of WAL in $(( (t1 - t0) / 1000000 )) s; sync; stop"
  sync
  if [ "$prof" = 1 ]; then
    perf record -F 999 -g -p "$apid" -o "$WORK/perf.data" >/dev/null 2>"$WORK/perf.err" &
    PERF_PID=$!
    sleep 1
  fi
  # CPU time of the agent during the stop (perf stat ends when the agent exits after it).
  local pstat=""
  if command -v perf >/dev/null; then
    perf stat -x, -e task-clock -p "$apid" -o "$WORK/pstat.$n" >/dev/null 2>&1 &
    pstat=$!
    sleep 0.5
  fi
  t0=$(now_us)
  rc=0
  "$BIN" stop --id "$id" --no-wait-archive --json --run-dir "$RUNDIR" >"$WORK/stop.json" 2>"$WORK/stop.err" || rc=$?
  t1=$(now_us)
  if [ "$prof" = 1 ]; then
    kill -INT "$PERF_PID" 2>/dev/null; wait "$PERF_PID" 2>/dev/null || true; PERF_PID=
  fi
  if [ -n "$pstat" ]; then
    for _ in $(seq 50); do alive "$pstat" || break; sleep 0.1; done
    alive "$pstat" && kill -INT "$pstat" 2>/dev/null
    wait "$pstat" 2>/dev/null || true
  fi
  local acpu
  acpu=$(awk -F, '$3 == "task-clock" || $3 ~ /task-clock/ { printf "%d", $1 * 1000 }' "$WORK/pstat.$n" 2>/dev/null)
  [ -n "$acpu" ] || acpu=0
  [ "$rc" = 0 ] || { cat "$WORK/stop.json" "$WORK/stop.err" >&2; die "stop exited $rc"; }
  cp "$RUNDIR/$id/agent.log" "$WORK/samples/agent-$n.log" 2>/dev/null || true
  local jf="$WORK/stop.json" dur segs stored
  dur=$(json_field duration_s "$jf")
  segs=$(json_field wal_segments "$jf")
  stored=$(json_field wal_bytes_stored "$jf")
  # The segment names from bundle.json, read in pg_wal where the agent read them.
  local files=() name
  while read -r name; do
    [ -f "$WORK/data/pg_wal/$name" ] || die "$name is no longer in pg_wal (a checkpoint ran?)"
    files+=("$WORK/data/pg_wal/$name")
  done < <(python3 -c 'import json,sys; [print(w["name"]) for w in json.load(open(sys.argv[1]))["wal"] if not w["name"].endswith(".history")]' "$STORE/$id/bundle.json")
  [ "${#files[@]}" = "$segs" ] || die "bundle.json lists ${#files[@]} segments, stop said $segs"
  local raw
  raw=$(cat "${files[@]}" | wc -c)
  # zstd -3 (CLI default threading), then with its outputs fsynced; then --single-thread.
  local z1 z1s z2 z2s zb
  zrun() { # zrun SYNC(0/1) EXTRA... -> US
    rm -f "$SCRATCH"/*.zst; sync
    local a b
    a=$(now_us)
    /usr/bin/time -f '%U %S' -o "$WORK/ztime" zstd -3 -q -f "${@:2}" "${files[@]}" --output-dir-flat "$SCRATCH"
    if [ "$1" = 1 ]; then sync "$SCRATCH"/*.zst "$SCRATCH"; fi
    b=$(now_us)
    US=$((b - a))
    CPU=$(awk '{ printf "%d", ($1 + $2) * 1e6 }' "$WORK/ztime")
  }
  zrun 0; z1=$US
  zb=$(cat "$SCRATCH"/*.zst | wc -c)
  zrun 1; z1s=$US
  zrun 0 --single-thread; z2=$US; local zcpu=$CPU
  zrun 1 --single-thread; z2s=$US
  rm -f "$SCRATCH"/*.zst
  # sha256sum of the same files, for the breakdown (pgbookend hashes every segment).
  local a b sha
  a=$(now_us); sha256sum "${files[@]}" >/dev/null; b=$(now_us); sha=$((b - a))
  if [ "$prof" = 0 ]; then
    echo "$n $segs $raw $stored $zb $dur $((t1 - t0)) $z1 $z1s $z2 $z2s $sha $acpu $zcpu" >>"$WORK/samples/rounds"
  fi
  note "round $n: $segs segments; stop duration_s $dur, process $(( (t1 - t0) / 1000 )) ms; zstd -3 $((z1 / 1000)) ms, +sync $((z1s / 1000)) ms; --single-thread $((z2 / 1000)) ms, +sync $((z2s / 1000)) ms"
  "$BIN" cleanup --run-dir "$RUNDIR" >/dev/null 2>&1 || true
  rm -rf "${STORE:?}/$id"
}

LOAD_BEFORE=$(bench_load)
for i in $(seq 1 "$ROUNDS"); do one_round "$i" 0; done
LOAD_AFTER=$(bench_load)

PERF_SUMMARY=
if [ "$PERF" = 1 ]; then
  command -v perf >/dev/null || die "--perf needs perf"
  note "profiling round: perf record on the agent during stop"
  one_round p 1
  perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | head -15 >"$WORK/samples/perf.txt" || true
  PERF_SUMMARY=$(cat "$WORK/samples/perf.txt")
fi

# ---------------------------------------------------------------- report
# med COLUMN [DECIMALS] -> median of that column of the rounds
med() { bench_col "$1" "$WORK/samples/rounds" | median "${2:-0}"; }
S=$(med 2); RAW=$(med 3); STORED=$(med 4); ZB=$(med 5)
DUR=$(med 6 6); PROC=$(med 7); Z1=$(med 8); Z1S=$(med 9); Z2=$(med 10); Z2S=$(med 11); SHA=$(med 12)
ACPU=$(med 13); ZCPU=$(med 14)
ratio_met() { awk -v a="$1" -v b="$2" 'BEGIN { r = a / b; printf "%.2fx (%s)", r, (r <= 1.2) ? "met" : "not met" }'; }
DUR_US=$(awk -v d="$DUR" 'BEGIN { printf "%d", d * 1e6 }')
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

bench_heading "## WAL collection: \`pgbookend stop\` against \`zstd -3\` (PostgreSQL $PGV)"
echo "- $(bench_when), $(nproc) CPUs ($(bench_cpu_model)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, work dir on $(bench_fs); binary sha256 $BIN_SHA…; zstd $(zstd --version | sed -n 's/.* v\([0-9.]*\).*/\1/p')"
echo "- $ROUNDS rounds, medians; load average before / after: $LOAD_BEFORE / $LOAD_AFTER"
echo "- WAL: INSERT … SELECT i, md5(i::text), now() FROM generate_series into an indexed table; segments $S, raw $(mib "$RAW"), pgbookend stored $(mib "$STORED") ($(awk -v a="$RAW" -v b="$STORED" 'BEGIN { printf "%.2f", a / b }'):1), zstd -3 CLI $(mib "$ZB") ($(awk -v a="$RAW" -v b="$ZB" 'BEGIN { printf "%.2f", a / b }'):1)"
echo
bench_table "what" "time (median)" "pgbookend \`duration_s\` / this"
echo "| \`pgbookend stop\`: agent \`duration_s\` (stop call, $S segments zstd-3 + SHA-256 + fsync, file list, bundle.json) | $(sec "$DUR_US" 2) | |"
echo "| \`pgbookend stop\`: whole process wall time | $(sec "$PROC" 2) | |"
echo "| \`zstd -3 -q\` (CLI default: -T1) | $(sec "$Z1" 2) | $(ratio_met "$DUR_US" "$Z1") |"
echo "| \`zstd -3 -q\` + \`sync\` of the outputs | $(sec "$Z1S" 2) | $(ratio_met "$DUR_US" "$Z1S") |"
echo "| \`zstd -3 -q --single-thread\` | $(sec "$Z2" 2) | $(ratio_met "$DUR_US" "$Z2") |"
echo "| \`zstd -3 -q --single-thread\` + \`sync\` of the outputs | $(sec "$Z2S" 2) | $(ratio_met "$DUR_US" "$Z2S") |"
echo "| CPU time (user+sys): the agent during \`stop\` (perf stat task-clock) | $(sec "$ACPU" 2) | |"
echo "| CPU time (user+sys): \`zstd -3 -q --single-thread\` | $(sec "$ZCPU" 2) | $(ratio_met "$ACPU" "$ZCPU") |"
echo "| (for the breakdown) \`sha256sum\` of the same files | $(sec "$SHA" 2) | |"
echo
echo "Per round (segments, raw bytes, stored bytes, zstd CLI bytes, duration_s, stop process µs, zstd µs, zstd+sync µs, single-thread µs, single-thread+sync µs, sha256sum µs, agent CPU µs, zstd single-thread CPU µs):"
echo
echo '```'
cat "$WORK/samples/rounds"
echo '```'
# Where the agent's stop went, from its log timestamps (round 1).
if [ -f "$WORK/samples/agent-1.log" ]; then
  echo
  echo "Agent log of round 1 (stop part):"
  echo
  echo '```'
  sed -n '/request: Stop/,$p' "$WORK/samples/agent-1.log" | cut -c1-160
  echo '```'
fi
if [ -n "$PERF_SUMMARY" ]; then
  echo
  echo "perf (agent, during one more stop; self time by DSO and symbol):"
  echo
  echo '```'
  echo "$PERF_SUMMARY"
  echo '```'
fi
