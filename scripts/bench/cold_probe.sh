#!/usr/bin/env bash
# Quick probe of the cold rows of scripts/bench.sh: `dd bs=1M` of a 1 GiB file through a fresh
# mount with an empty store, against one `curl` stream of the same bytes from the same nginx,
# median of PROBE_RUNS runs each, interleaved. It is the loop to iterate on the cold path with
# (a minute or two, self-contained, all torn down on exit), where the full benchmark takes ten.
#
#     ./scripts/bench/cold_probe.sh
#     PROBE_CAP=100000000 ./scripts/bench/cold_probe.sh      # nginx limit_rate per connection
#     MODELFS_ARGS="--max-connections 8" ./scripts/bench/cold_probe.sh
#     # The mock Hub's own CDN, 30 ms to first byte and 40 MB/s per connection, 4 connections
#     # with memory for 32 chunks: coalesced requests against one chunk per request.
#     PROBE_ORIGIN=mock PROBE_FIRST_BYTE_MS=30 PROBE_CAP=40000000 \
#         MODELFS_ARGS="--max-connections 4 --max-inflight-bytes 256M" ./scripts/bench/cold_probe.sh
#     ... MODELFS_ARGS="--max-connections 4 --max-inflight-bytes 256M --max-request-size 8M" ...
#
# Besides the wall time it prints the CPU time the daemon and nginx spent per run (user+system,
# from /proc), which is what decides the cold rows on a machine with few cores: every CPU
# second the daemon spends is one the reader and the origin do not get.
#
# Variables: PROBE_DIR (work dir, default /tmp/modelfs-cold-probe; the generated file is kept),
# PROBE_MIB (file size, default 1024), PROBE_RUNS (default 3), PROBE_CAP (bytes/s per
# connection, default 0 = uncapped), PROBE_ORIGIN (nginx, the default: nginx serves the bytes
# as in scripts/bench.sh; mock: the mock Hub's own CDN, which alone can add a time to first
# byte), PROBE_FIRST_BYTE_MS (mock only: every CDN answer waits this long), PROBE_PERF=record (`perf record -g -a` each mounted read
# into $PROBE_DIR/log/perf.data.N), MODELFS_ARGS (extra `modelfs mount` flags), MODELFS_BIN
# (another modelfs binary, for an A/B against a build of another commit), PROBE_KEEP_PAGE_REPORTING
# (set: leave the VM's free page reporting on; by default it is off for the probe).
#
# Needs root (FUSE), fuse3, nginx, getfattr, openssl. Builds with `cargo build --release`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=${PROBE_DIR:-/tmp/modelfs-cold-probe}
MIB=${PROBE_MIB:-1024}
RUNS=${PROBE_RUNS:-3}
CAP=${PROBE_CAP:-0}
ORIGIN=${PROBE_ORIGIN:-nginx}
FIRST_BYTE_MS=${PROBE_FIRST_BYTE_MS:-0}
PERF_MODE=${PROBE_PERF:-0}
BIN=${MODELFS_BIN:-"$ROOT/target/release/modelfs"}
MOCK="$ROOT/target/release/examples/mock_hub"
DATA="$W/data"
REL="probe/big/model.safetensors"
SERVED="$DATA/files/$REL"
STORE="$W/store"
MNT="$W/mnt"
LOGS="$W/log"
MOUNTED="$MNT/probe/big/all/model.safetensors"

die() { echo "cold_probe: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (FUSE mounts)"
case "$ORIGIN" in
nginx) command -v nginx >/dev/null || die "needs nginx (apt-get install nginx)" ;;
mock) ;;
*) die "PROBE_ORIGIN is nginx or mock, not '$ORIGIN'" ;;
esac
[ "$ORIGIN" = mock ] || [ "$FIRST_BYTE_MS" = 0 ] || die "PROBE_FIRST_BYTE_MS needs PROBE_ORIGIN=mock"

PIDS=()
MFS=""
unmount() {
    if mountpoint -q "$MNT" 2>/dev/null; then
        timeout 20 "$BIN" unmount "$MNT" 2>>"$LOGS/modelfs.log" || umount -l "$MNT" 2>/dev/null || true
    fi
    if [ -n "$MFS" ]; then
        for _ in $(seq 100); do kill -0 "$MFS" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$MFS" 2>/dev/null || true
        wait "$MFS" 2>/dev/null || true
        MFS=""
    fi
}
# Free page reporting off for the probe, as scripts/bench.sh does (its "Memory: free page
# reporting" says why: with it on, the daemon's CPU and RSS figures include the host backing
# freed memory again). PROBE_KEEP_PAGE_REPORTING=1 leaves it alone.
PAGE_REPORTING=/sys/module/page_reporting/parameters/page_reporting_order
PAGE_REPORTING_WAS=""
order_now=$(cat "$PAGE_REPORTING" 2>/dev/null || echo -1)
if [ -z "${PROBE_KEEP_PAGE_REPORTING:-}" ] && [ -w "$PAGE_REPORTING" ] &&
    [ "$order_now" != -1 ] && [ "$order_now" != 11 ]; then
    PAGE_REPORTING_WAS=$order_now
    echo 11 >"$PAGE_REPORTING" 2>/dev/null || PAGE_REPORTING_WAS=""
fi
cleanup() {
    unmount
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -z "$PAGE_REPORTING_WAS" ] || echo "$PAGE_REPORTING_WAS" >"$PAGE_REPORTING" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$W" "$MNT" "$LOGS"
(cd "$ROOT" && cargo build --release --bin modelfs --example mock_hub >"$LOGS/build.log" 2>&1) ||
    { tail -n 30 "$LOGS/build.log" >&2; die "build failed"; }

