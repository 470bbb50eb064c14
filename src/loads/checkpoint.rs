//! Which files a loader reads one after another with a given one: the shards of a sharded
//! checkpoint, so that a shard's plan can start the next shard's while the loader is still on
//! this one (doc/DESIGN.md, "Sharded checkpoints"). A safetensors checkpoint lists its shards
//! in its `*.safetensors.index.json`; a split GGUF says so only in its file names.

use std::sync::Arc;

use super::{parent, Kind, Loads, Place};
use crate::formats;
use crate::manifest::ContentId;

/// The shards of a checkpoint, as a loader takes them.
pub(super) struct Checkpoint {
    /// Their paths in the snapshot, in the loader's order.
    pub(super) shards: Vec<String>,
    /// Their contents: a plan for any shard goes on while one of them is open.
    pub(super) contents: Arc<[ContentId]>,
}

impl Loads {
    /// The shards of the checkpoint `place`'s file is one of, in the order a loader takes
    /// them: a safetensors shard's from the `*.safetensors.index.json` next to it that lists
    /// it (sorted, as transformers and vLLM open them), a split GGUF's from its name (split
    /// order, as llama.cpp maps them).
    pub(super) async fn checkpoint_of(self: &Arc<Self>, place: &Place) -> Option<Checkpoint> {
        let shards = match Kind::of(place)? {
            Kind::Safetensors => self.indexed_shards(place).await?,
            Kind::Gguf => gguf_splits(place)?,
            Kind::MaybeOnnxData => return None,
        };
        let contents =
            shards.iter().filter_map(|p| place.sibling(p)?.file()).map(|f| f.content()).collect();
        Some(Checkpoint { shards, contents })
    }

    /// The shards the `*.safetensors.index.json` next to `place`'s file that lists it names.
    async fn indexed_shards(self: &Arc<Self>, place: &Place) -> Option<Vec<String>> {
        let path = place.path().to_owned();
        let (dir, name) = (parent(&path), file_name(&path));
        let indexes =
            place.snap.manifest.files.iter().enumerate().filter(|(_, f)| {
                f.path.ends_with(".safetensors.index.json") && parent(&f.path) == dir
            });
        for (index, entry) in indexes {
            let Some(file) = place.snap.file_ref(index) else { continue };
            let Some(bytes) = self.whole(&file).await else { continue };
            match formats::shards::parse_index(&bytes) {
                Ok(shards) if shards.iter().any(|s| s == name) => {
                    return Some(shards.iter().map(|s| join(dir, s)).collect());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(path = %entry.path, error = %e, "checkpoint index not read")
                }
            }
        }
        None
    }
}

/// The splits of the split GGUF `place`'s file is one of, if its name says it is one and every
/// split is in the snapshot (a loader would fail on a missing one, and so would its plan).
fn gguf_splits(place: &Place) -> Option<Vec<String>> {
    let path = place.path();
    let split = formats::shards::GgufSplit::parse(file_name(path))?;
    // More splits than files: some are missing (and a name cannot make this allocate more).
    if split.count as usize > place.snap.manifest.files.len() {
        return None;
    }
    let dir = parent(path);
    let paths: Vec<String> = (1..=split.count).map(|no| join(dir, &split.name(no))).collect();
    paths.iter().all(|p| place.sibling(p).is_some()).then_some(paths)
}

/// `name` in the directory `dir` of a snapshot (`""`: its root).
fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// The last component of `path`.
fn file_name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::snapshot::Snapshot;
    use crate::manifest::{FileEntry, FileHash, Manifest, RepoId};

    /// The place of `path` in a snapshot of `paths`.
    fn place(paths: &[&str], path: &str) -> Place {
        let files = paths
            .iter()
            .map(|p| FileEntry { path: (*p).into(), size: 1, hash: FileHash::Lfs([1; 32]) })
            .collect();
        let manifest = Manifest::build(RepoId::new("o", "m"), "0".repeat(40), None, files);
        let snap = Arc::new(Snapshot::new(manifest));
        let index = snap.manifest.files.iter().position(|f| f.path == path).unwrap();
        Place { snap, index }
    }

    #[test]
    fn a_split_gguf_is_its_splits_in_order_only_when_all_are_there() {
        let all = ["q/m-00001-of-00003.gguf", "q/m-00002-of-00003.gguf", "q/m-00003-of-00003.gguf"];
        let mut listed = all.to_vec();
        listed.extend(["m-00001-of-00002.gguf", "q/other.gguf", "config.json"]);
        for path in all {
            assert_eq!(gguf_splits(&place(&listed, path)).unwrap(), all, "{path}");
        }
        // Split 2 is missing: llama.cpp would refuse the model, so nothing is chained.
        let gap = [all[0], all[2]];
        assert_eq!(gguf_splits(&place(&gap, all[0])), None);
        // A name that says 99999 splits in a snapshot of three files: no list is built.
        let many = ["m-00001-of-99999.gguf", "a", "b"];
        assert_eq!(gguf_splits(&place(&many, many[0])), None);
        // A plain GGUF, and a split whose other half is not in the snapshot.
        assert_eq!(gguf_splits(&place(&listed, "q/other.gguf")), None);
        assert_eq!(gguf_splits(&place(&listed, "m-00001-of-00002.gguf")), None);
    }

    #[test]
    fn names_and_directories() {
        assert_eq!((file_name("a/b/c.gguf"), file_name("c.gguf")), ("c.gguf", "c.gguf"));
        assert_eq!((join("", "x"), join("a/b", "x")), ("x".to_owned(), "a/b/x".to_owned()));
    }
}
