#!/usr/bin/env bash
# bench/hardening.sh — issue 9: "`prepare` on a 5 GB copy and `verify` of a bundle with 64 WAL
# segments: time and peak RSS before and after the change, side by side; hardening must not
# cost more than 10% time, and verify's peak memory must stay under 64 MB whatever the bundle."
#
# One throwaway PostgreSQL 15 cluster (fsync on, wal_level replica). pgbench -i -s SCALE
# (340: about 5 GB), CHECKPOINT; then one backup made with the BEFORE binary:
#   start --id ID --store STORE; cp -a PGDATA COPY0; write and switch WAL until the window
#   holds SEGS segments; stop --id ID (default --wal collect: the segments are in the bundle)
# Then, interleaved (before, after, before, after, ...), --runs times each:
#   verify --store STORE --id ID         (decompresses and hashes every WAL file of the bundle)
#   prepare --pgdata COPY --store STORE  (on a fresh `cp -a COPY0 COPY` each time, after sync)
# and reports medians, the after/before ratios and the peak RSS of each (/usr/bin/time -v).
# The last copy prepared by the AFTER binary is started as a check (it must recover).
#
# Usage: bench/hardening.sh --before BIN [--after BIN] [--scale N] [--segments N] [--runs N]
#                           [--tmpdir DIR] [--keep]
#   --after defaults to this tree's release build (built here).
# Everything it starts (postgres servers, agents) is stopped by pid on exit, also on failure.
set -euo pipefail

SCALE=340 SEGS=64 RUNS=3 BEFORE=
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_parse "scale segments runs tmpdir keep --before:BEFORE --after:BIN" "$@"
[ -n "$BEFORE" ] || die "--before BIN is required (the binary of the commit before the change)"
[ -x "$BEFORE" ] || die "--before $BEFORE is not an executable"
bench_pg_major 15
bench_need_time
bench_room $((SCALE * 15 * 1024 * 4))

bench_binary hardbench
cp "$BEFORE" "$WORK/before"; ln "$BIN" "$WORK/after"
SHA_B=$(sha256sum "$WORK/before" | cut -c1-12)
bench_start_cluster -k -- -c max_wal_size=4GB
bench_pgbench_init "$SCALE"
DATA_KB=$(du -sk --exclude=pg_wal "$WORK/data" | cut -f1)
ID=hard-$RANDOM
bench_agent_start "$WORK/before" "$ID"
cp -a "$WORK/data" "$WORK/copy0"
note "writing WAL until the window holds $SEGS segments"
q -c "CREATE TABLE walfill (x bigint, pad text)" >/dev/null
START_SEG=$(q -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
for _ in $(seq 1 "$((SEGS * 2))"); do
  q -c "INSERT INTO walfill SELECT g, md5(g::text) FROM generate_series(1, 100000) g" >/dev/null
  CUR=$(q -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
  N=$(( 16#${CUR:16:8} + 16#${CUR:8:8} * 256 - 16#${START_SEG:16:8} - 16#${START_SEG:8:8} * 256 ))
  [ "$N" -ge "$SEGS" ] && break
done
bench_agent_stop "$WORK/before" "$ID"
WSEG=$(json_field wal_segments "$WORK/stop.json")
sync
note "bundle holds $WSEG WAL segments; PGDATA $(mb "$DATA_KB")"

for side in before after; do : >"$WORK/verify.$side"; : >"$WORK/vhwm.$side"; : >"$WORK/prep.$side"; : >"$WORK/phwm.$side"; done
LOAD_BEFORE=$(bench_load)
for r in $(seq 1 "$RUNS"); do
  for side in before after; do
    timed_ok "$side verify" "$WORK/$side" verify --store "$STORE" --id "$ID"
    echo "$US" >>"$WORK/verify.$side"; echo "$HWM" >>"$WORK/vhwm.$side"
    rm -rf "$WORK/copy"; cp -a "$WORK/copy0" "$WORK/copy"; sync
    timed_ok "$side prepare" "$WORK/$side" prepare --pgdata "$WORK/copy" --store "$STORE"
    echo "$US" >>"$WORK/prep.$side"; echo "$HWM" >>"$WORK/phwm.$side"
    note "run $r $side: verify $(sec "$(tail -1 "$WORK/verify.$side")"), prepare $(sec "$US")"
  done
done
LOAD_AFTER=$(bench_load)

# Sanity: the copy prepared last (by the after binary) recovers.
bench_start_copy "$WORK/sock"
BR=$(q -p 5433 -c 'SELECT count(*) FROM pgbench_branches')
[ "$BR" = "$SCALE" ] || die "the prepared copy has $BR branches, expected $SCALE"
stop_pm "$WORK/copy" "$PM2_PID"; PM2_PID=

VB=$(median <"$WORK/verify.before"); VA=$(median <"$WORK/verify.after")
PB=$(median <"$WORK/prep.before"); PA=$(median <"$WORK/prep.after")
bench_heading "## Hardening (issue 9): \`prepare\` on a $(mb "$DATA_KB") copy and \`verify\` of a $WSEG-segment bundle, before and after (PostgreSQL $PGV)"
echo "- $(bench_when), $(nproc) CPUs, work dir on $(bench_fs); before sha256 $SHA_B…, after sha256 $BIN_SHA…; medians of $RUNS interleaved runs; load average before / after: $LOAD_BEFORE / $LOAD_AFTER"
echo "- the last copy prepared by the after binary was started and recovered ($BR branches)"
echo
bench_table "what" "before" "after" "after / before" "peak RSS before" "peak RSS after"
echo "| \`verify --store --id\` ($WSEG WAL segments) | $(sec "$VB") | $(sec "$VA") | $(ratio "$VA" "$VB") | $(mb "$(maxv <"$WORK/vhwm.before")") | $(mb "$(maxv <"$WORK/vhwm.after")") |"
echo "| \`prepare\` (fresh \`cp -a\` copy, after sync) | $(sec "$PB") | $(sec "$PA") | $(ratio "$PA" "$PB") | $(mb "$(maxv <"$WORK/phwm.before")") | $(mb "$(maxv <"$WORK/phwm.after")") |"
echo
echo "Raw µs (verify before / after; prepare before / after): $(paste -sd/ "$WORK/verify.before"); $(paste -sd/ "$WORK/verify.after"); $(paste -sd/ "$WORK/prep.before"); $(paste -sd/ "$WORK/prep.after")"
