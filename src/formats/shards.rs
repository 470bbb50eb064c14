//! The shard list of a sharded safetensors checkpoint: `model.safetensors.index.json` maps
//! every tensor name to the shard file holding it (`"weight_map"`). transformers and vLLM
//! read this index first, then open the distinct shards in sorted order; [`parse_index`] gives
//! that list so the planner can fetch each shard's header (and then its tensors) in the order
//! the loader will want them.

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
