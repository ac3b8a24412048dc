#!/usr/bin/env bash
# bench/hooks.sh — issue 2 benchmarks of the hook pair, on a throwaway idle cluster:
#
#  1. Overhead of `pgbookend start` / `pgbookend stop` (wall time of the whole hook process:
#     exec, agent spawn, connect, checks, marker, bundle with fsyncs) against the same backup
#     SQL sent from ONE already-open psql session (wall time per call seen by the client:
#     write the statement plus an `\echo` sentinel into psql's stdin, wait for the sentinel).
#     Same immediate checkpoint on both sides; archive_mode off and `stop --no-wait-archive`.
#     pgbookend runs in two variants when the binary has `--wal`: `--wal none` (only the hook
#     work, the like-for-like comparison) and the default (`--wal collect`: WAL of the window
#     copied into the bundle, plus the file list). Each round runs every side once; the order
#     rotates from round to round. Targets: <= 1.2x and <= 50 ms extra.
#  2. Resident memory (VmRSS, VmHWM) of an agent holding a backup after a few heartbeats
#     (default options plus --heartbeat 1s, /proc/<pid>/status read after 5 s), and the CPU
#     time it used meanwhile. Target: <= 10 MB.
#
# Usage: bench/hooks.sh [--major N] [--iterations N] [--warmup N] [--bin PATH] [--tmpdir DIR]
#                       [--variants LIST] [--strace DIR] [--keep] [--wait-quiet P]
#   --major N        server major (13-18). 15 uses /usr/lib/postgresql/15/bin, the others
#                    /var/cache/pgbookend/pg/N/bin (scripts/install-deps). psql 15 is the client.
#   --iterations N   measured rounds (default 15); --warmup N unmeasured rounds first (default 2)
#   --bin PATH       use this pgbookend binary instead of building target/release/pgbookend
#   --tmpdir DIR     where the throwaway cluster, run dir and store live (default $TMPDIR or
#                    /tmp; on the project VM /tmp is ext4 on a disk, so fsyncs are real)
#   --variants LIST  pgbookend variants, comma-separated: none (--wal none), default
#                    (default: both when the binary knows --wal, else default)
#   --strace DIR     after the measurements, trace one more start/stop pair (default variant)
#                    with `strace -f --seccomp-bpf -tt -T` into DIR, and summarise it
#   --keep           keep the work directory (logs, raw samples) for inspection
#   --wait-quiet P   before each round, wait (up to 5 min) until the CPU pressure of the machine
#                    (/proc/pressure/cpu "some avg10") is below P percent; for shared machines
#
# Prints a Markdown report on stdout, progress on stderr. Runs as root (servers run as
# `postgres` via runuser) or as an ordinary user. Everything it starts (postgres, psql,
# agents, strace) is stopped by pid on exit, also on failure or Ctrl-C.
set -euo pipefail

MAJOR=15 ITER=15 WARMUP=2 STRACE_DIR='' VARIANTS_ARG='' QUIET=''
PSQL_PID=
STRACE_PID=
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_parse "bin tmpdir keep --major:MAJOR --iterations:ITER --warmup:WARMUP --variants:VARIANTS_ARG
  --strace:STRACE_DIR --wait-quiet:QUIET" "$@"
case "$ITER$WARMUP" in *[!0-9]*) bench_usage "--iterations/--warmup take numbers" ;; esac
[ "$ITER" -ge 1 ] || bench_usage "--iterations must be >= 1"
bench_pg_major "$MAJOR"
bench_need stdbuf
if [ "$(id -u)" = 0 ]; then id postgres >/dev/null 2>&1 || die "as root, needs a postgres user"; fi
bench_cleanup_first() {
  alive "$PSQL_PID" && kill "$PSQL_PID" 2>/dev/null
  alive "$STRACE_PID" && kill -TERM "$STRACE_PID" 2>/dev/null
  return 0
}
bench_cleanup_last() { alive "$PSQL_PID" && kill -KILL "$PSQL_PID" 2>/dev/null; return 0; }

bench_binary bench
mkdir -p "$WORK/samples"
# Otherwise defaults (fsync on, shared_buffers 128MB, wal_level replica): an ordinary cluster.
bench_start_cluster

# ---------------------------------------------------------------- the psql side
if [ "$MAJOR" -ge 15 ]; then
  SQL_START="SELECT pg_backup_start('x', true);"
  SQL_STOP="SELECT * FROM pg_backup_stop(false);"
