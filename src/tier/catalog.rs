//! Repo metadata in the shared tier: which commit a branch named, and what files a commit
//! has, so that a node that never saw a repo can list and read it from the tier while the Hub
//! is down (doc/DESIGN.md, "The shared tier").
//!
//! Two kinds of object, both small JSON documents an operator can read with any S3 tool:
//!
//! - `repos/v1/<org>/<name>/commits/<commit>`: a manifest (every file's path, size and the
//!   Hub's hash), with whether the repo is private or gated. Written once, by the first node
//!   that lists the commit from the Hub: what a commit contains never changes.
//! - `repos/v1/<org>/<name>/refs/<rev>`: the commit a branch or tag resolved to, and when.
//!   Replaced by every node each time the Hub confirms the branch to it, so it is as fresh
//!   as the freshest node; two nodes racing may leave the older answer for one revalidation
//!   interval, which the next confirmation mends.
//!
//! This module reads and writes them; whether a node may serve what it finds (a restricted
//! repo only to a node the Hub allowed before) is decided by the caller, which knows what
//! the node's own store holds (`fs/revisions.rs`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{TierClient, TierError, Write};
use crate::manifest::{FileEntry, FileHash, Manifest, RepoId};
use crate::names;

/// Format tag of a manifest object; a reader that meets another one treats it as absent.
const MANIFEST_FORMAT: &str = "modelfs-manifest/1";
/// Format tag of a ref object.
const REF_FORMAT: &str = "modelfs-ref/1";

/// A repo at a commit as the tier holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierManifest {
    pub manifest: Manifest,
    /// Private or gated on the Hub when the writing node listed it.
    pub restricted: bool,
    /// Not a repo of the Hub: `modelfs import` wrote it (`import.rs`). Its refs in the tier are
    /// the authority, and no node asks the Hub about it.
    pub imported: bool,
}

/// What the tier knows of one revision of a repo.
pub struct Found {
    pub manifest: TierManifest,
    /// Unix seconds when some node's Hub last confirmed the ref (`None` for a commit).
    pub confirmed_at: Option<u64>,
}

/// The tier's repo metadata: lookups, and publication of what this node learnt from the Hub.
pub struct TierCatalog {
    tier: Arc<TierClient>,
    /// Commits whose manifest this process has written (or found) in the tier: each is
    /// written once per process at most, however often its repo is resolved.
    published: Mutex<HashSet<(RepoId, String)>>,
}

#[derive(Serialize, Deserialize)]
struct ManifestObject {
    format: String,
    repo: String,
    commit: String,
    pipeline_tag: Option<String>,
    restricted: bool,
    /// Absent in objects of Hub repos (and in every object written before imports existed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    imported: bool,
    files: Vec<FileObject>,
}

#[derive(Serialize, Deserialize)]
struct FileObject {
    path: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    lfs: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    git: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct RefObject {
    format: String,
    commit: String,
    confirmed_at: u64,
}

fn repo_prefix(repo: &RepoId) -> String {
    // Org and repo names are `[A-Za-z0-9._-]` (crate::names): safe in any object key.
    format!("repos/v1/{}/{}", repo.org, repo.name)
}

/// The key of the manifest of `repo` at `commit`.
pub fn manifest_key(repo: &RepoId, commit: &str) -> String {
    format!("{}/commits/{commit}", repo_prefix(repo))
}

/// The key of the ref `rev` of `repo`. A revision may hold characters that S3 tools and
/// URLs treat specially (`%`, `#`, non-ASCII); each byte outside `[A-Za-z0-9._-]` is written
/// `~XX` (`~` cannot appear in a revision, so the escape is unambiguous).
pub fn ref_key(repo: &RepoId, rev: &str) -> String {
    let mut escaped = String::with_capacity(rev.len());
    for b in rev.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            escaped.push(b as char);
        } else {
            escaped.push_str(&format!("~{b:02X}"));
        }
    }
    format!("{}/refs/{escaped}", repo_prefix(repo))
}

/// The manifest object of `m`.
pub fn encode_manifest(m: &Manifest, restricted: bool, imported: bool) -> Bytes {
    let files = m
        .files
        .iter()
        .map(|f| {
            let (lfs, git) = match f.hash {
                FileHash::Lfs(sha) => (Some(hex::encode(sha)), None),
                FileHash::Git(oid) => (None, Some(hex::encode(oid))),
            };
            FileObject { path: f.path.clone(), size: f.size, lfs, git }
        })
        .collect();
    let object = ManifestObject {
        format: MANIFEST_FORMAT.into(),
        repo: m.repo.to_string(),
        commit: m.commit.clone(),
        pipeline_tag: m.pipeline_tag.clone(),
        restricted,
        imported,
        files,
    };
    // Serializing owned strings and numbers cannot fail.
    Bytes::from(serde_json::to_vec(&object).unwrap_or_default())
}

