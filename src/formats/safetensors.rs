//! The safetensors header: an 8-byte little-endian length N, then N bytes of JSON mapping each
//! tensor name to its dtype, shape and `data_offsets` (relative to the end of the header), plus
//! an optional `__metadata__` object. A loader (safetensors, transformers, vLLM) reads this
//! header first, then mmaps the file and touches each tensor's bytes where the header says they
//! are; [`parse`] gives those ranges so the planner can fetch them before the loader asks.

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::{FormatError, Layout, Tensor};

/// The largest JSON header accepted, 100 MiB: the limit of the `safetensors` crate itself
/// (`MAX_HEADER_SIZE`), so every file its loaders open passes here, and a length above it is
/// a damaged or hostile file rather than a big model.
pub const MAX_HEADER: u64 = 100 * 1024 * 1024;

const FORMAT: &str = "safetensors";

/// The 8-byte header length before the JSON.
const LEN_BYTES: u64 = 8;

fn malformed(what: impl Into<String>) -> FormatError {
    FormatError::Malformed { format: FORMAT, what: what.into() }
}

/// One tensor's entry. Unknown keys are ignored, as the reference loader does.
#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// The header's entries in the order written, `__metadata__` left out. Read with a visitor
/// rather than into a map so that a name given twice is seen (and refused) instead of one
/// definition silently winning.
struct Entries(Vec<(String, Entry)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                // No capacity from `size_hint`: JSON gives none, and an input count must not
                // size an allocation anyway. Growth is bounded by the header's length.
                let mut out = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if name == "__metadata__" {
                        map.next_value::<IgnoredAny>()?;
                    } else {
                        out.push((name, map.next_value::<Entry>()?));
                    }
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Bytes per element of the dtypes the safetensors crate defines with a whole-byte size. Other
/// names (sub-byte floats, dtypes added later) get no size check: the range is still taken as
/// written.
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "F64" | "I64" | "U64" => 8,
        _ => return None,
    })
}

/// The layout of a safetensors file of `file_size` bytes from its first bytes `prefix`.
///
/// `NeedMore(8)` until the length is in `prefix`, then `NeedMore(8 + N)` until the JSON is: at
/// most two rounds. Every tensor's bytes must lie inside the file, match `dtype` × `shape`
/// where the dtype's size is known, and not overlap another's; a name may appear once.
pub fn parse(prefix: &[u8], file_size: u64) -> Result<Layout, FormatError> {
    if file_size < LEN_BYTES {
        return Err(malformed(format!(
            "a {file_size}-byte file cannot hold the 8-byte header length"
        )));
    }
    let Some(len_bytes) = prefix.get(..LEN_BYTES as usize) else {
        return Err(FormatError::NeedMore(LEN_BYTES));
    };
    let mut n = [0u8; 8];
    n.copy_from_slice(len_bytes);
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER {
        return Err(malformed(format!("header length {n} is over the {MAX_HEADER}-byte limit")));
    }
    let header_len = LEN_BYTES + n;
    if header_len > file_size {
        return Err(malformed(format!(
            "a {n}-byte header does not fit in a {file_size}-byte file"
        )));
    }
    // header_len <= 8 + MAX_HEADER, which fits a usize on every supported target.
    let Some(json) = prefix.get(LEN_BYTES as usize..header_len as usize) else {
        return Err(FormatError::NeedMore(header_len));
    };
    let Entries(entries) =
        serde_json::from_slice(json).map_err(|e| malformed(format!("header JSON: {e}")))?;

    let mut tensors = Vec::with_capacity(entries.len());
    for (name, e) in entries {
        let (begin, end) = e.data_offsets;
        if begin > end {
            return Err(malformed(format!(
                "{name:?}: data_offsets [{begin}, {end}] end before they begin"
            )));
        }
        let range = match (header_len.checked_add(begin), header_len.checked_add(end)) {
            (Some(s), Some(t)) if t <= file_size => s..t,
            _ => {
                return Err(malformed(format!(
                    "{name:?}: data_offsets [{begin}, {end}] run past the {file_size}-byte file"
                )))
            }
        };
        if let Some(size) = dtype_size(&e.dtype) {
            // A zero dimension makes the product zero even if the others would overflow.
            let count = if e.shape.contains(&0) {
                Some(0)
            } else {
                e.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
            };
            if count.and_then(|c| c.checked_mul(size)) != Some(end - begin) {
                return Err(malformed(format!(
                    "{name:?}: {} bytes for {} of shape {:?}",
                    end - begin,
                    e.dtype,
                    e.shape
                )));
            }
        }
        tensors.push(Tensor { name, range });
    }

    let mut names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(malformed(format!("tensor {:?} is defined twice", w[0])));
    }
    drop(names);

    sort_and_check(&mut tensors).map_err(malformed)?;
    Ok(Layout { header_len, tensors })
}

