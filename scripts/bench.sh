#!/usr/bin/env bash
# Benchmark modelfs against what users would pick instead (issue 4), on one machine, in one
# run, against one origin on 127.0.0.1, and print one markdown table of medians and ratios.
#
#   ./scripts/bench.sh                  # ~15-25 min; needs root, /dev/fuse, ~9 GiB free
#
# The origin: nginx serves the generated files as /files/<org>/<repo>/<path> (autoindex, for
# curl and rclone) and the same bytes as /lfs/<sha256> (the "CDN"); the bundled mock Hub
# (examples/mock_hub.rs) answers the Hub API and redirects LFS downloads to that nginx, so
# modelfs and huggingface_hub go through the Hub protocol and read the bytes from the same
# server as curl and rclone. A second nginx on another port serves the same with
# `limit_rate` per connection (a CDN's per-connection cap), with its own mock Hub.
#
# Environment:
#   BENCH_DIR   work dir (default /tmp/modelfs-bench; generated data is kept and reused)
#   BENCH_RUNS  runs per measurement (default 3; a contender whose run took > 30 s stops early)
#   BENCH_CAP   per-connection cap in bytes/s (default: uncapped curl / 8, measured)
#   MODELFS_ARGS  extra flags for `modelfs mount` (e.g. "--max-connections 32")
#   BENCH_ONLY  unset: every section; `loaders`: only the cold model loads (section 4; the
#               uncapped curl rows still run first, since their speed sets the cap); `tier`:
#               only the shared tier's rows (section 5, likewise after the curl rows)
#   BENCH_LOADER_SCALE  `full` (default: 1 GiB safetensors checkpoint, 256+ MiB GGUF and ONNX)
#               or `small` (about 1/8 of that, to check the section quickly)
#   BENCH_LOADER_FORMATS  the formats the cold loads run (default "safetensors gguf gguf-split onnx"),
#               e.g. "gguf onnx" to compare two binaries on the rows a change touches
#   BENCH_TIER_SCALE  `full` (default: the tier rows read the 1 GiB file) or `small` (a
#               128 MiB file of its own)
#   BENCH_KEEP_PAGE_REPORTING  set: leave the VM's free page reporting as it is (by default
#               the bench turns it off for its run and restores it at exit; see "Memory: free
#               page reporting" in doc/BENCHMARKS.md)
#   BENCH_BIN_DIR  take `modelfs` and `examples/mock_hub` from this directory (e.g. another
#               worktree's target/release) instead of building them here; the coalescing
#               rows' probe (scripts/bench/cold_probe.sh) still builds in this tree
#
#   BENCH_ONLY=loaders BENCH_LOADER_SCALE=small BENCH_RUNS=1 ./scripts/bench.sh   # ~3 min
#   BENCH_ONLY=tier BENCH_TIER_SCALE=small BENCH_RUNS=1 ./scripts/bench.sh        # ~2 min
#
# Installs what it uses when missing: nginx and rclone (apt-get), huggingface_hub and, for the
# tier rows, moto[server] (pip, the versions pinned in tests/python/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
HELPER="$ROOT/scripts/bench/bench.py"

W=${BENCH_DIR:-/tmp/modelfs-bench}
RUNS=${BENCH_RUNS:-3}
ONLY=${BENCH_ONLY:-}
case "$ONLY" in "" | loaders | tier) ;; *) printf 'bench: BENCH_ONLY is unset, loaders or tier, not %s\n' "$ONLY" >&2; exit 1 ;; esac
SEED=20240604
BIG_SIZE=$((1 << 30))
TREE_FILES=3000
PREADS=20000
# A run slower than this is not repeated (the brief: >= 3 runs where a run takes < 30 s).
SLOW_RUN_SECS=30
# Every command that could hang is bounded by this.
STEP_TIMEOUT=600

DATA="$W/data"
BIG_REL="bench/big/model.safetensors"
BIG="$DATA/files/$BIG_REL"
TREE="$DATA/files/bench/tree"
RESULTS="$W/results.tsv"
LOGS="$W/logs"
MNT="$W/mnt/modelfs"
RMNT="$W/mnt/rclone"
BIN_DIR=${BENCH_BIN_DIR:-"$ROOT/target/release"}
BIN="$BIN_DIR/modelfs"
MOCK="$BIN_DIR/examples/mock_hub"

PIDS=()
# Mountpoints of daemons other than the one at $MNT (the tier rows run several at once).
EXTRA_MOUNTS=()
MFS_PID=""
RCLONE_PID=""

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

