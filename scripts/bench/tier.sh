# Sourced by scripts/bench.sh: the shared tier's rows (issue 14; doc/DESIGN.md, "The shared
# tier"). Against the capped origin, three modelfs daemons with stores of their own and one
# shared tier read the same file one after another, cold (page cache dropped before each
# read): node 1 fetches from the Hub and uploads behind its reads, nodes 2 and 3 should read
# everything from the tier. Then the same number of daemons start at once over an empty
# tier and read the file at the same moment: nothing coordinates nodes, so what the Hub
# sends then is the duplication the design allows. Both for a `file://` tier (a directory
# on this disk) and an S3 tier (moto's server on 127.0.0.1).
#
# What crossed the Hub link is counted at the CDN: the bytes nginx logged as sent in answer
# to the rows' requests (its access log), beside each daemon's own counters from
# `--metrics-addr` (modelfs_fetched_bytes_total, modelfs_tier_fetched_bytes_total,
# modelfs_tier_stored_bytes_total).
#
# Uses bench.sh's W, DATA, BIG, BIG_REL, BIG_SIZE, LOGS, BIN, HUB_C, RUNS, STEP_TIMEOUT,
# EXTRA_MOUNTS, PIDS and its helpers (log, die, note, record, now, secs, drop_caches,
# wait_mounted, stop_pid, free_port).

TIER_SCALE=${BENCH_TIER_SCALE:-full}
case "$TIER_SCALE" in full | small) ;; *) die "BENCH_TIER_SCALE is full or small, not '$TIER_SCALE'" ;; esac
TIER_NODES=3
TIER_KINDS=(file s3)
TIER_BUCKET=modelfs-bench
if [ "$TIER_SCALE" = full ]; then
    TIER_REL=$BIG_REL
    TIER_SIZE=$BIG_SIZE
else
    # A file of its own (the first 128 MiB of the 1 GiB keystream: other bytes, so another
    # content id and other chunk keys), to check the section in a minute or two.
    TIER_REL=bench/tier-small/model.safetensors
    TIER_SIZE=$((128 << 20))
fi
TIER_FILE="$DATA/files/$TIER_REL"
# As mounted: <org>/<repo>/all/<path>.
TIER_MREL="$(cut -d/ -f1-2 <<<"$TIER_REL")/all/$(cut -d/ -f3- <<<"$TIER_REL")"
# How long node 1's uploads may take to land after its read before the next node starts
# anyway (it then finds the tier incomplete, and the Hub bytes show it).
TIER_UPLOAD_WAIT=300

declare -A TIER_PID=() TIER_ADDR=()

# Before the servers start (the mock Hub lists what is on disk when it starts).
tier_data() {
    [ "$TIER_SCALE" = small ] || return 0
    if [ "$(stat -c %s "$TIER_FILE" 2>/dev/null || echo 0)" != "$TIER_SIZE" ]; then
        mkdir -p "$(dirname "$TIER_FILE")"
        head -c "$TIER_SIZE" "$BIG" >"$TIER_FILE.tmp"
        mv "$TIER_FILE.tmp" "$TIER_FILE"
    fi
    local sha
    sha=$(sha256sum "$TIER_FILE" | cut -c1-64)
    [ -e "$DATA/lfs/$sha" ] || ln "$TIER_FILE" "$DATA/lfs/$sha"
}

tier_installs() {
    python3 -c "import moto.server" 2>/dev/null && return 0
    local pin
    pin=$(grep -E '^moto\[server\]==' "$ROOT/tests/python/requirements.txt")
    log "installing $pin (pip)"
    python3 -m pip install -q "$pin" >>"$LOGS/pip.log" 2>&1 ||
        python3 -m pip install -q --break-system-packages "$pin" >>"$LOGS/pip.log" 2>&1 ||
        die "pip install $pin failed; see $LOGS/pip.log"
}

# The value of a counter in a daemon's /metrics (0 when absent).
tier_metric() { # ADDR NAME
    curl -sf --max-time 5 "http://$1/metrics" | awk -v n="$2" '$1==n{v=$2} END{printf "%.0f\n", v+0}'
}

# tier_backend_start KIND: an empty tier; sets TIER_URL (and TIER_S3 for s3).
tier_backend_start() {
    case "$1" in
    file)
        rm -rf "$W/tier-dir"
        TIER_URL="file://$W/tier-dir"
        ;;
    s3)
        local port code=""
        port=$(free_port)
        # moto keeps objects in memory: a fresh server per measurement is an empty tier.
        python3 -m moto.server -H 127.0.0.1 -p "$port" >>"$LOGS/moto.log" 2>&1 &
        MOTO_PID=$!
        PIDS+=("$MOTO_PID")
        TIER_S3="http://127.0.0.1:$port"
        # Creating the bucket (an unsigned PUT, which moto accepts) is the readiness check.
        for _ in $(seq 300); do
            code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "$TIER_S3/$TIER_BUCKET" || true)
            [ "$code" = 200 ] && break
            kill -0 "$MOTO_PID" 2>/dev/null || break
            sleep 0.1
        done
        [ "$code" = 200 ] || { tail -n 20 "$LOGS/moto.log" >&2; die "moto did not start (last answer: $code)"; }
        TIER_URL="s3://$TIER_BUCKET/cluster"
        ;;
    esac
}
tier_backend_stop() { # KIND
    case "$1" in
    file) rm -rf "$W/tier-dir" ;;
    s3) stop_pid "$MOTO_PID" ;;
    esac
}

