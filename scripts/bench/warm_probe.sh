#!/usr/bin/env bash
# Quick probe of one row of scripts/bench.sh: a warm `dd bs=1M` of a complete file through the
# mount with the page cache dropped ("store only"), against `dd` of the same bytes from a plain
# file, median of PROBE_RUNS runs. It is the loop to iterate on the warm read path with: about
# a minute, self-contained (mock Hub on 127.0.0.1, its own store and mount, all torn down on
# exit), where the full benchmark takes ten.
#
#     ./scripts/bench/warm_probe.sh
#
# `echo 3 > drop_caches` cannot drop a page that some process has mapped. Two such processes
# would turn "page cache dropped" into "page cache hot" without a word, so the probe avoids
# both: the plain reference is a copy of the file that nobody maps (the mock Hub maps the file
# it serves), and by default the daemon is started afresh for each run, so no store page it
# mapped in an earlier run stays resident. PROBE_MODE=keep keeps one daemon for all runs, as
# scripts/bench.sh does (whatever the daemon has mapped then survives the drop).
#
# Variables: PROBE_DIR (work dir, default /tmp/modelfs-warm-probe; the generated file and the
# filled store are kept and reused while the file is unchanged), PROBE_MIB (file size, default
# 1024), PROBE_RUNS (default 3), PROBE_MODE (restart | keep), PROBE_PERF=1 (`perf stat` the
# daemon's faults and CPU time during each mounted read; =record: `perf record -g -a` the
# whole machine into $PROBE_DIR/log/perf.data.N; either adds a little to the mounted time),
# MODELFS_ARGS (extra `modelfs mount` flags).
#
# Needs root (drop_caches, FUSE), fuse3, getfattr (package attr), openssl. Builds with
# `cargo build --release`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=${PROBE_DIR:-/tmp/modelfs-warm-probe}
MIB=${PROBE_MIB:-1024}
RUNS=${PROBE_RUNS:-3}
MODE=${PROBE_MODE:-restart}
PERF_MODE=${PROBE_PERF:-0}
BIN="$ROOT/target/release/modelfs"
MOCK="$ROOT/target/release/examples/mock_hub"
DATA="$W/data"
SERVED="$DATA/probe/big/model.safetensors"
PLAIN="$W/plain.bin"
STORE="$W/store"
MNT="$W/mnt"
LOG="$W/log"
MOUNTED="$MNT/probe/big/all/model.safetensors"

die() { echo "warm_probe: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (drop_caches, FUSE mounts)"
command -v getfattr >/dev/null || die "needs getfattr (apt-get install attr)"
case "$MODE" in restart | keep) ;; *) die "PROBE_MODE is restart or keep, not '$MODE'" ;; esac

