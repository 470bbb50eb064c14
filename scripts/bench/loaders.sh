# Sourced by scripts/bench.sh: the cold model-load rows. A real loader (safetensors as vLLM
# reads a sharded checkpoint, GGUF through the `gguf` package's memmap reader, ONNX with
# external data through onnxruntime) on a fresh mount over an empty store, against
# `snapshot_download` and the same loader on the downloaded files, and against `dd` of the
# same files through a fresh mount (what modelfs's read-ahead gives a sequential reader, the
# speed a loader could have if modelfs knew what it will read next). Plus a peek (header and
# one small tensor) and what it cost in fetched bytes.
#
# Uses bench.sh's W, DATA, LOGS, MNT, SEED, RUNS, ROOT, STEP_TIMEOUT and its helpers (log, die,
# note, record, timed, slow_check, SLOW, start_modelfs, stop_modelfs). Data: scripts/bench/
# gen_models.py; loaders: scripts/bench/load_models.py.

LOADER_SCALE=${BENCH_LOADER_SCALE:-full}
case "$LOADER_SCALE" in full | small) ;; *) die "BENCH_LOADER_SCALE is full or small, not '$LOADER_SCALE'" ;; esac
LOADERS="$ROOT/scripts/bench/load_models.py"
# Bump when gen_models.py changes what it writes.
LOADER_GEN_VERSION=2
LOADER_STAMP="$DATA/.stamp-loaders"
LOADER_FMTS=(safetensors gguf gguf-split onnx)
# The formats the rounds load (BENCH_LOADER_FORMATS, e.g. "gguf onnx" for an A/B of two
# binaries on the rows a change touches); the data is always generated for all four.
read -r -a LOADER_RUN_FMTS <<<"${BENCH_LOADER_FORMATS:-${LOADER_FMTS[*]}}"
for fmt in "${LOADER_RUN_FMTS[@]}"; do
    [[ " ${LOADER_FMTS[*]} " == *" $fmt "* ]] || die "BENCH_LOADER_FORMATS: '$fmt' is not one of ${LOADER_FMTS[*]}"
done
declare -A LOADER_REPO=([safetensors]=bench/loader-safetensors [gguf]=bench/loader-gguf
    [gguf-split]=bench/loader-gguf-split [onnx]=bench/loader-onnx)
# What the loader is given, relative to the repo root.
declare -A LOADER_ARG=([safetensors]=. [gguf]=model-Q8_0.gguf
    [gguf-split]=model-Q8_0-00001-of-00003.gguf [onnx]=model.onnx)
PEEK_SHARD=model-00001-of-00003.safetensors
# The chunk size the mount uses (for the peek's bound): modelfs's default unless MODELFS_ARGS
# sets another.
LOADER_CHUNK=$(grep -oE -- '--chunk-size[= ][0-9]+[KMG]?' <<<"${MODELFS_ARGS:-}" | grep -oE '[0-9]+[KMG]?$' || echo 8M)
LOADER_CHUNK=$(numfmt --from=iec "$LOADER_CHUNK")

# The files each load reads, in the order `dd` reads them (the loader's order: index, then
# shards sorted; the graph, then its data).
loader_files() { # FMT -> paths relative to the repo root
    case "$1" in
    safetensors) (cd "$DATA/files/${LOADER_REPO[$1]}" && echo model.safetensors.index.json && ls model-*.safetensors | sort) ;;
    gguf) echo model-Q8_0.gguf ;;
    gguf-split) (cd "$DATA/files/${LOADER_REPO[$1]}" && ls model-Q8_0-*-of-*.gguf | sort) ;;
    onnx) printf '%s\n' model.onnx model.onnx_data ;;
    esac
}