/// The manifest at `key`, checked against what the key says (repo, commit) and built as a
/// Hub listing is (unsafe paths dropped, sorted): an object is trusted no more than a listing.
pub fn decode_manifest(
    key: &str,
    repo: &RepoId,
    commit: &str,
    object: &[u8],
) -> Result<TierManifest, TierError> {
    let corrupt = |what| TierError::Corrupt { key: key.to_owned(), what };
    let raw: ManifestObject =
        serde_json::from_slice(object).map_err(|_| corrupt("not a manifest object"))?;
    if raw.format != MANIFEST_FORMAT {
        return Err(corrupt("not a manifest object of a known version"));
    }
    if raw.repo != repo.to_string() || raw.commit != commit {
        return Err(corrupt("a manifest of another repo or commit"));
    }
    let mut files = Vec::with_capacity(raw.files.len());
    for f in raw.files {
        let hash = match (&f.lfs, &f.git) {
            (Some(sha), None) => hex_array(sha).map(FileHash::Lfs),
            (None, Some(oid)) => hex_array(oid).map(FileHash::Git),
            _ => None,
        };
        let hash = hash.ok_or_else(|| corrupt("a file without one valid hash"))?;
        files.push(FileEntry { path: f.path, size: f.size, hash });
    }
    let manifest = Manifest::build(repo.clone(), raw.commit, raw.pipeline_tag, files);
    Ok(TierManifest { manifest, restricted: raw.restricted, imported: raw.imported })
}

fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// The ref object for `commit`, confirmed by the Hub at `confirmed_at` (Unix seconds).
pub fn encode_ref(commit: &str, confirmed_at: u64) -> Bytes {
    let object = RefObject { format: REF_FORMAT.into(), commit: commit.into(), confirmed_at };
    Bytes::from(serde_json::to_vec(&object).unwrap_or_default())
}

/// The commit and confirmation time of the ref at `key`.
pub fn decode_ref(key: &str, object: &[u8]) -> Result<(String, u64), TierError> {
    let corrupt = |what| TierError::Corrupt { key: key.to_owned(), what };
    let raw: RefObject = serde_json::from_slice(object).map_err(|_| corrupt("not a ref object"))?;
    if raw.format != REF_FORMAT {
        return Err(corrupt("not a ref object of a known version"));
    }
    if !names::is_commit(&raw.commit) {
        return Err(corrupt("a ref to something that is not a commit"));
    }
    Ok((raw.commit, raw.confirmed_at))
}

/// Whether the tier's manifest of `repo@commit` says the repo is public (noting it for the
/// access rule if so): what a node that cannot ask the Hub goes by for a repo its store knows
/// (a restart during an outage), when nothing in this process said. A restricted or unknown
/// repo is `false`.
pub async fn public_in_tier(tier: &TierClient, repo: &RepoId, commit: &str) -> bool {
    let key = manifest_key(repo, commit);
    let Ok(Some(object)) = tier.get_object(&key).await else { return false };
    match decode_manifest(&key, repo, commit, &object) {
        Ok(found) if !found.restricted => {
            tier.access().note(repo, false);
            true
        }
        _ => false,
    }
}

impl TierCatalog {
    pub fn new(tier: Arc<TierClient>) -> Arc<Self> {
        Arc::new(Self { tier, published: Mutex::default() })
    }

    /// How long the Hub's confirmation of access to a restricted repo holds.
    pub fn set_confirmation_ttl(&self, ttl: std::time::Duration) {
        self.tier.access().set_ttl(ttl);
    }

    /// What the tier holds of `repo@rev`: the ref's commit (or `rev`, a commit) and its
    /// manifest. `Ok(None)` when it holds nothing; a bad object is counted, removed and
    /// treated as absent.
    pub async fn lookup(&self, repo: &RepoId, rev: &str) -> Result<Option<Found>, TierError> {
        let (commit, confirmed_at) = if names::is_commit(rev) {
            (rev.to_owned(), None)
        } else {
            let key = ref_key(repo, rev);
            let Some(object) = self.tier.get_object(&key).await? else { return Ok(None) };
            match decode_ref(&key, &object) {
                Ok((commit, at)) => (commit, Some(at)),
                Err(e) => return self.bad(e, &key).await,
            }
        };
        let key = manifest_key(repo, &commit);
        let Some(object) = self.tier.get_object(&key).await? else { return Ok(None) };
        match decode_manifest(&key, repo, &commit, &object) {
            Ok(manifest) => {
                self.tier.access().note(repo, manifest.restricted);
                Ok(Some(Found { manifest, confirmed_at }))
            }
            Err(e) => self.bad(e, &key).await,
        }
    }

