//! `/.hf-cache`: the repos of the mount in huggingface_hub's cache layout, so that a program
//! run with `HF_HUB_CACHE=<mount>/.hf-cache HF_HUB_OFFLINE=1` finds every model by its repo
//! id, with no download step and no copy (doc/SEMANTICS.md, "The huggingface_hub cache view").
//!
//! This module owns the names of that tree and the two kinds of node only it has: the
//! directories above a commit (`.hf-cache`, `models--ORG--NAME`, `refs`, `snapshots`) and the
//! `refs/<rev>` files, whose content is the commit the revision resolves to. Everything from
//! `snapshots/<commit>` down is an ordinary view directory ([`Node::Dir`], the whole repo at
//! that commit, hung off the `<org>/<repo>@<commit>` repo node), so its files are the same
//! lazily fetched [`Node::File`]s, opened and read by the same code as everywhere else.
//! Snapshot entries are regular files, not symlinks into `blobs/`: doc/DESIGN.md, "The
//! huggingface_hub cache view", says why.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::inode::{self, Node};
use super::{DirEntry, FsError, ModelFs, Snapshot, ViewKind, BRANCH_TTL, IMMUTABLE_TTL};
use crate::lock;
use crate::manifest::RepoId;
use crate::names;

/// The view's directory in the mount's root. A hidden name: no org name starts with `.`.
pub const HF_CACHE_DIR: &str = ".hf-cache";

/// huggingface_hub's folder prefix for model repos (`repo_folder_name`). Datasets and spaces
/// are not served, so their folders never exist here.
const MODELS_PREFIX: &str = "models--";

const REFS_DIR: &str = "refs";
const SNAPSHOTS_DIR: &str = "snapshots";

/// A commit hash, the whole content of a `refs/<rev>` file (no newline, as huggingface_hub
/// writes it).
const REF_LEN: u64 = 40;

/// A node of the cache view above a commit.
#[derive(Clone, Debug)]
pub enum HfNode {
    /// `/.hf-cache`.
    Root,
    /// `models--ORG--NAME`.
    Repo { repo: RepoId },
    /// `models--ORG--NAME/refs`.
    Refs { repo: RepoId },
    /// `refs/<rev>`, as resolved to `commit`: the node is the pair, so when the branch moves
    /// the name gets a new inode, whose content is the new commit.
    Ref { repo: RepoId, rev: String, commit: String },
    /// `models--ORG--NAME/snapshots`.
    Snapshots { repo: RepoId },
}

impl HfNode {
    pub fn is_file(&self) -> bool {
        matches!(self, HfNode::Ref { .. })
    }

    /// The repo it belongs to (`None` for the view's root): its access rules apply.
    pub fn repo(&self) -> Option<&RepoId> {
        match self {
            HfNode::Root => None,
            HfNode::Repo { repo }
            | HfNode::Refs { repo }
            | HfNode::Ref { repo, .. }
            | HfNode::Snapshots { repo } => Some(repo),
        }
    }
}

/// `models--ORG--NAME` → the repo. Org and repo names never contain `--` (nor start or end
/// with `-`), so the first `--` after the prefix is the separator and the split is unique.
pub fn parse_repo_folder(name: &str) -> Option<RepoId> {
    let (org, repo) = name.strip_prefix(MODELS_PREFIX)?.split_once("--")?;
    (names::valid_org(org) && names::valid_repo(repo)).then(|| RepoId::new(org, repo))
}

/// The repo's folder name, as huggingface_hub's `repo_folder_name` spells it.
pub fn repo_folder(repo: &RepoId) -> String {
    format!("{MODELS_PREFIX}{}--{}", repo.org, repo.name)
}

/// The content of each open `refs/<rev>` handle: the commit, fixed when it was opened.
#[derive(Default)]
pub struct RefHandles(Mutex<HashMap<u64, Arc<str>>>);

impl ModelFs {
    /// The `/.hf-cache` directory.
    pub(super) fn hf_root(&self) -> (u64, Arc<Node>) {
        self.inodes.intern(inode::hf_key("root", &[]), || Node::HfCache(HfNode::Root))
    }

