#!/usr/bin/env bash
# The main job, offline: build modelfs, start the bundled mock Hub with a small ONNX model
# repo, mount it, list and read it through the mount, show its xattrs, unmount.
# Everything lives under $DEMO_DIR (default: a new temp dir); nothing needs the real Hub.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR=${DEMO_DIR:-$(mktemp -d /tmp/modelfs-demo.XXXXXX)}
SRC="$DEMO_DIR/hub"
MNT="$DEMO_DIR/models"
STORE="$DEMO_DIR/store"
REPO="onnx-community/demo-model"

echo "== building"
cargo build --release --bin modelfs --example mock_hub 2>&1 | tail -n 1

echo "== a small model repo for the mock Hub in $SRC/$REPO"
mkdir -p "$SRC/$REPO/onnx"
echo '{"model_type": "bert", "hidden_size": 32}' > "$SRC/$REPO/config.json"
echo '{"version": "1.0", "model": {"type": "WordPiece"}}' > "$SRC/$REPO/tokenizer.json"
head -c 3000000 /dev/urandom > "$SRC/$REPO/onnx/model.onnx"
head -c 400000 /dev/urandom > "$SRC/$REPO/onnx/model_q4f16.onnx"
head -c 9000000 /dev/urandom > "$SRC/$REPO/onnx/model_q4f16.onnx_data"

cleanup() {
    target/release/modelfs unmount "$MNT" 2>/dev/null || true
    [ -n "${MOUNT_PID:-}" ] && wait "$MOUNT_PID" 2>/dev/null || true
    [ -n "${HUB_PID:-}" ] && kill "$HUB_PID" 2>/dev/null || true
}
trap cleanup EXIT

echo "== starting the mock Hub"
target/release/examples/mock_hub --dir "$SRC" --port 0 > "$DEMO_DIR/hub.out" 2> "$DEMO_DIR/hub.log" &
HUB_PID=$!
for _ in $(seq 100); do grep -q '^endpoint ' "$DEMO_DIR/hub.out" 2>/dev/null && break; sleep 0.1; done
ENDPOINT=$(awk '/^endpoint /{print $2}' "$DEMO_DIR/hub.out")
echo "mock Hub at $ENDPOINT"

echo "== mounting at $MNT"
target/release/modelfs mount "$MNT" --store "$STORE" --endpoint "$ENDPOINT" 2> "$DEMO_DIR/modelfs.log" &
MOUNT_PID=$!
for _ in $(seq 100); do grep -q "^modelfs $MNT fuse" /proc/mounts && break; sleep 0.1; done
grep -q "^modelfs $MNT fuse" /proc/mounts || { cat "$DEMO_DIR/modelfs.log"; exit 1; }

set -x
ls "$MNT/$REPO"
ls -lR "$MNT/$REPO/q4f16"
getfattr --absolute-names -d "$MNT/$REPO"
getfattr --absolute-names -d "$MNT/$REPO/q4f16/onnx/model_q4f16.onnx_data"
sha256sum "$MNT/$REPO/q4f16/onnx/model_q4f16.onnx_data" "$SRC/$REPO/onnx/model_q4f16.onnx_data"
cmp "$MNT/$REPO/q4f16/onnx/model_q4f16.onnx_data" "$SRC/$REPO/onnx/model_q4f16.onnx_data"
cmp "$MNT/$REPO/all/onnx/model.onnx" "$SRC/$REPO/onnx/model.onnx"
sleep 0.5
getfattr --absolute-names -d "$MNT/$REPO/q4f16/onnx/model_q4f16.onnx_data"
getfattr --absolute-names -n user.modelfs.progress "$MNT/$REPO/q4f16"
set +x
echo "== demo ok: every byte read through the mount matched the source"