cleanup() {
    set +e
    if mountpoint -q "$MNT" 2>/dev/null; then
        timeout 20 "$BIN" unmount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null
    fi
    if mountpoint -q "$RMNT" 2>/dev/null; then
        fusermount3 -u "$RMNT" 2>/dev/null || umount -l "$RMNT" 2>/dev/null
    fi
    for m in "${EXTRA_MOUNTS[@]}"; do
        if mountpoint -q "$m" 2>/dev/null; then
            timeout 20 "$BIN" unmount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
        fi
    done
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
    done
    if [ -n "${PAGE_REPORTING_WAS:-}" ] && echo "$PAGE_REPORTING_WAS" >"$PAGE_REPORTING"; then
        rm -f "$PAGE_REPORTING_SAVED"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Preflight and installs
# ---------------------------------------------------------------------------------------------

[ "$(id -u)" = 0 ] || die "run as root (it mounts FUSE file systems and drops the page cache)"
[ -e /dev/fuse ] || die "/dev/fuse is missing"
mkdir -p "$W" "$LOGS" "$MNT" "$RMNT"
chmod 755 "$W"
avail_kib=$(df -Pk "$W" | awk 'NR==2{print $4}')
[ -f "$BIG" ] && avail_kib=$((avail_kib + BIG_SIZE / 1024))
# The loader models add ~1.6 GiB of data and up to as much again per run (one store or one
# download at a time). The tier rows alone need the 1 GiB file (2 GiB of data with the
# checkpoint generated beside it) and, at most, three stores and a tier of it at once.
if [ "$ONLY" = tier ]; then
    [ "$avail_kib" -ge $((6 * 1024 * 1024)) ] ||
        die "$W has $((avail_kib / 1024)) MiB free; the tier rows need ~6 GiB (2 GiB data, 4 GiB of stores and tier)"
else
    [ "$avail_kib" -ge $((9 * 1024 * 1024)) ] ||
        die "$W has $((avail_kib / 1024)) MiB free; needs ~9 GiB (3.6 GiB data, 2 GiB kept store, 3 GiB per-run caches)"
fi
log "work dir $W ($((avail_kib / 1024)) MiB free; data kept for the next run, per-run caches deleted)"

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx)
command -v rclone >/dev/null || need_apt+=(rclone)
command -v getfattr >/dev/null || need_apt+=(attr)
command -v openssl >/dev/null || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_apt[@]}" >"$LOGS/apt.log" 2>&1 ||
        { apt-get update >>"$LOGS/apt.log" 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_apt[@]}" >>"$LOGS/apt.log" 2>&1; } ||
        die "apt-get install ${need_apt[*]} failed; see $LOGS/apt.log"
fi
# huggingface_hub must not find a real token or cache of the user's.
export HF_HOME="$W/hf-home"
unset HF_TOKEN HF_HUB_OFFLINE HF_ENDPOINT
hf_pin=$(grep -E '^huggingface_hub==' tests/python/requirements.txt)
if ! python3 -c "import huggingface_hub" 2>/dev/null; then
    log "installing $hf_pin (pip)"
    python3 -m pip install -q "$hf_pin" >"$LOGS/pip.log" 2>&1 || die "pip install $hf_pin failed"
fi

if [ -n "${BENCH_BIN_DIR:-}" ]; then
    [ -x "$BIN" ] && [ -x "$MOCK" ] || die "BENCH_BIN_DIR=$BIN_DIR lacks modelfs or examples/mock_hub"
    log "not building: binaries from $BIN_DIR"
else
    log "building (cargo build --release)"
    cargo build --release --bin modelfs --example mock_hub >"$LOGS/build.log" 2>&1 ||
        { tail -n 30 "$LOGS/build.log" >&2; die "build failed"; }
fi

: >"$RESULTS"
record() { printf '%s\t%s\n' "$1" "$2" >>"$RESULTS"; printf '   %-24s %s\n' "$1" "$2" >&2; }
note() {
    NOTE_N=$((${NOTE_N:-0} + 1))
    printf 'meta.note%02d\t%s\n' "$NOTE_N" "$*" >>"$RESULTS"
    printf '   note: %s\n' "$*" >&2
}
[ -n "$ONLY" ] && record meta.only "$ONLY"
record meta.pread_count "$PREADS"
record meta.tree_files "$TREE_FILES"

# ---------------------------------------------------------------------------------------------
# Data: fixed seed, generated once and reused while the generator is unchanged
# ---------------------------------------------------------------------------------------------

