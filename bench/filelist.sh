#!/usr/bin/env bash
# bench/filelist.sh — "The file-list walk of a directory tree with 1,000,000 files: time
# against `find DIR -type f | wc -l` (target <= 2x), peak memory <= 200 MB".
#
# Creates a tree of empty files shaped like a data directory (default 1,000,000 files):
#   base/<db>/<relfilenode>[_fsm|_vm]  700 directories x 1000 files
#   base/<db>/<relfilenode>[.N|_fsm|_vm] 3 "big" directories x 100,000 files (per-directory
#                                      sorting of 100k names)
#   plus PG_VERSION, global/*, pg_wal/* (excluded by the walk), a few config files
# on /dev/shm when it has room (file creation on /tmp's disk is slow), with a small Python
# loop (os.open/os.close). Then, with the dentry cache warm (one `find` first), measures
# (median of --runs runs each, same tree, interleaved):
#   find DIR -type f | wc -l
#   filelist_walk DIR START.zst               (the start walk: walk + sort + zstd list + fsync)
#   filelist_walk DIR STOP.zst START.zst      (the stop walk: walk again, streaming
#                                              intersection with the start list)
# and the peak RSS (VmHWM) of each through /usr/bin/time -v. The lists are written to
# --lists DIR (default $TMPDIR or /tmp, a disk, as a store would be; fsynced).
# filelist_walk is the example `crates/pgbookend/examples/filelist_walk.rs`, which calls
# pgbookend::filelist::walk_to / intersect_walk, the code `start` and `stop` run.
#
# Usage: bench/filelist.sh [--files N] [--runs N] [--tree-dir DIR] [--lists DIR] [--keep]
# Removes the tree (and everything else it made) at the end, also on failure.
set -euo pipefail

FILES=1000000 RUNS=3 TREE_BASE=
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
# The lists go to the work directory (--lists), the tree to a directory of its own.
bench_parse "runs keep --files:FILES --tree-dir:TREE_BASE --lists:TMPBASE" "$@"
bench_need python3
bench_need_time
TREE_WORK=
bench_cleanup_last() {
  if [ "$KEEP" = 1 ]; then echo "kept $TREE_WORK" >&2; else [ -n "$TREE_WORK" ] && rm -rf "$TREE_WORK"; fi
  return 0
}

bench_build --examples
bench_workdir filelist-lists
LISTS=$WORK
WALK=$LISTS/filelist_walk   # private copy: a concurrent rebuild cannot swap it mid-run
cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/filelist_walk" "$WALK"