else
  SQL_START="SELECT pg_start_backup('x', true, false);"
  SQL_STOP="SELECT * FROM pg_stop_backup(false, false);"
fi

# One long-lived psql; its stdout unbuffered (stdbuf) so the sentinel arrives when printed.
coproc PSQLP { exec stdbuf -o0 -e0 "$PSQL" -X -q -A -t -v ON_ERROR_STOP=0 2>&1; }
PSQL_PID=$PSQLP_PID
exec {PSQL_IN}>&"${PSQLP[1]}" {PSQL_OUT}<&"${PSQLP[0]}"
SEQ=0
# psql_call SQL -> US = client wall time in microseconds; dies on ERROR.
psql_call() {
  SEQ=$((SEQ + 1))
  local mark="__pgbookend_bench_${SEQ}__" line="" out="" t0 t1
  t0=${EPOCHREALTIME/./}
  printf '%s\n\\echo %s\n' "$1" "$mark" >&"$PSQL_IN"
  while IFS= read -r -t 120 line <&"$PSQL_OUT"; do
    [ "$line" = "$mark" ] && break
    out+="$line"$'\n'
  done
  t1=${EPOCHREALTIME/./}
  [ "$line" = "$mark" ] || die "psql did not answer: $out"
  case "$out" in *ERROR*) die "psql: $1 -> $out" ;; esac
  US=$((t1 - t0))
}
psql_call "SELECT 1;"   # the session is open and warm

# ---------------------------------------------------------------- the pgbookend side
# pgb_call ARGS... -> US = wall time of the whole process; dies on a non-zero exit.
pgb_call() {
  local t0 t1 rc=0
  t0=${EPOCHREALTIME/./}
  "$BIN" "$@" --run-dir "$RUNDIR" >"$WORK/last.out" 2>"$WORK/last.err" || rc=$?
  t1=${EPOCHREALTIME/./}
  [ "$rc" = 0 ] || { cat "$WORK/last.out" "$WORK/last.err" >&2; die "pgbookend $1 exited $rc"; }
  US=$((t1 - t0))
}
pgb_start() { # pgb_start ID [extra args]
  pgb_call start --id "$1" --store "$STORE" --fast --json "${@:2}"
  local pid
  pid=$(json_field agent_pid "$WORK/last.out")
  if [ -n "$pid" ]; then AGENT_PIDS+=("$pid"); fi
}
pgb_stop() { pgb_call stop --id "$1" --no-wait-archive --json; }

HAS_WAL=0
"$BIN" start --help 2>/dev/null | grep -q -- '--wal ' && HAS_WAL=1
VARIANTS=${VARIANTS_ARG:-$([ "$HAS_WAL" = 1 ] && echo none,default || echo default)}
IFS=, read -r -a VARIANTS <<<"$VARIANTS"
for v in "${VARIANTS[@]}"; do
  case "$v" in
    default) ;;
    none) [ "$HAS_WAL" = 1 ] || die "variant none needs a binary with --wal" ;;
    *) die "unknown variant $v (none, default)" ;;
  esac
done
variant_args() { [ "$1" = none ] && echo "--wal none" || true; }
variant_label() {
  case "$1" in
    none) echo 'pgbookend `--wal none`' ;;
    default) [ "$HAS_WAL" = 1 ] && echo 'pgbookend default (`--wal collect`)' || echo 'pgbookend' ;;
  esac
}

# ---------------------------------------------------------------- measurement 1: latency
record() { echo "$2" >>"$WORK/samples/$1"; }
settle() { sleep 0.2; }   # let the previous session's backend and agent exit before the next timing
SIDES=(psql "${VARIANTS[@]}")