# tier_node_start I KIND: daemon I over an empty store of its own, on its own mountpoint,
# reading the capped origin through the tier at TIER_URL; sets TIER_PID[I], TIER_ADDR[I].
tier_node_start() {
    local i=$1 kind=$2 mnt="$W/mnt/tier-$1" store="$W/tier-store-$1" nlog="$LOGS/tier-node$1.log" addr=""
    mkdir -p "$mnt"
    rm -rf "$store"
    : >"$nlog"
    (
        if [ "$kind" = s3 ]; then
            # Only the daemon gets the S3 settings (the same kind as tests/support/tier.rs).
            export AWS_ACCESS_KEY_ID=modelfs-bench AWS_SECRET_ACCESS_KEY=modelfs-bench-secret \
                AWS_REGION=us-east-1 AWS_ENDPOINT_URL="$TIER_S3" AWS_ALLOW_HTTP=true
        fi
        # shellcheck disable=SC2086 # MODELFS_ARGS is a list of flags
        exec "$BIN" mount "$mnt" --store "$store" --endpoint "$HUB_C" --tier "$TIER_URL" \
            --metrics-addr 127.0.0.1:0 ${MODELFS_ARGS:-}
    ) 2>"$nlog" &
    TIER_PID[$i]=$!
    PIDS+=("${TIER_PID[$i]}")
    EXTRA_MOUNTS+=("$mnt")
    wait_mounted "$mnt" "${TIER_PID[$i]}" "$nlog"
    for _ in $(seq 100); do
        addr=$(grep -o 'metrics listening on http://[0-9.:]*' "$nlog" | tail -n1 | sed 's|.*http://||')
        [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { tail -n 20 "$nlog" >&2; die "node $i logged no metrics address"; }
    TIER_ADDR[$i]=$addr
}
tier_node_stop() { # I
    local mnt="$W/mnt/tier-$1"
    timeout 20 "$BIN" unmount "$mnt" 2>>"$LOGS/tier-node$1.log" || umount -l "$mnt" 2>/dev/null || true
    stop_pid "${TIER_PID[$1]}"
    wait "${TIER_PID[$1]}" 2>/dev/null || true
    rm -rf "$W/tier-store-$1"
}

# CPU seconds (user + system) PID has used so far; 0 once it is gone.
cpu_secs() { # PID
    awk -v t="$(getconf CLK_TCK)" '{printf "%.2f\n", ($14 + $15) / t}' "/proc/$1/stat" 2>/dev/null || echo 0
}

# Bytes nginx (the capped CDN) sent for the requests it logged after line FROM. (`%.0f`, not
# `%d`: mawk's `%d` stops at 2^31 - 1, and three nodes at once can pass 2 GiB.)
cdn_bytes_since() { # FROM
    tail -n +"$(($1 + 1))" "$W/nginx-capped/access.log" | awk '{b+=$NF} END{printf "%.0f\n", b}'
}
cdn_lines() { wc -l <"$W/nginx-capped/access.log"; }

# Cold, for every node alike: the node's store is new, and the page cache holds none of the
# tier's objects (a file:// tier is read from disk, as a remote tier's bytes are not local);
# the origin file is read back in (the CDN serves from memory, as in the other cold rows).
tier_cold() { drop_caches; cat "$TIER_FILE" >/dev/null; }

# tier_read KEY I: dd the file through node I's mount, record its time under KEY.
tier_read() {
    local t0 t1
    t0=$(now)
    if ! timeout "$STEP_TIMEOUT" dd if="$W/mnt/tier-$2/$TIER_MREL" of=/dev/null bs=1M 2>>"$LOGS/cmd.log"; then
        note "$1: dd through node $2 failed or timed out; see $LOGS/cmd.log and $LOGS/tier-node$2.log"
        return 1
    fi
    t1=$(now)
    record "$1" "$(secs "$t0" "$t1")"
}

# Three nodes one after another over one tier of KIND.
tier_sequential() { # KIND
    local kind=$1 from i t0 stored srv0=0
    tier_backend_start "$kind"
    from=$(cdn_lines)
    for i in $(seq "$TIER_NODES"); do
        tier_node_start "$i" "$kind"
        tier_cold
        # On this machine the S3 server shares the two cores with the daemon: what it spent
        # during each read says how much of a node's time is the server's.
        [ "$kind" = s3 ] && srv0=$(cpu_secs "$MOTO_PID")
        tier_read "tier.$kind.node$i" "$i" || true
        record "tier.$kind.node$i.cpu" "$(cpu_secs "${TIER_PID[$i]}")"
        [ "$kind" = s3 ] && record "tier.$kind.node$i.server_cpu" "$(awk -v a="$srv0" -v b="$(cpu_secs "$MOTO_PID")" 'BEGIN{printf "%.2f", b - a}')"
        record "tier.$kind.node$i.hub" "$(tier_metric "${TIER_ADDR[$i]}" modelfs_fetched_bytes_total)"
        record "tier.$kind.node$i.from_tier" "$(tier_metric "${TIER_ADDR[$i]}" modelfs_tier_fetched_bytes_total)"
        if [ "$i" = 1 ]; then
            # Node 1 uploads behind its reads: the next node starts once every chunk landed.
            t0=$(now)
            stored=0
            for _ in $(seq $((TIER_UPLOAD_WAIT * 10))); do
                stored=$(tier_metric "${TIER_ADDR[1]}" modelfs_tier_stored_bytes_total)
                [ "$stored" -ge "$TIER_SIZE" ] && break
                sleep 0.1
            done
            if [ "$stored" -ge "$TIER_SIZE" ]; then
                record "tier.$kind.upload_after" "$(secs "$t0" "$(now)")"
            else
                note "tier $kind: node 1 had stored $stored of $TIER_SIZE bytes in the tier after $TIER_UPLOAD_WAIT s; node 2 started anyway"
            fi
            record "tier.$kind.deferred" "$(tier_metric "${TIER_ADDR[1]}" modelfs_tier_uploads_deferred_total)"
        fi
        record "tier.$kind.node$i.errors" "$(curl -sf --max-time 5 "http://${TIER_ADDR[$i]}/metrics" |
            awk '/^modelfs_tier_errors_total/{s+=$2} END{printf "%.0f\n", s+0}')"
        tier_node_stop "$i"
    done
    # Every request of the three reads has ended (each dd read every byte; the daemons are
    # stopped), so nginx has logged them all.
    record "tier.$kind.cdn" "$(cdn_bytes_since "$from")"
    tier_backend_stop "$kind"
}

