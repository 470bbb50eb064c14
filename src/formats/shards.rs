//! The shard list of a sharded safetensors checkpoint: `model.safetensors.index.json` maps
//! every tensor name to the shard file holding it (`"weight_map"`). transformers and vLLM
//! read this index first, then open the distinct shards in sorted order; [`parse_index`] gives
//! that list so the planner can fetch each shard's header (and then its tensors) in the order
//! the loader will want them.
//!
//! A split GGUF has no index: its files are named `<prefix>-00001-of-00003.gguf` and so on
//! (the names `gguf-split` writes and llama.cpp derives from the first split's), and llama.cpp
//! maps them in split order. [`GgufSplit`] reads that name.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::FormatError;

const FORMAT: &str = "safetensors index";

fn malformed(what: impl Into<String>) -> FormatError {
    FormatError::Malformed { format: FORMAT, what: what.into() }
}

/// The index; `metadata` (total size and the like) and anything else are ignored.
#[derive(Deserialize)]
struct Index {
    weight_map: Option<BTreeMap<String, String>>,
}

/// Whether `path` is a relative path that stays inside the repo's directory: not absolute,
/// no empty, `.` or `..` component, no NUL.
fn relative_inside(path: &str) -> bool {
    !path.starts_with('/')
        && !path.contains('\0')
        && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The distinct shard file names of an index, sorted: the order transformers and vLLM load
/// them in. Each is a path relative to the index's directory; one that is absolute or could
/// leave the directory makes the whole index malformed, since a loader would refuse it too.
pub fn parse_index(json: &[u8]) -> Result<Vec<String>, FormatError> {
    let index: Index =
        serde_json::from_slice(json).map_err(|e| malformed(format!("index JSON: {e}")))?;
    let map = index.weight_map.ok_or_else(|| malformed("no weight_map"))?;
    let shards: BTreeSet<String> = map.into_values().collect();
    if let Some(bad) = shards.iter().find(|s| !relative_inside(s)) {
        return Err(malformed(format!("shard {bad:?} is not a relative path inside the repo")));
    }
    Ok(shards.into_iter().collect())
}

/// One file of a split GGUF, from its name: `<prefix>-<no>-of-<count>.gguf`, both numbers
/// five digits (llama.cpp's `%05d`), `1 <= no <= count`, `count >= 2` (a "split" of one file
/// is a plain GGUF: nothing comes after it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgufSplit<'a> {
    pub prefix: &'a str,
    pub no: u32,
    pub count: u32,
}

impl<'a> GgufSplit<'a> {
    /// Digits in each number of a split's name.
    const DIGITS: usize = 5;

    /// The split `name` (a file name, no directory) is, if it names one.
    pub fn parse(name: &'a str) -> Option<Self> {
        let stem = name.strip_suffix(".gguf")?;
        // "<prefix>-NNNNN-of-MMMMM": the fixed tail is 5 + 4 + 5 bytes after the prefix's dash.
        let tail = Self::DIGITS + "-of-".len() + Self::DIGITS;
        let split_at = stem.len().checked_sub(tail + 1)?;
        let (prefix, rest) = (stem.get(..split_at)?, stem.get(split_at..)?);
        let rest = rest.strip_prefix('-')?;
        let (no, count) = rest.split_once("-of-")?;
        let number = |s: &str| {
            (s.len() == Self::DIGITS && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u32>().ok())
                .flatten()
        };
        let (no, count) = (number(no)?, number(count)?);
        (!prefix.is_empty() && count >= 2 && (1..=count).contains(&no)).then_some(GgufSplit {
            prefix,
            no,
            count,
        })
    }

