//! The filesystem core: the `/models` namespace, inodes, open handles, reads and xattrs,
//! with no kernel in sight. [`crate::fuse`] adapts it to fuser; tests drive it directly with
//! the in-memory store and Hub.
//!
//! Namespace (doc/SEMANTICS.md, "Paths"): `/` lists orgs; `/<org>` is any valid org name (no
//! network) and lists the repos the store knows; `/<org>/<repo>[@<rev>]` resolves the revision
//! (at most once per `revalidate` interval for branches, never again for commits) and lists
//! its views; a view
//! (`all`, or a quant, looked up case-insensitively) is a directory tree over the repo's files.
//!
//! `/.hf-cache` shows the same repos in huggingface_hub's cache layout ([`hfcache`]).
//!
//! Everything below a repo node belongs to one [`Snapshot`] (one commit). Inode numbers of
//! views include the commit, so when a branch moves, new lookups get new inodes while open
//! handles and cached inodes keep reading the old commit: bytes of two commits never mix.

mod hfcache;
mod inode;
pub mod pages;
mod revisions;
pub(crate) mod snapshot;
#[cfg(test)]
pub(crate) mod testing;

use crate::lock;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub use hfcache::{HfNode, HF_CACHE_DIR};
pub use inode::{Node, ROOT_INO};
pub use snapshot::{Child, Snapshot, ViewKind, ALL_VIEW};

use crate::evict::{Evictor, FetchActivity};
use crate::fetch::{ChunkFetcher, FetchError, FileRef, PrefetchLimits, ReadAhead};
use crate::hub::{HubError, RangeFetcher, RepoSource};
use crate::loads::{Loads, Place};
use crate::manifest::{FileEntry, RepoId};
use crate::names;
use crate::store::{chunk_len, ChunkStore, FileState, StoreError};
use inode::InodeTable;
use revisions::Slot;

/// The revision a repo directory without `@rev` shows.
pub const DEFAULT_REVISION: &str = "main";

/// How long the kernel may cache what cannot change: anything pinned to a commit, org
/// directories (any valid name is one) and repo directories (their inode never changes;
/// what they list is not cached by the kernel).
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long the kernel may cache a name below a branch whose re-resolution is due: short, so
/// that once the branch moves, paths show the new commit within a second. Until it is due,
/// names below a branch are cached for the time left (see `ModelFs::branch_ttl`).
pub const BRANCH_TTL: Duration = Duration::from_secs(1);

/// Block size reported in `st_blksize`: stdio and `cp` size their buffers by it, and 1 MiB
/// matches the largest FUSE read the kernel sends.
const BLKSIZE: u32 = 1 << 20;

/// Every extended attribute lives under this prefix (doc/SEMANTICS.md, "Extended attributes").
pub const XATTR_PREFIX: &str = "user.modelfs.";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("permission denied: {0}")]
    Denied(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("read-only filesystem")]
    ReadOnly,
    #[error("no such attribute")]
    NoAttr,
    #[error("bad file handle")]
    BadHandle,
}

impl From<HubError> for FsError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::NotFound(_) | HubError::Offline => FsError::NotFound,
            HubError::Denied(m) => FsError::Denied(m),
            HubError::Unavailable(_) | HubError::Protocol(_) => FsError::Io(e.to_string()),
        }
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        FsError::Io(e.to_string())
    }
}

impl From<FetchError> for FsError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Hub(HubError::Denied(m)) => FsError::Denied(m),
            // The manifest says the file exists; failing to get its bytes is an I/O error.
            other => FsError::Io(other.to_string()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Serve from the store only; never contact the Hub.
    pub offline: bool,
    /// When the Hub does not answer, serve the last known commit of a branch (offline-first,
    /// the mount). Off for `pull`, which must say that it could not ask.
    pub serve_stale: bool,
    /// How long a resolved branch is trusted before asking the Hub again.
    pub revalidate: Duration,
    pub uid: u32,
    pub gid: u32,
    /// Run load plans: prefetch the tensors of a model file its readers walk
    /// ([`crate::loads`]). Off by default here, for the one-shot commands, which choose what
    /// they fetch; the mount turns it on unless configured off.
    pub load_plans: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            offline: false,
            serve_stale: true,
            revalidate: Duration::from_secs(600),
            uid: 0,
            gid: 0,
            load_plans: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Attributes as the kernel needs them; the adapter converts to fuser's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub blocks: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub blksize: u32,
    pub mtime: SystemTime,
}

/// A looked-up node with how long the kernel may cache it.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub attr: Attr,
    pub ttl: Duration,
}

#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: String,
    pub entry: Entry,
}

struct Handle {
    file: FileRef,
    place: Place,
    read_ahead: Mutex<ReadAhead>,
    /// Its repo's profile is `none`: kept in memory only.
    streamed: bool,
}

pub struct ModelFs {
    config: FsConfig,
    store: Arc<dyn ChunkStore>,
    source: Arc<dyn RepoSource>,
    chunks: Arc<ChunkFetcher>,
    loads: Arc<Loads>,
    inodes: InodeTable,
    slots: Mutex<HashMap<(RepoId, String), Slot>>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    /// Open `/.hf-cache/*/refs/<rev>` files.
    ref_handles: hfcache::RefHandles,
    evictor: Option<Arc<Evictor>>,
    activity: Option<Arc<dyn FetchActivity>>,
    /// Repo metadata in the shared tier, when there is one.
    catalog: std::sync::OnceLock<Arc<crate::tier::catalog::TierCatalog>>,
    /// `FsConfig::revalidate` in seconds, changeable while mounted (SIGHUP).
    revalidate_secs: AtomicU64,
    prefetch: PrefetchLimits,
    next_fh: AtomicU64,
    /// mtime of everything: the Hub gives no per-file times that matter to readers, and a
    /// constant keeps `make`-style tools quiet.
    mounted_at: SystemTime,
    /// The runtime current at construction (the daemon's): where work that a FUSE thread
    /// must not wait for is spawned.
    runtime: Option<tokio::runtime::Handle>,
    /// Who may read what ([`crate::access`]); replaced at SIGHUP.
    access: std::sync::RwLock<Arc<crate::access::AccessPolicy>>,
    /// Whether the Hub said a repo is gated or private, as last told in this process (`false`
    /// for imported repos); what `restrict_gated` goes by.
    restricted: Arc<Mutex<HashMap<RepoId, bool>>>,
    /// Told every inode number when the access rules change, so that the kernel drops the
    /// attributes it cached (the FUSE edge's notifier).
    on_access_change: std::sync::OnceLock<Arc<dyn Fn(Vec<u64>) + Send + Sync>>,
}

impl ModelFs {
    pub fn new(
        config: FsConfig,
        store: Arc<dyn ChunkStore>,
        source: Arc<dyn RepoSource>,
        origin: Arc<dyn RangeFetcher>,
        read_timeout: Duration,
        prefetch: PrefetchLimits,
    ) -> Self {
        let chunks = ChunkFetcher::new(store.clone(), origin, read_timeout, prefetch);
        let runtime = tokio::runtime::Handle::try_current().ok();
        let loads = Loads::new(chunks.clone(), runtime.clone(), config.load_plans);
        Self {
            revalidate_secs: AtomicU64::new(config.revalidate.as_secs()),
            config,
            store,
            source,
            chunks,
            loads,
            inodes: InodeTable::new(),
            slots: Mutex::default(),
            handles: Mutex::default(),
            ref_handles: hfcache::RefHandles::default(),
            evictor: None,
            activity: None,
            catalog: std::sync::OnceLock::new(),
            next_fh: AtomicU64::new(1),
            prefetch,
            mounted_at: SystemTime::now(),
            runtime,
            access: Default::default(),
            restricted: Arc::default(),
            on_access_change: std::sync::OnceLock::new(),
        }
    }

