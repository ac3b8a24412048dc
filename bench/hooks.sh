#!/usr/bin/env bash
# bench/hooks.sh — issue 2 benchmarks of the hook pair, on a throwaway idle cluster:
#
#  1. Overhead of `pgbookend start` / `pgbookend stop` (wall time of the whole hook process:
#     exec, agent spawn, connect, checks, marker, bundle with fsyncs) against the same backup
#     SQL sent from ONE already-open psql session (wall time per call seen by the client:
#     write the statement plus an `\echo` sentinel into psql's stdin, wait for the sentinel).
#     Same immediate checkpoint on both sides; archive_mode off and --no-wait-archive.
#     Iterations alternate which side goes first. Targets: <= 1.2x and <= 50 ms extra.
#  2. Resident memory (VmRSS, VmHWM) of an agent holding a backup after a few heartbeats
#     (--heartbeat 1s, read /proc/<pid>/status after ~5 s). Target: <= 10 MB.
#
# Usage: bench/hooks.sh [--major N] [--iterations N] [--warmup N] [--bin PATH] [--tmpdir DIR] [--keep]
#   --major N       server major (13-18). 15 uses /usr/lib/postgresql/15/bin, others
#                   /var/cache/pgbookend/pg/N/bin (scripts/install-deps). psql 15 is the client.
#   --iterations N  measured rounds (default 15); --warmup N unmeasured rounds first (default 2)
#   --bin PATH      use this pgbookend binary instead of building target/release/pgbookend
#   --tmpdir DIR    where the throwaway cluster, run dir and store live (default $TMPDIR or
#                   /tmp; on this VM /tmp is ext4 on disk, so fsyncs are real)
#   --keep          keep the work directory (logs, samples) for inspection
#   --strace DIR    after the measurements, trace one more start/stop pair with
#                   `strace -f -tt -T` (start.trace follows start and its agent to the end
#                   of the agent; stop.trace is the stop process) into DIR
#
# Runs as root (servers run as `postgres` via runuser) or as an ordinary user. Everything it
# starts (postgres, psql, agents) is stopped by pid on exit, also on failure or Ctrl-C.
set -euo pipefail

MAJOR=15
ITER=15
WARMUP=2
BIN_ARG=
TMPBASE=${TMPDIR:-/tmp}
KEEP=0
STRACE_DIR=
while [ $# -gt 0 ]; do
  case "$1" in
    --major) MAJOR=$2; shift 2 ;;
    --iterations) ITER=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --bin) BIN_ARG=$2; shift 2 ;;
    --tmpdir) TMPBASE=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --strace) STRACE_DIR=$2; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "hooks.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$MAJOR" in 13|14|15|16|17|18) ;; *) echo "hooks.sh: --major must be 13..18" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLIENT_BIN=/usr/lib/postgresql/15/bin
if [ "$MAJOR" = 15 ] && [ -x /usr/lib/postgresql/15/bin/postgres ]; then
  SERVER_BIN=/usr/lib/postgresql/15/bin
else
  SERVER_BIN=/var/cache/pgbookend/pg/$MAJOR/bin
fi
PSQL=$CLIENT_BIN/psql
for f in "$SERVER_BIN/initdb" "$SERVER_BIN/pg_ctl" "$SERVER_BIN/postgres" "$PSQL"; do
  [ -x "$f" ] || { echo "hooks.sh: $f missing (run scripts/install-deps)" >&2; exit 4; }
done
[ -n "${EPOCHREALTIME:-}" ] || { echo "hooks.sh: needs bash >= 5 (EPOCHREALTIME)" >&2; exit 4; }

# ---------------------------------------------------------------- state and cleanup
WORK=
PM_PID=
PSQL_PID=
STRACE_PID=
AGENT_PIDS=()
RUNDIR=
BIN=

as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if alive "$PSQL_PID"; then
    kill "$PSQL_PID" 2>/dev/null
  fi
  for p in "${AGENT_PIDS[@]}" $(pgrep -P "${STRACE_PID:-0}" 2>/dev/null); do
    if alive "$p" && grep -q pgbookend "/proc/$p/cmdline" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null   # the agent aborts the backup and exits
    fi
  done
  for p in "${AGENT_PIDS[@]}"; do
    for _ in $(seq 50); do alive "$p" || break; sleep 0.1; done
    alive "$p" && grep -q pgbookend "/proc/$p/cmdline" 2>/dev/null && kill -KILL "$p" 2>/dev/null
  done
  if alive "$PM_PID"; then
    as_owner "$SERVER_BIN/pg_ctl" -D "$WORK/data" -m fast -w -t 30 stop >/dev/null 2>&1
    if alive "$PM_PID"; then kill -KILL "$PM_PID" 2>/dev/null; fi
  fi
  alive "$PSQL_PID" && kill -KILL "$PSQL_PID" 2>/dev/null
  alive "$STRACE_PID" && kill -TERM "$STRACE_PID" 2>/dev/null
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$KEEP" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() { echo "hooks.sh: $*" >&2; exit 1; }
note() { echo "# $*" >&2; }