STAMP="$DATA/.stamp"
# Bump GEN_VERSION when the generator (here or `gen_tree` in bench.py) changes its output.
GEN_VERSION=2
CKPT="$DATA/files/bench/ckpt"
CKPT_SHARDS=2
CKPT_SHARD_BYTES=$((512 << 20))
STAMP_WANT="v$GEN_VERSION seed=$SEED big=$BIG_SIZE tree=$TREE_FILES ckpt=${CKPT_SHARDS}x$CKPT_SHARD_BYTES"
if [ "$(head -n1 "$STAMP" 2>/dev/null)" != "$STAMP_WANT" ]; then
    log "generating data in $DATA (seed $SEED): 1 GiB file, $TREE_FILES-file tree"
    rm -rf "$DATA"
    mkdir -p "$(dirname "$BIG")" "$TREE" "$DATA/lfs"
    # AES-CTR of zeros under a key derived from the seed: deterministic, incompressible, fast.
    key=$(printf '%s' "$SEED" | sha256sum | cut -c1-32)
    head -c "$BIG_SIZE" /dev/zero |
        openssl enc -aes-128-ctr -K "$key" -iv 00000000000000000000000000000000 -nosalt >"$BIG"
    echo '{"architectures": ["BenchModel"], "model_type": "bench"}' >"$DATA/files/bench/big/config.json"
    python3 "$HELPER" gen-tree "$TREE" "$SEED" "$TREE_FILES"
    python3 "$HELPER" gen-ckpt "$CKPT" "$SEED" "$CKPT_SHARDS" "$CKPT_SHARD_BYTES"
    chmod 644 "$CKPT"/*
    big_sha=$(sha256sum "$BIG" | cut -c1-64)
    { echo "$STAMP_WANT"; echo "$big_sha"; } >"$STAMP"
fi
BIG_SHA=$(sed -n 2p "$STAMP")
# The CDN view: the same inode, named by sha256 (hardlink, so nginx serves identical bytes).
[ -e "$DATA/lfs/$BIG_SHA" ] || ln "$BIG" "$DATA/lfs/$BIG_SHA"
for shard in "$CKPT"/*.safetensors; do
    sha=$(sha256sum "$shard" | cut -c1-64)
    [ -e "$DATA/lfs/$sha" ] || ln "$shard" "$DATA/lfs/$sha"
done
CKPT_BYTES=$(cat "$CKPT"/*.safetensors | wc -c)
record meta.ckpt_bytes "$CKPT_BYTES"
[ "$(stat -c %s "$BIG")" = "$BIG_SIZE" ] || die "$BIG has the wrong size"
(cd "$TREE" && find . -type f | sed 's|^\./||' | sort) >"$W/tree.list"
[ "$(wc -l <"$W/tree.list")" = "$TREE_FILES" ] || die "tree has $(wc -l <"$W/tree.list") files"
log "data: $BIG ($BIG_SIZE bytes, sha256 $BIG_SHA), $TREE ($TREE_FILES files)"
# shellcheck source=scripts/bench/loaders.sh
. "$ROOT/scripts/bench/loaders.sh"
# The tier rows read the 1 GiB file (or a small one of their own): no loader models needed.
[ "$ONLY" = tier ] || loaders_data
# shellcheck source=scripts/bench/tier.sh
. "$ROOT/scripts/bench/tier.sh"
tier_data

# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------

# shellcheck source=scripts/bench/origin.sh
. "$ROOT/scripts/bench/origin.sh"

NGX_U=$(free_port)
start_nginx uncapped "$NGX_U" 0
start_hub uncapped "http://127.0.0.1:$NGX_U"
HUB_U=$HUB_ENDPOINT
log "origin (uncapped): nginx 127.0.0.1:$NGX_U, mock Hub $HUB_U"

range_check=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' -r 100-199 "http://127.0.0.1:$NGX_U/lfs/$BIG_SHA?X-Amz-Signature=x")
[ "$range_check" = "206 100" ] || die "nginx ignored Range on /lfs/ (got: $range_check)"
redirect=$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' "$HUB_U/bench/big/resolve/main/model.safetensors")
case "$redirect" in
    "302 http://127.0.0.1:$NGX_U/lfs/$BIG_SHA?"*) ;;
    *) die "mock Hub does not redirect to nginx: $redirect" ;;
esac

# ---------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------

now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.6f", (b-a)/1e9}'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# The origin file stays in the page cache for cold runs: the "CDN" serves from memory, as an
# edge does, so the contenders differ only in how they fetch.
warm_origin() { cat "$BIG" >/dev/null; }

declare -A SLOW=()
# timed KEY CMD...: run CMD once, record its wall time under KEY (skipped once KEY was slow).
timed() {
    local key=$1 t0 t1 s
    shift
    [ -n "${SLOW[$key]:-}" ] && return 0
    t0=$(now)
    if ! timeout "$STEP_TIMEOUT" "$@" >/dev/null 2>>"$LOGS/cmd.log"; then
        note "$key: \`$*\` failed or timed out; see $LOGS/cmd.log"
        SLOW[$key]=failed
        return 0
    fi
    t1=$(now)
    s=$(secs "$t0" "$t1")
    record "$key" "$s"
    slow_check "$key" "$s"
}
# py_timed KEY ARGS...: the helper measures the operation itself and prints seconds.
py_timed() {
    local key=$1 s
    shift
    [ -n "${SLOW[$key]:-}" ] && return 0
    if ! s=$(timeout "$STEP_TIMEOUT" python3 "$HELPER" "$@" 2>>"$LOGS/cmd.log"); then
        note "$key: \`bench.py $*\` failed or timed out; see $LOGS/cmd.log"
        SLOW[$key]=failed
        return 0
    fi
    record "$key" "$s"
    slow_check "$key" "$s"
}
slow_check() {
    if awk -v s="$2" -v l="$SLOW_RUN_SECS" 'BEGIN{exit !(s > l)}'; then
        SLOW[$1]=slow
        note "$1: a run took $(printf '%.0f' "$2") s (> $SLOW_RUN_SECS s), so it was not repeated"
    fi
}

wait_mounted() { # MOUNTPOINT PID LOG
    for _ in $(seq 300); do
        mountpoint -q "$1" && return 0
        kill -0 "$2" 2>/dev/null || { tail -n 20 "$3" >&2; die "mount at $1 exited"; }
        sleep 0.1
    done
    tail -n 20 "$3" >&2
    die "nothing mounted at $1 after 30 s"
}

stop_pid() { # PID: TERM, wait up to 10 s, then KILL; forget it (its number may be reused)
    local p rest=()
    kill "$1" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$1" 2>/dev/null && kill -KILL "$1" 2>/dev/null
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || rest+=("$p"); done
    PIDS=("${rest[@]}")
}

# start_modelfs STORE ENDPOINT
start_modelfs() {
    # shellcheck disable=SC2086 # MODELFS_ARGS is a list of flags
    "$BIN" mount "$MNT" --store "$1" --endpoint "$2" ${MODELFS_ARGS:-} 2>>"$LOGS/modelfs.log" &
    MFS_PID=$!
    PIDS+=("$MFS_PID")
    wait_mounted "$MNT" "$MFS_PID" "$LOGS/modelfs.log"
}
stop_modelfs() {
    timeout 20 "$BIN" unmount "$MNT" 2>>"$LOGS/modelfs.log" || umount -l "$MNT" 2>/dev/null || true
    stop_pid "$MFS_PID"
    wait "$MFS_PID" 2>/dev/null || true
    MFS_PID=""
}

# Background sampler of the daemon's anonymous RSS (heap, buffers in flight): VmHWM also
# counts the store's memory-mapped pages, which the kernel may drop at any time.
start_rss_sampler() { # PID OUTFILE
    (
        max=0
        for _ in $(seq 6000); do # 10 minutes at ~100 ms (an awk and a sleep per sample)
            [ -r "/proc/$1/status" ] || break
            v=$(awk '/^RssAnon:/{print $2}' "/proc/$1/status" 2>/dev/null) || break
            if [ -n "$v" ] && [ "$v" -gt "$max" ]; then max=$v; fi
            echo "$max" >"$2"
            sleep 0.1
        done
    ) &
    SAMPLER_PID=$!
    PIDS+=("$SAMPLER_PID")
}

file_status() { getfattr --only-values -n user.modelfs.status "$1" 2>/dev/null || echo "?"; }

MOUNTED_BIG="$MNT/bench/big/all/model.safetensors"
LAST_BLOCK=$((BIG_SIZE / 4096 - 1))

# modelfs_cold COND(u|c) MODE(seq|last4k) ENDPOINT
modelfs_cold() {
    local cond=$1 mode=$2 ep=$3 store="$W/store-run" key hwm anon
    rm -rf "$store"
    sync
    start_modelfs "$store" "$ep"
    if [ "$mode" = seq ]; then
        key="cold.$cond.modelfs"
        local alog="$W/nginx-$([ "$cond" = u ] && echo uncapped || echo capped)/access.log"
        local before
        before=$(wc -l <"$alog")
        start_rss_sampler "$MFS_PID" "$W/rss-anon"
        timed "$key" dd if="$MOUNTED_BIG" of=/dev/null bs=1M
        # What the read cost the CDN (nginx logs a request when it ends; all have by now,
        # since dd has read every byte).
        tail -n +"$((before + 1))" "$alog" |
            awk -v c="$cond" '{n++; b+=$NF} END{printf "cdn.%s.requests\t%d\ncdn.%s.bytes\t%d\n", c, n, c, b}' >>"$RESULTS"
        hwm=$(awk '/^VmHWM:/{print $2}' "/proc/$MFS_PID/status" 2>/dev/null || true)
        stop_pid "$SAMPLER_PID"
        anon=$(cat "$W/rss-anon" 2>/dev/null || true)
        [ -n "$hwm" ] && record "rss.$cond.hwm" "$hwm"
        [ -n "$anon" ] && record "rss.$cond.anon" "$anon"
        if [ "$cond" = u ]; then
            # Keep one complete store for the warm rows: let the background hash finish.
            for _ in $(seq 600); do
                [ "$(file_status "$MOUNTED_BIG")" = verified ] && break
                sleep 0.1
            done
            WARM_STATUS=$(file_status "$MOUNTED_BIG")
            stop_modelfs
            rm -rf "$W/store-warm"
            mv "$store" "$W/store-warm"
            return 0
        fi
    else
        timed "last4k.$cond.modelfs" dd if="$MOUNTED_BIG" of=/dev/null bs=4096 skip="$LAST_BLOCK" count=1
    fi
    stop_modelfs
    rm -rf "$store"
}

hf_cold() { # COND ENDPOINT
    local cache="$W/hf-cache-run"
    rm -rf "$cache"
    sync
    py_timed "cold.$1.hf" hf-download "$2" bench/big model.safetensors "$cache"
    rm -rf "$cache"
}

rclone_cold() { # COND NGINX_PORT
    local cache="$W/rclone-cache-run" rlog="$LOGS/rclone.log"
    rm -rf "$cache"
    sync
    rclone mount :http: "$RMNT" --http-url "http://127.0.0.1:$2/files/" --read-only \
        --vfs-cache-mode full --cache-dir "$cache" --config /dev/null 2>>"$rlog" &
    RCLONE_PID=$!
    PIDS+=("$RCLONE_PID")
    wait_mounted "$RMNT" "$RCLONE_PID" "$rlog"
    timed "cold.$1.rclone" dd if="$RMNT/$BIG_REL" of=/dev/null bs=1M
    fusermount3 -u "$RMNT" 2>>"$rlog" || umount -l "$RMNT" 2>/dev/null || true
    stop_pid "$RCLONE_PID"
    wait "$RCLONE_PID" 2>/dev/null || true
    rm -rf "$cache"
}

curl_cold() { # COND NGINX_PORT
    timed "cold.$1.curl" curl -sSf -o /dev/null "http://127.0.0.1:$2/files/$BIG_REL"
}

print_report() {
    {
        cat "$W/machine.md"
        echo
        echo "## Results ($(date -u +%Y-%m-%dT%H:%MZ), medians; \"vs ref\" = reference time / this time, > 1 is faster)"
        echo
        echo "Cap: uncapped curl ran at $(awk -F'\t' '$1=="meta.curl_uncapped_mbps"{print $2}' "$RESULTS") MB/s; capped runs use nginx \`limit_rate\` $CAP bytes/s per connection."
        echo
        python3 "$HELPER" report "$RESULTS"
    } >"$W/table.md"
    echo
    cat "$W/table.md"
    echo
    log "table saved to $W/table.md; raw runs in $RESULTS; logs in $LOGS"
}

median_of() { # KEY -> median seconds
    awk -F'\t' -v k="$1" '$1==k{print $2}' "$RESULTS" | sort -g |
        awk '{v[NR]=$1} END{if (NR==0) exit 1; print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'
}

# ---------------------------------------------------------------------------------------------
# Memory: free page reporting
# ---------------------------------------------------------------------------------------------
# On a VM with virtio-balloon free page reporting, every free block of 2^order pages is handed
# back to the host, and the next write to it waits for the host to back it again: on the
# benchmark VM a 1 GiB numpy copy took 9.5 s that way and 0.4 s once reporting was off. Every
# cold row allocates gigabytes that the round before freed (page cache of deleted stores and
# caches, loaders' arrays), so with reporting on the rows measure the host, in a different
# amount per contender (a loader's arrays are fresh memory on every run). Restored at exit.
PAGE_REPORTING=/sys/module/page_reporting/parameters/page_reporting_order
# The order found before any run of ours changed it: a run killed before its cleanup leaves 11
# behind, and the next run must still restore what the machine had.
PAGE_REPORTING_SAVED="$W/page_reporting_order.orig"
PAGE_REPORTING_WAS=""
fresh_copy_secs() { # seconds for numpy to copy 1 GiB into fresh memory
    python3 -c 'import time, numpy as np; a = np.ones(1 << 30, np.uint8); t = time.time(); b = a.copy(); print(f"{time.time() - t:.2f}")'
}
order_now=$(cat "$PAGE_REPORTING" 2>/dev/null || echo -1)
if [ "$order_now" = -1 ]; then
    # No such parameter, or reporting inactive (no balloon that reports).
    MEMORY_NOTE="no free page reporting"
elif [ -n "${BENCH_KEEP_PAGE_REPORTING:-}" ] || [ ! -w "$PAGE_REPORTING" ]; then
    MEMORY_NOTE="free page reporting left on (order $order_now): a 1 GiB copy into fresh memory took $(fresh_copy_secs) s, and cold rows include the host backing memory again"
else
    [ -s "$PAGE_REPORTING_SAVED" ] || echo "$order_now" >"$PAGE_REPORTING_SAVED"
    original=$(cat "$PAGE_REPORTING_SAVED")
    # 11 is above the largest block the buddy allocator has, so nothing is ever reported; a
    # kernel that refuses it takes 10 (only 4 MiB blocks go back); one that refuses both
    # keeps its own.
    for order in 11 10; do
        if echo "$order" 2>/dev/null >"$PAGE_REPORTING"; then
            PAGE_REPORTING_WAS=$original
            break
        fi
    done
    if [ -n "$PAGE_REPORTING_WAS" ]; then
        # Memory reported before now is still the host's: back some once (half of what is
        # available, at most 8 GiB: more than any round frees and takes again), so the first
        # rounds do not pay for it either.
        back_gib=$(awk '/^MemAvailable:/{g = int($2 / 1048576 / 2); print (g > 8 ? 8 : g)}' /proc/meminfo)
        log "free page reporting order $original -> $order for this run; backing ${back_gib} GiB once"
        python3 -c "import numpy as np; np.ones($back_gib << 30, np.uint8)"
        MEMORY_NOTE="free page reporting order $original -> $order for the run, $back_gib GiB backed first; a 1 GiB copy into fresh memory then took $(fresh_copy_secs) s"
    else
        MEMORY_NOTE="free page reporting left on (order $order_now: the kernel refused 11 and 10); a 1 GiB copy into fresh memory took $(fresh_copy_secs) s"
    fi
fi

# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------

{
    echo "## Machine"
    echo
    echo "- CPUs: $(nproc) ($(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo))"
    echo "- memory: $(free -h | awk '/^Mem:/{print $2 " total, " $7 " available"}'); $MEMORY_NOTE"
    echo "- kernel: $(uname -srm)"
    echo "- disk of $W: $(df -hP "$W" | awk 'NR==2{print $1 ", " $2 " (" $4 " free)"}')"
    echo "- nginx $(nginx -v 2>&1 | sed 's|.*/||'), $(rclone version 2>/dev/null | head -n1), curl $(curl -V | awk 'NR==1{print $2}'), huggingface_hub $(python3 -c 'import huggingface_hub as h; print(h.__version__)')"
    echo "- modelfs $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet -- src 2>/dev/null || echo ' + uncommitted changes in src/'), flags: defaults${MODELFS_ARGS:+ + $MODELFS_ARGS}${BENCH_BIN_DIR:+, binaries from $BENCH_BIN_DIR}"
} >"$W/machine.md"
cat "$W/machine.md" >&2

