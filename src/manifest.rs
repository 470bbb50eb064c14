//! What a repo contains at one commit: the [`Manifest`], and the identifiers it is made of.
//!
//! A manifest is the unit of offline operation: once it is in the store, the repo can be
//! listed, stat'ed and (for cached chunks) read without any network. Files are identified
//! by content ([`ContentId`]), not by path, so the same bytes reached through several repos,
//! revisions or quant views are stored once.

use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `org/name` of a model repo. Both parts are validated by [`crate::names`] before one is built
/// from user input.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoId {
    pub org: String,
    pub name: String,
}

impl RepoId {
    pub fn new(org: impl Into<String>, name: impl Into<String>) -> Self {
        Self { org: org.into(), name: name.into() }
    }

    /// Parse `org/name` (as on the command line). Returns `None` unless both parts are valid.
    pub fn parse(s: &str) -> Option<Self> {
        let (org, name) = s.split_once('/')?;
        (crate::names::valid_org(org) && crate::names::valid_repo(name))
            .then(|| Self::new(org, name))
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.org, self.name)
    }
}

/// How the Hub identifies a file's bytes, and therefore how they are verified.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileHash {
    /// An LFS file: the sha256 of its contents (the Hub's `lfs.oid`).
    Lfs([u8; 32]),
    /// A file stored in git: its blob oid, `sha1("blob <size>\0" + contents)`.
    Git([u8; 20]),
}

/// The key under which a file's chunks are stored: a sha256 that names the content.
/// For LFS files it is the LFS oid itself; for git files, `sha256("git-blob:" + oid)`,
/// so the two kinds can never collide.
#[derive(
    Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct ContentId(pub [u8; 32]);

impl ContentId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex()[..16])
    }
}

impl FileHash {
    pub fn content_id(&self) -> ContentId {
        match self {
            FileHash::Lfs(sha) => ContentId(*sha),
            FileHash::Git(oid) => {
                let mut h = Sha256::new();
                h.update(b"git-blob:");
                h.update(oid);
                ContentId(h.finalize().into())
            }
        }
    }

    /// The LFS sha256 in hex, for the `sha256` xattr; git-stored files have none.
    pub fn lfs_sha256_hex(&self) -> Option<String> {
        match self {
            FileHash::Lfs(sha) => Some(hex::encode(sha)),
            FileHash::Git(_) => None,
        }
    }
}

/// One file of a repo at a commit.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Path in the repo, `/`-separated, validated by [`crate::names::valid_repo_path`].
    pub path: String,
    pub size: u64,
    pub hash: FileHash,
}

/// A repo at one commit, as stored.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub repo: RepoId,
    /// 40 lowercase hex digits.
    pub commit: String,
    pub pipeline_tag: Option<String>,
    /// Sorted by path, no duplicates.
    pub files: Vec<FileEntry>,
}