# ---------------------------------------------------------------- build
if [ -n "$BIN_ARG" ]; then
  SRC_BIN=$BIN_ARG
else
  note "building: cargo build --release -p pgbookend"
  (cd "$ROOT" && cargo build --release --quiet -p pgbookend) || die "build failed"
  SRC_BIN=$ROOT/target/release/pgbookend
fi
[ -x "$SRC_BIN" ] || die "$SRC_BIN is not executable"

# ---------------------------------------------------------------- cluster
WORK=$(mktemp -d "$TMPBASE/pgbookend-bench.XXXXXX")
chmod 755 "$WORK"
# A private copy, so a concurrent rebuild cannot swap the binary under a running agent.
BIN=$WORK/pgbookend
cp "$SRC_BIN" "$BIN"
RUNDIR=$WORK/run
STORE=$WORK/bundles
mkdir -p "$WORK/sock" "$WORK/samples"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK/sock"
mkdir -m 700 "$WORK/data"
touch "$WORK/server.log"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK/data" "$WORK/server.log"

note "initdb: PostgreSQL $MAJOR from $SERVER_BIN in $WORK/data"
as_owner "$SERVER_BIN/initdb" -D "$WORK/data" -U postgres --auth=trust -E UTF8 --locale=C \
  >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
# Defaults otherwise (fsync on, shared_buffers 128MB, wal_level replica): an ordinary cluster.
as_owner "$SERVER_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 60 start -o \
  "-c listen_addresses='' -c unix_socket_directories='$WORK/sock' -c port=5432 -c archive_mode=off" \
  >/dev/null || { cat "$WORK/server.log" >&2; die "server did not start"; }
PM_PID=$(head -1 "$WORK/data/postmaster.pid")
export PGHOST=$WORK/sock PGPORT=5432 PGUSER=postgres PGDATABASE=postgres
unset PGSERVICE PGOPTIONS PGPASSWORD PGSSLMODE 2>/dev/null || true
SERVER_VERSION=$("$PSQL" -X -A -t -c 'SHOW server_version' | awk '{ print $1; exit }')
note "server $SERVER_VERSION up (postmaster pid $PM_PID), socket $WORK/sock"

# ---------------------------------------------------------------- the psql side
if [ "$MAJOR" -ge 15 ]; then
  SQL_START="SELECT pg_backup_start('x', true);"
  SQL_STOP="SELECT * FROM pg_backup_stop(false);"
else
  SQL_START="SELECT pg_start_backup('x', true, false);"
  SQL_STOP="SELECT * FROM pg_stop_backup(false, false);"
fi