    /// Apply access rules (at start, and at SIGHUP): every node reports its new owner, group
    /// and mode from now on, and the kernel is told to forget the attributes it cached.
    pub fn set_access(&self, policy: crate::access::AccessPolicy) {
        {
            let mut current = self.access.write().unwrap_or_else(|p| p.into_inner());
            if **current == policy {
                return;
            }
            *current = Arc::new(policy);
        }
        if let Some(hook) = self.on_access_change.get() {
            hook(self.inodes.find(|_| true));
        }
    }

    /// Where [`ModelFs::set_access`] sends the inode numbers whose attributes changed.
    pub fn set_on_access_change(&self, hook: Arc<dyn Fn(Vec<u64>) + Send + Sync>) {
        let _ = self.on_access_change.set(hook);
    }

    /// Note what the Hub said of `repo`: gated or private, or not.
    pub(crate) fn note_restricted(&self, repo: &RepoId, restricted: bool) {
        lock(&self.restricted).insert(repo.clone(), restricted);
    }

    /// Whether this process knows if `repo` is restricted: under `restrict_gated` a stored ref
    /// is not enough to show the repo to others until the Hub has said (or it is imported).
    fn restriction_known(&self, repo: &RepoId) -> bool {
        lock(&self.restricted).contains_key(repo)
    }

    fn restrict_gated(&self) -> bool {
        self.access.read().unwrap_or_else(|p| p.into_inner()).restrict_gated
    }

    /// The repo whose rules decide `node`'s owner and mode; `None` above repos.
    fn repo_of(&self, node: &Node) -> Option<RepoId> {
        match node {
            Node::Repo { repo, .. } => Some(repo.clone()),
            Node::Dir { repo_ino, .. } | Node::File { repo_ino, .. } => {
                match self.inodes.get(*repo_ino).as_deref() {
                    Some(Node::Repo { repo, .. }) => Some(repo.clone()),
                    _ => None,
                }
            }
            Node::HfCache(hf) => hf.repo().cloned(),
            Node::Root | Node::Org { .. } => None,
        }
    }

    pub fn store(&self) -> &Arc<dyn ChunkStore> {
        &self.store
    }

    // ---------------------------------------------------------------- namespace

    /// `lookup`, answered at once where no answer can need the Hub: in the root (any valid
    /// org name) and inside a view (an in-memory tree). `None`: the parent is an org or a repo
    /// directory, whose answer may need a resolution; call [`ModelFs::lookup`].
    pub fn lookup_now(&self, parent: u64, name: &str) -> Option<Result<Entry, FsError>> {
        let node = match self.node(parent) {
            Ok(node) => node,
            Err(e) => return Some(Err(e)),
        };
        Some(match &*node {
            Node::Root if name == HF_CACHE_DIR => {
                let (ino, node) = self.hf_root();
                Ok(self.entry(ino, &node))
            }
            Node::Root => {
                if !names::valid_org(name) {
                    return Some(Err(FsError::NotFound));
                }
                let (ino, node) = self
                    .inodes
                    .intern(inode::org_key(name), || Node::Org { org: name.to_string() });
                Ok(self.entry(ino, &node))
            }
            Node::Dir { repo_ino, snap, view, dir } => snap
                .view(*view)
                .and_then(|tree| tree.lookup(*dir, name))
                .map(|child| {
                    let (ino, node) = self.child_node(parent, *repo_ino, snap, *view, name, child);
                    self.entry(ino, &node)
                })
                .ok_or(FsError::NotFound),
            Node::File { .. } => Err(FsError::NotDir),
            Node::HfCache(HfNode::Ref { .. }) => Err(FsError::NotDir),
            Node::Org { .. } | Node::Repo { .. } | Node::HfCache(_) => return None,
        })
    }

    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Entry, FsError> {
        if let Some(answer) = self.lookup_now(parent, name) {
            return answer;
        }
        let node = self.node(parent)?;
        match &*node {
            Node::Org { org } => {
                let (repo_name, rev) =
                    names::parse_repo_component(name).ok_or(FsError::NotFound)?;
                let repo = RepoId::new(org.as_str(), repo_name);
                // Resolving here makes a repo that does not exist ENOENT at lookup, and warms
                // the snapshot the next call (readdir of the repo) needs.
                self.snapshot(&repo, rev).await?;
                let key = inode::repo_key(&repo, rev);
                let (ino, node) =
                    self.inodes.intern(key, || Node::Repo { repo, rev: rev.map(str::to_string) });
                Ok(self.entry(ino, &node))
            }
            Node::Repo { repo, rev } => {
                let snap = self.snapshot(repo, rev.as_deref()).await?;
                let view = snap.find_view(name).ok_or(FsError::NotFound)?;
                let (ino, node) = self.view_node(parent, &snap, view, name);
                Ok(self.entry(ino, &node))
            }
            Node::HfCache(hf) => {
                let (ino, node) = self.hf_lookup(hf, name).await?;
                Ok(self.entry(ino, &node))
            }
            // Answered by `lookup_now`.
            Node::Root | Node::Dir { .. } | Node::File { .. } => Err(FsError::NotFound),
        }
    }

    /// Whether `ino` is a directory inside a view: its listing is fixed by its commit.
    pub fn is_commit_pinned_dir(&self, ino: u64) -> bool {
        matches!(self.inodes.get(ino).as_deref(), Some(Node::Dir { .. }))
    }

    pub fn getattr(&self, ino: u64) -> Result<Entry, FsError> {
        let node = self.node(ino)?;
        Ok(self.entry(ino, &node))
    }

    /// The whole listing of a directory, `.` and `..` first, where no listing can need the
    /// Hub (everything but a repo directory). `None`: call [`ModelFs::readdir`].
    pub fn readdir_now(&self, ino: u64) -> Option<Result<Vec<DirEntry>, FsError>> {
        let node = match self.node(ino) {
            Ok(node) => node,
            Err(e) => return Some(Err(e)),
        };
        if let Node::Repo { .. } = &*node {
            return None;
        }
        Some(self.list(ino, &node, None))
    }