    /// The name of split `no` (1-based) of the same file.
    pub fn name(&self, no: u32) -> String {
        format!("{}-{no:05}-of-{:05}.gguf", self.prefix, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn index_json(map: &[(String, String)]) -> String {
        let entries: Vec<String> = map
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}: {}",
                    serde_json::to_string(k).unwrap(),
                    serde_json::to_string(v).unwrap()
                )
            })
            .collect();
        format!(
            r#"{{"metadata": {{"total_size": 1234, "format": "pt"}}, "weight_map": {{{}}}}}"#,
            entries.join(", ")
        )
    }

    proptest! {
        #[test]
        fn parse_gives_the_distinct_shards_sorted(
            tensors in proptest::collection::btree_map("[a-z.0-9]{1,12}", 1usize..6, 0..20),
            total in 1usize..6,
        ) {
            let name = |i: usize| format!("sub/model-{i:05}-of-{total:05}.safetensors");
            let map: Vec<(String, String)> =
                tensors.iter().map(|(k, &i)| (k.clone(), name(i))).collect();
            let want: Vec<String> =
                map.iter().map(|(_, v)| v.clone()).collect::<BTreeSet<_>>().into_iter().collect();
            prop_assert_eq!(parse_index(index_json(&map).as_bytes()), Ok(want));
        }

        #[test]
        fn arbitrary_input_never_panics_and_ok_is_sorted_and_safe(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            values in proptest::collection::vec("[a-z./]{0,8}", 0..6),
        ) {
            let _ = parse_index(&bytes);
            let map: Vec<(String, String)> =
                values.into_iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect();
            if let Ok(shards) = parse_index(index_json(&map).as_bytes()) {
                prop_assert!(shards.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(shards.iter().all(|s| relative_inside(s)));
            }
        }
    }

    proptest! {
        #[test]
        fn a_split_s_name_reads_back_as_itself(
            prefix in "[A-Za-z0-9._-]{1,24}",
            count in 2u32..100_000,
            at in any::<u32>(),
        ) {
            let no = 1 + at % count;
            let split = GgufSplit { prefix: &prefix, no: 1, count };
            let name = split.name(no);
            prop_assert_eq!(GgufSplit::parse(&name), Some(GgufSplit { prefix: &prefix, no, count }));
        }

        #[test]
        fn any_name_parses_without_panicking_into_a_split_that_names_itself(
            name in "[a-z0-9-]{0,12}(-[0-9]{4,6}-of-[0-9]{4,6})?(\\.gguf)?",
        ) {
            if let Some(split) = GgufSplit::parse(&name) {
                prop_assert_eq!(split.name(split.no), name);
            }
        }
    }

    #[test]
    fn gguf_split_names() {
        let split = GgufSplit::parse("Qwen2.5-7B-Instruct-Q4_K_M-00002-of-00003.gguf").unwrap();
        assert_eq!(split, GgufSplit { prefix: "Qwen2.5-7B-Instruct-Q4_K_M", no: 2, count: 3 });
        assert_eq!(split.name(1), "Qwen2.5-7B-Instruct-Q4_K_M-00001-of-00003.gguf");
        for name in [
            "model.gguf",
            "model-00001-of-00001.gguf",
            "model-00000-of-00003.gguf",
            "model-00004-of-00003.gguf",
            "model-0001-of-00003.gguf",
            "model-00001-of-000003.gguf",
            "model-00001-of-00003.safetensors",
            "-00001-of-00003.gguf",
            "00001-of-00003.gguf",
            "model-0000a-of-00003.gguf",
            "model-00001_of-00003.gguf",
            "é00001-of-00003.gguf",
        ] {
            assert_eq!(GgufSplit::parse(name), None, "{name}");
        }
        let split = GgufSplit::parse("é-00003-of-00003.gguf");
        assert_eq!(split, Some(GgufSplit { prefix: "é", no: 3, count: 3 }));
    }

    #[test]
    fn golden() {
        let json = br#"{
          "metadata": {"total_size": 16060522496},
          "weight_map": {
            "lm_head.weight": "model-00002-of-00002.safetensors",
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "model.layers.0.mlp.down_proj.weight": "model-00001-of-00002.safetensors",
            "model.norm.weight": "model-00002-of-00002.safetensors"
          }
        }"#;
        assert_eq!(
            parse_index(json).unwrap(),
            ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        );
        assert_eq!(parse_index(br#"{"weight_map": {}}"#), Ok(vec![]));
    }

    #[test]
    fn malformed_indexes() {
        let bad = |json: &str, needle: &str| match parse_index(json.as_bytes()) {
            Err(FormatError::Malformed { what, .. }) => {
                assert!(what.contains(needle), "{json}: {what:?} lacks {needle:?}")
            }
            other => panic!("{json}: {other:?}"),
        };
        for shard in [
            "../x.safetensors",
            "/abs.safetensors",
            "a//b",
            "./a",
            "a/.",
            "",
            "a/",
            "a/../b",
            "x\u{0}",
        ] {
            let json = index_json(&[("t".into(), shard.into())]);
            bad(&json, "not a relative path");
        }
        bad(r#"{"metadata": {}}"#, "no weight_map");
        bad(r#"{"weight_map": null}"#, "no weight_map");
        bad(r#"{"weight_map": {"t": 1}}"#, "index JSON");
        bad(r#"{"weight_map": []}"#, "index JSON");
        bad("[]", "index JSON");
        bad("{", "index JSON");
    }
}