# ---------------------------------------------------------------------------------------------
# 1. Cold sequential reads, last 4 KiB, daemon RSS
# ---------------------------------------------------------------------------------------------

log "cold, uncapped: curl first (its speed sets the cap)"
warm_origin
for _ in $(seq "$RUNS"); do curl_cold u "$NGX_U"; done
curl_med=$(median_of cold.u.curl)
curl_bps=$(awk -v s="$curl_med" -v b="$BIG_SIZE" 'BEGIN{printf "%d", b/s}')
CAP=${BENCH_CAP:-$((curl_bps / 8 / 1000000 * 1000000))}
[ "$CAP" -ge 1000000 ] || CAP=1000000
record meta.cap_mbps "$((CAP / 1000000))"
record meta.curl_uncapped_mbps "$((curl_bps / 1000000))"
log "uncapped curl: $((curl_bps / 1000000)) MB/s; per-connection cap: $((CAP / 1000000)) MB/s (limit_rate $CAP)"

NGX_C=$(free_port)
start_nginx capped "$NGX_C" "$CAP"
start_hub capped "http://127.0.0.1:$NGX_C"
HUB_C=$HUB_ENDPOINT
log "origin (capped): nginx 127.0.0.1:$NGX_C, mock Hub $HUB_C"
# Is the cap per connection? Two parallel 2-second ranged GETs should each take ~2 s.
span=$((CAP * 2))
t0=$(now)
curl -s -o /dev/null -r "0-$((span - 1))" "http://127.0.0.1:$NGX_C/lfs/$BIG_SHA" &
c1=$!
curl -s -o /dev/null -r "$span-$((2 * span - 1))" "http://127.0.0.1:$NGX_C/lfs/$BIG_SHA" &
c2=$!
wait "$c1" "$c2"
t1=$(now)
note "limit_rate check: two parallel ranged GETs of $((span / 1000000)) MB each (2 s at the cap) took $(printf '%.2f' "$(secs "$t0" "$t1")") s together, so the cap is per connection"