    async fn bad(&self, e: TierError, key: &str) -> Result<Option<Found>, TierError> {
        tracing::warn!(key, error = %e, "bad repo metadata in the tier; ignored and removed");
        self.tier.discard(&e, key).await;
        Ok(None)
    }

    /// Write an imported repo (`modelfs import --tier`): the manifest, then the ref `rev`
    /// naming it, both before this returns, so that every node finds the import as soon as the
    /// command has ended. An imported repo is no one's secret within the cluster: it is not
    /// restricted.
    pub async fn publish_import(&self, manifest: &Manifest, rev: &str) -> Result<(), TierError> {
        let key = manifest_key(&manifest.repo, &manifest.commit);
        self.tier.put_object(&key, encode_manifest(manifest, false, true), Write::Once).await?;
        let object = encode_ref(&manifest.commit, crate::store::unix_now());
        self.tier.put_object(&ref_key(&manifest.repo, rev), object, Write::Replace).await
    }

    /// Remove the refs `revs` of an imported repo (`modelfs remove --tier`): nodes stop
    /// finding it at their next check. Manifests stay (they are immutable, and a node may be
    /// reading a commit); so do chunks, which other repos may share.
    pub async fn unpublish(&self, repo: &RepoId, revs: &[String]) -> Result<(), TierError> {
        for rev in revs {
            self.tier.delete_object(&ref_key(repo, rev)).await?;
        }
        Ok(())
    }