# One long-lived psql; stdout unbuffered (stdbuf) so the sentinel arrives as soon as printed.
coproc PSQLP { exec stdbuf -o0 -e0 "$PSQL" -X -q -A -t -v ON_ERROR_STOP=0 2>&1; }
PSQL_PID=$PSQLP_PID
exec {PSQL_IN}>&"${PSQLP[1]}" {PSQL_OUT}<&"${PSQLP[0]}"
SEQ=0
# psql_call SQL -> sets US (client wall time in microseconds); dies on ERROR.
psql_call() {
  SEQ=$((SEQ + 1))
  local mark="__pgbookend_bench_${SEQ}__" line out="" t0 t1
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
# pgb_call ARGS... -> sets US (wall time of the whole process); dies on a non-zero exit.
pgb_call() {
  local t0 t1 rc=0
  t0=${EPOCHREALTIME/./}
  "$BIN" "$@" --run-dir "$RUNDIR" >"$WORK/last.out" 2>"$WORK/last.err" || rc=$?
  t1=${EPOCHREALTIME/./}
  [ "$rc" = 0 ] || { cat "$WORK/last.out" "$WORK/last.err" >&2; die "pgbookend $1 exited $rc"; }
  US=$((t1 - t0))
}
pgb_start() {
  pgb_call start --id "$1" --store "$STORE" --fast --json "${@:2}"
  local pid
  pid=$(sed -n 's/.*"agent_pid": *\([0-9]*\).*/\1/p' "$WORK/last.out" | head -1)
  [ -n "$pid" ] && AGENT_PIDS+=("$pid")
}
pgb_stop() { pgb_call stop --id "$1" --no-wait-archive --json; }

# ---------------------------------------------------------------- measurement 1: latency
record() { echo "$2" >>"$WORK/samples/$1"; }
settle() { sleep 0.2; }   # let the previous session's backend exit before the next timing

round() { # round N MEASURED(0/1)
  local n=$1 m=$2 id="bench-$1-$2-$RANDOM" first
  if [ $((n % 2)) = 0 ]; then first=psql; else first=pgb; fi
  for side in $first $([ $first = psql ] && echo pgb || echo psql); do
    if [ "$side" = psql ]; then
      psql_call "$SQL_START"; [ "$m" = 1 ] && record psql_start "$US"; settle
      psql_call "$SQL_STOP";  [ "$m" = 1 ] && record psql_stop "$US";  settle
    else
      pgb_start "$id";        [ "$m" = 1 ] && record pgb_start "$US";  settle
      pgb_stop "$id";         [ "$m" = 1 ] && record pgb_stop "$US";   settle
      [ "$m" = 1 ] && cp "$RUNDIR/$id/agent.log" "$WORK/samples/agent-$n.log" 2>/dev/null
      "$BIN" cleanup --run-dir "$RUNDIR" >/dev/null 2>&1 || true
    fi
  done
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
note "warm-up: $WARMUP rounds; measuring: $ITER rounds (alternating which side goes first)"
for i in $(seq 1 "$WARMUP"); do round "$i" 0; done
for i in $(seq 1 "$ITER"); do round "$i" 1; done

# ---------------------------------------------------------------- measurement 2: agent memory
note "agent memory: start with --heartbeat 1s, wait 5 s"
MEM_ID=bench-mem-$RANDOM
pgb_start "$MEM_ID" --heartbeat 1s
AGENT_PID=$("$BIN" status --id "$MEM_ID" --json --run-dir "$RUNDIR" |
  sed -n 's/.*"agent_pid": *\([0-9]*\).*/\1/p' | head -1)
[ -n "$AGENT_PID" ] || die "no agent_pid in status"
sleep 5
HB_AGE=$("$BIN" status --id "$MEM_ID" --json --run-dir "$RUNDIR" |
  sed -n 's/.*"last_heartbeat_age_s": *\([0-9-]*\).*/\1/p' | head -1)
status_kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$AGENT_PID/status"; }
VMRSS=$(status_kb VmRSS); VMHWM=$(status_kb VmHWM)
RSSANON=$(status_kb RssAnon); RSSFILE=$(status_kb RssFile)
PSS=$(awk '$1 == "Pss:" { print $2 }' "/proc/$AGENT_PID/smaps_rollup" 2>/dev/null || echo "?")
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
    "$BIN" stop --id "$TR_ID" --no-wait-archive --run-dir "$RUNDIR" >"$STRACE_DIR/stop.out" 2>&1 || die "traced stop failed"
  wait "$STRACE_PID" || true
  STRACE_PID=
  cp "$RUNDIR/$TR_ID/agent.log" "$STRACE_DIR/agent.log" 2>/dev/null || true
  # Critical-path summary: start = from exec of `start` to the agent's "ready" line;
  # stop = from the agent reading the stop request to its reply.
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
      printf "start (traced): %.1f ms from exec to the agent'"'"'s ready line; %d execs, %d connection, %d SQL round trips, %d fsyncs = %.1f ms\n", (ready - t0) * 1000, x, c, r1, n1, f1 * 1000
      printf "stop in the agent (traced): %.1f ms from request to reply; %d SQL round trips, %d fsyncs = %.1f ms\n", (e - q) * 1000, r2, n2, f2 * 1000
    }' "$STRACE_DIR/start.trace" >"$STRACE_DIR/summary.txt" || true
fi

# ---------------------------------------------------------------- report
stat() { # stat FILE -> "median p90" in microseconds (nearest rank)
  sort -n "$1" | awk '{ v[NR] = $1 } END {
    n = NR; m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    r = int(0.9 * n); if (r < 0.9 * n) r++; printf "%d %d\n", m, v[r] }'
}
ms() { awk -v u="$1" 'BEGIN { printf "%.1f", u / 1000 }'; }
verdict_ops() {
  awk -v a="$1" -v b="$2" 'BEGIN { r = b / a; x = (b - a) / 1000
    printf "%.2fx | %+.1f ms | %s", r, x, (r <= 1.2 && x <= 50) ? "yes" : (x <= 50 ? "no (ratio)" : (r <= 1.2 ? "no (extra ms)" : "no")) }'
}