# Generate once per scale and seed; bench.sh's own data block removes these with the rest of
# $DATA when its stamp changes.
loaders_data() {
    local want="v$LOADER_GEN_VERSION seed=$SEED scale=$LOADER_SCALE" fmt f sha
    if [ "$(cat "$LOADER_STAMP" 2>/dev/null)" != "$want" ]; then
        log "generating the loader models ($LOADER_SCALE scale) in $DATA/files/bench/loader-*"
        for fmt in "${LOADER_FMTS[@]}"; do rm -rf "${DATA:?}/files/${LOADER_REPO[$fmt]}"; done
        # The CDN names of the files just removed: hardlinks nothing else holds any more.
        find "$DATA/lfs" -type f -links 1 -delete
        python3 "$ROOT/scripts/bench/gen_models.py" "$DATA/files" "$SEED" "$LOADER_SCALE" 2>>"$LOGS/gen_models.log" ||
            { tail -n 20 "$LOGS/gen_models.log" >&2; die "gen_models.py failed"; }
        # onnx writes its external data 0600; nginx and the mock Hub read as root, but a
        # reader of $DATA should see what the other repos show.
        chmod 644 "$DATA"/files/bench/loader-*/*
        echo "$want" >"$LOADER_STAMP"
    fi
    # The CDN view, as for the other repos: every file the mock Hub serves from LFS also as
    # /lfs/<sha256>, the same inode (a 2 KiB model.onnx is LFS too: its extension says so).
    for fmt in "${LOADER_FMTS[@]}"; do
        while read -r f; do
            lfs_by_default "$f" || continue
            sha=$(sha256sum "$f" | cut -c1-64)
            [ -e "$DATA/lfs/$sha" ] || ln "$f" "$DATA/lfs/$sha"
        done < <(find "$DATA/files/${LOADER_REPO[$fmt]}" -type f)
    done
}

# The mock Hub's rule (is_lfs_by_default in tests/support/mock_hub.rs): 1 MiB or more, or an
# extension the Hub's default .gitattributes sends to LFS.
lfs_by_default() { # PATH
    [ "$(stat -c %s "$1")" -ge $((1 << 20)) ] && return 0
    case "${1##*.}" in
    onnx | onnx_data | gguf | safetensors | bin) return 0 ;;
    esac
    [[ ${1##*.} =~ ^onnx_data_[0-9]+$ ]]
}

# load_timed KEY WANT ARGS...: run load_models.py ARGS, record its seconds under KEY, and die
# unless its checksum is WANT (the same load of the generated files): a fast load of wrong
# bytes must not become a row. Leaves the loader's output line in LOAD_OUT.
load_timed() {
    local key=$1 want=$2 s sum
    shift 2
    LOAD_OUT=""
    [ -n "${SLOW[$key]:-}" ] && return 0
    if ! LOAD_OUT=$(timeout "$STEP_TIMEOUT" python3 "$LOADERS" "$@" 2>>"$LOGS/cmd.log"); then
        note "$key: \`load_models.py $*\` failed or timed out; see $LOGS/cmd.log"
        SLOW[$key]=failed
        return 0
    fi
    read -r s sum _ <<<"$LOAD_OUT"
    [ "$sum" = "$want" ] ||
        die "$key: checksum $sum, but the files on disk give $want (load_models.py $*): the mount or the download served other bytes"
    record "$key" "$s"
    slow_check "$key" "$s"
}

declare -A LOADER_SUM=()
loaders_reference() {
    local fmt out repo
    for fmt in "${LOADER_FMTS[@]}"; do
        repo="$DATA/files/${LOADER_REPO[$fmt]}"
        out=$(python3 "$LOADERS" "$fmt" "$repo/${LOADER_ARG[$fmt]}") || die "load_models.py $fmt failed on the generated files"
        LOADER_SUM[$fmt]=$(awk '{print $2}' <<<"$out")
        record "meta.load_${fmt}_bytes" "$(cd "$repo" && loader_files "$fmt" | xargs cat | wc -c)"
        record "meta.load_${fmt}_what" "$(grep -oE '(tensors|outputs)=[0-9]+' <<<"$out" | head -n1)"
    done
    local st="$DATA/files/${LOADER_REPO[safetensors]}"
    out=$(python3 "$LOADERS" peek "$st/$PEEK_SHARD" "$st/$PEEK_SHARD" "$LOADER_CHUNK") || die "load_models.py peek failed on the generated files"
    LOADER_SUM[peek]=$(awk '{print $2}' <<<"$out")
    record meta.peek_tensor "$(grep -oE 'tensor=[^ ]+' <<<"$out" | cut -d= -f2)"
    record meta.peek_bound "$(grep -oE 'bound=[0-9]+' <<<"$out" | cut -d= -f2)"
    record meta.peek_chunk "$LOADER_CHUNK"
    record meta.loader_scale "$LOADER_SCALE"
}

# The CDN serves from memory (as warm_origin does for the 1 GiB file): read every loader file
# once before a round, so the origin's disk is not part of any contender's time.
warm_loader_origin() { cat "$DATA"/files/bench/loader-*/* >/dev/null; }