    pub(super) async fn hf_lookup(
        &self,
        node: &HfNode,
        name: &str,
    ) -> Result<(u64, Arc<Node>), FsError> {
        match node {
            HfNode::Root => {
                let repo = parse_repo_folder(name).ok_or(FsError::NotFound)?;
                // As `/<org>/<repo>`: a repo that does not exist is ENOENT here, which is what
                // huggingface_hub takes for "not in the cache".
                self.snapshot(&repo, None).await?;
                Ok(self.hf_repo_node(&repo, "repo", |repo| HfNode::Repo { repo }))
            }
            HfNode::Repo { repo } => match name {
                REFS_DIR => Ok(self.hf_repo_node(repo, REFS_DIR, |repo| HfNode::Refs { repo })),
                SNAPSHOTS_DIR => {
                    Ok(self.hf_repo_node(repo, SNAPSHOTS_DIR, |repo| HfNode::Snapshots { repo }))
                }
                // `blobs`, `.no_exist`: never here, so nothing is ever "known absent".
                _ => Err(FsError::NotFound),
            },
            HfNode::Refs { repo } => {
                if !names::valid_revision(name) {
                    return Err(FsError::NotFound);
                }
                let snap = self.snapshot(repo, Some(name)).await?;
                Ok(self.hf_ref_node(repo, name, &snap.manifest.commit))
            }
            HfNode::Snapshots { repo } => {
                if !names::is_commit(name) {
                    return Err(FsError::NotFound);
                }
                let snap = self.snapshot(repo, Some(name)).await?;
                Ok(self.hf_snapshot_node(repo, &snap))
            }
            HfNode::Ref { .. } => Err(FsError::NotDir),
        }
    }

    /// What an `HfNode` directory lists (after `.` and `..`): only what the store and this
    /// process know, never the Hub.
    pub(super) fn hf_list(&self, node: &HfNode, out: &mut Vec<DirEntry>) -> Result<(), FsError> {
        let mut push = |name: String, (ino, node): (u64, Arc<Node>)| {
            out.push(DirEntry { entry: self.entry(ino, &node), name });
        };
        match node {
            HfNode::Root => {
                for repo in self.store.repos()? {
                    let name = repo_folder(&repo);
                    push(name, self.hf_repo_node(&repo, "repo", |repo| HfNode::Repo { repo }));
                }
            }
            HfNode::Repo { repo } => {
                push(
                    REFS_DIR.into(),
                    self.hf_repo_node(repo, REFS_DIR, |repo| HfNode::Refs { repo }),
                );
                push(
                    SNAPSHOTS_DIR.into(),
                    self.hf_repo_node(repo, SNAPSHOTS_DIR, |repo| HfNode::Snapshots { repo }),
                );
            }
            HfNode::Refs { repo } => {
                for (rev, commit) in self.hf_refs(repo)? {
                    let node = self.hf_ref_node(repo, &rev, &commit);
                    push(rev, node);
                }
            }
            HfNode::Snapshots { repo } => {
                for (commit, snap) in self.hf_snapshots(repo)? {
                    push(commit, self.hf_snapshot_node(repo, &snap));
                }
            }
            HfNode::Ref { .. } => return Err(FsError::NotDir),
        }
        Ok(())
    }

    /// Every branch and tag of `repo` with the commit it resolves to: the store's records,
    /// overridden by what this process resolved since (fresher, and there even when the store
    /// could not record it).
    fn hf_refs(&self, repo: &RepoId) -> Result<BTreeMap<String, String>, FsError> {
        let mut refs: BTreeMap<String, String> =
            self.store.refs(repo)?.into_iter().map(|(rev, r)| (rev, r.commit)).collect();
        for (rev, snap) in self.resolved_revisions(repo) {
            if !names::is_commit(&rev) {
                refs.insert(rev, snap.manifest.commit.clone());
            }
        }
        refs.retain(|rev, commit| names::valid_revision(rev) && names::is_commit(commit));
        Ok(refs)
    }