# TIER_NODES nodes started at once over an empty tier of KIND, reading at the same moment.
tier_concurrent() { # KIND
    local kind=$1 from i t0 pids=() slowest=0 s ok=1
    tier_backend_start "$kind"
    for i in $(seq "$TIER_NODES"); do tier_node_start "$i" "$kind"; done
    tier_cold
    from=$(cdn_lines)
    for i in $(seq "$TIER_NODES"); do
        (
            t0=$(now)
            timeout "$STEP_TIMEOUT" dd if="$W/mnt/tier-$i/$TIER_MREL" of=/dev/null bs=1M 2>>"$LOGS/cmd.log" || exit 1
            secs "$t0" "$(now)" >"$W/tier-conc-$i.secs"
        ) &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do wait "${pids[$i]}" || ok=0; done
    if [ "$ok" = 1 ]; then
        for i in $(seq "$TIER_NODES"); do
            s=$(cat "$W/tier-conc-$i.secs")
            slowest=$(awk -v a="$slowest" -v b="$s" 'BEGIN{print (b > a ? b : a)}')
        done
        record "tierc.$kind.slowest" "$slowest"
    else
        note "tier $kind, nodes at once: a read failed or timed out; see $LOGS/cmd.log"
    fi
    rm -f "$W"/tier-conc-*.secs
    for i in $(seq "$TIER_NODES"); do
        record "tierc.$kind.node$i.from_tier" "$(tier_metric "${TIER_ADDR[$i]}" modelfs_tier_fetched_bytes_total)"
        tier_node_stop "$i"
    done
    record "tierc.$kind.cdn" "$(cdn_bytes_since "$from")"
    tier_backend_stop "$kind"
}

tier_section() {
    tier_installs
    record meta.tier_bytes "$TIER_SIZE"
    record meta.tier_scale "$TIER_SCALE"
    record meta.tier_nodes "$TIER_NODES"
    record meta.tier_moto "$(python3 -c 'import moto; print(moto.__version__)')"
    local run kind
    for run in $(seq "$RUNS"); do
        for kind in "${TIER_KINDS[@]}"; do
            log "shared tier ($kind), $TIER_NODES nodes one after another, capped at $((CAP / 1000000)) MB/s per connection: run $run/$RUNS"
            tier_sequential "$kind"
        done
        for kind in "${TIER_KINDS[@]}"; do
            log "shared tier ($kind), $TIER_NODES nodes at once over an empty tier: run $run/$RUNS"
            tier_concurrent "$kind"
        done
    done
}