PIDS=()
MFS=""
unmount() {
    if mountpoint -q "$MNT" 2>/dev/null; then
        timeout 20 "$BIN" unmount "$MNT" 2>>"$LOG/modelfs.log" || umount -l "$MNT" 2>/dev/null || true
    fi
    if [ -n "$MFS" ]; then
        for _ in $(seq 100); do kill -0 "$MFS" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$MFS" 2>/dev/null || true
        wait "$MFS" 2>/dev/null || true
        MFS=""
    fi
}
cleanup() {
    unmount
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$W" "$MNT" "$LOG"
(cd "$ROOT" && cargo build --release --bin modelfs --example mock_hub >"$LOG/build.log" 2>&1) ||
    { tail -n 30 "$LOG/build.log" >&2; die "build failed"; }

# Data: deterministic and incompressible (AES-CTR keystream). A new file invalidates the store.
want="v2 mib=$MIB"
if [ "$(cat "$W/.stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$DATA" "$STORE" "$PLAIN"
    mkdir -p "$(dirname "$SERVED")"
    head -c "$((MIB << 20))" /dev/zero |
        openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f \
            -iv 00000000000000000000000000000000 -nosalt >"$SERVED"
    cp "$SERVED" "$PLAIN" # another inode: the mock Hub's map of $SERVED does not pin it
    echo "$want" >"$W/.stamp"
fi

coproc HUB { exec "$MOCK" --dir "$DATA" --port 0 2>"$LOG/mock_hub.log"; }
PIDS+=("$HUB_PID")
read -r -t 60 _ endpoint <&"${HUB[0]}" || die "mock hub did not start ($(tail -n 5 "$LOG/mock_hub.log"))"

mount_store() {
    # shellcheck disable=SC2086 # MODELFS_ARGS is a list of flags
    "$BIN" mount "$MNT" --store "$STORE" --endpoint "$endpoint" ${MODELFS_ARGS:-} 2>>"$LOG/modelfs.log" &
    MFS=$!
    for _ in $(seq 300); do
        mountpoint -q "$MNT" && break
        kill -0 "$MFS" 2>/dev/null || die "mount exited: $(tail -n 5 "$LOG/modelfs.log")"
        sleep 0.1
    done
    mountpoint -q "$MNT" || die "nothing mounted at $MNT after 30 s"
}

status() { getfattr --only-values -n user.modelfs.status "$MOUNTED" 2>/dev/null || echo "?"; }
mount_store
if [ "$(status)" != verified ]; then
    echo "filling the store ($MIB MiB)..." >&2
    cat "$MOUNTED" >/dev/null
    for _ in $(seq 600); do [ "$(status)" = verified ] && break; sleep 0.1; done
fi
[ "$(status)" = verified ] || die "file status is '$(status)', not verified, after 60 s"

# Seconds `dd` took, from its own summary line ("..., 0.123 s, ...").
dd_secs() { dd if="$1" of=/dev/null bs=1M 2>&1 | awk -F', ' '/copied/{split($3, a, " "); print a[1]}'; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
majflt() { awk '{print $12}' "/proc/$MFS/stat"; } # of the daemon, all its threads
# Store pages mapped into the daemon (KiB): the drop cannot drop them.
rss_file() { awk '/^RssFile:/{print $2}' "/proc/$MFS/status"; }

mounted=() plain=() ratios=()
for run in $(seq "$RUNS"); do
    if [ "$MODE" = restart ]; then
        unmount
        mount_store
        stat "$MOUNTED" >/dev/null # the lookup (revision from the store), not timed
    fi
    drop
    f0=$(majflt) rss0=$(rss_file)
    case "$PERF_MODE" in
    1) perf stat -e major-faults,minor-faults,task-clock -p "$MFS" -o "$LOG/perf-stat.$run" & ;;
    record) perf record -q -F 999 -g -a -o "$LOG/perf.data.$run" 2>/dev/null & ;;
    esac
    if [ "$PERF_MODE" != 0 ]; then PERF=$!; sleep 0.5; fi
    m=$(dd_secs "$MOUNTED")
    if [ "$PERF_MODE" != 0 ]; then kill -INT "$PERF"; wait "$PERF" || true; fi
    f1=$(majflt) rss1=$(rss_file)
    drop
    p=$(dd_secs "$PLAIN")
    r=$(awk -v m="$m" -v p="$p" 'BEGIN{printf "%.3f", p / m}')
    mounted+=("$m") plain+=("$p") ratios+=("$r")
    printf 'run %d: mounted %.3f s (daemon: %d major faults, RssFile %d -> %d MiB), plain %.3f s, ratio %s\n' \
        "$run" "$m" "$((f1 - f0))" "$((rss0 >> 10))" "$((rss1 >> 10))" "$p" "$r"
    if [ "$PERF_MODE" = 1 ]; then grep -E 'faults|task-clock' "$LOG/perf-stat.$run" | sed 's/^/    /'; fi
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
printf 'median: mounted %s s, plain %s s, ratio (plain / mounted) %s  [%d MiB, %d runs, mode %s]\n' \
    "$(median "${mounted[@]}")" "$(median "${plain[@]}")" "$(median "${ratios[@]}")" "$MIB" "$RUNS" "$MODE"