    /// The whole listing of a directory, `.` and `..` first. The adapter pages through it.
    pub async fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let node = self.node(ino)?;
        let snap = match &*node {
            Node::Repo { repo, rev } => Some(self.snapshot(repo, rev.as_deref()).await?),
            _ => None,
        };
        self.list(ino, &node, snap)
    }

    /// List `node`; a repo directory lists the views of `snap`.
    fn list(
        &self,
        ino: u64,
        node: &Node,
        snap: Option<Arc<Snapshot>>,
    ) -> Result<Vec<DirEntry>, FsError> {
        let mut out = vec![
            DirEntry { name: ".".into(), entry: self.entry(ino, node) },
            // The kernel answers `..` itself; the attributes here only need to be a directory's.
            DirEntry { name: "..".into(), entry: self.entry(ino, node) },
        ];
        match node {
            Node::Root => {
                let (ino, node) = self.hf_root();
                out.push(DirEntry { entry: self.entry(ino, &node), name: HF_CACHE_DIR.into() });
                let orgs: BTreeSet<String> =
                    self.store.repos()?.into_iter().map(|r| r.org).collect();
                for org in orgs {
                    let (ino, node) =
                        self.inodes.intern(inode::org_key(&org), || Node::Org { org: org.clone() });
                    out.push(DirEntry { entry: self.entry(ino, &node), name: org });
                }
            }
            Node::Org { org } => {
                for repo in self.store.repos()?.into_iter().filter(|r| &r.org == org) {
                    let name = repo.name.clone();
                    let (ino, node) = self
                        .inodes
                        .intern(inode::repo_key(&repo, None), || Node::Repo { repo, rev: None });
                    out.push(DirEntry { entry: self.entry(ino, &node), name });
                }
            }
            Node::Repo { .. } => {
                let snap =
                    snap.ok_or_else(|| FsError::Io("repo listed before it was resolved".into()))?;
                for (view, name) in snap.view_names() {
                    let (ino, node) = self.view_node(ino, &snap, view, name);
                    out.push(DirEntry { entry: self.entry(ino, &node), name: name.to_string() });
                }
            }
            Node::Dir { repo_ino, snap, view, dir } => {
                let tree = snap.view(*view).ok_or(FsError::NotFound)?;
                for (name, child) in &tree.dirs[*dir].children {
                    let (ino, node) = self.child_node(ino, *repo_ino, snap, *view, name, *child);
                    out.push(DirEntry { entry: self.entry(ino, &node), name: name.clone() });
                }
            }
            Node::HfCache(hf) => self.hf_list(hf, &mut out)?,
            Node::File { .. } => return Err(FsError::NotDir),
        }
        Ok(out)
    }

    fn view_node(
        &self,
        repo_ino: u64,
        snap: &Arc<Snapshot>,
        view: ViewKind,
        spelled: &str,
    ) -> (u64, Arc<Node>) {
        let key = inode::view_key(repo_ino, &snap.manifest.commit, spelled);
        self.inodes.intern(key, || Node::Dir { repo_ino, snap: snap.clone(), view, dir: 0 })
    }

    fn child_node(
        &self,
        parent: u64,
        repo_ino: u64,
        snap: &Arc<Snapshot>,
        view: ViewKind,
        name: &str,
        child: Child,
    ) -> (u64, Arc<Node>) {
        self.inodes.intern(inode::child_key(parent, name), || match child {
            Child::Dir(dir) => Node::Dir { repo_ino, snap: snap.clone(), view, dir },
            Child::File(file) => Node::File { repo_ino, snap: snap.clone(), file },
        })
    }

    fn node(&self, ino: u64) -> Result<Arc<Node>, FsError> {
        self.inodes.get(ino).ok_or(FsError::NotFound)
    }

    fn entry(&self, ino: u64, node: &Node) -> Entry {
        Entry { attr: self.attr(ino, node), ttl: self.ttl(node) }
    }

    fn ttl(&self, node: &Node) -> Duration {
        match node {
            Node::Repo { repo, rev } if self.shows_local(repo, rev.as_deref()) => BRANCH_TTL,
            Node::Root | Node::Org { .. } | Node::Repo { .. } => IMMUTABLE_TTL,
            Node::HfCache(hf) => Self::hf_ttl(hf),
            Node::Dir { repo_ino, .. } | Node::File { repo_ino, .. } => {
                match self.inodes.get(*repo_ino).as_deref() {
                    Some(Node::Repo { rev: Some(rev), .. }) if names::is_commit(rev) => {
                        IMMUTABLE_TTL
                    }
                    Some(Node::Repo { repo, rev }) => self.branch_ttl(repo, rev.as_deref()),
                    _ => BRANCH_TTL,
                }
            }
        }
    }

    fn attr(&self, ino: u64, node: &Node) -> Attr {
        let (kind, size, nlink) = match node {
            Node::File { snap, file, .. } => {
                (Kind::File, snap.file(*file).map_or(0, |f| f.size), 1)
            }
            Node::HfCache(hf) if hf.is_file() => (Kind::File, Self::hf_size(hf), 1),
            _ => (Kind::Dir, 0, 2),
        };
        let owner = {
            let policy = self.access.read().unwrap_or_else(|p| p.into_inner()).clone();
            let repo = if policy.is_open() { None } else { self.repo_of(node) };
            let restricted = repo.as_ref().and_then(|r| lock(&self.restricted).get(r).copied());
            policy.owner(repo.as_ref(), restricted, (self.config.uid, self.config.gid))
        };
        let perm = match kind {
            Kind::File => owner.mode,
            Kind::Dir => crate::access::dir_mode(owner.mode),
        };
        Attr {
            ino,
            kind,
            size,
            blocks: size.div_ceil(512),
            perm,
            nlink,
            uid: owner.uid,
            gid: owner.gid,
            blksize: BLKSIZE,
            mtime: self.mounted_at,
        }
    }

    // ---------------------------------------------------------------- files

    /// Open a file for reading. Returns the handle number.
    pub fn open(&self, ino: u64, write: bool) -> Result<u64, FsError> {
        let node = self.node(ino)?;
        if let Node::HfCache(hf) = &*node {
            return self.hf_open(hf, write);
        }
        let Node::File { snap, file, .. } = &*node else {
            return Err(FsError::IsDir);
        };
        if write {
            return Err(FsError::ReadOnly);
        }
        let place = Place { snap: snap.clone(), index: *file };
        let file = snap.file_ref(*file).ok_or(FsError::NotFound)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        // A file of profile `none` is never stored: nothing to keep from eviction, and no
        // load plan (its chunks would fall out of the memory cache before they are read).
        let streamed = self.chunks.streams(&file);
        if !streamed {
            if let Some(evictor) = &self.evictor {
                evictor.opened(&file.content());
            }
            self.loads.opened(&file.content());
            self.chunks.verify_if_unchecked(&file);
        }
        let handle = Handle { file, place, read_ahead: Mutex::default(), streamed };
        lock(&self.handles).insert(fh, Arc::new(handle));
        crate::metrics::get().handle_opened();
        Ok(fh)
    }

    pub fn release(&self, fh: u64) {
        if self.hf_release(fh) {
            return;
        }
        let Some(handle) = lock(&self.handles).remove(&fh) else { return };
        crate::metrics::get().handle_released();
        if handle.streamed {
            return;
        }
        self.loads.released(&handle.file.content());
        if let Some(evictor) = &self.evictor {
            evictor.closed(&handle.file.content());
            // Files held open may have kept the store over its bound: with one fewer, a pass
            // can bring it back (off this FUSE thread).
            if let Some(rt) = self.runtime.as_ref().filter(|_| evictor.over_bound()) {
                if evictor.queue_close_pass() {
                    let evictor = evictor.clone();
                    rt.spawn_blocking(move || {
                        if let Err(e) = evictor.evict_to_bound_after_close() {
                            tracing::error!(error = %e, "eviction pass failed");
                        }
                    });
                }
            }
        }
    }

    /// Whether the file of this handle is `failed` (its bytes did not match the Hub's hash).
    /// Contents at a commit never change, so every other file keeps its page cache across
    /// opens, partial ones too: what a read put there was checked against its crcs. A file
    /// found bad later has its pages dropped at once in this process ([`ModelFs::set_on_failed`])
    /// and, by this check, at its next open after another process found it bad.
    pub fn is_failed(&self, fh: u64) -> bool {
        let Ok(handle) = self.handle(fh) else { return false };
        matches!(
            self.store.file_record(&handle.file.content()),
            Ok(Some(record)) if record.state == FileState::Failed
        )
    }

    /// The plain file the kernel may read this handle's bytes from (FUSE passthrough): only a
    /// verified file's, whose every byte is there, checked against the Hub's hash and durable.
    pub fn passthrough_file(&self, fh: u64) -> Option<std::fs::File> {
        let handle = self.handle(fh).ok()?;
        let content = handle.file.content();
        match self.store.file_record(&content) {
            Ok(Some(record)) if record.state == FileState::Verified => {}
            _ => return None,
        }
        match self.store.data_file(&content) {
            Ok(file) => file,
            Err(e) => {
                tracing::debug!(path = %handle.file.remote.path, error = %e, "no data file to pass through");
                None
            }
        }
    }

    /// The content the file inode `ino` shows.
    pub fn content_of(&self, ino: u64) -> Option<crate::manifest::ContentId> {
        file_content(&*self.inodes.get(ino)?)
    }

    /// Every inode that shows `content` (at any commit, in any view).
    pub fn inodes_of(&self, content: &crate::manifest::ContentId) -> Vec<u64> {
        self.inodes.find(|node| file_content(node) == Some(*content))
    }

    /// Push the chunks load plans store into the kernel's page cache (`fs::pages`), for the
    /// inodes `pages` serves through it. Set once the kernel has answered INIT.
    pub fn push_planned_chunks(
        self: &Arc<Self>,
        pages: Arc<dyn pages::KernelPages>,
    ) -> std::io::Result<()> {
        let weak = Arc::downgrade(self);
        let content_of: pages::ContentOf =
            Arc::new(move |ino| weak.upgrade().and_then(|fs| fs.content_of(ino)));
        let loads = Arc::downgrade(&self.loads);
        let on_pushed: pages::OnPushed = Box::new(move |content, index| {
            if let Some(loads) = loads.upgrade() {
                loads.pushed(content, index);
            }
        });
        let pusher = pages::Pusher::start(self.store.clone(), content_of, pages, on_pushed)?;
        self.loads.set_pusher(pusher);
        Ok(())
    }

    /// Called with a content the moment this process finds it bad (a whole-file hash
    /// mismatch): the FUSE edge drops the kernel's cached pages of its inodes.
    pub fn set_on_failed(&self, hook: Arc<dyn Fn(&crate::manifest::ContentId) + Send + Sync>) {
        self.chunks.set_on_failed(hook);
    }

    /// Read through a shared tier before the Hub, and write what the Hub sends to it: chunks,
    /// and the refs and manifests the Hub confirms. Set before the filesystem is shared.
    pub fn set_tier(&self, tier: Arc<crate::tier::TierClient>) {
        tier.access().set_ttl(self.revalidate());
        let _ = self.catalog.set(crate::tier::catalog::TierCatalog::new(tier.clone()));
        self.chunks.set_tier(tier);
    }

    /// Where each repo's bytes are kept ([`crate::profile`]). Set before the filesystem is
    /// shared.
    pub fn set_profiles(&self, profiles: Arc<crate::profile::Profiles>) {
        self.chunks.set_profiles(profiles);
    }

    /// Whether the shared tier holds `repo`'s metadata and bytes.
    fn shares(&self, repo: &RepoId) -> bool {
        self.chunks.shares_repo(repo)
    }

    /// Keep the store under a bound, never evicting files open here (and make room when the
    /// store is full). Set before the filesystem is shared.
    pub fn set_evictor(&mut self, evictor: Arc<Evictor>) {
        self.chunks.set_evictor(evictor.clone());
        self.activity = Some(evictor.clone());
        self.evictor = Some(evictor);
    }

    /// Where views learn whether a fetch for them is in flight (set by
    /// [`ModelFs::set_evictor`]; `modelfs status` sets one that only reads the leases).
    pub fn set_activity(&mut self, activity: Arc<dyn FetchActivity>) {
        self.activity = Some(activity);
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>, FsError> {
        lock(&self.handles).get(&fh).cloned().ok_or(FsError::BadHandle)
    }

    /// Tell the load plans of an answered read; a file of profile `none` has no plan (see
    /// `open`).
    fn after_read(&self, handle: &Handle, offset: u64, len: u64) {
        if !handle.streamed {
            self.loads.after_read(&handle.place, &handle.file, offset, len);
        }
    }

    /// Feed a read to the handle's sequential detector and start the read-ahead it calls for.
    fn read_ahead(&self, handle: &Handle, offset: u64, size: u32) {
        let cs = self.store.chunk_size();
        let mut ahead = lock(&handle.read_ahead).on_read(
            handle.file.remote.size,
            cs,
            self.prefetch.max_window,
            offset,
            size as u64,
        );
        let last = offset.saturating_add(size as u64).saturating_sub(1);
        if let Some(end) = self.loads.read_ahead_end(&handle.file.content(), last) {
            ahead.end = ahead.end.min(end.div_ceil(cs));
        }
        if !ahead.is_empty() {
            self.chunks.prefetch(&handle.file, ahead);
        }
    }

    /// Answer a read from the store alone, without waiting for anything: the bytes are shown
    /// to `reply` (straight from the store's memory when the read lies in one chunk, as
    /// nearly every kernel read does) and `Ok(true)` returned; `Ok(false)`, with `reply` not
    /// called, when a chunk it needs is not stored. This is the warm path, run on the FUSE
    /// thread.
    pub fn read_cached(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        reply: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, FsError> {
        if let Some(bytes) = self.hf_read(fh, offset, size) {
            reply(&bytes);
            return Ok(true);
        }
        let handle = self.handle(fh)?;
        let file = &handle.file;
        let content = file.content();
        let pieces = pieces(file.remote.size, self.store.chunk_size(), offset, size);
        let hit = match pieces.as_slice() {
            [] => {
                reply(&[]);
                true
            }
            [one] => self.store.visit_chunk(&content, one.index, one.range.clone(), reply)?,
            several => {
                let mut out = Vec::with_capacity(size as usize);
                let mut all = true;
                for piece in several {
                    if !self.store.read_chunk(
                        &content,
                        piece.index,
                        piece.range.clone(),
                        &mut out,
                    )? {
                        all = false;
                        break;
                    }
                }
                if all {
                    reply(&out);
                }
                all
            }
        };
        // A miss goes on to the async path, which records the read for read-ahead itself.
        if hit {
            let served = pieces.iter().map(|p| p.range.len()).sum();
            crate::metrics::get().read_bytes(crate::metrics::Source::Store, served);
            self.read_ahead(&handle, offset, size);
            self.after_read(&handle, offset, size as u64);
        }
        Ok(hit)
    }

    /// Read `size` bytes at `offset` (fewer only at the end of the file), fetching the chunks
    /// that are not stored.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        if let Some(bytes) = self.hf_read(fh, offset, size) {
            return Ok(bytes);
        }
        let handle = self.handle(fh)?;
        self.read_ahead(&handle, offset, size);
        let file = &handle.file;
        let content = file.content();
        let mut out = Vec::new();
        for piece in pieces(file.remote.size, self.store.chunk_size(), offset, size) {
            if !self.store.read_chunk(&content, piece.index, piece.range.clone(), &mut out)? {
                let chunk = self.chunks.chunk(file, piece.index).await.map_err(|e| {
                    // The log line the FUSE edge writes must say which file could not be read.
                    match FsError::from(e) {
                        FsError::Io(why) => FsError::Io(format!(
                            "{} in {}@{}: {why}",
                            file.remote.path,
                            file.remote.repo,
                            file.remote.commit.get(..12).unwrap_or(&file.remote.commit)
                        )),
                        other => other,
                    }
                })?;
                let bytes =
                    chunk.get(piece.range).ok_or_else(|| FsError::Io("short chunk".into()))?;
                out.extend_from_slice(bytes);
                crate::metrics::get().read_bytes(crate::metrics::Source::Network, bytes.len());
            } else {
                crate::metrics::get().read_bytes(crate::metrics::Source::Store, piece.range.len());
            }
        }
        self.after_read(&handle, offset, out.len() as u64);
        Ok(out)
    }

    /// Turn load plans on or off in a running mount (config reload).
    pub fn set_load_plans(&self, enabled: bool) {
        self.loads.set_enabled(enabled);
    }

    // ---------------------------------------------------------------- xattrs

    /// Every extended attribute of a node that has a value, full names, in listing order.
    pub async fn xattrs(&self, ino: u64) -> Result<Vec<(String, String)>, FsError> {
        let node = self.node(ino)?;
        let mut out: Vec<(&str, String)> = Vec::new();
        match &*node {
            Node::Root | Node::Org { .. } | Node::HfCache(_) => {}
            Node::File { snap, file, .. } => {
                let entry = snap.file(*file).ok_or(FsError::NotFound)?;
                let (status, cached) = self.file_status(entry)?;
                out.push(("status", status.to_string()));
                out.push(("cached_bytes", cached.to_string()));
                out.push(("size", entry.size.to_string()));
                if let Some(sha) = entry.hash.lfs_sha256_hex() {
                    out.push(("sha256", sha));
                }
                out.push(("revision", snap.manifest.commit.clone()));
            }
            Node::Dir { snap, view, dir: 0, .. } => {
                let files = snap.view(*view).map(|t| t.files.as_slice()).unwrap_or_default();
                out.push(("revision", snap.manifest.commit.clone()));
                self.push_progress(snap, files, &mut out)?;
            }
            Node::Dir { .. } => {}
            Node::Repo { repo, rev } => {
                let snap = self.snapshot(repo, rev.as_deref()).await?;
                out.push(("revision", snap.manifest.commit.clone()));
                self.push_progress(&snap, &snap.all.files, &mut out)?;
                // A repo without quants has no `quants` value (listxattr lists only names
                // that have one).
                if !snap.quants.is_empty() {
                    out.push(("quants", snap.quants.join(",")));
                }
                if let Some(tag) = &snap.manifest.pipeline_tag {
                    out.push(("pipeline_tag", tag.clone()));
                }
            }
        }
        Ok(out.into_iter().map(|(k, v)| (format!("{XATTR_PREFIX}{k}"), v)).collect())
    }

    pub async fn getxattr(&self, ino: u64, name: &str) -> Result<String, FsError> {
        self.xattrs(ino)
            .await?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or(FsError::NoAttr)
    }

    /// `(status, cached_bytes)` of one file, as the `status` xattr names it.
    fn file_status(&self, entry: &FileEntry) -> Result<(&'static str, u64), FsError> {
        if entry.size == 0 {
            // Nothing to fetch, nothing that can be wrong.
            return Ok(("verified", 0));
        }
        Ok(match self.store.file_record(&entry.hash.content_id())? {
            None => ("missing", 0),
            Some(r) if r.state == FileState::Failed => ("failed", r.cached_bytes),
            Some(r) if r.cached_bytes == 0 => ("missing", 0),
            Some(r) => (r.state.as_str(), r.cached_bytes.min(entry.size)),
        })
    }

    fn push_progress(
        &self,
        snap: &Snapshot,
        files: &[usize],
        out: &mut Vec<(&str, String)>,
    ) -> Result<(), FsError> {
        let fetching = self.activity.as_ref().map(|a| a.fetching()).unwrap_or_default();
        let (mut cached, mut total, mut failed, mut in_flight) = (0u64, 0u64, false, false);
        for entry in files.iter().filter_map(|&i| snap.file(i)) {
            let (status, bytes) = self.file_status(entry)?;
            failed |= status == "failed";
            in_flight |= fetching.contains(&entry.hash.content_id());
            cached += if entry.size == 0 { 0 } else { bytes };
            total += entry.size;
        }
        let status = view_status(failed, in_flight, cached, total);
        out.push(("status", status.to_string()));
        out.push(("progress", format!("{cached}/{total}")));
        Ok(())
    }
}

