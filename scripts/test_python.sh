#!/usr/bin/env bash
# The Python package's tests (doc/LIBRARY.md): build and install the wheel from python/
# exactly as the README says (`pip install ./python`: maturin, abi3, in pip's isolated build
# environment), build the mock Hub the tests start, then run pytest on python/tests.
# Called by scripts/test.sh; runs on its own too.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pip_install.sh
# --force-reinstall: the version does not change with the sources, the build must.
pip_install --force-reinstall --no-deps ./python
cargo build -q --example mock_hub
# From another directory, so that `import modelfs` is the installed wheel, not python/modelfs.
cd python/tests
MODELFS_MOCK_HUB="$OLDPWD/target/debug/examples/mock_hub" $py -m pytest -q -p no:cacheprovider .