want="v1 mib=$MIB"
if [ "$(head -n1 "$W/.stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$DATA"
    mkdir -p "$(dirname "$SERVED")" "$DATA/lfs"
    head -c "$((MIB << 20))" /dev/zero |
        openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f \
            -iv 00000000000000000000000000000000 -nosalt >"$SERVED"
    { echo "$want"; sha256sum "$SERVED" | cut -c1-64; } >"$W/.stamp"
fi
SHA=$(sed -n 2p "$W/.stamp")
[ -e "$DATA/lfs/$SHA" ] || ln "$SERVED" "$DATA/lfs/$SHA"

# shellcheck source=scripts/bench/origin.sh
. "$ROOT/scripts/bench/origin.sh"
if [ "$ORIGIN" = nginx ]; then
    PORT=$(free_port)
    start_nginx probe "$PORT" "$CAP"
    start_hub probe "http://127.0.0.1:$PORT"
    URL="http://127.0.0.1:$PORT/files/$REL"
    ORIGIN_PIDS=$(cat "$W/nginx-probe/nginx.pid"; pgrep -P "$(cat "$W/nginx-probe/nginx.pid")" || true)
else
    rate=()
    [ "$CAP" = 0 ] || rate=(--cdn-rate "$CAP")
    start_hub probe "" --cdn-first-byte-ms "$FIRST_BYTE_MS" "${rate[@]}"
    URL="$HUB_ENDPOINT/probe/big/resolve/main/model.safetensors" # curl -L follows to the CDN
    ORIGIN_PIDS=${PIDS[-1]}
fi

# CPU seconds (user + system, all threads, reaped children excluded) of the given pids.
cpu_of() {
    local t=0 p
    for p in "$@"; do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", t / hz}'
}
now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", (b-a)/1e9}'; }
cat "$SERVED" >/dev/null # the origin serves from memory, as an edge does

mounted=() curls=() ratios=()
for run in $(seq "$RUNS"); do
    t0=$(now)
    curl -sSfL -o /dev/null "$URL"
    c=$(secs "$t0" "$(now)")

    rm -rf "$STORE"
    sync
    # shellcheck disable=SC2086 # MODELFS_ARGS is a list of flags
    "$BIN" mount "$MNT" --store "$STORE" --endpoint "$HUB_ENDPOINT" ${MODELFS_ARGS:-} 2>>"$LOGS/modelfs.log" &
    MFS=$!
    for _ in $(seq 300); do
        mountpoint -q "$MNT" && break
        kill -0 "$MFS" 2>/dev/null || die "mount exited: $(tail -n 5 "$LOGS/modelfs.log")"
        sleep 0.1
    done
    stat "$MOUNTED" >/dev/null # resolve the revision and list the repo: not part of the read
    # shellcheck disable=SC2086
    d0=$(cpu_of "$MFS") n0=$(cpu_of $ORIGIN_PIDS)
    if [ "$PERF_MODE" = record ]; then
        perf record -q -F 999 -g -a -o "$LOGS/perf.data.$run" 2>/dev/null &
        PERF=$!
        sleep 0.5
    fi
    # Peak anonymous and file-backed RSS while streaming, sampled (VmHWM is their peak sum).
    (
        a=0 f=0
        while [ -r "/proc/$MFS/status" ]; do
            read -r ra rf < <(awk '/^RssAnon:/{a=$2} /^RssFile:/{f=$2} END{print a+0, f+0}' "/proc/$MFS/status" 2>/dev/null || echo "0 0")
            [ "$ra" -gt "$a" ] && a=$ra
            [ "$rf" -gt "$f" ] && f=$rf
            echo "$((a >> 10)) $((f >> 10))" >"$LOGS/rss.peak"
            sleep 0.05
        done
    ) &
    SAMPLER=$!
    t0=$(now)
    dd if="$MOUNTED" of=/dev/null bs=1M 2>/dev/null
    m=$(secs "$t0" "$(now)")
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    read -r peak_anon peak_file <"$LOGS/rss.peak" || peak_anon=? peak_file=?
    if [ "$PERF_MODE" = record ]; then kill -INT "$PERF"; wait "$PERF" || true; fi
    # shellcheck disable=SC2086
    d1=$(cpu_of "$MFS") n1=$(cpu_of $ORIGIN_PIDS)
    hwm=$(awk '/^VmHWM:/{print int($2 / 1024)}' "/proc/$MFS/status")
    unmount
    r=$(awk -v m="$m" -v c="$c" 'BEGIN{printf "%.3f", c / m}')
    mounted+=("$m") curls+=("$c") ratios+=("$r")
    printf 'run %d: curl %s s, modelfs %s s (daemon %.2f CPU s, origin %.2f CPU s, VmHWM %d MiB, peak RssAnon %s / RssFile %s MiB), ratio %s\n' \
        "$run" "$c" "$m" "$(awk -v a="$d0" -v b="$d1" 'BEGIN{print b-a}')" \
        "$(awk -v a="$n0" -v b="$n1" 'BEGIN{print b-a}')" "$hwm" "$peak_anon" "$peak_file" "$r"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
printf 'median: modelfs %s s, curl %s s, ratio (curl / modelfs) %s  [%d MiB, origin %s, cap %s B/s, first byte %s ms, %d runs, flags: %s]\n' \
    "$(median "${mounted[@]}")" "$(median "${curls[@]}")" "$(median "${ratios[@]}")" "$MIB" "$ORIGIN" "$CAP" "$FIRST_BYTE_MS" "$RUNS" "${MODELFS_ARGS:-defaults}"
