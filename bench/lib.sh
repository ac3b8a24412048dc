# shellcheck shell=bash disable=SC2034 # the variables set here are the scripts'
# bench/lib.sh: what every benchmark script shares, so that the scripts only measure:
# option parsing (the common flags, the script's own ones, --help from its header comment),
# messages, the release build and a private copy of the binary, the work directory and its
# cleanup (agents, servers, the directory, by pid) on any exit, a throwaway cluster, the
# agent's start and stop, pgBackRest (installed when missing, its configurations), timing,
# medians and the result tables.
#
# A script sets its own defaults (RUNS=3 SCALE=100 ...), sources this file (NAME, TMPBASE,
# KEEP and BIN get their defaults here), calls bench_parse with the flags it takes, then
# bench_pg_major (PGBIN, PSQL) and bench_binary or bench_workdir before bench_start_cluster.
# It may define bench_cleanup_first / bench_cleanup_last, run at the start / end of
# cleanup (its own background processes).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NAME=${NAME:-$(basename "$0")}
TMPBASE=${TMPDIR:-/tmp}
KEEP=0
BIN=
WORK=
PM_PID=
PM2_PID=
AGENT_PIDS=()

die() { echo "$NAME: $*" >&2; exit 1; }
note() { echo "# $*" >&2; }
now_us() { echo "${EPOCHREALTIME/./}"; }
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
# An agent pid is ours only while its command line is a binary of our work directory's agent.
is_our_agent() { alive "$1" && [ -n "$WORK" ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "^$WORK/[^ ]* __agent "; }
[ -n "${EPOCHREALTIME:-}" ] || die "needs bash >= 5 (EPOCHREALTIME)"

# ---------------------------------------------------------------- options

# The common flags: name in bench_parse's list -> --flag:VARIABLE (a value) or
# --flag:VARIABLE=VALUE (a switch).
declare -A BENCH_COMMON=([bin]=--bin:BIN [tmpdir]=--tmpdir:TMPBASE [keep]=--keep:KEEP=1
  [runs]=--runs:RUNS [scale]=--scale:SCALE [segments]=--segments:SEGS [rounds]=--rounds:ROUNDS)

# bench_help: the script's header comment (its second line to the first line that is not a
# comment).
bench_help() { awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; }
bench_usage() { echo "$NAME: $* (see --help)" >&2; exit 2; }

# bench_parse "FLAGS" "$@": parses the command line. FLAGS are the common flags the script
# takes (bin tmpdir keep runs scale segments rounds) and its own, each as --flag:VARIABLE
# (takes a value) or --flag:VARIABLE=VALUE (a switch); -h/--help prints the header comment.
# The numbers of the common flags must be >= 1.
bench_parse() {
  local spec=() w hit v
  for w in $1; do spec+=("${BENCH_COMMON[$w]:-$w}"); done
  shift
  while [ $# -gt 0 ]; do
    case "$1" in -h | --help) bench_help; exit 0 ;; esac
    hit=
    for w in "${spec[@]}"; do [ "${w%%:*}" = "$1" ] && hit=${w#*:}; done
    [ -n "$hit" ] || bench_usage "unknown argument $1"
    case "$hit" in
      *=*) printf -v "${hit%%=*}" '%s' "${hit#*=}"; shift ;;
      *) [ $# -ge 2 ] || bench_usage "$1 needs a value"; printf -v "$hit" '%s' "$2"; shift 2 ;;
    esac
  done
  for w in "${spec[@]}"; do
    case "${w#*:}" in RUNS | SCALE | SEGS | ROUNDS) ;; *) continue ;; esac
    v=${w#*:}
    [[ "${!v}" =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || bench_usage "${w%%:*} takes a number >= 1"
  done
}

# ---------------------------------------------------------------- what it needs

# bench_pg_major N: PGBIN, the server binaries of major N (13-18; 15 is Debian's, the others
# from scripts/install-deps), and PSQL, Debian's psql 15 (the client for every major).
bench_pg_major() {
  case "$1" in 13 | 14 | 15 | 16 | 17 | 18) ;; *) bench_usage "--major must be 13..18" ;; esac
  if [ "$1" = 15 ] && [ -x /usr/lib/postgresql/15/bin/postgres ]; then
    PGBIN=/usr/lib/postgresql/15/bin
  else
    PGBIN=${PGBOOKEND_PG_DIR:-/var/cache/pgbookend/pg}/$1/bin
  fi
  PSQL=/usr/lib/postgresql/15/bin/psql
  local f
  for f in "$PGBIN/initdb" "$PGBIN/pg_ctl" "$PGBIN/postgres" "$PSQL"; do
    [ -x "$f" ] || die "$f missing (run scripts/install-deps)"
  done
}