# Where the tree goes: /dev/shm if it has room for ~1 KiB of inode per file (+ 1 GiB).
if [ -z "$TREE_BASE" ]; then
  need_kb=$((FILES + 1048576))
  if [ -d /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')" -gt "$need_kb" ]; then
    TREE_BASE=/dev/shm
  else
    TREE_BASE=${TMPDIR:-/tmp}
  fi
fi
TREE_WORK=$(mktemp -d "$TREE_BASE/pgbookend-filelist-tree.XXXXXX")
TREE=$TREE_WORK/data
FS=$(df -T "$TREE_WORK" | awk 'NR == 2 { print $2 }')
LFS=$(df -T "$LISTS" | awk 'NR == 2 { print $2 }')

note "creating $FILES empty files under $TREE ($FS)"
t0=$(now_us)
python3 - "$TREE" "$FILES" >&2 <<'EOF'
import os, sys
root, total = sys.argv[1], int(sys.argv[2])
flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
def touch_many(d, names):
    os.makedirs(d, exist_ok=True)
    for n in names:
        os.close(os.open(os.path.join(d, n), flags, 0o600))
    return len(names)
made = 0
# Cluster-level files and directories.
for d in ["global", "pg_wal", "pg_xact", "pg_multixact/offsets", "pg_tblspc", "pg_stat", "pg_logical"]:
    os.makedirs(os.path.join(root, d), exist_ok=True)
made += touch_many(root, ["PG_VERSION", "postgresql.conf", "pg_hba.conf", "pg_ident.conf", "postgresql.auto.conf", "postmaster.pid"])
made += touch_many(os.path.join(root, "global"), ["pg_control", "pg_filenode.map"] + [str(1200 + i) for i in range(60)])
made += touch_many(os.path.join(root, "pg_wal"), ["0000000100000000000000%02X" % i for i in range(1, 20)])  # excluded
made += touch_many(os.path.join(root, "pg_xact"), ["0000"])
def rel_names(n, big):
    # relfilenodes with forks; big directories also have 1 GB segments (.1, .2)
    out, r = [], 16384
    while len(out) < n:
        out.append(str(r))
        if big:
            out += [f"{r}.1", f"{r}.2"]
        out += [f"{r}_fsm", f"{r}_vm"]
        r += 1
    return out[:n]
big_dirs, big_size = 3, 100_000
rest = total - made - big_dirs * big_size
if rest < 0:  # small runs (--files): scale the big directories down
    big_size = max((total - made) // 10, 1); rest = total - made - big_dirs * big_size
small_size = 1000
db = 20000
for _ in range(big_dirs):
    made += touch_many(os.path.join(root, "base", str(db)), rel_names(big_size, True)); db += 1
while rest > 0:
    k = min(small_size, rest)
    made += touch_many(os.path.join(root, "base", str(db)), rel_names(k, False)); db += 1
    rest -= k
print(made)
EOF
t1=$(now_us)
NDIRS=$(find "$TREE" -type d | wc -l)
NFILES=$(find "$TREE" -type f | wc -l)   # also warms the dentry/inode cache
note "created $NFILES files in $NDIRS directories in $(( (t1 - t0) / 1000000 )) s"
[ "$NFILES" -ge "$FILES" ] || die "only $NFILES files"

# walk_timed CMD... -> US (wall), HWM (peak RSS, kB), OUT (stdout)
walk_timed() { timed_ok "$1" "$@"; OUT=$(cat "$WORK/out.txt"); }
LOAD_BEFORE=$(bench_load)
: >"$LISTS/samples"
for r in $(seq 1 "$RUNS"); do
  walk_timed bash -c "find '$TREE' -type f | wc -l"; F_US=$US; F_HWM=$HWM; F_N=$OUT
  rm -f "$LISTS/start.zst"
  walk_timed "$WALK" "$TREE" "$LISTS/start.zst"; W_US=$US; W_HWM=$HWM; W_N=$OUT
  rm -f "$LISTS/stop.zst"
  walk_timed "$WALK" "$TREE" "$LISTS/stop.zst" "$LISTS/start.zst"; I_US=$US; I_HWM=$HWM; I_N=$OUT
  echo "$r $F_US $W_US $I_US $F_HWM $W_HWM $I_HWM $F_N $W_N $I_N" >>"$LISTS/samples"
  note "run $r: find $((F_US / 1000)) ms ($F_N); walk $((W_US / 1000)) ms ($W_N, $W_HWM kB); intersect $((I_US / 1000)) ms ($I_N, $I_HWM kB)"
done
LOAD_AFTER=$(bench_load)
LIST_BYTES=$(stat -c %s "$LISTS/start.zst")
# Where a walk's time goes: syscalls of one more start walk.
SYSC=$(strace -c -f -o "$LISTS/strace.txt" "$WALK" "$TREE" "$LISTS/extra.zst" >/dev/null 2>&1 &&
  awk '$NF ~ /^[a-z_0-9]+$/ && $NF != "total" && $4 ~ /^[0-9]+$/ && n < 6 { printf "%s%s %s", sep, $NF, $4; sep = ", "; n++ }' "$LISTS/strace.txt" || true)

med() { bench_col "$1" "$LISTS/samples" | median; }
F=$(med 2); W=$(med 3); I=$(med 4); FH=$(med 5); WH=$(med 6); IH=$(med 7)
ratio_met() { awk -v a="$1" -v b="$2" 'BEGIN { r = a / b; printf "%.2fx (%s)", r, (r <= 2) ? "met" : "not met" }'; }
memv() { awk -v k="$1" 'BEGIN { printf "%s", (k / 1024 <= 200) ? "met" : "not met" }'; }
read -r _ _ _ _ _ _ _ F_N W_N I_N < <(tail -1 "$LISTS/samples")

bench_heading "## File-list walk of $F_N files against \`find\`"
echo "- $(bench_when), $(nproc) CPUs ($(bench_cpu_model)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM; tree on $FS ($TREE_BASE), lists on $LFS"
echo "- tree: $F_N empty files in $NDIRS directories (base/<db>/: 3 directories of 100k files, the rest 1000 per directory; relfilenodes with _fsm/_vm forks and .N segments), plus pg_wal/ files the walk leaves out; dentry cache warm"
echo "- $RUNS runs, medians, interleaved; load average before / after: $LOAD_BEFORE / $LOAD_AFTER"
echo
bench_table "command" "files" "time (median)" "ratio to find" "peak RSS (median)" "memory target (<= 200 MB)"
echo "| \`find DIR -type f \\| wc -l\` | $F_N | $(sec "$F" 2) | 1 | $(mb "$FH") (find) | |"
echo "| \`filelist_walk DIR START.zst\` (start walk) | $W_N | $(sec "$W" 2) | $(ratio_met "$W" "$F") | $(mb "$WH") | $(memv "$WH") |"
echo "| \`filelist_walk DIR STOP.zst START.zst\` (stop walk + intersection) | $I_N | $(sec "$I" 2) | $(ratio_met "$I" "$F") | $(mb "$IH") | $(memv "$IH") |"
echo
echo "List size: $LIST_BYTES bytes (zstd). Syscalls of one start walk (strace -c -f, calls): ${SYSC:-?}."
echo
echo "Per run (run, find µs, walk µs, intersect µs, find kB, walk kB, intersect kB, counts):"
echo
echo '```'
cat "$LISTS/samples"
echo '```'
