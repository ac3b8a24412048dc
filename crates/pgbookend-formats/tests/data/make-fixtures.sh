#!/bin/bash
# Regenerates the real-server fixtures in this directory (pg_control, backup_label, tablespace_map per major).
#
# Usage (as root, because initdb/postgres run as the postgres user via runuser):
#   tests/data/make-fixtures.sh [MAJOR...]        default: 13 14 15 16 17 18
#
# For each major it: initdb's a throwaway cluster in a private temp dir, starts
# it with no TCP listener and a private socket directory, creates tablespaces
# whose paths contain a space, a backslash and a newline, runs a
# non-exclusive backup (start and stop in ONE psql session) and saves
# labelfile/spcmapfile byte for byte (base64 of textsend), stops the server
# cleanly and copies global/pg_control, restarts it to record what the
# server's pg_control_*() functions say, and stops it again. Everything is
# removed at the end, also on failure.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PGROOT=${PGROOT:-/var/cache/pgbookend/pg}
PSQL=${PSQL:-/usr/lib/postgresql/15/bin/psql}
PGCONTROLDATA15=${PGCONTROLDATA15:-/usr/lib/postgresql/15/bin/pg_controldata}
MAJORS=${*:-13 14 15 16 17 18}

as_pg() { runuser -u postgres -- "$@"; }

T=""
BIN=""
cleanup() {
    if [[ -n "$T" && -d "$T" ]]; then
        if [[ -f "$T/data/postmaster.pid" ]]; then
            as_pg "$BIN/pg_ctl" -D "$T/data" -m immediate -w stop >/dev/null 2>&1 || true
        fi
        rm -rf "$T"
    fi
}
trap cleanup EXIT

for M in $MAJORS; do
    BIN=$PGROOT/$M/bin
    T=$(mktemp -d /tmp/pgbookend-formats-fx.XXXXXX)
    chown postgres: "$T"
    chmod 700 "$T"
    echo "== PostgreSQL $M in $T"

    # Vary the cluster a little so the fixtures cover more than defaults.
    opts=()
    case $M in
        14) opts+=(--data-checksums) ;;
        16) opts+=(--wal-segsize=32) ;;
    esac
    as_pg "$BIN/initdb" -D "$T/data" -U postgres -A trust -E UTF8 --locale=C -N "${opts[@]}" >"$T/initdb.log"
    start() {
        as_pg "$BIN/pg_ctl" -D "$T/data" -l "$T/server.log" -w \
            -o "-c listen_addresses='' -c unix_socket_directories='$T' -c log_timezone=UTC -c timezone=UTC" start >/dev/null
    }
    stop() { as_pg "$BIN/pg_ctl" -D "$T/data" -m fast -w stop >/dev/null; }
    q() { "$PSQL" -X -q -h "$T" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
    start

    # Tablespaces with odd paths. The space one must work; the others are kept if the server allows them.
    ts_space="$T/ts with space"
    ts_back="$T/ts back\\slash"
    ts_nl="$T/ts new"$'\n'"line"
    for d in "$ts_space" "$ts_back" "$ts_nl"; do
        mkdir "$d"
        chown postgres: "$d"
        chmod 700 "$d"
    done
    q -c "CREATE TABLESPACE ts_space LOCATION '$ts_space'"
    q -c "CREATE TABLESPACE ts_backslash LOCATION '$ts_back'" || echo "   (server refused a backslash in a tablespace path)"
    nl_sql=${ts_nl//$'\n'/\\n}
    q -c "CREATE TABLESPACE ts_newline LOCATION E'$nl_sql'" || echo "   (server refused a newline in a tablespace path)"
    q -c "CREATE TABLE t TABLESPACE ts_space AS SELECT generate_series(1, 1000) AS i"

    if ((M >= 15)); then
        start_sql="SELECT 'start_lsn=' || pg_backup_start('pgbookend fixture $M', true);"
        stop_from="pg_backup_stop()"
    else
        start_sql="SELECT 'start_lsn=' || pg_start_backup('pgbookend fixture $M', true, false);"
        stop_from="pg_stop_backup(false)"
    fi
    q -A -t >"$T/backup.out" <<EOF
$start_sql
SELECT 'stop_lsn=' || lsn || E'\n' ||
       'label_b64=' || translate(encode(textsend(labelfile), 'base64'), E'\n', '') || E'\n' ||
       'map_b64=' || coalesce(translate(encode(textsend(spcmapfile), 'base64'), E'\n', ''), '')
  FROM $stop_from;
EOF
    sed -n 's/^label_b64=//p' "$T/backup.out" | base64 -d >"$HERE/backup_label.$M"
    sed -n 's/^map_b64=//p' "$T/backup.out" | base64 -d >"$HERE/tablespace_map.$M"
    {
        grep -E '^(start_lsn|stop_lsn)=' "$T/backup.out"
        q -A -t -c "SELECT 'server_version_num=' || current_setting('server_version_num')"
        q -A -t -c "SELECT 'wal_segment_size=' || setting FROM pg_settings WHERE name = 'wal_segment_size'"
        q -A -t -c "SELECT 'tablespace.' || oid || '=' || encode(textsend(pg_tablespace_location(oid)), 'hex') FROM pg_tablespace WHERE spcname LIKE 'ts\\_%' ORDER BY oid"
    } >"$HERE/backup.$M.expected"

    # pg_control after a clean shutdown.
    stop
    cp "$T/data/global/pg_control" "$HERE/pg_control.$M"
    chmod 644 "$HERE/pg_control.$M"
    if [[ $M == 15 ]]; then
        LC_ALL=C "$PGCONTROLDATA15" -D "$T/data" >"$HERE/pg_controldata.15.txt"
    fi

    # What the server itself reads from that pg_control (restarting after a
    # clean shutdown writes no checkpoint, so only state and time change).
    start
    q -A -t >"$HERE/pg_control.$M.expected" <<'EOF'
SELECT k || '=' || coalesce(v, '') FROM (
    SELECT 'system.' || key AS k, value AS v FROM json_each_text((SELECT row_to_json(s) FROM pg_control_system() s))
    UNION ALL
    SELECT 'checkpoint.' || key, value FROM json_each_text((SELECT row_to_json(s) FROM pg_control_checkpoint() s))
    UNION ALL
    SELECT 'checkpoint.checkpoint_time_epoch', extract(epoch FROM checkpoint_time)::bigint::text FROM pg_control_checkpoint()
    UNION ALL
    SELECT 'recovery.' || key, value FROM json_each_text((SELECT row_to_json(s) FROM pg_control_recovery() s))
    UNION ALL
    SELECT 'init.' || key, value FROM json_each_text((SELECT row_to_json(s) FROM pg_control_init() s))
    UNION ALL
    SELECT 'setting.' || name, setting FROM pg_settings WHERE name IN ('wal_level', 'server_version_num', 'data_checksums')
) x ORDER BY 1;
EOF
    stop
    rm -rf "$T"
    T=""
done
echo "fixtures written to $HERE"