# bench_need CMD...: dies unless every CMD is on PATH.
bench_need() {
  local c
  for c in "$@"; do command -v "$c" >/dev/null || die "needs $c"; done
}

# bench_need_time: /usr/bin/time (for peak RSS), installed as root if missing.
bench_need_time() {
  if [ ! -x /usr/bin/time ]; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q time >/dev/null 2>&1 || true; fi
    [ -x /usr/bin/time ] || die "needs /usr/bin/time (apt-get install time)"
  fi
}

# bench_need_pgbackrest WHAT: pgBackRest, the side-by-side reference (Debian's package,
# installed as root if missing): PGBR_BIN (its path, or empty) and HAVE_PGBR (1/0); without
# it, says that WHAT (its rows, its columns) are left out.
bench_need_pgbackrest() {
  if ! command -v pgbackrest >/dev/null && [ "$(id -u)" = 0 ]; then
    note "installing Debian's pgbackrest"
    apt-get install -y -q pgbackrest >/dev/null 2>&1 || true
  fi
  PGBR_BIN=$(command -v pgbackrest || true)
  HAVE_PGBR=1
  [ -n "$PGBR_BIN" ] || { HAVE_PGBR=0; note "pgbackrest not installed: $1 left out"; }
}

# bench_room KB: refuses to start without KB free on $TMPBASE.
bench_room() {
  local avail
  avail=$(df -Pk "$TMPBASE" | awk 'NR == 2 { print $4 }')
  note "df $TMPBASE: $((avail / 1048576)) GiB free, need about $(($1 / 1048576)) GiB"
  [ "$avail" -gt "$1" ] || die "not enough room on $TMPBASE"
}

# ---------------------------------------------------------------- build, work dir, cleanup

# stop_pm DATADIR PID [MODE]: stops a server we started (fast by default), killing it if
# it does not stop.
stop_pm() {
  if alive "$2"; then
    as_owner "$PGBIN/pg_ctl" -D "$1" -m "${3:-fast}" -w -t 60 stop >/dev/null 2>&1
    alive "$2" && kill -KILL "$2" 2>/dev/null
  fi
  return 0
}

bench_cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  set +e
  declare -F bench_cleanup_first >/dev/null && bench_cleanup_first
  for p in "${AGENT_PIDS[@]}"; do is_our_agent "$p" && kill -TERM "$p" 2>/dev/null; done
  for p in "${AGENT_PIDS[@]}"; do
    for _ in $(seq 50); do is_our_agent "$p" || break; sleep 0.1; done
    is_our_agent "$p" && kill -KILL "$p" 2>/dev/null
  done
  [ -n "$WORK" ] && stop_pm "$WORK/copy" "$PM2_PID"
  [ -n "$WORK" ] && stop_pm "$WORK/data" "$PM_PID" "${PM_STOP_MODE:-fast}"
  declare -F bench_cleanup_last >/dev/null && bench_cleanup_last
  if alive "${MOTO_PID:-}"; then kill -TERM "$MOTO_PID" 2>/dev/null; sleep 0.5; alive "$MOTO_PID" && kill -KILL "$MOTO_PID"; fi
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$KEEP" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# bench_build [--examples]: cargo build --release of pgbookend (and its examples).
bench_build() {
  note "building: cargo build --release -p pgbookend $*"
  (cd "$ROOT" && cargo build --release --quiet -p pgbookend "$@") || die "build failed"
}

# bench_workdir TAG: the private work directory (removed at exit unless --keep), with
# RUNDIR and STORE (made) in it; pgbookend's state and run directories go there too.
bench_workdir() {
  WORK=$(mktemp -d "$TMPBASE/pgbookend-$1.XXXXXX")
  chmod 755 "$WORK"
  RUNDIR=$WORK/run
  STORE=$WORK/store
  mkdir -p "$STORE"
  export PGBOOKEND_STATE_DIR=$WORK/state PGBOOKEND_RUN_DIR=$RUNDIR
}

