#!/usr/bin/env bash
# The shared tier's suites against a second, independent S3 implementation: s3s-fs (the s3s
# project's S3 server over a directory, in Rust) in place of moto's (Python), which the
# default suite uses. tests/support/tier.rs starts whichever MODELFS_TEST_S3 names.
#
#   ./scripts/test_s3s.sh              # installs s3s-fs if missing, then the suites
#   ./scripts/test_s3s.sh -- --nocapture   # extra arguments go to cargo test
#
# s3s-fs is installed with `cargo install` into the cargo bin dir ($CARGO_HOME/bin), built
# from source once per machine (86 s on the quiet 2-core VM, 2 min 10 s with two other builds
# running: short enough for CI, which runs this after scripts/test.sh; README, "Tested with"). Pinned:
# 0.14.1 is the newest release whose rust-version (1.92) the toolchain here meets; 0.15 and
# later need 1.96.
set -euo pipefail
cd "$(dirname "$0")/.."

S3S_FS_VERSION=0.14.1
cargo_home=${CARGO_HOME:-$HOME/.cargo}
bin=$(command -v s3s-fs || true)
[ -n "$bin" ] || bin="$cargo_home/bin/s3s-fs"
if ! [ -x "$bin" ] || [ "$("$bin" --version 2>/dev/null)" != "s3s-fs $S3S_FS_VERSION" ]; then
    echo "test_s3s: installing s3s-fs $S3S_FS_VERSION (cargo install, into $cargo_home/bin)"
    start=$(date +%s)
    # Its own temporary build directory, not this project's target dir (CARGO_TARGET_DIR
    # would send the build there and keep it).
    env -u CARGO_TARGET_DIR cargo install s3s-fs --version "=$S3S_FS_VERSION" --features binary \
        --locked --root "$cargo_home"
    echo "test_s3s: installed in $(($(date +%s) - start)) s"
    bin="$cargo_home/bin/s3s-fs"
fi
echo "test_s3s: $("$bin" --version) at $bin"

suites=(--test tier)
# The tier's fault suite, where this tree has it.
[ -f tests/tier_faults.rs ] && suites+=(--test tier_faults)
MODELFS_TEST_S3=s3s-fs MODELFS_S3S_FS="$bin" cargo test "${suites[@]}" "$@"