    /// Every commit of `repo` whose files are known, with its snapshot: those the store has
    /// manifests for and those resolved in this process. Every commit `refs/` shows is among
    /// them when its manifest is anywhere (huggingface_hub's `scan_cache_dir` calls a ref to
    /// a commit that `snapshots/` lacks a corrupted cache).
    fn hf_snapshots(&self, repo: &RepoId) -> Result<Vec<(String, Arc<Snapshot>)>, FsError> {
        let mut known: HashMap<String, Arc<Snapshot>> = self
            .resolved_revisions(repo)
            .into_iter()
            .map(|(_, snap)| (snap.manifest.commit.clone(), snap))
            .collect();
        let mut commits: BTreeSet<String> = self.store.commits(repo)?.into_iter().collect();
        commits.extend(self.hf_refs(repo)?.into_values());
        commits.extend(known.keys().cloned());
        let mut out = Vec::with_capacity(commits.len());
        for commit in commits {
            if let Some(snap) = known.remove(&commit) {
                out.push((commit, snap));
                continue;
            }
            // Listed before: its node holds the snapshot, no need to decode the manifest.
            let key = inode::hf_key("snapshot", &[&repo.org, &repo.name, &commit]);
            if let Some(Node::Dir { snap, .. }) = self.inodes.get_key(&key).as_deref() {
                out.push((commit, snap.clone()));
            } else if let Some(manifest) = self.store.manifest(repo, &commit)? {
                out.push((commit, Arc::new(Snapshot::new(manifest))));
            }
        }
        Ok(out)
    }

    /// A directory of the view that stands for the whole repo (`models--*`, `refs`,
    /// `snapshots`): one inode per repo and kind, forever.
    fn hf_repo_node(
        &self,
        repo: &RepoId,
        kind: &str,
        make: impl FnOnce(RepoId) -> HfNode,
    ) -> (u64, Arc<Node>) {
        let key = inode::hf_key(kind, &[&repo.org, &repo.name]);
        self.inodes.intern(key, || Node::HfCache(make(repo.clone())))
    }

    fn hf_ref_node(&self, repo: &RepoId, rev: &str, commit: &str) -> (u64, Arc<Node>) {
        let key = inode::hf_key("ref", &[&repo.org, &repo.name, rev, commit]);
        self.inodes.intern(key, || {
            Node::HfCache(HfNode::Ref {
                repo: repo.clone(),
                rev: rev.to_string(),
                commit: commit.to_string(),
            })
        })
    }

    /// `snapshots/<commit>`: the `all` view of the repo at `snap`'s commit, below the repo
    /// node of `<org>/<repo>@<commit>` (which makes it, and everything in it, cached forever).
    /// Its own key: a directory cannot also be `<org>/<repo>@<commit>/all`, the kernel allows
    /// a directory one name only.
    fn hf_snapshot_node(&self, repo: &RepoId, snap: &Arc<Snapshot>) -> (u64, Arc<Node>) {
        let commit = snap.manifest.commit.as_str();
        let (repo_ino, _) = self.inodes.intern(inode::repo_key(repo, Some(commit)), || {
            Node::Repo { repo: repo.clone(), rev: Some(commit.to_string()) }
        });
        let key = inode::hf_key("snapshot", &[&repo.org, &repo.name, commit]);
        self.inodes.intern(key, || Node::Dir {
            repo_ino,
            snap: snap.clone(),
            view: ViewKind::All,
            dir: 0,
        })
    }

    /// Directories above a commit never change inode; a ref can point elsewhere once its
    /// branch is re-resolved, so its name is trusted for a second only.
    pub(super) fn hf_ttl(node: &HfNode) -> Duration {
        if node.is_file() {
            BRANCH_TTL
        } else {
            IMMUTABLE_TTL
        }
    }

    pub(super) fn hf_size(node: &HfNode) -> u64 {
        if node.is_file() {
            REF_LEN
        } else {
            0
        }
    }