/// Stored form: one version byte, then the rkyv archive. A version this build does not know
/// is read as "not stored" (the manifest is fetched again), never as garbage.
const MANIFEST_FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest record has format {0}, this build reads {MANIFEST_FORMAT}")]
    UnknownFormat(u8),
    #[error("manifest record is corrupt: {0}")]
    Corrupt(String),
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .expect("serializing an in-memory manifest cannot fail");
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(MANIFEST_FORMAT);
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let (&format, body) =
            bytes.split_first().ok_or_else(|| ManifestError::Corrupt("empty".into()))?;
        if format != MANIFEST_FORMAT {
            return Err(ManifestError::UnknownFormat(format));
        }
        // rkyv needs its input aligned; store values are not.
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
        aligned.extend_from_slice(body);
        let manifest = rkyv::from_bytes::<Manifest, rkyv::rancor::Error>(&aligned)
            .map_err(|e| ManifestError::Corrupt(e.to_string()))?;
        // A record is trusted no more than a listing: a damaged or forged one must not put a
        // path outside the repo, or two entries under one name, into the namespace.
        let sorted_unique = manifest.files.windows(2).all(|w| w[0].path < w[1].path);
        if let Some(bad) = manifest.files.iter().find(|f| !crate::names::valid_repo_path(&f.path)) {
            return Err(ManifestError::Corrupt(format!("unsafe path {:?}", bad.path)));
        }
        if !sorted_unique {
            return Err(ManifestError::Corrupt("paths not sorted and unique".into()));
        }
        Ok(manifest)
    }

    /// Build a manifest from a tree listing, whatever order or quality it came in: files with
    /// unsafe paths are dropped, a path listed twice keeps its first entry, and a file whose
    /// path is also a directory of another file is dropped (both cannot be presented). Every
    /// drop is logged. The result is sorted by path.
    pub fn build(
        repo: RepoId,
        commit: String,
        pipeline_tag: Option<String>,
        mut files: Vec<FileEntry>,
    ) -> Self {
        files.retain(|f| {
            let ok = crate::names::valid_repo_path(&f.path);
            if !ok {
                tracing::warn!(repo = %repo, path = ?f.path, "skipping file with an unsafe path");
            }
            ok
        });
        // Stable sort: of duplicates, the first listed stays first and is kept.
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files.dedup_by(|later, first| {
            let dup = later.path == first.path;
            if dup {
                tracing::warn!(repo = %repo, path = %later.path, "skipping duplicate path");
            }
            dup
        });
        // A file whose path is also a directory: some later path starts with `path/`. The list
        // is sorted, so the first path at or after `path/` tells; one binary search per file
        // keeps this O(n log n) however deep the paths are (collecting every directory prefix
        // is quadratic in depth, and a hostile listing can be 2,000 levels deep).
        let conflicts: std::collections::HashSet<String> = files
            .iter()
            .filter(|f| {
                let dir = format!("{}/", f.path);
                let i = files.partition_point(|g| g.path < dir);
                files.get(i).is_some_and(|g| g.path.starts_with(&dir))
            })
            .map(|f| f.path.clone())
            .collect();
        for path in &conflicts {
            tracing::warn!(repo = %repo, path = %path, "skipping file that is also a directory");
        }
        files.retain(|f| !conflicts.contains(&f.path));
        Self { repo, commit, pipeline_tag, files }
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.binary_search_by(|f| f.path.as_str().cmp(path)).ok().map(|i| &self.files[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Manifest {
        Manifest {
            repo: RepoId::new("org", "repo"),
            commit: "a".repeat(40),
            pipeline_tag: Some("text-generation".into()),
            files: vec![
                FileEntry { path: "config.json".into(), size: 10, hash: FileHash::Git([1; 20]) },
                FileEntry {
                    path: "onnx/model.onnx".into(),
                    size: 1 << 40,
                    hash: FileHash::Lfs([2; 32]),
                },
            ],
        }
    }

    #[test]
    fn manifest_round_trips() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn unknown_format_and_garbage_are_errors() {
        let mut bytes = sample().encode();
        bytes[0] = 99;
        assert!(matches!(Manifest::decode(&bytes), Err(ManifestError::UnknownFormat(99))));
        assert!(Manifest::decode(&[]).is_err());
        assert!(Manifest::decode(&[MANIFEST_FORMAT, 1, 2, 3]).is_err());
    }

    #[test]
    fn content_ids_of_lfs_and_git_never_collide() {
        let lfs = FileHash::Lfs([7; 32]).content_id();
        assert_eq!(lfs.0, [7; 32]);
        let git = FileHash::Git([7; 20]).content_id();
        assert_ne!(git.0[..20], [7; 20]);
    }

    #[test]
    fn build_sorts_dedups_and_drops_unsafe_and_conflicting_paths() {
        let f = |p: &str, n: u8| FileEntry {
            path: p.into(),
            size: n as u64,
            hash: FileHash::Git([n; 20]),
        };
        let m = Manifest::build(
            RepoId::new("o", "r"),
            "c".repeat(40),
            None,
            vec![
                f("b.txt", 1),
                f("a/x.bin", 2),
                f("b.txt", 3),
                f("../etc/passwd", 4),
                f("/abs", 5),
                f("a", 6),
                f("c//d", 7),
            ],
        );
        let got: Vec<(&str, u64)> = m.files.iter().map(|e| (e.path.as_str(), e.size)).collect();
        assert_eq!(got, vec![("a/x.bin", 2), ("b.txt", 1)]);
    }

    proptest! {
        #[test]
        fn truncated_records_never_panic(cut in 0usize..400) {
            let bytes = sample().encode();
            let cut = cut.min(bytes.len());
            let _ = Manifest::decode(&bytes[..cut]);
        }
    }
}
