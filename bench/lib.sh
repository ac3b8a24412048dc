# bench/lib.sh: what every benchmark script shares, sourced after its argument parsing:
# messages, the release build and a private copy of the binary, the work directory and
# its cleanup (agents, servers, the directory) on any exit, and a throwaway cluster.
#
# The sourcing script sets NAME (for messages), TMPBASE and KEEP (0/1), and PGBIN (the
# server's bin directory; PSQL too when that has no psql) before calling bench_start_cluster. It may define
# bench_cleanup_first / bench_cleanup_last, run at the start / end of cleanup (its own
# background processes). The scripts themselves only measure.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
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

# bench_need_time: /usr/bin/time (for peak RSS), installed as root if missing.
bench_need_time() {
  if [ ! -x /usr/bin/time ]; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q time >/dev/null 2>&1 || true; fi
    [ -x /usr/bin/time ] || die "needs /usr/bin/time (apt-get install time)"
  fi
}

# bench_room KB: refuses to start without KB free on $TMPBASE.
bench_room() {
  local avail
  avail=$(df -Pk "$TMPBASE" | awk 'NR == 2 { print $4 }')
  note "df $TMPBASE: $((avail / 1048576)) GiB free, need about $(($1 / 1048576)) GiB"
  [ "$avail" -gt "$1" ] || die "not enough room on $TMPBASE"
}

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
  OWNER=(); if [ "$(id -u)" = 0 ]; then OWNER=(runuser -u postgres --); fi
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
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# bench_build [--examples]: cargo build --release of pgbookend (and its examples).
bench_build() {
  note "building: cargo build --release -p pgbookend $*"
  (cd "$ROOT" && cargo build --release --quiet -p pgbookend "$@") || die "build failed"
}

# bench_workdir TAG: the private work directory (removed at exit unless --keep).
bench_workdir() {
  WORK=$(mktemp -d "$TMPBASE/pgbookend-$1.XXXXXX")
  chmod 755 "$WORK"
}

# bench_start_cluster [INITDB_ARG]... -- [SERVER -c SETTINGS]: initdb $WORK/data and start it
# on a private socket ($WORK/sock, port 5432); exports the libpq variables for it, an empty
# PGBOOKEND_CONFIG, and defines q (psql -At) and PGV (the server version).
bench_start_cluster() {
  local init=() opts=""
  while [ $# -gt 0 ] && [ "$1" != -- ]; do init+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  opts="$*"
  mkdir -p "$WORK/sock"
  mkdir -m 700 "$WORK/data"
  touch "$WORK/server.log" "$WORK/server2.log"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK/sock" "$WORK/data" "$WORK/server.log" "$WORK/server2.log"; fi
  as_owner "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust -E UTF8 --locale=C "${init[@]}" \
    >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
  as_owner "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 60 start -o \
    "-c listen_addresses='' -c unix_socket_directories='$WORK/sock' -c port=5432 -c wal_level=replica -c archive_mode=off $opts" \
    >/dev/null || { cat "$WORK/server.log" >&2; die "server did not start"; }
  PM_PID=$(head -1 "$WORK/data/postmaster.pid")
  # The caller's libpq settings go (the bench talks to its own server only); pgbookend's
  # own settings (PGBOOKEND_STATE_DIR...) stay.
  for v in $(env | sed -n 's/^\(PG[A-Z_]*\)=.*/\1/p'); do
    case "$v" in PGBOOKEND_*) ;; *) unset "$v" ;; esac
  done
  export PGHOST=$WORK/sock PGPORT=5432 PGUSER=postgres PGDATABASE=postgres
  : >"$WORK/empty.toml"
  export PGBOOKEND_CONFIG=$WORK/empty.toml
  PGV=$(q -c 'SHOW server_version' | awk '{ print $1 }')
}
# q: psql -At on the cluster ($PSQL if set: the npm server builds have no psql).
q() { "${PSQL:-$PGBIN/psql}" -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }

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
# median [DECIMALS] < numbers, one per line (0 decimals by default).
median() { sort -g | awk -v d="${1:-0}" '{ v[NR] = $1 } END { n = NR; if (n % 2) m = v[(n + 1) / 2]; else m = (v[n / 2] + v[n / 2 + 1]) / 2; printf("%." d "f\n", m) }'; }
sec() { awk -v u="$1" 'BEGIN { printf "%.3f s", u / 1e6 }'; }
