#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: formatting, lints, then every unit, property
# and real-FUSE integration test (the integration tests mount, so run as root with /dev/fuse),
# then the Python package's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --all-targets -- -D warnings
# The Python package's crate (a workspace member outside the default ones).
cargo clippy -p modelfs-python --all-targets -- -D warnings
cargo test --all-targets
# The Python package: wheel build, install, pytest.
bash scripts/test_python.sh
