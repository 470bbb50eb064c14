//! Quant detection over arbitrary file lists. Quant names become directory names under
//! `/<org>/<repo>/`, so besides never panicking, every name must be a safe single path
//! component that is not the `all` view, and the views must agree with `classify`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use modelfs::quant::{classify, quants, Variant, ALL_VIEW, ONNX_DTYPES};

fuzz_target!(|paths: Vec<String>| {
    let found = quants(paths.iter().map(String::as_str));
    for pair in found.windows(2) {
        let (a, b) = (pair[0].to_ascii_lowercase(), pair[1].to_ascii_lowercase());
        assert!(a < b, "quants not sorted and unique, case-insensitively: {pair:?}");
    }
    for q in &found {
        assert!(!q.is_empty() && q.len() <= 255, "{q:?}");
        assert!(!q.contains('/') && !q.contains('\0') && q != "." && q != "..", "{q:?}");
        assert!(!q.eq_ignore_ascii_case(ALL_VIEW), "{q:?}");
        // Spelled as the repo first spells it: some file is of exactly this quant.
        assert!(paths.iter().any(|p| classify(p) == Variant::Quant(q.clone())), "{q:?}");
    }
    for p in &paths {
        let variant = classify(p);
        assert!(variant.shown_in(ALL_VIEW) && variant.shown_in("ALL"));
        match &variant {
            Variant::Quant(q) => {
                assert!(
                    ONNX_DTYPES.contains(&q.as_str()) || p.contains(q.as_str()),
                    "{p:?}: {q:?}"
                );
                // Every quant view a file belongs to is listed, whatever its spelling.
                assert!(found.iter().any(|f| f.eq_ignore_ascii_case(q)), "{p:?}: {q:?}");
                assert!(variant.shown_in(&q.to_ascii_uppercase()));
                for other in &found {
                    assert_eq!(variant.shown_in(other), other.eq_ignore_ascii_case(q));
                }
            }
            Variant::Shared => assert!(found.iter().all(|q| variant.shown_in(q))),
            Variant::Unsorted => assert!(found.iter().all(|q| !variant.shown_in(q))),
        }
        // Matching is ASCII case-insensitive: the same file in capitals is the same variant.
        match (&variant, classify(&p.to_ascii_uppercase())) {
            (Variant::Quant(a), Variant::Quant(b)) => assert!(a.eq_ignore_ascii_case(&b), "{p:?}"),
            (a, b) => assert_eq!(*a, b, "{p:?}"),
        }
    }
});