CPUS=$(nproc)
CPU=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
FS=$(df -T "$WORK" | awk 'NR == 2 { print $2 }')
echo
echo "## pgbookend hooks benchmark — PostgreSQL $SERVER_VERSION"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n), $CPUS CPUs ($CPU), kernel $(uname -r), work dir on $FS;"
echo "$ITER measured rounds after $WARMUP warm-up rounds; idle cluster, fsync on, archive_mode off, immediate checkpoint;"
echo "load average before/after: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "| call | psql session: median | p90 | pgbookend process: median | p90 | ratio (median) | extra (median) | target met (<=1.2x and <=50 ms) |"
echo "|---|---|---|---|---|---|---|---|"
for op in start stop; do
  read -r pm p9 < <(stat "$WORK/samples/psql_$op")
  read -r bm b9 < <(stat "$WORK/samples/pgb_$op")
  if [ $op = start ]; then sql=${SQL_START%;}; else sql=${SQL_STOP%;}; fi
  echo "| \`$op\` vs \`$sql\` | $(ms "$pm") ms | $(ms "$p9") ms | $(ms "$bm") ms | $(ms "$b9") ms | $(verdict_ops "$pm" "$bm") |"
done
echo
echo "| agent memory (--heartbeat 1s, after 5 s, last heartbeat ${HB_AGE:-?} s ago) | value | target met (<=10 MB) |"
echo "|---|---|---|"
awk -v r="$VMRSS" -v h="$VMHWM" -v a="$RSSANON" -v f="$RSSFILE" -v p="$PSS" 'BEGIN {
  printf "| VmRSS | %.1f MB (%d kB) | %s |\n", r / 1024, r, (r <= 10240) ? "yes" : "no"
  printf "| VmHWM (peak) | %.1f MB (%d kB) | %s |\n", h / 1024, h, (h <= 10240) ? "yes" : "no"
  printf "| RssAnon / RssFile | %d kB / %d kB | |\n", a, f
  printf "| Pss (smaps_rollup) | %s kB | |\n", p }'

# Where the start time goes, from the agent log timestamps (median over measured rounds).
phase_report() {
  local f
  for f in "$WORK"/samples/agent-*.log; do
    [ -f "$f" ] || continue
    awk '
      function t(s,  a, b) { split(s, a, "T"); split(a[2], b, ":"); sub(/Z$/, "", b[3]); return (b[1] * 3600 + b[2] * 60 + b[3]) * 1000 }
      /agent starting/ { s = t($1) } /connected:/ { c = t($1) } /backup started at/ { b = t($1) }
      /request: Stop/ { q = t($1) } /backup stopped at/ { e = t($1) } /bundle written to/ { w = t($1) }
      END { if (s && c && b && q && e && w) printf "%.2f %.2f %.2f %.2f\n", c - s, b - c, e - q, w - e }' "$f"
  done >"$WORK/samples/phases"
  [ -s "$WORK/samples/phases" ] || return 0
  echo
  echo "Inside the agent (median of its log timestamps): connect+session setup $(sort -n -k1 "$WORK/samples/phases" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }') ms," \
    "checks+start call $(sort -n -k2 "$WORK/samples/phases" | awk '{ v[NR] = $2 } END { print v[int((NR + 1) / 2)] }') ms," \
    "stop call $(sort -n -k3 "$WORK/samples/phases" | awk '{ v[NR] = $3 } END { print v[int((NR + 1) / 2)] }') ms," \
    "bundle write $(sort -n -k4 "$WORK/samples/phases" | awk '{ v[NR] = $4 } END { print v[int((NR + 1) / 2)] }') ms."
}
phase_report
if [ -n "$STRACE_DIR" ] && [ -s "$STRACE_DIR/summary.txt" ]; then
  echo
  echo "strace (one extra pair, --seccomp-bpf; traces in $STRACE_DIR):"
  sed 's/^/- /' "$STRACE_DIR/summary.txt"
fi
echo
echo "Raw samples (µs) in $WORK/samples (use --keep to keep them)."