# bench_binary TAG [--examples]: the binary to measure: --bin, else this tree's release
# build (built here); then the work directory (bench_workdir TAG) and in it a private copy,
# $WORK/pgbookend, so that a concurrent rebuild cannot swap it under a running agent (the
# agent is `current_exe() __agent`). Sets BIN (the copy), BIN_SHA and BIN_VERSION.
bench_binary() {
  local tag=$1
  shift
  if [ -z "$BIN" ]; then
    bench_build "$@"
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/pgbookend
  fi
  [ -x "$BIN" ] || die "$BIN is not an executable"
  bench_workdir "$tag"
  cp "$BIN" "$WORK/pgbookend"
  BIN=$WORK/pgbookend
  BIN_SHA=$(sha256sum "$BIN" | cut -c1-12)
  BIN_VERSION=$("$BIN" --version 2>/dev/null | head -1 || echo "?")
}

# ---------------------------------------------------------------- clusters

# bench_start_cluster [INITDB_ARG]... -- [SERVER -c SETTINGS]: initdb $WORK/data and start it
# on a private socket ($WORK/sock, port 5432); exports the libpq variables for it and an
# empty PGBOOKEND_CONFIG (before the start: archive_commands inherit it), and sets PGV (the
# server version).
bench_start_cluster() {
  local init=() opts=""
  while [ $# -gt 0 ] && [ "$1" != -- ]; do init+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  opts="$*"
  # The caller's libpq settings go (the bench talks to its own server only); pgbookend's
  # own settings (PGBOOKEND_STATE_DIR...) stay.
  for v in $(env | sed -n 's/^\(PG[A-Z_]*\)=.*/\1/p'); do
    case "$v" in PGBOOKEND_*) ;; *) unset "$v" ;; esac
  done
  export PGHOST=$WORK/sock PGPORT=5432 PGUSER=postgres PGDATABASE=postgres
  : >"$WORK/empty.toml"
  export PGBOOKEND_CONFIG=$WORK/empty.toml
  mkdir -p "$WORK/sock"
  mkdir -m 700 "$WORK/data"
  touch "$WORK/server.log" "$WORK/server2.log"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK/sock" "$WORK/data" "$WORK/server.log" "$WORK/server2.log"; fi
  note "initdb: PostgreSQL from $PGBIN in $WORK/data"
  as_owner "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust -E UTF8 --locale=C "${init[@]}" \
    >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
  as_owner "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 60 start -o \
    "-c listen_addresses='' -c unix_socket_directories='$WORK/sock' -c port=5432 -c wal_level=replica -c archive_mode=off $opts" \
    >/dev/null || { cat "$WORK/server.log" >&2; die "server did not start"; }
  PM_PID=$(head -1 "$WORK/data/postmaster.pid")
  PGV=$(q -c 'SHOW server_version' | awk '{ print $1 }')
  note "server $PGV up (postmaster pid $PM_PID), socket $WORK/sock"
}
# q: psql -At on the cluster ($PSQL if set: the npm server builds have no psql).
q() { "${PSQL:-$PGBIN/psql}" -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }

# bench_pgbench_init SCALE: pgbench -i -s SCALE on the cluster, then a checkpoint.
bench_pgbench_init() {
  note "pgbench -i -s $1"
  as_owner "$PGBIN/pgbench" -i -q -s "$1" >"$WORK/pgbench.log" 2>&1 ||
    { tail "$WORK/pgbench.log" >&2; die "pgbench -i failed"; }
  q -c CHECKPOINT >/dev/null
}

# bench_write_segments N: creates the table t and inserts rows into it, 200,000 a
# statement, until N segments (16 MiB) of WAL are written from now.
bench_write_segments() {
  local start i=0
  note "writing $1 segments of inserts"
  q -c "CREATE TABLE t (i bigint PRIMARY KEY, s text, ts timestamptz)"
  start=$(q -c "SELECT pg_current_wal_lsn()")
  while :; do
    q -c "INSERT INTO t SELECT g, md5(g::text), now() FROM generate_series($i + 1, $i + 200000) g"
    i=$((i + 200000))
    [ "$(q -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$start') >= $1 * 16777216::numeric")" = t ] && break
  done
}