/// The content a file node shows; `None` for directories and the root.
fn file_content(node: &Node) -> Option<crate::manifest::ContentId> {
    match node {
        Node::File { snap, file, .. } => snap.file(*file).map(|f| f.hash.content_id()),
        _ => None,
    }
}

/// A view's `user.modelfs.status`, from what its files say: `failed` if one failed, else
/// `downloaded` once every byte is stored, else `downloading` while some process fetches one
/// of its files, else `partial` if some bytes are stored, else `available`.
pub fn view_status(failed: bool, in_flight: bool, cached: u64, total: u64) -> &'static str {
    if failed {
        "failed"
    } else if cached >= total {
        "downloaded"
    } else if in_flight {
        "downloading"
    } else if cached == 0 {
        "available"
    } else {
        "partial"
    }
}

/// The part of one chunk a read needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub index: u64,
    /// Relative to the chunk's start.
    pub range: std::ops::Range<usize>,
}

/// Split the read `[offset, offset+size)` of a file of `file_size` bytes into per-chunk
/// pieces, clipped at the end of the file. Empty at or past the end.
pub fn pieces(file_size: u64, chunk_size: u64, offset: u64, size: u32) -> Vec<Piece> {
    let end = offset.saturating_add(size as u64).min(file_size);
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        let index = pos / chunk_size;
        let chunk_start = index * chunk_size;
        let chunk_end = chunk_start + chunk_len(file_size, chunk_size, index);
        let stop = end.min(chunk_end);
        out.push(Piece {
            index,
            range: (pos - chunk_start) as usize..(stop - chunk_start) as usize,
        });
        pos = stop;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::{verify_file, Verdict};
    use crate::fs::testing::{names, offline, read_all, walk};
    use crate::hub::memory::MemoryHub;
    use crate::hub::{LinkEstimate, RemoteFile};
    use crate::store::memory::MemoryStore;
    use proptest::prelude::*;

    const CS: u64 = 1000;
    const C1: &str = "1111111111111111111111111111111111111111";
    const C2: &str = "2222222222222222222222222222222222222222";

    fn data(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    struct World {
        fs: Arc<ModelFs>,
        hub: Arc<MemoryHub>,
        store: Arc<MemoryStore>,
    }

    /// No read-ahead: fetch counts are exactly the reads' own.
    fn world(config: FsConfig) -> World {
        world_with(config, PrefetchLimits::NONE)
    }

    fn world_with(config: FsConfig, prefetch: PrefetchLimits) -> World {
        let hub = Arc::new(MemoryHub::new());
        hub.add_repo(
            RepoId::new("org", "repo"),
            C1,
            "main",
            Some("text-generation"),
            vec![
                ("config.json", data(1, 10), false),
                ("onnx/model.onnx", data(2, 2500), true),
                ("onnx/model_q4.onnx", data(3, 3000), true),
                ("onnx/model_q4.onnx_data", data(4, 999), true),
                ("empty.txt", vec![], false),
            ],
        );
        let store = Arc::new(MemoryStore::new(CS));
        let fs = Arc::new(ModelFs::new(
            config,
            store.clone(),
            hub.clone(),
            hub.clone(),
            Duration::from_secs(5),
            prefetch,
        ));
        World { fs, hub, store }
    }

    #[tokio::test]
    async fn namespace_lists_views_and_files() {
        let w = world(FsConfig::default());
        assert_eq!(names(&w.fs, "org/repo").await, ["fp32", "q4", "all"]);
        assert_eq!(names(&w.fs, "org/repo/q4").await, ["config.json", "empty.txt", "onnx"]);
        assert_eq!(names(&w.fs, "org/repo/q4/onnx").await, ["model_q4.onnx", "model_q4.onnx_data"]);
        assert_eq!(names(&w.fs, "org/repo/Q4/onnx").await, ["model_q4.onnx", "model_q4.onnx_data"]);
        assert_eq!(names(&w.fs, "org/repo/all/onnx").await.len(), 3);
        assert_eq!(names(&w.fs, "").await, [HF_CACHE_DIR, "org"]);
        assert_eq!(names(&w.fs, "org").await, ["repo"]);
        // Same path, same inode; different spelling of a view, different directory inode.
        assert_eq!(walk(&w.fs, "org/repo/q4").await, walk(&w.fs, "org/repo/q4").await);
        assert_ne!(walk(&w.fs, "org/repo/q4").await, walk(&w.fs, "org/repo/Q4").await);
        assert_eq!(walk(&w.fs, "org/nope").await, Err(FsError::NotFound));
        assert_eq!(walk(&w.fs, "org/repo/q8").await, Err(FsError::NotFound));
        assert_eq!(walk(&w.fs, "org/repo/all/config.json/x").await, Err(FsError::NotDir));
        assert_eq!(walk(&w.fs, "bad..org").await, Err(FsError::NotFound));
    }

    #[tokio::test]
    async fn reads_are_byte_exact_and_writes_refused() {
        let w = world(FsConfig::default());
        assert_eq!(
            read_all(&w.fs, "org/repo/all/onnx/model_q4.onnx").await.unwrap(),
            data(3, 3000)
        );
        assert_eq!(read_all(&w.fs, "org/repo/all/empty.txt").await.unwrap(), Vec::<u8>::new());
        let ino = walk(&w.fs, "org/repo/all/onnx/model.onnx").await.unwrap();
        assert_eq!(w.fs.open(ino, true), Err(FsError::ReadOnly));
        let dir = walk(&w.fs, "org/repo/all/onnx").await.unwrap();
        assert_eq!(w.fs.open(dir, false), Err(FsError::IsDir));
        let fh = w.fs.open(ino, false).unwrap();
        // A read spanning a chunk boundary, then the warm path answers it alone.
        assert_eq!(w.fs.read(fh, 990, 20).await.unwrap(), data(2, 2500)[990..1010]);
        let cached = |offset, size| {
            let mut got = None;
            let hit = w.fs.read_cached(fh, offset, size, &mut |b| got = Some(b.to_vec())).unwrap();
            assert_eq!(hit, got.is_some());
            got
        };
        assert_eq!(cached(990, 20).unwrap(), data(2, 2500)[990..1010]);
        assert_eq!(cached(100, 20).unwrap(), data(2, 2500)[100..120]);
        assert_eq!(cached(2100, 10), None, "chunk 2 was never fetched");
        assert_eq!(w.fs.read(fh, 2500, 10).await.unwrap(), Vec::<u8>::new());
    }

    #[tokio::test]
    async fn concurrent_readers_share_one_fetch() {
        let w = world(FsConfig::default());
        w.hub.set_fetch_delay(Duration::from_millis(100));
        let ino = walk(&w.fs, "org/repo/all/onnx/model.onnx").await.unwrap();
        let before = w.hub.fetch_count();
        let mut tasks = Vec::new();
        for i in 0..16u64 {
            let fs = w.fs.clone();
            tasks.push(tokio::spawn(async move {
                let fh = fs.open(ino, false).unwrap();
                fs.read(fh, 1000 + i * 10, 10).await.unwrap()
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let start = 1000 + i * 10;
            assert_eq!(t.await.unwrap(), data(2, 2500)[start..start + 10]);
        }
        assert_eq!(w.hub.fetch_count() - before, 1);
    }

    #[tokio::test]
    async fn sequential_reads_fetch_ahead_and_random_reads_do_not() {
        let limits =
            PrefetchLimits { max_in_flight: 4, max_window: 4 * CS, run_chunks: 1, parts: 1 };
        let w = world_with(FsConfig::default(), limits);
        w.hub.add_repo(
            RepoId::new("org", "big"),
            C2,
            "main",
            None,
            vec![("seq.bin", data(7, 20_000), true), ("rnd.bin", data(8, 20_000), true)],
        );
        let seq = walk(&w.fs, "org/big/all/seq.bin").await.unwrap();
        let fh = w.fs.open(seq, false).unwrap();
        let want = data(7, 20_000);
        let content = crate::hub::memory::hub_hash(&want, true).content_id();
        let stored = |n: u64| (0..n).filter(|&i| w.store.has_chunk(&content, i).unwrap()).count();
        let settle = |n: usize| {
            let stored = &stored;
            async move {
                for _ in 0..200 {
                    if stored(20) >= n {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        // Sequential reads inside chunk 0 (a header): only chunk 0 is fetched.
        assert_eq!(w.fs.read(fh, 0, 500).await.unwrap(), want[..500]);
        assert_eq!(w.fs.read(fh, 500, 400).await.unwrap(), want[500..900]);
        settle(2).await;
        assert_eq!(stored(20), 1);
        // Crossing into chunk 1 opens a two-chunk window past the reader: chunks 0..4.
        assert_eq!(w.fs.read(fh, 900, 200).await.unwrap(), want[900..1100]);
        settle(4).await;
        assert_eq!(stored(20), 4, "chunks 0..4 and nothing beyond the window");
        // Entering chunk 2 doubles the window, capped at 4 chunks: chunks 0..7.
        assert_eq!(w.fs.read(fh, 1100, 1000).await.unwrap(), want[1100..2100]);
        settle(7).await;
        assert_eq!(stored(20), 7);
        // Random reads (far apart) fetch exactly the chunk each needs.
        let rnd = walk(&w.fs, "org/big/all/rnd.bin").await.unwrap();
        let fh = w.fs.open(rnd, false).unwrap();
        let before = w.hub.fetch_count();
        for off in [15_500u64, 3_200, 11_100, 7_900] {
            let want = &data(8, 20_000)[off as usize..off as usize + 10];
            assert_eq!(w.fs.read(fh, off, 10).await.unwrap(), want);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(w.hub.fetch_count() - before, 4);
    }

    #[tokio::test]
    async fn coalesced_read_ahead_asks_one_range_per_run_and_readers_join_it() {
        // Memory for 8 chunks over 2 connections: runs of 4 adjacent chunks per request.
        let limits =
            PrefetchLimits { max_in_flight: 2, max_window: 8 * CS, run_chunks: 4, parts: 1 };
        let w = world_with(FsConfig::default(), limits);
        let want = data(9, 20_000);
        w.hub.add_repo(
            RepoId::new("org", "big"),
            C2,
            "main",
            None,
            vec![("f.bin", want.clone(), true)],
        );
        let ino = walk(&w.fs, "org/big/all/f.bin").await.unwrap();
        let fh = w.fs.open(ino, false).unwrap();
        // Every request is slow, so the reader catches up with read-ahead still in flight, and
        // the link looks slow to answer against what a chunk takes, so runs are the longest.
        w.hub.set_fetch_delay(Duration::from_millis(150));
        let slow = LinkEstimate { first_byte: Duration::from_secs(1), bytes_per_sec: 1e9 };
        w.hub.set_link(Some(slow));
        let mut off = 0u64;
        while off < 20_000 {
            let n = 700.min(20_000 - off) as u32;
            let got = w.fs.read(fh, off, n).await.unwrap();
            assert_eq!(got, want[off as usize..(off + n as u64) as usize], "at {off}");
            off += n as u64;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        let ranges: Vec<_> = w.hub.fetched_ranges().into_iter().map(|(_, r)| r).collect();
        // Each chunk was asked for exactly once, whoever asked: readers that caught up with a
        // run in flight waited for it instead of asking again.
        let mut asked: Vec<u64> =
            ranges.iter().flat_map(|r| r.start / CS..r.end.div_ceil(CS)).collect();
        asked.sort_unstable();
        assert_eq!(asked, (0..20).collect::<Vec<_>>(), "ranges asked: {ranges:?}");
        // Read-ahead coalesced: some request carried more than one chunk, none more than four.
        assert!(ranges.iter().any(|r| r.end - r.start > CS), "ranges asked: {ranges:?}");
        assert!(ranges.iter().all(|r| r.end - r.start <= 4 * CS), "ranges asked: {ranges:?}");
        assert!(ranges.len() < 20, "{} requests for 20 chunks", ranges.len());
    }

    #[tokio::test]
    async fn failed_fetch_is_an_io_error_and_is_retried_next_time() {
        let w = world(FsConfig::default());
        let ino = walk(&w.fs, "org/repo/all/config.json").await.unwrap();
        let fh = w.fs.open(ino, false).unwrap();
        w.hub.set_offline(true);
        assert!(matches!(w.fs.read(fh, 0, 10).await, Err(FsError::Io(_))));
        w.hub.set_offline(false);
        assert_eq!(w.fs.read(fh, 0, 10).await.unwrap(), data(1, 10));
    }

    #[tokio::test]
    async fn a_file_that_failed_verification_is_eio_and_not_fetched_again() {
        let w = world(FsConfig::default());
        let ino = walk(&w.fs, "org/repo/all/onnx/model.onnx").await.unwrap();
        let content = crate::hub::memory::hub_hash(&data(2, 2500), true).content_id();
        w.store.put_chunk(&content, 2500, 0, &data(2, 2500)[..1000]).unwrap();
        w.store.discard_file(&content, FileState::Failed).unwrap();
        let fh = w.fs.open(ino, false).unwrap();
        let before = w.hub.fetch_count();
        assert!(matches!(w.fs.read(fh, 0, 10).await, Err(FsError::Io(_))));
        assert_eq!(w.hub.fetch_count(), before);
        assert_eq!(w.fs.getxattr(ino, "user.modelfs.status").await.unwrap(), "failed");
    }

    #[tokio::test]
    async fn branch_moves_but_open_handles_keep_their_commit() {
        let w = world(FsConfig { revalidate: Duration::ZERO, ..FsConfig::default() });
        let ino = walk(&w.fs, "org/repo/all/config.json").await.unwrap();
        let fh = w.fs.open(ino, false).unwrap();
        w.hub.add_repo(
            RepoId::new("org", "repo"),
            C2,
            "main",
            None,
            vec![("config.json", data(9, 10), false)],
        );
        assert_eq!(read_all(&w.fs, "org/repo/all/config.json").await.unwrap(), data(9, 10));
        assert_eq!(w.fs.read(fh, 0, 10).await.unwrap(), data(1, 10));
        assert_eq!(
            read_all(&w.fs, &format!("org/repo@{C1}/all/config.json")).await.unwrap(),
            data(1, 10)
        );
        let repo = walk(&w.fs, "org/repo").await.unwrap();
        assert_eq!(w.fs.getxattr(repo, "user.modelfs.revision").await.unwrap(), C2);
    }

    /// A reloaded `revalidate` applies to branches already resolved: trusted for ten minutes,
    /// the moved branch is not seen; with the interval set to zero it is, at the next lookup.
    #[tokio::test]
    async fn a_new_revalidate_interval_applies_to_resolved_branches() {
        let w = world(FsConfig::default());
        assert_eq!(read_all(&w.fs, "org/repo/all/config.json").await.unwrap(), data(1, 10));
        let moved = vec![("config.json", data(9, 10), false)];
        w.hub.add_repo(RepoId::new("org", "repo"), C2, "main", None, moved);
        assert_eq!(read_all(&w.fs, "org/repo/all/config.json").await.unwrap(), data(1, 10));
        w.fs.set_revalidate(Duration::ZERO);
        assert_eq!(read_all(&w.fs, "org/repo/all/config.json").await.unwrap(), data(9, 10));
    }

    #[tokio::test]
    async fn hub_outage_serves_the_last_known_commit_and_offline_serves_the_store() {
        let w = world(FsConfig { revalidate: Duration::ZERO, ..FsConfig::default() });
        assert_eq!(read_all(&w.fs, "org/repo/all/config.json").await.unwrap(), data(1, 10));
        w.hub.set_offline(true);
        assert_eq!(read_all(&w.fs, "org/repo/all/config.json").await.unwrap(), data(1, 10));
        assert!(matches!(
            read_all(&w.fs, "org/repo/all/onnx/model.onnx").await,
            Err(FsError::Io(_))
        ));
        // Never seen and the Hub unreachable: an I/O error, not a claim that it does not exist.
        assert!(matches!(walk(&w.fs, "org/other").await, Err(FsError::Io(_))));

        // A new mount over the same store, with no Hub at all.
        let offline = offline(w.store.clone());
        assert_eq!(read_all(&offline, "org/repo/all/config.json").await.unwrap(), data(1, 10));
        assert!(matches!(
            read_all(&offline, "org/repo/all/onnx/model.onnx").await,
            Err(FsError::Io(_))
        ));
        assert_eq!(walk(&offline, "org/other").await, Err(FsError::NotFound));
    }

    /// A Hub that stops answering: while `down`, resolutions hang (as retries against refused
    /// connections would, for the whole read timeout) and `unreachable` says so at once.
    struct Outage {
        hub: Arc<MemoryHub>,
        down: std::sync::atomic::AtomicBool,
        up: tokio::sync::Notify,
    }

    impl Outage {
        async fn until_up(&self) {
            loop {
                let up = self.up.notified();
                if !self.down.load(Ordering::SeqCst) {
                    return;
                }
                up.await;
            }
        }
    }

    impl RepoSource for Outage {
        fn resolve<'a>(
            &'a self,
            repo: &'a RepoId,
            rev: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<crate::hub::RevisionInfo, HubError>> {
            Box::pin(async move {
                self.until_up().await;
                self.hub.resolve(repo, rev).await
            })
        }

        fn list_files<'a>(
            &'a self,
            repo: &'a RepoId,
            commit: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<Vec<crate::hub::TreeEntry>, HubError>> {
            self.hub.list_files(repo, commit)
        }

        fn unreachable(&self) -> futures::future::BoxFuture<'_, ()> {
            Box::pin(async move {
                if !self.down.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
            })
        }
    }

    /// Offline first (doc/SEMANTICS.md, "When the Hub does not answer"): with the Hub refusing
    /// connections, a lookup whose revalidation is due answers at once from the last known
    /// commit (no waiting out retries), and the revalidation finishes in the background when
    /// the Hub is back.
    #[tokio::test]
    async fn an_unreachable_hub_costs_lookups_nothing_and_revalidation_goes_on_behind() {
        let w = world(FsConfig::default());
        let outage = Arc::new(Outage {
            hub: w.hub.clone(),
            down: false.into(),
            up: tokio::sync::Notify::new(),
        });
        let config = FsConfig { revalidate: Duration::ZERO, ..FsConfig::default() };
        let fs = ModelFs::new(
            config,
            w.store.clone(),
            outage.clone(),
            w.hub.clone(),
            Duration::from_secs(60),
            PrefetchLimits::NONE,
        );
        assert_eq!(read_all(&fs, "org/repo/all/config.json").await.unwrap(), data(1, 10));
        outage.down.store(true, Ordering::SeqCst);
        w.hub.add_repo(
            RepoId::new("org", "repo"),
            C2,
            "main",
            None,
            vec![("new.txt", data(9, 5), false)],
        );
        for _ in 0..3 {
            let snap = tokio::time::timeout(
                Duration::from_secs(5),
                fs.snapshot(&RepoId::new("org", "repo"), None),
            )
            .await
            .expect("a lookup waited for an unreachable Hub")
            .unwrap();
            assert_eq!(snap.manifest.commit, C1);
        }
        let repo = RepoId::new("org", "repo");
        assert_eq!(w.store.get_ref(&repo, "main").unwrap().unwrap().commit, C1);
        outage.down.store(false, Ordering::SeqCst);
        outage.up.notify_waiters();
        for _ in 0..100 {
            if w.store.get_ref(&repo, "main").unwrap().unwrap().commit == C2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            w.store.get_ref(&repo, "main").unwrap().unwrap().commit,
            C2,
            "revalidated behind"
        );
        assert_eq!(fs.snapshot(&repo, None).await.unwrap().manifest.commit, C2);
        // A pull (no stale commits) would have waited for the Hub instead: it must not hide
        // that it could not ask.
    }

    /// A store that cannot keep chunks (full, damaged) costs one fetch per chunk, not one per
    /// kernel read: the last chunks are kept in memory.
    #[tokio::test]
    async fn a_store_that_cannot_store_streams_each_chunk_once() {
        let w = world(FsConfig::default());
        w.store.set_refuse_writes(true);
        let ino = walk(&w.fs, "org/repo/all/onnx/model.onnx").await.unwrap();
        let fh = w.fs.open(ino, false).unwrap();
        let want = data(2, 2500);
        for off in (0..2500u64).step_by(100) {
            let got = w.fs.read(fh, off, 100).await.unwrap();
            assert_eq!(got, want[off as usize..off as usize + 100]);
        }
        assert_eq!(w.hub.fetch_count(), 3, "three chunks, each fetched once");
        assert_eq!(w.store.file_record(&hub_hash_of(&want)).unwrap(), None, "nothing stored");
    }

    /// Let spawned tasks (and the blocking threads they wait on) run to completion.
    async fn settle() {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn hub_hash_of(bytes: &[u8]) -> crate::manifest::ContentId {
        crate::hub::memory::hub_hash(bytes, true).content_id()
    }

    /// A file read front to back (or in any order, from its first chunk on) is verified as its
    /// last chunk lands, hashed as the chunks came: no second read of the whole file, and no
    /// long window in which it is complete but unchecked.
    #[tokio::test]
    async fn a_file_stored_from_its_first_chunk_is_verified_as_its_last_lands() {
        let w = world(FsConfig::default());
        let ino = walk(&w.fs, "org/repo/all/onnx/model.onnx").await.unwrap();
        let content = hub_hash_of(&data(2, 2500));
        let fh = w.fs.open(ino, false).unwrap();
        for off in [0u64, 2000] {
            w.fs.read(fh, off, 10).await.unwrap();
            settle().await;
            let state = w.store.file_record(&content).unwrap().unwrap().state;
            assert_eq!(state, FileState::Partial, "after reading chunk {}", off / CS);
        }
        w.fs.read(fh, 1000, 10).await.unwrap();
        settle().await;
        let state = w.store.file_record(&content).unwrap().unwrap().state;
        assert_eq!(state, FileState::Verified, "not verified as the last chunk landed");
        // Hashed in order from the store, so the background pass never ran for it.
        assert!(!w.fs.chunks.was_verified_in_background(&content));
        // Its first chunk stored by another process (no prefix here): the background pass
        // decides once the rest lands.
        let other = walk(&w.fs, "org/repo/all/onnx/model_q4.onnx").await.unwrap();
        let bytes = data(3, 3000);
        let content = hub_hash_of(&bytes);
        w.store.put_chunk(&content, 3000, 0, &bytes[..1000]).unwrap();
        let fh = w.fs.open(other, false).unwrap();
        for off in [1000u64, 2000] {
            w.fs.read(fh, off, 10).await.unwrap();
        }
        for _ in 0..200 {
            if w.store.file_record(&content).unwrap().unwrap().state == FileState::Verified {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never verified");
    }

    #[test]
    fn view_status_names_each_case() {
        assert_eq!(view_status(true, true, 5, 10), "failed");
        assert_eq!(view_status(false, true, 10, 10), "downloaded");
        assert_eq!(view_status(false, true, 5, 10), "downloading");
        assert_eq!(view_status(false, false, 5, 10), "partial");
        assert_eq!(view_status(false, false, 0, 10), "available");
        assert_eq!(view_status(false, true, 0, 10), "downloading");
    }

    #[tokio::test]
    async fn xattrs_follow_the_download() {
        let w = world(FsConfig::default());
        let file = walk(&w.fs, "org/repo/q4/onnx/model_q4.onnx").await.unwrap();
        let view = walk(&w.fs, "org/repo/q4").await.unwrap();
        let repo = walk(&w.fs, "org/repo").await.unwrap();
        let get = |ino, n: &'static str| {
            let fs = w.fs.clone();
            async move { fs.getxattr(ino, &format!("{XATTR_PREFIX}{n}")).await }
        };
        assert_eq!(get(file, "status").await.unwrap(), "missing");
        assert_eq!(get(view, "progress").await.unwrap(), "0/4009");
        assert_eq!(get(repo, "quants").await.unwrap(), "fp32,q4");
        assert_eq!(get(repo, "pipeline_tag").await.unwrap(), "text-generation");
        assert_eq!(get(file, "nope").await, Err(FsError::NoAttr));
        let fh = w.fs.open(file, false).unwrap();
        w.fs.read(fh, 0, 1).await.unwrap();
        assert_eq!(get(file, "status").await.unwrap(), "partial");
        assert_eq!(get(file, "cached_bytes").await.unwrap(), "1000");
        assert_eq!(get(view, "status").await.unwrap(), "partial");
        w.fs.read(fh, 0, 3000).await.unwrap();
        // Verification runs in the background once the last chunk lands.
        for _ in 0..200 {
            if get(file, "status").await.unwrap() == "verified" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(get(file, "status").await.unwrap(), "verified");
    }

    #[test]
    fn verification_discards_a_file_that_does_not_match() {
        let store = MemoryStore::new(CS);
        let good = data(5, 1500);
        let file = FileRef {
            remote: RemoteFile {
                repo: RepoId::new("o", "r"),
                commit: C1.into(),
                path: "w.bin".into(),
                size: 1500,
            },
            hash: crate::hub::memory::hub_hash(&good, true),
        };
        let mut bad = good.clone();
        bad[1234] ^= 1;
        store.put_chunk(&file.content(), 1500, 0, &bad[..1000]).unwrap();
        store.put_chunk(&file.content(), 1500, 1, &bad[1000..]).unwrap();
        assert_eq!(verify_file(&store, &file).unwrap(), Verdict::Mismatch);
        let rec = store.file_record(&file.content()).unwrap().unwrap();
        assert_eq!((rec.state, rec.cached_bytes), (FileState::Failed, 0));
        store.put_chunk(&file.content(), 1500, 0, &good[..1000]).unwrap();
        assert_eq!(verify_file(&store, &file).unwrap(), Verdict::Incomplete);
        store.put_chunk(&file.content(), 1500, 1, &good[1000..]).unwrap();
        assert_eq!(verify_file(&store, &file).unwrap(), Verdict::Match);
        assert_eq!(store.file_record(&file.content()).unwrap().unwrap().state, FileState::Verified);
    }

    proptest! {
        /// Pieces cover exactly the requested bytes that exist, in order, each inside one chunk.
        #[test]
        fn pieces_tile_the_read(size in 0u64..100_000, cs in 1u64..5_000, offset in 0u64..120_000, len in 0u32..40_000) {
            let ps = pieces(size, cs, offset, len);
            let want_end = (offset + len as u64).min(size);
            let mut pos = offset;
            for p in &ps {
                let start = p.index * cs + p.range.start as u64;
                prop_assert_eq!(start, pos);
                prop_assert!(p.range.start < p.range.end);
                prop_assert!(p.range.end as u64 <= chunk_len(size, cs, p.index));
                pos = p.index * cs + p.range.end as u64;
            }
            if offset < want_end { prop_assert_eq!(pos, want_end); } else { prop_assert!(ps.is_empty()); }
        }
    }
}