fresh_mount() { # ENDPOINT: a new daemon over an empty store
    rm -rf "$W/store-run"
    sync
    start_modelfs "$W/store-run" "$1"
}
drop_mount() {
    stop_modelfs
    rm -rf "$W/store-run"
}

# load_round COND(u|c) ENDPOINT: each contender once per format, then the peek.
load_round() {
    local cond=$1 ep=$2 fmt repo m key cache="$W/hf-cache-run" files
    warm_loader_origin
    for fmt in "${LOADER_RUN_FMTS[@]}"; do
        repo=${LOADER_REPO[$fmt]}
        m="$MNT/$repo/all"
        # A skipped (slow) row does not pay for a mount it will not use.
        key="load.$fmt.modelfs_cold.$cond"
        if [ -z "${SLOW[$key]:-}" ]; then
            fresh_mount "$ep"
            load_timed "$key" "${LOADER_SUM[$fmt]}" "$fmt" "$m/${LOADER_ARG[$fmt]}"
            drop_mount
        fi
        rm -rf "$cache"
        sync
        load_timed "load.$fmt.hf_then_disk.$cond" "${LOADER_SUM[$fmt]}" "$fmt" "${LOADER_ARG[$fmt]}" --hub "$ep" "$repo" "$cache"
        rm -rf "$cache"
        # The loader's own work, its files in memory (warm_loader_origin read them): with
        # `dd`'s time, the least a loader that reads everything before working can take.
        load_timed "load.$fmt.memory.$cond" "${LOADER_SUM[$fmt]}" "$fmt" "$DATA/files/$repo/${LOADER_ARG[$fmt]}"
        key="load.$fmt.dd_cold.$cond"
        if [ -z "${SLOW[$key]:-}" ]; then
            fresh_mount "$ep"
            mapfile -t files < <(loader_files "$fmt" | sed "s|^|$m/|")
            # shellcheck disable=SC2016 # the inner script's own arguments
            timed "$key" bash -c 'for f; do dd if="$f" of=/dev/null bs=1M status=none || exit 1; done' _ "${files[@]}"
            drop_mount
        fi
    done
    key="peek.safetensors.modelfs_cold.$cond"
    if [ -z "${SLOW[$key]:-}" ]; then
        m="$MNT/${LOADER_REPO[safetensors]}/all"
        fresh_mount "$ep"
        load_timed "$key" "${LOADER_SUM[peek]}" peek "$m/$PEEK_SHARD" "$DATA/files/${LOADER_REPO[safetensors]}/$PEEK_SHARD" "$LOADER_CHUNK"
        # Every file of the checkpoint counts: a peek at shard 1 should not fetch shard 2.
        if [ -n "$LOAD_OUT" ]; then
            record "peek.safetensors.bytes.$cond" "$(python3 "$LOADERS" cached "$m"/*)"
        fi
        drop_mount
    fi
}

loaders_section() {
    log "cold model loads ($LOADER_SCALE scale): reference checksums from the generated files"
    loaders_reference
    local run
    for run in $(seq "$RUNS"); do
        log "cold model loads, uncapped: run $run/$RUNS"
        load_round u "$HUB_U"
    done
    for run in $(seq "$RUNS"); do
        log "cold model loads, capped at $((CAP / 1000000)) MB/s per connection: run $run/$RUNS"
        load_round c "$HUB_C"
    done
    # load_timed dies on a mismatch: reaching here means none.
    note "cold model loads: every load that ran (through the mount, and from snapshot_download's files) gave the checksum of the generated files"
}