if [ "$ONLY" = loaders ]; then
    loaders_section
    print_report
    exit 0
fi
if [ "$ONLY" = tier ]; then
    tier_section
    print_report
    exit 0
fi

for run in $(seq "$RUNS"); do
    log "cold, uncapped: run $run/$RUNS"
    warm_origin
    modelfs_cold u seq "$HUB_U"
    modelfs_cold u last4k "$HUB_U"
    hf_cold u "$HUB_U"
    rclone_cold u "$NGX_U"
done
for run in $(seq "$RUNS"); do
    log "cold, capped at $((CAP / 1000000)) MB/s per connection: run $run/$RUNS"
    warm_origin
    curl_cold c "$NGX_C"
    modelfs_cold c seq "$HUB_C"
    modelfs_cold c last4k "$HUB_C"
    hf_cold c "$HUB_C"
    rclone_cold c "$NGX_C"
done

# What keeping 1 GiB costs on this machine, whoever keeps it: curl to a file on the store's disk,
# and writing 1 GiB of zeros to a new file (new page cache, no network). On a VM whose host
# backs guest memory lazily, the first touch of a page is a host fault, and freed page cache
# goes back to the host within seconds; both rows show how much of the cold rows that is.
log "cold, uncapped: what keeping the bytes costs (curl -o file; dd to a new file)"
for _ in $(seq "$RUNS"); do
    warm_origin
    rm -f "$W/kept.bin"
    sync
    timed cold.u.curlfile curl -sSf -o "$W/kept.bin" "http://127.0.0.1:$NGX_U/files/$BIG_REL"
    rm -f "$W/kept.bin"
    sync
    timed newpages.dd dd if=/dev/zero of="$W/kept.bin" bs=1M count=1024
    rm -f "$W/kept.bin"
    sync