# bench_start_copy SOCKDIR [-o SETTINGS]: starts a server on the prepared copy $WORK/copy
# (port 5433, socket SOCKDIR, log $WORK/server2.log), sets PM2_PID (stopped by
# bench_cleanup) and waits until it is open (out of recovery); dies if it stops meanwhile.
bench_start_copy() {
  as_owner "$PGBIN/pg_ctl" -D "$WORK/copy" -l "$WORK/server2.log" -w -t 3600 start -o \
    "-c listen_addresses='' -c unix_socket_directories='$1' -c port=5433 -c archive_mode=off" \
    >/dev/null || { tail -20 "$WORK/server2.log" >&2; die "the prepared copy did not start"; }
  PM2_PID=$(head -1 "$WORK/copy/postmaster.pid")
  until [ "$(q -h "$1" -p 5433 -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do
    alive "$PM2_PID" || { tail -20 "$WORK/server2.log" >&2; die "the prepared copy's server exited"; }
    sleep 0.05
  done
}

# ---------------------------------------------------------------- the agent

# json_field KEY FILE: the first value of KEY (a number or a string) in the JSON of FILE.
json_field() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",}]*\).*/\1/p" "$2" | head -1; }

# bench_agent_start EXE ID [ARG]...: EXE start --id ID --store STORE (stdout in
# $WORK/start.out, stderr in start.err), dies on failure; APID is the agent, stopped by pid
# at exit.
bench_agent_start() {
  "$1" start --id "$2" --store "$STORE" --run-dir "$RUNDIR" "${@:3}" >"$WORK/start.out" 2>"$WORK/start.err" ||
    { cat "$WORK/start.out" "$WORK/start.err" >&2; die "start failed"; }
  APID=$("$1" status --id "$2" --json --run-dir "$RUNDIR" | json_field agent_pid /dev/stdin)
  if [ -n "$APID" ]; then AGENT_PIDS+=("$APID"); fi
}

# bench_agent_stop EXE ID: EXE stop --id ID --no-wait-archive --json (the report in
# $WORK/stop.json), dies on failure.
bench_agent_stop() {
  "$1" stop --id "$2" --no-wait-archive --json --run-dir "$RUNDIR" >"$WORK/stop.json" 2>"$WORK/stop.err" ||
    { cat "$WORK/stop.json" "$WORK/stop.err" >&2; die "stop failed"; }
}

# ---------------------------------------------------------------- pgBackRest

# bench_pgbr_cluster: a pgBackRest configuration in $WORK/pgbr (stanza b, zst level 3,
# process-max 2), OWNER (the command prefix that runs as the server's owner) and PGBR (the
# pgBackRest command line); then the cluster (bench_start_cluster -k), archiving through
# pgBackRest with the stanza created when HAVE_PGBR=1, else not archiving.
bench_pgbr_cluster() {
  mkdir -p "$WORK/pgbr/repo" "$WORK/pgbr/log" "$WORK/pgbr/spool"
  cat >"$WORK/pgbr/pgbackrest.conf" <<CONF
[global]
repo1-path=$WORK/pgbr/repo
log-path=$WORK/pgbr/log
spool-path=$WORK/pgbr/spool
lock-path=$WORK/pgbr/spool
compress-type=zst
compress-level=3
process-max=2
start-fast=y
log-level-console=warn
[b]
pg1-path=$WORK/data
pg1-socket-path=$WORK/sock
pg1-port=5432
pg1-user=postgres
CONF
  [ "$(id -u)" = 0 ] && chown -R postgres: "$WORK/pgbr"
  bench_owner
  PGBR=("${OWNER[@]}" pgbackrest --config="$WORK/pgbr/pgbackrest.conf" --stanza=b)
  if [ "$HAVE_PGBR" = 1 ]; then
    bench_start_cluster -k -- -c archive_mode=on \
      -c "archive_command='pgbackrest --config=$WORK/pgbr/pgbackrest.conf --stanza=b archive-push %p'" \
      -c max_wal_size=4GB
    "${PGBR[@]}" stanza-create >/dev/null
  else
    bench_start_cluster -k -- -c max_wal_size=4GB
  fi
}
# bench_owner: OWNER, the command prefix that runs a command as the server's owner.
bench_owner() { OWNER=(); if [ "$(id -u)" = 0 ]; then OWNER=(runuser -u postgres --); fi; }