one_side() { # one_side SIDE ROUND MEASURED
  local side=$1 n=$2 m=$3 id
  if [ "$side" = psql ]; then
    psql_call "$SQL_START"; [ "$m" = 1 ] && record start.psql "$US"; settle
    psql_call "$SQL_STOP";  [ "$m" = 1 ] && record stop.psql "$US";  settle
  else
    id="bench-$side-$m-$n-$RANDOM"
    # shellcheck disable=SC2046
    pgb_start "$id" $(variant_args "$side"); [ "$m" = 1 ] && record "start.$side" "$US"; settle
    pgb_stop "$id";                          [ "$m" = 1 ] && record "stop.$side" "$US";  settle
    [ "$m" = 1 ] && cp "$RUNDIR/$id/agent.log" "$WORK/samples/agent-$side-$n.log" 2>/dev/null
    "$BIN" cleanup --run-dir "$RUNDIR" >/dev/null 2>&1 || true
    rm -rf "${STORE:?}/$id"
  fi
  return 0
}
QUIET_WAITS=0
cpu_pressure() { awk -F'avg10=' 'NR == 1 { split($2, a, " "); print a[1] }' /proc/pressure/cpu 2>/dev/null || echo 0; }
wait_quiet() {
  [ -n "$QUIET" ] || return 0
  local waited=0 i
  for i in $(seq 60); do
    awk -v p="$(cpu_pressure)" -v q="$QUIET" 'BEGIN { exit !(p < q) }' && break
    waited=1; sleep 5
  done
  QUIET_WAITS=$((QUIET_WAITS + waited))
}
round() { # round N MEASURED(0/1): every side once, order rotated by N
  local n=$1 m=$2 k=${#SIDES[@]} j
  wait_quiet
  for j in $(seq 0 $((k - 1))); do one_side "${SIDES[$(((n + j) % k))]}" "$n" "$m"; done
}

LOAD_BEFORE=$(bench_load)
note "binary $BIN_VERSION ($BIN_SHA); sides: ${SIDES[*]}"
note "warm-up: $WARMUP rounds; measuring: $ITER rounds (order rotates each round)"
for i in $(seq 1 "$WARMUP"); do round "$i" 0; done
for i in $(seq 1 "$ITER"); do round "$i" 1; done
LOAD_AFTER=$(bench_load)

# ---------------------------------------------------------------- measurement 2: agent memory
note "agent memory: start (default options) with --heartbeat 1s, wait 5 s"
MEM_ID=bench-mem-$RANDOM
pgb_start "$MEM_ID" --heartbeat 1s
AGENT_PID=$("$BIN" status --id "$MEM_ID" --json --run-dir "$RUNDIR" | json_field agent_pid /dev/stdin)
[ -n "$AGENT_PID" ] || die "no agent_pid in status"
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$AGENT_PID/stat"; }
TICKS0=$(cpu_ticks)
sleep 5
TICKS1=$(cpu_ticks)
HB_AGE=$("$BIN" status --id "$MEM_ID" --json --run-dir "$RUNDIR" |
  sed -n 's/.*"last_heartbeat_age_s": *\([0-9-]*\).*/\1/p' | head -1)
status_kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$AGENT_PID/status"; }
VMRSS=$(status_kb VmRSS); VMHWM=$(status_kb VmHWM)
RSSANON=$(status_kb RssAnon); RSSFILE=$(status_kb RssFile)
PSS=$(awk '$1 == "Pss:" { print $2 }' "/proc/$AGENT_PID/smaps_rollup" 2>/dev/null || echo "?")
CPU_MS=$(( (TICKS1 - TICKS0) * 1000 / $(getconf CLK_TCK) ))
# Resident kB per mapped object (the binary, each shared library, [heap], anonymous).
awk '/^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "") ? "[anon]" : $6; sub(/.*\//, "", name) }
     /^Rss:/ { rss[name] += $2 }
     END { for (n in rss) if (rss[n] > 0) printf "%d %s\n", rss[n], n }' "/proc/$AGENT_PID/smaps" |
  sort -rn >"$WORK/samples/agent-smaps.txt" || true
pgb_stop "$MEM_ID"

# ---------------------------------------------------------------- optional: strace one pair
if [ -n "$STRACE_DIR" ]; then
  command -v strace >/dev/null || die "--strace needs strace"
  mkdir -p "$STRACE_DIR"
  TR_ID=bench-strace-$RANDOM
  note "strace: one start/stop pair into $STRACE_DIR"
  # --seccomp-bpf: only the listed calls stop the tracee, so the timings stay close to real.
  TRACE_SET=execve,clone,clone3,fsync,fdatasync,connect,sendto,recvfrom,read,write,exit_group
  strace -f --seccomp-bpf -tt -T -e trace=$TRACE_SET -o "$STRACE_DIR/start.trace" \
    "$BIN" start --id "$TR_ID" --store "$STORE" --fast --run-dir "$RUNDIR" >"$STRACE_DIR/start.out" 2>&1 &
  STRACE_PID=$!
  for _ in $(seq 300); do
    grep -q "started at" "$STRACE_DIR/start.out" 2>/dev/null && break
    alive "$STRACE_PID" || break
    sleep 0.1
  done
  grep -q "started at" "$STRACE_DIR/start.out" || { cat "$STRACE_DIR/start.out" >&2; die "traced start failed"; }
  settle
  strace -f --seccomp-bpf -tt -T -e trace=$TRACE_SET -o "$STRACE_DIR/stop.trace" \
    "$BIN" stop --id "$TR_ID" --no-wait-archive --run-dir "$RUNDIR" >"$STRACE_DIR/stop.out" 2>&1 ||
    die "traced stop failed"
  wait "$STRACE_PID" || true
  STRACE_PID=
  cp "$RUNDIR/$TR_ID/agent.log" "$STRACE_DIR/agent.log" 2>/dev/null || true
  # Critical paths: start = exec of `start` to the agent's "ready" line;
  # stop = the agent reading the stop request to its reply.
  awk '
    function secs(s,  a) { split(s, a, ":"); return a[1] * 3600 + a[2] * 60 + a[3] }
    function dur(l) { if (match(l, /<[0-9.]+>$/)) return substr(l, RSTART + 1, RLENGTH - 2); return 0 }
    NR == 1 { t0 = secs($2); phase = 1 }
    index($0, "write(1, ") && index($0, "hello\\\":\\\"ready") && !ready { ready = secs($2); phase = 0 }
    index($0, "recvfrom(") && index($0, "\\\"op\\\":\\\"stop") { q = secs($2); phase = 2 }
    index($0, "sendto(") && index($0, "\\\"result\\\":") { e = secs($2); phase = 0 }
    /fsync\(|fdatasync\(/ { if (phase == 1) { n1++; f1 += dur($0) } else if (phase == 2) { n2++; f2 += dur($0) } }
    index($0, "sendto(") && (index($0, ", \"P\\0") || index($0, ", \"Q\\0")) { if (phase == 1) r1++; else if (phase == 2) r2++ }
    index($0, "connect(") && index($0, ".s.PGSQL.") { c++ }
    /execve\(/ { x++ }
    END {
      printf "start: %.1f ms from exec to the agent'"'"'s ready line; %d execs, %d connection, %d SQL round trips, %d fsyncs = %.1f ms\n", (ready - t0) * 1000, x, c, r1, n1, f1 * 1000
      printf "stop, inside the agent: %.1f ms from request to reply; %d SQL round trips, %d fsyncs = %.1f ms\n", (e - q) * 1000, r2, n2, f2 * 1000
    }' "$STRACE_DIR/start.trace" >"$STRACE_DIR/summary.txt" || true
  awk '/execve\(/ { split($2, a, ":"); t0 = a[3] } /connect\(.*agent.sock/ { split($2, a, ":"); printf "stop process: %.1f ms from exec to connecting to the agent\n", (a[3] - t0) * 1000 }' \
    "$STRACE_DIR/stop.trace" >>"$STRACE_DIR/summary.txt" || true
fi

# ---------------------------------------------------------------- report
stat() { # stat FILE -> "median p90" in microseconds (p90: nearest rank)
  sort -n "$1" | awk '{ v[NR] = $1 } END {
    n = NR; m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    r = int(0.9 * n); if (r < 0.9 * n) r++; printf "%d %d\n", m, v[r] }'
}
ms() { awk -v u="$1" 'BEGIN { printf "%.1f", u / 1000 }'; }
verdict() { # verdict BASE_US US -> "ratio | extra | met"
  awk -v a="$1" -v b="$2" 'BEGIN { r = b / a; x = (b - a) / 1000
    printf "%.2fx | %+.1f ms | %s", r, x, (r <= 1.2 && x <= 50) ? "yes" : (x <= 50 ? "no: ratio" : (r <= 1.2 ? "no: extra ms" : "no: both")) }'
}

CPUS=$(nproc)
CPU=$(bench_cpu_model)
FS=$(bench_fs)
bench_heading "## pgbookend hooks benchmark — PostgreSQL $PGV"
echo "- $(bench_when), host $(uname -n), $CPUS CPUs ($CPU), $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r), work dir on $FS"
echo "- binary: $BIN_VERSION, sha256 $BIN_SHA…"
echo "- $ITER measured rounds after $WARMUP warm-up rounds, order of the sides rotating; idle cluster, fsync on, archive_mode off, immediate checkpoint, \`stop --no-wait-archive\`"
echo "- load average before / after: $LOAD_BEFORE / $LOAD_AFTER$([ -n "$QUIET" ] && echo "; --wait-quiet $QUIET: $QUIET_WAITS rounds waited for CPU pressure < $QUIET%")"
echo
bench_table "call" "side" "median" "p90" "ratio to psql (median)" "extra (median)" "target met (<= 1.2x and <= 50 ms)"
for op in start stop; do
  read -r pm p9 < <(stat "$WORK/samples/$op.psql")
  if [ $op = start ]; then sql=${SQL_START%;}; else sql=${SQL_STOP%;}; fi
  echo "| $op | psql session: \`$sql\` | $(ms "$pm") ms | $(ms "$p9") ms | 1 | | |"
  for v in "${VARIANTS[@]}"; do
    read -r bm b9 < <(stat "$WORK/samples/$op.$v")
    echo "| $op | $(variant_label "$v") \`$op\` process | $(ms "$bm") ms | $(ms "$b9") ms | $(verdict "$pm" "$bm") |"
  done
done
echo
bench_table "agent holding a backup (default options, --heartbeat 1s, after 5 s; last heartbeat ${HB_AGE:-?} s ago)" "value" "target met (<= 10 MB)"
awk -v r="$VMRSS" -v h="$VMHWM" -v a="$RSSANON" -v f="$RSSFILE" -v p="$PSS" -v c="$CPU_MS" 'BEGIN {
  printf "| VmRSS | %.1f MB (%d kB) | %s |\n", r / 1024, r, (r <= 10240) ? "yes" : "no"
  printf "| VmHWM (peak of its life so far, start-up included) | %.1f MB (%d kB) | (not the target) |\n", h / 1024, h
  printf "| of which RssAnon / RssFile (shared libraries) | %d kB / %d kB | |\n", a, f
  printf "| Pss (smaps_rollup) | %s kB | |\n", p
  printf "| CPU time used in those 5 s | %d ms | |\n", c }'

if [ -s "$WORK/samples/agent-smaps.txt" ]; then
  echo
  echo "Agent RSS by mapping (kB): $(head -12 "$WORK/samples/agent-smaps.txt" | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }');" \
    "$(awk '{ t++; k += $1 } END { printf "%d mappings, %d kB in all", t, k }' "$WORK/samples/agent-smaps.txt")."
fi

# Where the agent's time goes, from its log timestamps (median over the measured rounds).
phase_report() {
  local v f
  for v in "${VARIANTS[@]}"; do
    for f in "$WORK"/samples/agent-"$v"-*.log; do
      [ -f "$f" ] || continue
      awk '
        function t(s,  a, b) { split(s, a, "T"); split(a[2], b, ":"); sub(/Z$/, "", b[3]); return (b[1] * 3600 + b[2] * 60 + b[3]) * 1000 }
        /agent starting/ { s = t($1) } /connected:/ { c = t($1) } /backup started at/ { b = t($1) }
        /start walk:/ { wk = t($1) }
        /request: Stop/ { q = t($1) } /backup stopped at/ { e = t($1) } /bundle written to/ { w = t($1) }
        END { if (s && c && b && q && e && w) printf "%.2f %.2f %.2f %.2f %.2f\n", c - s, b - c, (wk ? wk - b : 0), e - q, w - e }' "$f"
    done >"$WORK/samples/phases.$v"
    [ -s "$WORK/samples/phases.$v" ] || continue
    med() { sort -n -k"$1" "$WORK/samples/phases.$v" | awk -v k="$1" '{ x[NR] = $k } END { print x[int((NR + 1) / 2)] }'; }
    echo
    echo "Inside the agent, $(variant_label "$v") (medians of its log timestamps): from \"agent starting\" to connected and session set up $(med 1) ms;" \
      "to \"backup started\" (checks, start call) $(med 2) ms; start walk $(med 3) ms;" \
      "from the stop request to \"backup stopped\" (state save, stop call) $(med 4) ms; bundle written $(med 5) ms later."
  done
}
phase_report
if [ -n "$STRACE_DIR" ] && [ -s "$STRACE_DIR/summary.txt" ]; then
  echo
  echo "strace of one more pair ($(variant_label default); --seccomp-bpf; traces in $STRACE_DIR):"
  sed 's/^/- /' "$STRACE_DIR/summary.txt"
fi
echo
if [ "$KEEP" = 1 ]; then echo "Raw samples (µs) in $WORK/samples."; fi