done

# Coalescing (issue 4): when connections rather than memory bound what is in flight, read-ahead
# asks for runs of adjacent chunks in one streamed request, as long as the measured time to
# first byte calls for. The mock Hub's own CDN adds that time and a per-connection rate (nginx
# cannot add a first-byte delay); each case runs with runs as chosen and with one chunk per
# request (--max-request-size 8M), 256 MiB, `scripts/bench/cold_probe.sh`.
COALESCE_ARGS="--max-connections 4 --max-inflight-bytes 256M"
for case in "150 100000000" "30 40000000"; do
    read -r ttfb rate <<<"$case"
    for mode in on off; do
        extra=""
        [ "$mode" = off ] && extra="--max-request-size 8M"
        log "coalescing: first byte $ttfb ms, $((rate / 1000000)) MB/s per connection, $mode"
        line=$(PROBE_DIR="$W/coalesce" PROBE_MIB=256 PROBE_RUNS="$RUNS" PROBE_ORIGIN=mock \
            PROBE_FIRST_BYTE_MS="$ttfb" PROBE_CAP="$rate" MODELFS_ARGS="$COALESCE_ARGS $extra" \
            PROBE_KEEP_PAGE_REPORTING=${BENCH_KEEP_PAGE_REPORTING:-} timeout "$STEP_TIMEOUT" "$ROOT/scripts/bench/cold_probe.sh" 2>>"$LOGS/coalesce.log" |
            grep '^median:' || true)
        secs=$(awk '{print $3}' <<<"$line")
        if [ -n "$secs" ]; then
            record "coalesce.$ttfb.$mode" "$secs"
        else
            note "coalescing probe ($ttfb ms, $mode) failed; see $LOGS/coalesce.log"
        fi
    done