# bench_pgbr_wal_conf FILE [LINE...]: writes FILE, a pgBackRest configuration for the WAL
# benchmarks: stanza `bench` of the cluster in $WORK/data, zst level 3, no log file, lock
# and spool in $WORK/pgbr; LINEs are added to [global]. Owned by postgres when run as root.
bench_pgbr_wal_conf() {
  local file=$1
  shift
  mkdir -p "$WORK/pgbr/lock" "$WORK/pgbr/spool"
  {
    echo "[global]"
    printf '%s\n' "$@" compress-type=zst compress-level=3 log-level-console=warn \
      log-level-file=off "lock-path=$WORK/pgbr/lock" "spool-path=$WORK/pgbr/spool"
    printf '%s\n' "[bench]" "pg1-path=$WORK/data" "pg1-socket-path=$WORK/sock" pg1-port=5432 \
      pg1-user=postgres
  } >"$file"
  if [ "$(id -u)" = 0 ]; then chown -R postgres: "$file" "$WORK/pgbr/lock" "$WORK/pgbr/spool"; fi
}

# bench_settle: waits (up to 60 s) until the cluster in $WORK/data has archived every WAL
# segment it marked ready, then writes back dirty pages, so that a timed run does not pay
# for the archiving or the write-back of the one before it.
bench_settle() {
  local i
  for i in $(seq 600); do
    compgen -G "$WORK/data/pg_wal/archive_status/*.ready" >/dev/null || break
    sleep 0.1
  done
  sync
}

# bench_start_moto: starts the local S3 server (moto_server from scripts/install-deps) in
# $WORK/moto on a free port, creates the bucket `bench`, exports the AWS_* settings that
# point pgbookend at it and sets ENDPOINT, MOTO_PID (stopped by bench_cleanup) and
# MOTO_VERSION.
bench_start_moto() {
  local dir port
  if [ "$(id -u)" = 0 ]; then dir=${PGBOOKEND_MOTO_DIR:-/var/cache/pgbookend/moto}
  else dir=${PGBOOKEND_MOTO_DIR:-$HOME/.cache/pgbookend/moto}; fi
  local moto=${PGBOOKEND_MOTO_SERVER:-$dir/bin/moto_server}
  [ -x "$moto" ] || moto=$(command -v moto_server || true)
  [ -n "$moto" ] && [ -x "$moto" ] || die "moto_server missing (run scripts/install-deps)"
  command -v curl >/dev/null || die "curl missing (run scripts/install-deps)"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$WORK/moto"
  (cd "$WORK/moto" && exec "$moto" -H 127.0.0.1 -p "$port" >"$WORK/moto.log" 2>&1) &
  MOTO_PID=$!
  ENDPOINT=http://127.0.0.1:$port
  for _ in $(seq 300); do curl -sf -o /dev/null "$ENDPOINT/" && break; sleep 0.1; done
  curl -sf -o /dev/null "$ENDPOINT/" || { cat "$WORK/moto.log" >&2; die "moto_server did not start"; }
  curl -sf -o /dev/null -X PUT -H 'x-amz-acl: public-read-write' "$ENDPOINT/bench" || die "cannot create the bucket"
  MOTO_VERSION=$("$(dirname "$moto")/python3" -c 'import moto; print(moto.__version__)' 2>/dev/null || echo "?")
  export AWS_ACCESS_KEY_ID=AKIABENCH AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
  export AWS_ENDPOINT_URL=$ENDPOINT AWS_CONFIG_FILE=$WORK/none AWS_SHARED_CREDENTIALS_FILE=$WORK/none
  unset AWS_PROFILE AWS_SESSION_TOKEN
}
# proc_cpu PID: user + system CPU seconds used so far by process PID (from /proc).
proc_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' "/proc/$1/stat"
}

# ---------------------------------------------------------------- timing and the report