    /// Publish, in the background, what the Hub just told this node: that `rev` (a branch or
    /// tag; nothing for a commit) is `manifest`'s commit, and the manifest itself unless this
    /// process already wrote it; and note whether the repo is restricted, for the access rule
    /// ([`super::access`]). Failures are logged and counted, never reported: the tier is an
    /// optimisation of the cluster, not a duty of the lookup that triggered it.
    pub fn publish(self: &Arc<Self>, manifest: &Manifest, rev: &str, restricted: bool) {
        self.tier.access().note(&manifest.repo, restricted);
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let repo = manifest.repo.clone();
        let first = crate::lock(&self.published).insert((repo.clone(), manifest.commit.clone()));
        let manifest_object = first.then(|| encode_manifest(manifest, restricted, false));
        let ref_object = (!names::is_commit(rev))
            .then(|| (ref_key(&repo, rev), encode_ref(&manifest.commit, crate::store::unix_now())));
        let commit = manifest.commit.clone();
        let this = self.clone();
        let slot = self.tier.try_upload_slot();
        rt.spawn(async move {
            let _slot = match slot {
                Some(slot) => slot,
                None => match this.tier.upload_slot().await {
                    Some(slot) => slot,
                    None => return,
                },
            };
            // The manifest before the ref: a ref in the tier always names a listable commit.
            if let Some(object) = manifest_object {
                let key = manifest_key(&repo, &commit);
                if let Err(e) = this.tier.put_object(&key, object, Write::Once).await {
                    tracing::debug!(key, error = %e, "manifest not written to the tier");
                    crate::lock(&this.published).remove(&(repo, commit));
                    return;
                }
            }
            if let Some((key, object)) = ref_object {
                if let Err(e) = this.tier.put_object(&key, object, Write::Replace).await {
                    tracing::debug!(key, error = %e, "ref not written to the tier");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::{ObjectTier, Tier};

    fn manifest() -> Manifest {
        Manifest::build(
            RepoId::new("org", "model"),
            "0123456789abcdef0123456789abcdef01234567".into(),
            Some("text-generation".into()),
            vec![
                FileEntry { path: "weights.bin".into(), size: 5, hash: FileHash::Lfs([0xab; 32]) },
                FileEntry { path: "config.json".into(), size: 2, hash: FileHash::Git([0x01; 20]) },
            ],
        )
    }

    /// Objects are read by other nodes and other versions: their form must not drift.
    #[test]
    fn golden_repo_objects() {
        let m = manifest();
        let got = encode_manifest(&m, true, false);
        let want = concat!(
            r#"{"format":"modelfs-manifest/1","repo":"org/model","#,
            r#""commit":"0123456789abcdef0123456789abcdef01234567","#,
            r#""pipeline_tag":"text-generation","restricted":true,"files":["#,
            r#"{"path":"config.json","size":2,"git":"0101010101010101010101010101010101010101"},"#,
            r#"{"path":"weights.bin","size":5,"lfs":""#,
            "abababababababababababababababababababababababababababababababab",
            r#""}]}"#
        );
        assert_eq!(std::str::from_utf8(&got).unwrap(), want);
        let back = decode_manifest("k", &m.repo, &m.commit, &got).unwrap();
        assert_eq!(back, TierManifest { manifest: m.clone(), restricted: true, imported: false });
        let imported = encode_manifest(&m, false, true);
        let text = std::str::from_utf8(&imported).unwrap();
        assert!(text.contains(r#""restricted":false,"imported":true,"files":["#), "{text}");
        let back = decode_manifest("k", &m.repo, &m.commit, &imported).unwrap();
        assert_eq!(back, TierManifest { manifest: m.clone(), restricted: false, imported: true });

        let r = encode_ref(&m.commit, 1_700_000_000);
        assert_eq!(
            std::str::from_utf8(&r).unwrap(),
            r#"{"format":"modelfs-ref/1","commit":"0123456789abcdef0123456789abcdef01234567","confirmed_at":1700000000}"#
        );
        assert_eq!(decode_ref("k", &r).unwrap(), (m.commit.clone(), 1_700_000_000));
        assert_eq!(
            manifest_key(&m.repo, &m.commit),
            "repos/v1/org/model/commits/0123456789abcdef0123456789abcdef01234567"
        );
        assert_eq!(ref_key(&m.repo, "v1.0-rc_2"), "repos/v1/org/model/refs/v1.0-rc_2");
        assert_eq!(ref_key(&m.repo, "a%b#ü"), "repos/v1/org/model/refs/a~25b~23~C3~BC");
    }

    /// A manifest object is trusted no more than a Hub listing: one for another repo or
    /// commit, with a bad hash, or with paths outside the repo never becomes a namespace.
    #[test]
    fn manifest_objects_are_checked_like_listings() {
        let m = manifest();
        let good = String::from_utf8(encode_manifest(&m, false, false).to_vec()).unwrap();
        let other = RepoId::new("org", "other");
        assert!(decode_manifest("k", &other, &m.commit, good.as_bytes()).is_err());
        assert!(decode_manifest("k", &m.repo, &"f".repeat(40), good.as_bytes()).is_err());
        for bad in [
            good.replace("modelfs-manifest/1", "modelfs-manifest/9"),
            good.replace(r#""git":"01010101"#, r#""git":"zz010101"#),
            good.replace(r#""lfs":"abab"#, r#""git":"01","lfs":"abab"#),
            good[..good.len() / 2].to_string(),
        ] {
            assert!(decode_manifest("k", &m.repo, &m.commit, bad.as_bytes()).is_err(), "{bad}");
        }
        let escaping = good.replace("weights.bin", "../../etc/passwd");
        let kept = decode_manifest("k", &m.repo, &m.commit, escaping.as_bytes()).unwrap();
        assert_eq!(kept.manifest.files.len(), 1, "the unsafe path was dropped");
        let not_a_commit = String::from_utf8(encode_ref("main", 1).to_vec()).unwrap();
        assert!(decode_ref("k", not_a_commit.as_bytes()).is_err());
    }

    #[tokio::test]
    async fn published_metadata_is_found_and_bad_objects_are_removed() {
        let memory = Arc::new(object_store::memory::InMemory::new());
        let tier = Arc::new(ObjectTier::new(memory.clone(), "pfx"));
        let store = Arc::new(crate::store::memory::MemoryStore::new(4));
        let catalog = TierCatalog::new(TierClient::new(tier.clone(), store));
        let m = manifest();
        assert!(catalog.lookup(&m.repo, "main").await.unwrap().is_none(), "an empty tier");
        catalog.publish(&m, "main", true);
        let mut found = None;
        for _ in 0..200 {
            found = catalog.lookup(&m.repo, "main").await.unwrap();
            if found.is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let found = found.expect("published metadata found");
        assert_eq!(
            found.manifest,
            TierManifest { manifest: m.clone(), restricted: true, imported: false }
        );
        assert!(found.confirmed_at.is_some());
        let by_commit = catalog.lookup(&m.repo, &m.commit).await.unwrap().unwrap();
        assert_eq!(by_commit.manifest.manifest, m);
        assert_eq!(by_commit.confirmed_at, None);

        // A damaged ref is a miss, and is removed so that the next confirmation replaces it.
        let key = ref_key(&m.repo, "main");
        tier.replace(&key, Bytes::from_static(b"{garbage")).await.unwrap();
        assert!(catalog.lookup(&m.repo, "main").await.unwrap().is_none());
        assert_eq!(tier.get(&key).await.unwrap(), None, "the bad ref was removed");
    }
}