done
record meta.coalesce_args "$COALESCE_ARGS"

# ---------------------------------------------------------------------------------------------
# 2. Warm reads through a mount of the kept store, vs the plain file
# ---------------------------------------------------------------------------------------------

[ -d "$W/store-warm" ] || die "no complete store was kept from the cold runs"
note "warm rows read a store kept from a cold run; its file status was '${WARM_STATUS:-?}' before unmount"
start_modelfs "$W/store-warm" "$HUB_U"
cdn_requests_before=$(cat "$W"/nginx-*/access.log | wc -l)

# "Page cache dropped" must mean it on both sides, and `drop_caches` cannot drop a page that
# some process maps: the mock Hub maps every file it serves (so $BIG stays resident), and a
# daemon keeps what it once mapped of its store. So the plain side reads a copy nobody maps,
# and each dropped modelfs run gets a freshly started daemon.
PLAIN_COPY="$W/plain-copy.bin"
[ "$(stat -c %s "$PLAIN_COPY" 2>/dev/null || echo 0)" = "$BIG_SIZE" ] || cp "$BIG" "$PLAIN_COPY"
fresh_modelfs() { stop_modelfs; drop_caches; start_modelfs "$W/store-warm" "$HUB_U"; }

log "warm, page cache dropped (store only)"
for _ in $(seq "$RUNS"); do
    fresh_modelfs
    timed warm.store.modelfs dd if="$MOUNTED_BIG" of=/dev/null bs=1M
    drop_caches
    timed warm.store.plain dd if="$PLAIN_COPY" of=/dev/null bs=1M
done
log "warm, page cache hot"
dd if="$MOUNTED_BIG" of=/dev/null bs=1M 2>/dev/null
dd if="$BIG" of=/dev/null bs=1M 2>/dev/null
for _ in $(seq "$RUNS"); do
    timed warm.hot.modelfs dd if="$MOUNTED_BIG" of=/dev/null bs=1M
    timed warm.hot.plain dd if="$BIG" of=/dev/null bs=1M
done

log "random preads and mmap, page cache dropped"
for _ in $(seq "$RUNS"); do
    fresh_modelfs
    py_timed pread.store.modelfs pread "$MOUNTED_BIG" "$PREADS" "$SEED"
    drop_caches
    py_timed pread.store.plain pread "$PLAIN_COPY" "$PREADS" "$SEED"
    fresh_modelfs
    py_timed mmap.store.modelfs mmap "$MOUNTED_BIG"
    drop_caches
    py_timed mmap.store.plain mmap "$PLAIN_COPY"
done
log "random preads and mmap, page cache hot"
cat "$MOUNTED_BIG" >/dev/null
cat "$BIG" >/dev/null
for _ in $(seq "$RUNS"); do
    py_timed pread.hot.modelfs pread "$MOUNTED_BIG" "$PREADS" "$SEED"
    py_timed pread.hot.plain pread "$BIG" "$PREADS" "$SEED"
    py_timed mmap.hot.modelfs mmap "$MOUNTED_BIG"
    py_timed mmap.hot.plain mmap "$BIG"
done

log "a partially cached file: its cached half reread, page cache dropped and hot"
# The partial store and the checkpoint are fetched cold here, on purpose: not counted below.
cdn_cold_start=$(cat "$W"/nginx-*/access.log | wc -l)
# A store of its own, where the first half of the file was read (read-ahead fetches a little
# more, never the whole: the file stays partial, so it is served by the daemon, with pread
# from its data file, and the kernel keeps its pages).
PART_STORE="$W/store-partial"
HALF_MB=$((BIG_SIZE / 2 / 1048576))
stop_modelfs
rm -rf "$PART_STORE"
start_modelfs "$PART_STORE" "$HUB_U"
dd if="$MOUNTED_BIG" of=/dev/null bs=1M count="$HALF_MB" 2>/dev/null
note "partially cached file before the partial rows: $(getfattr -n user.modelfs.status --only-values "$MOUNTED_BIG" 2>/dev/null), $(getfattr -n user.modelfs.cached_bytes --only-values "$MOUNTED_BIG" 2>/dev/null) bytes cached"
for _ in $(seq "$RUNS"); do
    stop_modelfs; drop_caches; start_modelfs "$PART_STORE" "$HUB_U"
    timed partial.store.modelfs dd if="$MOUNTED_BIG" of=/dev/null bs=1M count="$HALF_MB"
    drop_caches
    timed partial.store.plain dd if="$PLAIN_COPY" of=/dev/null bs=1M count="$HALF_MB"