# timed CMD... -> US (wall), HWM (peak RSS kB), CPU (user + system seconds, of the
# command and its children), RC; output in $WORK/out.txt, err.txt.
timed() {
  local a b
  a=$(now_us)
  RC=0
  /usr/bin/time -v -o "$WORK/time.txt" "$@" >"$WORK/out.txt" 2>"$WORK/err.txt" || RC=$?
  b=$(now_us)
  US=$((b - a))
  HWM=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$WORK/time.txt")
  CPU=$(awk -F': ' '/User time/ { u = $2 } /System time/ { s = $2 } END { printf "%.2f", u + s }' "$WORK/time.txt")
}
# timed_ok WHAT CMD...: timed, and dies (with the command's output) unless it exited 0.
timed_ok() {
  timed "${@:2}"
  [ "$RC" = 0 ] || { cat "$WORK/out.txt" "$WORK/err.txt" >&2; die "$1 exited $RC"; }
}
# bench_record TOOL: appends US, HWM and CPU of the last timed run to $WORK/us-TOOL,
# rss-TOOL and cpu-TOOL.
bench_record() { echo "$US" >>"$WORK/us-$1"; echo "$HWM" >>"$WORK/rss-$1"; echo "$CPU" >>"$WORK/cpu-$1"; }

# bench_order N ITEM...: the items, rotated to start at the (N mod count)th.
bench_order() {
  local n=$1 i
  shift
  for i in $(seq 0 $(($# - 1))); do echo "${@:$(((n + i) % $# + 1)):1}"; done
}
# bench_shuffled N ITEM...: the items in a shuffled order, the same for a given N (so that
# no item always follows the same other one).
bench_shuffled() { printf '%s\n' "${@:2}" | shuf --random-source=<(yes "$1"); }

# median [DECIMALS] < numbers, one per line (0 decimals by default).
median() { sort -g | awk -v d="${1:-0}" '{ v[NR] = $1 } END { n = NR; if (n % 2) m = v[(n + 1) / 2]; else m = (v[n / 2] + v[n / 2 + 1]) / 2; printf("%." d "f\n", m) }'; }
# bench_col K FILE: column K of FILE.
bench_col() { awk -v k="$1" '{ print $k }' "$2"; }
maxv() { sort -g | tail -1; }
# sec US [DECIMALS]: microseconds as seconds ("1.234 s"; 3 decimals by default).
sec() { awk -v u="$1" -v d="${2:-3}" 'BEGIN { printf "%." d "f s", u / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1024 }'; }
bench_load() { cut -d' ' -f1-3 /proc/loadavg; }
bench_when() { date -u '+%Y-%m-%d %H:%M UTC'; }
bench_fs() { df -T "$WORK" | awk 'NR == 2 { print $2 }'; }
bench_cpu_model() { awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo; }

# bench_table COLUMN...: a Markdown table's header row and its separator row.
bench_table() {
  local c head="|" sep="|"
  for c in "$@"; do head+=" $c |"; sep+="---|"; done
  printf '%s\n%s\n' "$head" "$sep"
}

# bench_heading TEXT: a report's heading (TEXT between blank lines).
bench_heading() { printf '\n%s\n\n' "$1"; }

# bench_run_tools ORDER TOOL...: --runs runs of `run_one TOOL N` (the script's) for every
# tool, in the order `ORDER N TOOL...` gives (bench_order or bench_shuffled); notes each
# run's wall time and CPU seconds.
bench_run_tools() {
  local order=$1 n t
  shift
  for n in $(seq "$RUNS"); do
    for t in $("$order" "$n" "$@"); do
      run_one "$t" "$n"
      note "run $n $t: $(sec "$US"), $CPU CPU-s"
    done
  done
}

# bench_tool_table TOOL...: the table of median wall time, CPU seconds (each with its ratio
# to the tool `floor`) and peak RSS, from the files bench_record wrote.
bench_tool_table() {
  local t m c floor floor_cpu
  printf '%-12s %10s %8s %10s %8s %10s\n' tool median ratio cpu_s ratio peak_rss
  floor=$(median <"$WORK/us-floor")
  floor_cpu=$(median 2 <"$WORK/cpu-floor")
  for t in "$@"; do
    m=$(median <"$WORK/us-$t")
    c=$(median 2 <"$WORK/cpu-$t")
    printf '%-12s %10s %8s %10s %8s %8s MB\n' "$t" "$(sec "$m")" "$(ratio "$m" "$floor")" \
      "$c" "$(ratio "$c" "$floor_cpu")" "$(($(median <"$WORK/rss-$t") / 1024))"
  done
}
