#!/usr/bin/env bash
# Run every cargo-fuzz target of fuzz/ for SECONDS each (default 15); fail on the first crash,
# panic, timeout or out-of-memory. Works on a stable toolchain: cargo-fuzz needs `-Z` flags,
# which RUSTC_BOOTSTRAP=1 unlocks. No sanitizer by default (ASan roughly doubles the build and
# slows each run; every target here is safe Rust, so it would find little):
# FUZZ_SANITIZER=address to use it anyway.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# The build goes to fuzz/target, never to the main target dir. The corpus grown by a run is in
# fuzz/corpus/<target> (not committed); each run also starts from the committed seeds in
# fuzz/seeds/<target>. A crash leaves its input in fuzz/artifacts/<target>/; replay it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> --sanitizer none <file>` from fuzz/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-15}"
shift || true
sanitizer="${FUZZ_SANITIZER:-none}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# One build of every target first (one cargo invocation shares the dependency builds), so the
# runs below only link, and the build time is reported on its own.
start=$(date +%s)
cargo fuzz build --sanitizer "$sanitizer" --target-dir target
echo "fuzz.sh: build took $(( $(date +%s) - start )) s" >&2

for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    dict=()
    [ -f "$t.dict" ] && dict=("-dict=$t.dict")
    echo "fuzz.sh: $t for ${seconds} s" >&2
    # -timeout: one input taking over 10 s is a hang (every target is linear in its input);
    # -rss_limit_mb: libFuzzer's default, spelled out because a hostile page must stay bounded;
    # -max_len: large enough for a page of a few hundred entries.
    # libFuzzer's progress lines go to a log; a failure prints its tail (the crash and the
    # artifact path), a success its final stats.
    log="target/fuzz-$t.log"
    if ! cargo fuzz run --sanitizer "$sanitizer" --target-dir target "$t" "corpus/$t" "seeds/$t" \
        -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz.sh: $t FAILED; input saved under fuzz/artifacts/$t/, full log in fuzz/$log" >&2
        exit 1
    fi
    grep -E '^(Done|stat::(number_of_executed_units|peak_rss_mb|new_units_added))' "$log" >&2 || true
done
echo "fuzz.sh: all ${#targets[@]} targets ran ${seconds} s each without a crash" >&2