done
dd if="$MOUNTED_BIG" of=/dev/null bs=1M count="$HALF_MB" 2>/dev/null
dd if="$BIG" of=/dev/null bs=1M count="$HALF_MB" 2>/dev/null
for _ in $(seq "$RUNS"); do
    timed partial.hot.modelfs dd if="$MOUNTED_BIG" of=/dev/null bs=1M count="$HALF_MB"
    timed partial.hot.plain dd if="$BIG" of=/dev/null bs=1M count="$HALF_MB"
done
stop_modelfs
rm -rf "$PART_STORE"

log "a 1 GiB sharded safetensors checkpoint, loaded warm through the mount and from disk"
# Cached and verified in the warm store first (a cold read through the mount), then loaded
# as vLLM does (safe_open, tensors in sorted-name order) with the page cache dropped and hot.
start_modelfs "$W/store-warm" "$HUB_U"
MCKPT="$MNT/bench/ckpt/all"
cat "$MCKPT"/* >/dev/null
for _ in $(seq 100); do
    left=$(for f in "$MCKPT"/*.safetensors; do getfattr -n user.modelfs.status --only-values "$f"; echo; done | grep -vc verified || true)
    [ "$left" = 0 ] && break
    sleep 0.2
done
cdn_cold_end=$(cat "$W"/nginx-*/access.log | wc -l)
for _ in $(seq "$RUNS"); do
    fresh_modelfs
    py_timed ckpt.store.modelfs load-ckpt "$MCKPT"
    drop_caches
    py_timed ckpt.store.plain load-ckpt "$CKPT"
done
python3 "$HELPER" load-ckpt "$MCKPT" >/dev/null
python3 "$HELPER" load-ckpt "$CKPT" >/dev/null
for _ in $(seq "$RUNS"); do
    py_timed ckpt.hot.modelfs load-ckpt "$MCKPT"
    py_timed ckpt.hot.plain load-ckpt "$CKPT"
done
note "FUSE passthrough in the warm rows: $(grep -o 'passthrough=[a-z]*' "$LOGS/modelfs.log" | tail -n1)"

# ---------------------------------------------------------------------------------------------
# 3. Metadata of a cached 3,000-file repo
# ---------------------------------------------------------------------------------------------

MTREE="$MNT/bench/tree/all"
t0=$(now)
ls -lR "$MTREE" >/dev/null
t1=$(now)
note "the first \`ls -lR\` of the $TREE_FILES-file repo (not cached: tree listing from the mock Hub) took $(printf '%.2f' "$(secs "$t0" "$t1")") s (one run)"
[ "$(find "$MTREE" -type f | wc -l)" = "$TREE_FILES" ] || die "the mount does not show $TREE_FILES files"

META_RUNS=$((RUNS < 5 ? 5 : RUNS))
log "metadata, fresh (daemon restarted on the cached store; caches dropped)"
for _ in $(seq "$META_RUNS"); do
    stop_modelfs
    drop_caches
    start_modelfs "$W/store-warm" "$HUB_U"
    timed lsR.fresh.modelfs ls -lR "$MTREE"
    stop_modelfs
    drop_caches
    start_modelfs "$W/store-warm" "$HUB_U"
    py_timed stat.fresh.modelfs stat "$MTREE" "$W/tree.list"
    drop_caches
    timed lsR.fresh.native ls -lR "$TREE"
    drop_caches
    py_timed stat.fresh.native stat "$TREE" "$W/tree.list"
done
log "metadata, repeated"
ls -lR "$MTREE" >/dev/null
ls -lR "$TREE" >/dev/null
for _ in $(seq "$META_RUNS"); do
    timed lsR.hot.modelfs ls -lR "$MTREE"
    py_timed stat.hot.modelfs stat "$MTREE" "$W/tree.list"
    timed lsR.hot.native ls -lR "$TREE"
    py_timed stat.hot.native stat "$TREE" "$W/tree.list"
done

cdn_requests_after=$(cat "$W"/nginx-*/access.log | wc -l)
note "CDN (nginx) requests during the warm and metadata rows: $((cdn_requests_after - cdn_requests_before - (cdn_cold_end - cdn_cold_start))) (should be 0; the $((cdn_cold_end - cdn_cold_start)) that filled the partial store and cached the checkpoint are not counted)"
stop_modelfs

# ---------------------------------------------------------------------------------------------
# 4. Cold model loads (scripts/bench/loaders.sh)
# ---------------------------------------------------------------------------------------------

loaders_section

# ---------------------------------------------------------------------------------------------
# 5. The shared tier (scripts/bench/tier.sh)
# ---------------------------------------------------------------------------------------------

tier_section
print_report
