//! A `*.safetensors.index.json`, whatever the Hub serves: [`parse_index`] never panics, and
//! what it accepts is a strictly sorted list of relative paths that stay inside the repo.

#![no_main]

use libfuzzer_sys::fuzz_target;
use modelfs::formats::shards::parse_index;

fuzz_target!(|data: &[u8]| {
    let Ok(shards) = parse_index(data) else { return };
    assert!(shards.windows(2).all(|w| w[0] < w[1]), "{shards:?}");
    for s in &shards {
        assert!(!s.starts_with('/') && !s.contains('\0'), "{s:?}");
        assert!(s.split('/').all(|c| !c.is_empty() && c != "." && c != ".."), "{s:?}");
    }
});
