#!/usr/bin/env bash
# llama.cpp itself through a modelfs mount: llama-cpp-python loads vocab-only GGUF files
# (`vocab_only=True`, which memory-maps the file like a full model load) from the mount and
# from disk and must tokenize identically, and as llama.cpp's own tokenizer test expects.
# Run as root (it mounts), after scripts/setup.sh:
#
#     scripts/llama_cpp_check.sh
#
# Not part of `cargo test`: llama-cpp-python has no wheel on PyPI for Linux CPUs, and
# building llama.cpp from its sdist takes ~20 minutes on a 2-core machine. The first run
# installs it (pip caches the built wheel, so later runs on the same machine do not rebuild).
# The vocab files are llama.cpp's test fixtures, shipped in the same sdist
# (vendor/llama.cpp/models/ggml-vocab-*.gguf with their .inp/.out reference tokenizations).
#
# Like tests/consumers.rs: a cold run on an empty store against the bundled mock Hub, then
# two remounts with the mock Hub stopped (network down, then --offline). Everything lives
# under $LLAMA_CHECK_DIR (default: a new temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."

# The version the check was written and run against.
LLAMA_CPP_PYTHON=llama-cpp-python==0.3.36
REPO=ggml-org/llama-vocabs
VOCABS=(ggml-vocab-llama-bpe.gguf ggml-vocab-llama-spm.gguf)

DIR=${LLAMA_CHECK_DIR:-$(mktemp -d /tmp/modelfs-llama.XXXXXX)}
HUB="$DIR/hub"
MNT="$DIR/models"
STORE="$DIR/store"
py=python3

pip_install() {
    if ! $py -m pip install -q "$@" 2>"$DIR/pip.log"; then
        if grep -q externally-managed "$DIR/pip.log"; then
            $py -m pip install -q --break-system-packages "$@"
        else
            cat "$DIR/pip.log" >&2
            exit 1
        fi
    fi
}

installed=$($py -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' \
    2>/dev/null || true)
if [ "llama-cpp-python==$installed" != "$LLAMA_CPP_PYTHON" ]; then
    echo "== installing $LLAMA_CPP_PYTHON (builds llama.cpp from source: ~20 min on 2 cores)"
    start=$(date +%s)
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) pip_install "$LLAMA_CPP_PYTHON"
    echo "installed in $(($(date +%s) - start)) s"
fi
$py tests/python/consumers.py versions | grep -E '^(llama-cpp-python|numpy) '

echo "== llama.cpp's vocab-only GGUF files, from the $LLAMA_CPP_PYTHON sdist"
mkdir -p "$DIR/sdist" "$DIR/vocab"
$py -m pip download -q --no-deps --no-binary llama-cpp-python "$LLAMA_CPP_PYTHON" -d "$DIR/sdist" \
    2>"$DIR/pip-download.log" || { cat "$DIR/pip-download.log" >&2; exit 1; }
members=()
for v in "${VOCABS[@]}"; do
    for s in "" .inp .out; do members+=("--wildcards" "*/vendor/llama.cpp/models/$v$s"); done
done
tar -xzf "$DIR"/sdist/llama_cpp_python-*.tar.gz -C "$DIR/vocab" --strip-components=4 "${members[@]}"
$py tests/python/consumers.py fixtures --only llama-vocab --vocab-dir "$DIR/vocab" --out "$HUB"
ls -l "$HUB/$REPO"

echo "== building modelfs and the mock Hub"
cargo build --release --bin modelfs --example mock_hub 2>&1 | tail -n 1

MOUNT_PID=""
HUB_PID=""
unmount() {
    if [ -n "$MOUNT_PID" ]; then
        target/release/modelfs unmount "$MNT" 2>/dev/null || true
        wait "$MOUNT_PID" 2>/dev/null || true
        MOUNT_PID=""
    fi
}
cleanup() {
    unmount
    if [ -n "$HUB_PID" ]; then kill "$HUB_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

mount_modelfs() {
    target/release/modelfs mount "$MNT" --store "$STORE" --endpoint "$ENDPOINT" "$@" \
        2>>"$DIR/modelfs.log" &
    MOUNT_PID=$!
    for _ in $(seq 300); do grep -q "^modelfs $MNT fuse" /proc/mounts && return 0; sleep 0.1; done
    cat "$DIR/modelfs.log" >&2
    exit 1
}

run_checks() {
    local run=$1
    for v in "${VOCABS[@]}"; do
        # llama.cpp's own stderr chatter (context warnings) goes to the log, not the report.
        $py tests/python/consumers.py llama --mounted "$MNT/$REPO/all/$v" --disk "$HUB/$REPO/$v" \
            2>>"$DIR/llama.log" | sed "s/^/[$run] /" || { cat "$DIR/llama.log" >&2; exit 1; }
    done
}

figures() {
    for v in "${VOCABS[@]}"; do
        local f="$MNT/$REPO/all/$v"
        printf '  %-28s %12s of %12s bytes in the store, %s\n' "$v" \
            "$(getfattr --absolute-names --only-values -n user.modelfs.cached_bytes "$f")" \
            "$(getfattr --absolute-names --only-values -n user.modelfs.size "$f")" \
            "$(getfattr --absolute-names --only-values -n user.modelfs.status "$f")"
    done
}

echo "== cold: empty store, mock Hub up"
target/release/examples/mock_hub --dir "$HUB" --port 0 >"$DIR/hub.out" 2>"$DIR/hub.log" &
HUB_PID=$!
for _ in $(seq 100); do grep -q '^endpoint ' "$DIR/hub.out" 2>/dev/null && break; sleep 0.1; done
ENDPOINT=$(awk '/^endpoint /{print $2}' "$DIR/hub.out")
[ -n "$ENDPOINT" ] || { cat "$DIR/hub.log" >&2; exit 1; }
mount_modelfs
run_checks cold
sleep 1 # the background sha256 check of the files just read
figures
unmount

echo "== warm: mock Hub stopped"
kill "$HUB_PID"
wait "$HUB_PID" 2>/dev/null || true
HUB_PID=""
mount_modelfs --read-timeout 5
run_checks hub-down
unmount
mount_modelfs --offline
run_checks offline
figures
unmount
echo "== llama.cpp check ok: identical tokenization through the mount, cold and offline"