    /// Open a `refs/<rev>` file: its content is the commit of its inode.
    pub(super) fn hf_open(&self, node: &HfNode, write: bool) -> Result<u64, FsError> {
        let HfNode::Ref { commit, .. } = node else { return Err(FsError::IsDir) };
        if write {
            return Err(FsError::ReadOnly);
        }
        let fh = self.next_fh.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.ref_handles.0).insert(fh, Arc::from(commit.as_str()));
        Ok(fh)
    }

    /// Whether `fh` is an open `refs/<rev>` file: its reads are never page-cached by the
    /// kernel (the FUSE edge opens it direct), though its inode's content cannot change.
    pub fn is_ref_handle(&self, fh: u64) -> bool {
        lock(&self.ref_handles.0).contains_key(&fh)
    }

    /// The bytes of a read of a `refs/<rev>` handle; `None`: `fh` is not one.
    pub(super) fn hf_read(&self, fh: u64, offset: u64, size: u32) -> Option<Vec<u8>> {
        let commit = lock(&self.ref_handles.0).get(&fh).cloned()?;
        let bytes = commit.as_bytes();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        Some(bytes[start..end].to_vec())
    }

    /// Forget a `refs/<rev>` handle; `false`: `fh` is not one.
    pub(super) fn hf_release(&self, fh: u64) -> bool {
        lock(&self.ref_handles.0).remove(&fh).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::PrefetchLimits;
    use crate::fs::testing::{names, offline, read_all, walk};
    use crate::fs::{FsConfig, Kind};
    use crate::hub::memory::MemoryHub;
    use crate::store::memory::MemoryStore;
    use crate::store::ChunkStore;
    use proptest::prelude::*;

    const C1: &str = "1111111111111111111111111111111111111111";
    const C2: &str = "2222222222222222222222222222222222222222";
    const C3: &str = "3333333333333333333333333333333333333333";

    struct World {
        fs: ModelFs,
        hub: Arc<MemoryHub>,
        store: Arc<MemoryStore>,
    }

    fn repo() -> RepoId {
        RepoId::new("my-org", "tiny-model")
    }

    fn files(config: &[u8]) -> Vec<(&'static str, Vec<u8>, bool)> {
        vec![
            ("config.json", config.to_vec(), false),
            ("onnx/model.onnx", vec![7; 2500], true),
            ("tokenizer.json", b"{}".to_vec(), false),
        ]
    }

    fn world(config: FsConfig) -> World {
        let hub = Arc::new(MemoryHub::new());
        hub.add_repo(repo(), C1, "main", None, files(b"{\"v\":1}"));
        let store = Arc::new(MemoryStore::new(1000));
        let fs = ModelFs::new(
            config,
            store.clone(),
            hub.clone(),
            hub.clone(),
            Duration::from_secs(5),
            PrefetchLimits::NONE,
        );
        World { fs, hub, store }
    }

    const REPO_DIR: &str = ".hf-cache/models--my-org--tiny-model";

    #[test]
    fn repo_folders_parse_only_models_with_valid_names() {
        assert_eq!(parse_repo_folder("models--my-org--tiny-model"), Some(repo()));
        assert_eq!(repo_folder(&repo()), "models--my-org--tiny-model");
        assert_eq!(parse_repo_folder("models--a.b_c--d-e.f"), Some(RepoId::new("a.b_c", "d-e.f")));
        for bad in [
            "datasets--org--name",
            "spaces--org--name",
            "models--org",
            "models--org--",
            "models----name",
            "models--org--a--b",
            "models--org---name",
            "models--org--name.git",
            "models--.org--name",
            "models--org--na..me",
            "Models--org--name",
            "org--name",
            "models-org-name",
            "",
        ] {
            assert_eq!(parse_repo_folder(bad), None, "{bad}");
        }
    }

    /// Names built to satisfy the Hub's rules (as names.rs's own tests build them).
    fn hub_name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_]([A-Za-z0-9_]|[-.][A-Za-z0-9_]){0,47}"
    }

    proptest! {
        #[test]
        fn repo_folder_round_trips(org in hub_name(), name in hub_name()) {
            prop_assume!(!name.ends_with(".git"));
            let repo = RepoId::new(org, name);
            prop_assert_eq!(parse_repo_folder(&repo_folder(&repo)), Some(repo));
        }

        #[test]
        fn parsed_folders_rebuild_the_input(folder in "(models|datasets)--[-a-z.]{0,12}") {
            if let Some(repo) = parse_repo_folder(&folder) {
                prop_assert!(names::valid_org(&repo.org) && names::valid_repo(&repo.name));
                prop_assert_eq!(repo_folder(&repo), folder);
            }
        }
    }

    #[tokio::test]
    async fn the_root_lists_the_view_and_the_view_lists_known_repos() {
        let w = world(FsConfig::default());
        assert_eq!(names(&w.fs, "").await, [HF_CACHE_DIR]);
        assert_eq!(names(&w.fs, HF_CACHE_DIR).await, Vec::<String>::new());
        // Any valid model folder looks up (resolving on the Hub), and is then known.
        assert_eq!(names(&w.fs, REPO_DIR).await, ["refs", "snapshots"]);
        assert_eq!(names(&w.fs, "").await, [HF_CACHE_DIR, "my-org"]);
        assert_eq!(names(&w.fs, HF_CACHE_DIR).await, ["models--my-org--tiny-model"]);
        let view = w.fs.getattr(walk(&w.fs, HF_CACHE_DIR).await.unwrap()).unwrap();
        assert_eq!((view.attr.kind, view.attr.perm), (Kind::Dir, 0o555));
    }

    #[tokio::test]
    async fn absent_repos_kinds_and_paths_are_not_found() {
        let w = world(FsConfig::default());
        for path in [
            ".hf-cache/models--my-org--nope",
            ".hf-cache/datasets--my-org--tiny-model",
            ".hf-cache/spaces--my-org--tiny-model",
            ".hf-cache/models--my-org",
            ".hf-cache/.locks",
            &format!("{REPO_DIR}/blobs"),
            &format!("{REPO_DIR}/.no_exist"),
            &format!("{REPO_DIR}/refs/no-such-branch"),
            &format!("{REPO_DIR}/refs/bad..rev"),
            &format!("{REPO_DIR}/snapshots/main"),
            &format!("{REPO_DIR}/snapshots/{C2}"),
            &format!("{REPO_DIR}/snapshots/{}", "A".repeat(40)),
            &format!("{REPO_DIR}/snapshots/{C1}/not-there.json"),
            &format!("{REPO_DIR}/snapshots/{C1}/onnx/model_q4.onnx"),
            ".hf-cache-not",
        ] {
            assert_eq!(walk(&w.fs, path).await, Err(FsError::NotFound), "{path}");
        }
        assert_eq!(walk(&w.fs, &format!("{REPO_DIR}/refs/main/x")).await, Err(FsError::NotDir));
    }

    #[tokio::test]
    async fn a_ref_reads_as_its_commit_and_follows_the_branch() {
        let w = world(FsConfig { revalidate: Duration::ZERO, ..FsConfig::default() });
        let main = format!("{REPO_DIR}/refs/main");
        assert_eq!(read_all(&w.fs, &main).await.unwrap(), C1.as_bytes());
        let ino = walk(&w.fs, &main).await.unwrap();
        let entry = w.fs.getattr(ino).unwrap();
        assert_eq!((entry.attr.kind, entry.attr.size, entry.ttl), (Kind::File, 40, BRANCH_TTL));
        let fh = w.fs.open(ino, false).unwrap();
        assert!(w.fs.is_ref_handle(fh));
        assert_eq!(w.fs.open(ino, true), Err(FsError::ReadOnly));
        // Reads at offsets, as a reader with a small buffer does them.
        assert_eq!(w.fs.read(fh, 10, 5).await.unwrap(), &C1.as_bytes()[10..15]);
        let mut got = Vec::new();
        assert!(w.fs.read_cached(fh, 38, 100, &mut |b| got.extend_from_slice(b)).unwrap());
        assert_eq!(got, &C1.as_bytes()[38..]);
        assert_eq!(w.fs.read(fh, 40, 10).await.unwrap(), Vec::<u8>::new());
        assert_eq!(names(&w.fs, &format!("{REPO_DIR}/refs")).await, ["main"]);

        // The branch moves: a new lookup is a new inode reading the new commit, while the
        // handle open on the old one keeps its content.
        w.hub.add_repo(repo(), C2, "main", None, files(b"{\"v\":2}"));
        assert_eq!(read_all(&w.fs, &main).await.unwrap(), C2.as_bytes());
        assert_ne!(walk(&w.fs, &main).await.unwrap(), ino);
        assert_eq!(w.fs.read(fh, 0, 40).await.unwrap(), C1.as_bytes());
        w.fs.release(fh);
        assert!(!w.fs.is_ref_handle(fh));
        // Both commits are snapshots now, and the ref shows the new one.
        assert_eq!(names(&w.fs, &format!("{REPO_DIR}/snapshots")).await, [C1, C2]);
        let refs = walk(&w.fs, &format!("{REPO_DIR}/refs")).await.unwrap();
        let listed = w.fs.readdir_now(refs).unwrap().unwrap();
        let main_entry = listed.iter().find(|d| d.name == "main").unwrap();
        assert_eq!(main_entry.entry.attr.ino, walk(&w.fs, &main).await.unwrap());
    }

    #[tokio::test]
    async fn snapshots_serve_the_repo_files_at_their_commit() {
        let w = world(FsConfig::default());
        let snap = format!("{REPO_DIR}/snapshots/{C1}");
        assert_eq!(read_all(&w.fs, &format!("{snap}/config.json")).await.unwrap(), b"{\"v\":1}");
        assert_eq!(
            read_all(&w.fs, &format!("{snap}/onnx/model.onnx")).await.unwrap(),
            vec![7; 2500]
        );
        assert_eq!(names(&w.fs, &snap).await, ["config.json", "onnx", "tokenizer.json"]);
        assert_eq!(names(&w.fs, &format!("{REPO_DIR}/snapshots")).await, [C1]);
        // Pinned to a commit: cached forever, listing included.
        let dir = walk(&w.fs, &snap).await.unwrap();
        assert!(w.fs.is_commit_pinned_dir(dir));
        let file = walk(&w.fs, &format!("{snap}/config.json")).await.unwrap();
        assert_eq!(w.fs.getattr(file).unwrap().ttl, IMMUTABLE_TTL);
        assert_eq!(w.fs.getattr(file).unwrap().attr.size, 7);
        // Not the same directory as the `all` view of the same commit, nor the same file.
        let all = walk(&w.fs, &format!("my-org/tiny-model@{C1}/all")).await.unwrap();
        assert_ne!(all, dir);
        // Same path, same inode.
        assert_eq!(walk(&w.fs, &snap).await.unwrap(), dir);
        // A commit looked up directly (never a branch here) resolves, and then lists.
        w.hub.add_repo(repo(), C3, "other", None, files(b"{\"v\":3}"));
        let old = format!("{REPO_DIR}/snapshots/{C3}/config.json");
        assert_eq!(read_all(&w.fs, &old).await.unwrap(), b"{\"v\":3}");
        assert_eq!(names(&w.fs, &format!("{REPO_DIR}/snapshots")).await, [C1, C3]);
        assert_eq!(w.fs.xattrs(dir).await.unwrap()[0].1, C1);
    }

    /// A new mount over the same store, offline: the view lists what the store recorded
    /// (refs and the commits they point at) and serves it without the Hub.
    #[tokio::test]
    async fn a_store_recorded_before_is_served_offline() {
        let w = world(FsConfig::default());
        assert_eq!(read_all(&w.fs, &format!("{REPO_DIR}/refs/main")).await.unwrap(), C1.as_bytes());
        let config = format!("{REPO_DIR}/snapshots/{C1}/config.json");
        assert_eq!(read_all(&w.fs, &config).await.unwrap(), b"{\"v\":1}");
        assert_eq!(w.store.refs(&repo()).unwrap().len(), 1);
        let offline = offline(w.store.clone());
        assert_eq!(names(&offline, HF_CACHE_DIR).await, ["models--my-org--tiny-model"]);
        assert_eq!(names(&offline, &format!("{REPO_DIR}/refs")).await, ["main"]);
        assert_eq!(names(&offline, &format!("{REPO_DIR}/snapshots")).await, [C1]);
        let main = read_all(&offline, &format!("{REPO_DIR}/refs/main")).await.unwrap();
        assert_eq!(main, C1.as_bytes());
        assert_eq!(read_all(&offline, &config).await.unwrap(), b"{\"v\":1}");
        assert_eq!(walk(&offline, ".hf-cache/models--my-org--other").await, Err(FsError::NotFound));
    }

    #[test]
    fn directories_of_the_view_are_not_opened_as_files() {
        let w = world(FsConfig::default());
        let (ino, _) = w.fs.hf_root();
        assert_eq!(w.fs.open(ino, false), Err(FsError::IsDir));
        assert_eq!(w.fs.hf_read(12345, 0, 10), None);
        assert!(!w.fs.hf_release(12345));
    }
}