/// Sort into file order and refuse overlaps. Ties on `start` go by `end`, then name: an empty
/// tensor at the start of a non-empty one sorts first, so whether a layout counts as
/// overlapping never depends on the names.
pub(super) fn sort_and_check(tensors: &mut [Tensor]) -> Result<(), String> {
    tensors.sort_unstable_by(|a, b| {
        (a.range.start, a.range.end, &a.name).cmp(&(b.range.start, b.range.end, &b.name))
    });
    match tensors.windows(2).find(|w| w[1].range.start < w[0].range.end) {
        Some(w) => Err(format!(
            "tensors {:?} {:?} and {:?} {:?} overlap",
            w[0].name, w[0].range, w[1].name, w[1].range
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DTYPES: &[(&str, u64)] = &[
        ("BOOL", 1),
        ("U8", 1),
        ("F8_E4M3", 1),
        ("I16", 2),
        ("BF16", 2),
        ("F16", 2),
        ("I32", 4),
        ("F32", 4),
        ("F64", 8),
        ("U64", 8),
    ];

    /// A tensor to encode: dtype index into DTYPES, or None for a dtype unknown to the parser
    /// (then `unknown_len` bytes), its shape, and the gap before its bytes.
    #[derive(Debug, Clone)]
    struct Spec {
        name: String,
        dtype: Option<usize>,
        shape: Vec<u64>,
        unknown_len: u64,
        gap: u64,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            "[a-z.\"\\\\é]{0,6}",
            proptest::option::weighted(0.9, 0..DTYPES.len()),
            proptest::collection::vec(0u64..4, 0..4),
            0u64..9,
            prop_oneof![3 => Just(0u64), 1 => 1u64..16],
        )
            .prop_map(|(name, dtype, shape, unknown_len, gap)| Spec {
                name,
                dtype,
                shape,
                unknown_len,
                gap,
            })
    }

    /// Specs (made unique by an index prefix), the order the JSON lists them in, whether to
    /// write `__metadata__`, trailing padding spaces, and bytes after the last tensor.
    fn file() -> impl Strategy<Value = (Vec<Spec>, Vec<usize>, bool, usize, u64)> {
        proptest::collection::vec(spec(), 0..8).prop_flat_map(|specs| {
            let order: Vec<usize> = (0..specs.len()).collect();
            (Just(specs), Just(order).prop_shuffle(), any::<bool>(), 0usize..8, 0u64..32)
        })
    }

    /// A whole file (data zeroed) for `specs`, tensors stored in spec order, the JSON listing
    /// them in `order`; and the layout it must parse to.
    fn encode(
        specs: &[Spec],
        order: &[usize],
        metadata: bool,
        pad: usize,
        tail: u64,
    ) -> (Vec<u8>, Layout) {
        let mut pos = 0u64;
        let mut placed = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let (dtype, len) = match s.dtype {
                Some(d) => (DTYPES[d].0.to_owned(), DTYPES[d].1 * s.shape.iter().product::<u64>()),
                None => ("X9_UNKNOWN".to_owned(), s.unknown_len),
            };
            pos += s.gap;
            placed.push((format!("{i}{}", s.name), dtype, pos, pos + len));
            pos += len;
        }
        let mut entries = Vec::new();
        if metadata {
            entries.push(r#""__metadata__":{"format":"pt","k":"v"}"#.to_owned());
        }
        for &i in order {
            let (name, dtype, begin, end) = &placed[i];
            entries.push(format!(
                r#"{}:{{"dtype":"{dtype}","shape":{},"data_offsets":[{begin},{end}]}}"#,
                serde_json::to_string(name).unwrap(),
                serde_json::to_string(&specs[i].shape).unwrap(),
            ));
        }
        let mut json = format!("{{{}}}", entries.join(","));
        json.push_str(&" ".repeat(pad));
        let header_len = 8 + json.len() as u64;
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes.resize((header_len + pos + tail) as usize, 0);
        let mut tensors: Vec<Tensor> = placed
            .into_iter()
            .map(|(name, _, b, e)| Tensor { name, range: header_len + b..header_len + e })
            .collect();
        sort_and_check(&mut tensors).unwrap();
        (bytes, Layout { header_len, tensors })
    }

    proptest! {
        #[test]
        fn parse_recovers_the_encoded_layout(
            (specs, order, metadata, pad, tail) in file()
        ) {
            let (bytes, want) = encode(&specs, &order, metadata, pad, tail);
            let got = parse(&bytes, bytes.len() as u64).unwrap();
            got.check(bytes.len() as u64).unwrap();
            prop_assert_eq!(&got, &want);
            // The header alone is enough.
            prop_assert_eq!(parse(&bytes[..want.header_len as usize], bytes.len() as u64), Ok(want));
        }

        #[test]
        fn every_truncation_asks_for_more_and_the_loop_ends(
            (specs, order, metadata, pad, tail) in file()
        ) {
            let (bytes, want) = encode(&specs, &order, metadata, pad, tail);
            for cut in 0..want.header_len as usize {
                let (got, rounds) = crate::formats::parse_loop(parse, &bytes, cut);
                prop_assert_eq!(got, Ok(want.clone()));
                prop_assert!(rounds <= 3, "{} rounds from {}", rounds, cut);
            }
        }

        #[test]
        fn mutated_files_never_panic_and_ok_keeps_the_invariants(
            (specs, order, metadata, pad, tail) in file(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let (mut bytes, _) = encode(&specs, &order, metadata, pad, tail);
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            for size in [bytes.len() as u64, bytes.len() as u64 + 1000] {
                match parse(&bytes, size) {
                    Ok(l) => l.check(size).unwrap(),
                    Err(FormatError::NeedMore(n)) => prop_assert!(n > bytes.len() as u64 && n <= size),
                    Err(FormatError::Malformed { .. }) => {}
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), extra in 0u64..100) {
            let size = bytes.len() as u64 + extra;
            match parse(&bytes, size) {
                Ok(l) => l.check(size).unwrap(),
                Err(FormatError::NeedMore(n)) => prop_assert!(n > bytes.len() as u64 && n <= size),
                Err(FormatError::Malformed { .. }) => {}
            }
        }
    }

    fn file_with(json: &str, data: usize) -> Vec<u8> {
        let mut f = (json.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(json.as_bytes());
        f.resize(f.len() + data, 0);
        f
    }

    #[test]
    fn golden() {
        let json = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"__metadata__":{"format":"pt"},"a":{"dtype":"U8","shape":[2,2],"data_offsets":[0,4]},"e":{"dtype":"I64","shape":[0,5],"data_offsets":[12,12]}}"#;
        assert_eq!(json.len(), 197);
        let file = file_with(json, 12);
        let t = |name: &str, range| Tensor { name: name.to_owned(), range };
        assert_eq!(
            parse(&file, 217),
            Ok(Layout {
                header_len: 205,
                tensors: vec![t("a", 205..209), t("b", 209..217), t("e", 217..217)],
            })
        );
        assert_eq!(parse(&file[..5], 217), Err(FormatError::NeedMore(8)));
        assert_eq!(parse(&file[..100], 217), Err(FormatError::NeedMore(205)));
    }

    fn assert_malformed(file: &[u8], size: u64, needle: &str) {
        match parse(file, size) {
            Err(FormatError::Malformed { format, what }) => {
                assert_eq!(format, "safetensors");
                assert!(what.contains(needle), "{what:?} lacks {needle:?}");
            }
            other => panic!("{other:?}, wanted Malformed({needle})"),
        }
    }

    #[test]
    fn malformed_headers() {
        let one = |dtype: &str, shape: &str, b: u64, e: u64| {
            format!(r#"{{"t":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{b},{e}]}}}}"#)
        };
        // dtype × shape disagrees with the byte length.
        let f = file_with(&one("F16", "[3]", 0, 4), 8);
        assert_malformed(&f, f.len() as u64, "4 bytes for F16");
        // Product overflows u64.
        let f = file_with(&one("U8", "[4294967296,4294967296]", 0, 4), 8);
        assert_malformed(&f, f.len() as u64, "bytes for U8");
        // End before begin.
        let f = file_with(&one("X", "[]", 4, 2), 8);
        assert_malformed(&f, f.len() as u64, "end before");
        // Past the end of the file, and an overflowing offset.
        let f = file_with(&one("U8", "[9]", 0, 9), 8);
        assert_malformed(&f, f.len() as u64, "run past");
        let f = file_with(&one("X", "[]", 0, u64::MAX), 8);
        assert_malformed(&f, u64::MAX, "run past");
        // Overlap.
        let f = file_with(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}}"#,
            8,
        );
        assert_malformed(&f, f.len() as u64, "overlap");
        // An empty tensor inside another's bytes.
        let f = file_with(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[0],"data_offsets":[2,2]}}"#,
            8,
        );
        assert_malformed(&f, f.len() as u64, "overlap");
        // A name twice.
        let f = file_with(
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
            8,
        );
        assert_malformed(&f, f.len() as u64, "twice");
        // Not JSON, not an object, a missing field, a shape of strings.
        for json in [
            "{",
            "[]",
            r#"{"t":{"dtype":"U8","shape":[1]}}"#,
            r#"{"t":{"dtype":"U8","shape":["1"],"data_offsets":[0,1]}}"#,
        ] {
            let f = file_with(json, 8);
            assert_malformed(&f, f.len() as u64, "header JSON");
        }
        // A header length over the limit, and one past the end of the file, both decided
        // from the first 8 bytes alone.
        assert_malformed(&(MAX_HEADER + 1).to_le_bytes(), 1 << 40, "limit");
        assert_malformed(&1000u64.to_le_bytes(), 500, "does not fit");
        assert_malformed(&u64::MAX.to_le_bytes(), u64::MAX, "limit");
        assert_malformed(b"", 7, "cannot hold");
    }

    #[test]
    fn unknown_dtypes_skip_the_size_check() {
        let f = file_with(r#"{"t":{"dtype":"F4","shape":[7],"data_offsets":[0,5]}}"#, 5);
        let l = parse(&f, f.len() as u64).unwrap();
        assert_eq!(l.tensors[0].range.end - l.tensors[0].range.start, 5);
    }
}
