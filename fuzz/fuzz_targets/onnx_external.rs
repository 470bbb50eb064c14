//! An ONNX model, whatever the Hub serves: [`external_refs`] never panics (nor recurses without
//! bound), and [`regions_in`] turns what it finds into non-empty, distinct ranges inside the
//! file, naming only tensors of the file asked for, in reference order.

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use modelfs::formats::onnx::{external_refs, regions_in};

/// The location as `regions_in` compares it: without leading "./".
fn normalized(mut s: &str) -> &str {
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let Ok(refs) = external_refs(data) else { return };
    // Every ref takes at least a few bytes of the model: the count is bounded by the input.
    assert!(refs.len() <= data.len());
    let locations: HashSet<&str> = refs.iter().map(|r| r.location.as_str()).collect();
    for location in locations {
        for size in [0, 1 << 12, u64::MAX] {
            let regions = regions_in(&refs, location, size);
            let mut seen = HashSet::new();
            let mut next = 0;
            for t in &regions {
                assert!(t.range.start < t.range.end && t.range.end <= size, "{t:?}");
                assert!(seen.insert(t.range.clone()), "{t:?} twice");
                let i = refs[next..]
                    .iter()
                    .position(|r| {
                        r.tensor == t.name && normalized(&r.location) == normalized(location)
                    })
                    .expect("a region comes from a later ref of this file");
                next += i + 1;
            }
        }
    }
});
