#!/usr/bin/env bash
# bench/drill.sh — issue 12: what `pgbookend drill` costs over a bare recovery of the same copy.
#
# One throwaway PostgreSQL 15 cluster with data checksums; pgbench -i -s SCALE (30: about
# 450 MB), CHECKPOINT; one backup taken while pgbench writes:
#   start --id ID --store STORE; cp -a PGDATA SRC; stop --id ID
# Then, --runs times each, order alternating, on the same copy SRC:
#   bare:  cp -a SRC COPY (not timed); then timed: pgbookend prepare --pgdata COPY (its page
#          check included) + pg_ctl start + wait until pg_is_in_recovery() is false + stop
#   drill: pgbookend drill --pgdata SRC --store STORE --json (clone, prepare, recovery,
#          amcheck with heapallindexed and verify_heapam, a count of every table, cleanup)
# It reports medians, drill's overhead over the bare recovery, and drill's parts from its
# report (phase_seconds, recovery_seconds). The machine may be shared: the load average is
# printed, and only numbers of the same run are compared.
#
# Usage: bench/drill.sh [--scale N] [--runs N] [--tmpdir DIR] [--keep]
# Everything it starts (the servers, the agent) is stopped by pid on exit, also on failure.
set -euo pipefail

SCALE=30 RUNS=3
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_parse "scale runs tmpdir keep" "$@"
bench_pg_major 15
bench_need_time
bench_room $((SCALE * 15 * 1024 * 4))

bench_binary drillbench
mkdir -p "$WORK/sock2"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK/sock2"
bench_start_cluster -k
bench_pgbench_init "$SCALE"
ID=drill-$RANDOM
bench_agent_start "$BIN" "$ID"
"$PGBIN/pgbench" -c 2 -T 10 -n >"$WORK/pgbench-load.log" 2>&1 &
LOAD_PID=$!
bench_cleanup_first() { alive "${LOAD_PID:-}" && kill "$LOAD_PID" 2>/dev/null; return 0; }
cp -a "$WORK/data" "$WORK/src"
wait "$LOAD_PID" || die "pgbench under the copy failed"
LOAD_PID=
bench_agent_stop "$BIN" "$ID"
stop_pm "$WORK/data" "$PM_PID"; PM_PID=
rm -f "$WORK/src/postmaster.pid"
SRC_KB=$(du -sk --exclude=pg_wal "$WORK/src" | cut -f1)

# bare: prepare + start + consistency + stop on a fresh copy of SRC.
run_bare() {
  rm -rf "$WORK/copy"
  cp -a "$WORK/src" "$WORK/copy"
  local a b c d
  a=$(now_us)
  "$BIN" prepare --pgdata "$WORK/copy" --store "$STORE" >"$WORK/prepare.out" 2>&1 ||
    { cat "$WORK/prepare.out" >&2; die "prepare failed"; }
  b=$(now_us)
  bench_start_copy "$WORK/sock2"
  c=$(now_us)
  stop_pm "$WORK/copy" "$PM2_PID"; PM2_PID=
  d=$(now_us)
  echo $((d - a)) >>"$WORK/t.bare"
  echo $((b - a)) >>"$WORK/t.bare_prepare"
  echo $((c - b)) >>"$WORK/t.bare_recovery"
  echo $((d - c)) >>"$WORK/t.bare_stop"
}

run_drill() {
  timed_ok drill "$BIN" drill --pgdata "$WORK/src" --store "$STORE" --pg-bin "$PGBIN" --json
  echo "$US" >>"$WORK/t.drill"
  echo "$HWM" >>"$WORK/m.drill"
  python3 - "$WORK/out.txt" "$WORK" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
w = sys.argv[2]
p = r["phase_seconds"]
for k, v in (("clone", p["clone"]), ("prepare", p["prepare"]), ("recovery", r["recovery_seconds"]), ("checks", p["checks"])):
    open(f"{w}/t.drill_{k}", "a").write(f"{int(v * 1e6)}\n")
c = r["checks"]
open(f"{w}/drill.facts", "w").write(f'{r["clone_method"]} {r["pages_verified"]} {c["btree_indexes"]} {c["heap_relations"]} {c["table_counts"]} {r["wal_replayed"]["bytes"]}\n')
EOF
}

for f in bare bare_prepare bare_recovery bare_stop drill drill_clone drill_prepare drill_recovery drill_checks; do : >"$WORK/t.$f"; done
: >"$WORK/m.drill"
LOAD_BEFORE=$(bench_load)
for r in $(seq 1 "$RUNS"); do
  if [ $((r % 2)) = 1 ]; then run_bare; run_drill; else run_drill; run_bare; fi
  note "run $r: bare $(sec "$(tail -1 "$WORK/t.bare")"), drill $(sec "$(tail -1 "$WORK/t.drill")")"
done
LOAD_AFTER=$(bench_load)
read -r METHOD PAGES NBT NHEAP NCOUNT WALB <"$WORK/drill.facts"
m() { median <"$WORK/t.$1"; }
B=$(m bare); D=$(m drill)

bench_heading "### drill against a bare recovery (issue 12): PostgreSQL $PGV, pgbench scale $SCALE ($(awk -v k="$SRC_KB" 'BEGIN { printf "%.0f MB", k / 1024 }') without pg_wal), checksums on"
echo "- $(bench_when), $(nproc) CPUs, work dir on $(bench_fs); pgbookend sha256 $BIN_SHA…; medians of $RUNS runs, order alternating; load average before / after: $LOAD_BEFORE / $LOAD_AFTER"
echo "- drill: clone by $METHOD, $PAGES pages verified, $NBT B-tree indexes (heapallindexed), $NHEAP heap relations (verify_heapam), $NCOUNT tables counted, $WALB bytes of WAL replayed; peak RSS $(mb "$(maxv <"$WORK/m.drill")")"
echo
bench_table "what" "median"
echo "| bare: prepare (page check included) | $(sec "$(m bare_prepare)") |"
echo "| bare: pg_ctl start until pg_is_in_recovery() is false | $(sec "$(m bare_recovery)") |"
echo "| bare: stop | $(sec "$(m bare_stop)") |"
echo "| **bare recovery, total** | **$(sec "$B")** |"
echo "| drill: clone | $(sec "$(m drill_clone)") |"
echo "| drill: prepare (page check included) | $(sec "$(m drill_prepare)") |"
echo "| drill: recovery (server start until open) | $(sec "$(m drill_recovery)") |"
echo "| drill: checks (amcheck, verify_heapam, counts) | $(sec "$(m drill_checks)") |"
echo "| **\`pgbookend drill\`, total** | **$(sec "$D")** |"
echo
echo "drill / bare: $(ratio "$D" "$B"); drill's overhead over the bare recovery: $(sec $((D - B))) (the checks account for $(sec "$(m drill_checks)"))"
echo
echo "Raw µs (bare; drill): $(paste -sd/ "$WORK/t.bare"); $(paste -sd/ "$WORK/t.drill")"
