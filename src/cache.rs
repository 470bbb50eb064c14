//! [`ModelCache`]: modelfs as a library, for programs that cannot mount (a container without
//! `/dev/fuse`, a notebook, a test suite). It opens the same store a mount uses, with the same
//! options and defaults (`--store`, `HF_ENDPOINT`, the token as huggingface_hub finds it,
//! `HF_HUB_OFFLINE`, the config file, a tier), and goes through the same code: revisions are
//! resolved and recorded by [`ModelFs::snapshot`], files are read through [`ModelFs`] handles
//! (single flight, read-ahead, whole-file verification, leases that keep eviction off open
//! files), downloads run [`crate::commands::pull_into`], and manifests are the views' xattrs
//! that `modelfs status` reads. So what the library fetches a mount serves, and the other way
//! round, and the xattrs of a mount show a library download as it goes. `modelfs pull` and
//! `modelfs status` are built on it.
//!
//! The API is blocking: a [`ModelCache`] owns a small tokio runtime and must not be called
//! from inside another one (use `spawn_blocking`). Errors are one enum, [`CacheError`], with
//! an [`ErrorKind`] a caller (the Python package) maps without reading messages.
//!
//! ```no_run
//! use std::io::{Read, Seek, SeekFrom};
//! use modelfs::cache::{CacheOptions, ModelCache, QuantStatus};
//!
//! let cache = ModelCache::open(CacheOptions::default())?;
//! let manifest = cache.scan_repo("onnx-community/Qwen2.5-0.5B-Instruct")?;
//! println!("{} at {}: quants {:?}", manifest.repo, manifest.commit, manifest.quants.keys());
//! cache.download_quant("onnx-community/Qwen2.5-0.5B-Instruct", "q4f16", |loaded, total| {
//!     eprintln!("{loaded}/{total}");
//!     true // false stops the download
//! })?;
//! let status = cache.get_manifest("onnx-community/Qwen2.5-0.5B-Instruct")?;
//! assert_eq!(status.quants["q4f16"].status, QuantStatus::Downloaded);
//! let config = cache.get_file("onnx-community/Qwen2.5-0.5B-Instruct", "config.json")?;
//! let mut f = cache.open_file("onnx-community/Qwen2.5-0.5B-Instruct", "onnx/model_q4f16.onnx")?;
//! f.seek(SeekFrom::Start(1024))?;
//! let mut head = [0u8; 16];
//! f.read_exact(&mut head)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::StoreArgs;
use crate::commands::{CommandError, Progress, PullReport, PullRequest, StatusReport, Target};
use crate::evict::{Evictor, Policy};
use crate::fetch::PrefetchLimits;
use crate::fs::{FsConfig, FsError, ModelFs, ROOT_INO};
use crate::hub::client::{HubClient, HubConfig};
use crate::hub::{HubError, RangeFetcher, RepoSource};
use crate::store::mdbx::MdbxStore;
use crate::store::{ChunkStore, DEFAULT_CHUNK_SIZE};
use crate::tier::{ObjectTier, TierClient};

/// Chunk fetches a download keeps in flight unless told otherwise: the CLI's `pull` default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// How long one fetch may wait for the Hub, retries included: the CLI's default.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How a [`ModelCache`] is opened. `Default` is what the CLI does with no flags.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// Store directory; `None`: `$MODELFS_STORE`, the config file's, the running mount's, or
    /// the default (`~/.cache/modelfs`), as the store commands find it.
    pub store: Option<PathBuf>,
    /// Configuration file; `None`: `/etc/modelfs/config.toml` when present.
    pub config: Option<PathBuf>,
    /// Hub endpoint; `None`: `$HF_ENDPOINT`, the config file's, or https://huggingface.co.
    pub endpoint: Option<String>,
    /// Token; `None`: `HF_TOKEN`, `HF_TOKEN_PATH`, `$HF_HOME/token`, as huggingface_hub.
    pub token: Option<String>,
    /// No network: only what the store holds (also when `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// A tier shared by many nodes (`s3://BUCKET/PREFIX`, `file:///DIR`); `None`: the config
    /// file's, unless `config_tier` is off.
    pub tier: Option<String>,
    /// Whether the config file's `tier` applies when `tier` is `None` (`modelfs pull` decides
    /// per repo, from its profile).
    pub config_tier: bool,
    pub max_connections: usize,
    pub read_timeout: Duration,
    /// Chunk size if the store is created now.
    pub chunk_size: Option<u64>,
    /// Only look: the store must exist, nothing is created in it, no lease is taken (the
    /// store may be read-only to this user), and the Hub is never asked. What `modelfs status`
    /// opens.
    pub inspect: bool,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            store: None,
            config: None,
            endpoint: None,
            token: None,
            offline: false,
            tier: None,
            config_tier: true,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            read_timeout: DEFAULT_READ_TIMEOUT,
            chunk_size: None,
            inspect: false,
        }
    }
}

/// What kind of failure a [`CacheError`] is, for callers that map it (Python's
/// `FileNotFoundError`, `PermissionError`, `OSError`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No such repo, revision, quant or file.
    NotFound,
    /// Gated or private, without a token the Hub accepts.
    PermissionDenied,
    /// The Hub does not answer, a file failed its checks, the store failed.
    Io,
    /// A repo id, option or argument that cannot be right.
    InvalidInput,
    /// The progress callback stopped the download.
    Interrupted,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{what}: {source}")]
    Fs { what: String, source: FsError },
    #[error(transparent)]
    Command(#[from] CommandError),
}

impl CacheError {
    fn fs(what: impl Into<String>, source: FsError) -> Self {
        CacheError::Fs { what: what.into(), source }
    }

    pub fn kind(&self) -> ErrorKind {
        fn of_fs(e: &FsError) -> ErrorKind {
            match e {
                FsError::NotFound | FsError::NotDir | FsError::NoAttr => ErrorKind::NotFound,
                FsError::IsDir => ErrorKind::InvalidInput,
                FsError::Denied(_) => ErrorKind::PermissionDenied,
                FsError::Io(_) | FsError::ReadOnly | FsError::BadHandle => ErrorKind::Io,
            }
        }
        match self {
            CacheError::Fs { source, .. } => of_fs(source),
            CacheError::Command(e) => match e {
                CommandError::Resolve { source, .. } => of_fs(source),
                CommandError::UnknownQuant { .. }
                | CommandError::NothingSelected { .. }
                | CommandError::NotInStore(_)
                | CommandError::NoStore(_) => ErrorKind::NotFound,
                CommandError::Hub(HubError::NotFound(_)) => ErrorKind::NotFound,
                CommandError::Hub(HubError::Denied(_)) => ErrorKind::PermissionDenied,
                CommandError::BadTarget(_)
                | CommandError::BadGlob { .. }
                | CommandError::Endpoint(..)
                | CommandError::StoreNotDir(_)
                | CommandError::Config(_) => ErrorKind::InvalidInput,
                CommandError::Cancelled => ErrorKind::Interrupted,
                _ => ErrorKind::Io,
            },
        }
    }
}

impl From<CacheError> for CommandError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Command(e) => e,
            CacheError::Fs { what, source } => CommandError::Resolve { target: what, source },
        }
    }
}

impl From<CacheError> for std::io::Error {
    fn from(e: CacheError) -> Self {
        let kind = match e.kind() {
            ErrorKind::NotFound => std::io::ErrorKind::NotFound,
            ErrorKind::PermissionDenied => std::io::ErrorKind::PermissionDenied,
            ErrorKind::InvalidInput => std::io::ErrorKind::InvalidInput,
            ErrorKind::Interrupted => std::io::ErrorKind::Interrupted,
            ErrorKind::Io => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// A repo at one commit: its files and its views.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoManifest {
    /// `org/name`.
    pub repo: String,
    pub commit: String,
    pub pipeline_tag: Option<String>,
    pub files: Vec<RepoFile>,
    /// Every quant view by the name the mount shows, and `all`.
    pub quants: BTreeMap<String, Quant>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoFile {
    pub path: String,
    pub size: u64,
    /// The LFS sha256 in hex; `None` for a file stored in git.
    pub sha256: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quant {
    pub name: String,
    /// Repo paths of its files: its own and every shared one, as the mount lists them.
    pub files: Vec<String>,
    pub total_bytes: u64,
}

/// Download state of a quant view, as its `user.modelfs.status` xattr says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantStatus {
    /// Nothing stored.
    Available,
    /// Some bytes stored, no fetch in flight.
    Partial,
    /// A fetch for one of its files is in flight, in any process on the store.
    Downloading,
    /// Every byte stored.
    Downloaded,
    /// A file failed its whole-file check.
    Failed,
}

impl QuantStatus {
    fn parse(s: &str) -> Self {
        match s {
            "downloaded" => QuantStatus::Downloaded,
            "downloading" => QuantStatus::Downloading,
            "partial" => QuantStatus::Partial,
            "failed" => QuantStatus::Failed,
            _ => QuantStatus::Available,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            QuantStatus::Available => "available",
            QuantStatus::Partial => "partial",
            QuantStatus::Downloading => "downloading",
            QuantStatus::Downloaded => "downloaded",
            QuantStatus::Failed => "failed",
        }
    }
}

/// A repo's views with what the store holds of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestStatus {
    pub repo: String,
    pub commit: String,
    pub quants: BTreeMap<String, QuantState>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantState {
    pub status: QuantStatus,
    pub cached_bytes: u64,
    pub total_bytes: u64,
}

/// The model cache: a store, the Hub, and the filesystem core that serves them.
pub struct ModelCache {
    inner: Arc<Inner>,
}

struct Inner {
    // Dropped last (fields drop in order): tasks of the others run on it.
    fs: Arc<ModelFs>,
    store: Arc<dyn ChunkStore>,
    source: Arc<dyn RepoSource>,
    origin: Arc<dyn RangeFetcher>,
    store_dir: Option<PathBuf>,
    lease: Option<Arc<Evictor>>,
    tier: Option<Arc<TierClient>>,
    max_connections: usize,
    read_timeout: Duration,
    rt: tokio::runtime::Runtime,
}

impl ModelCache {
    /// Open the store (created unless `existing_store_only`) and the Hub client as the CLI
    /// does, merging `options` with the environment and the config file: options first.
    pub fn open(options: CacheOptions) -> Result<Self, CacheError> {
        let store_args = StoreArgs { store: options.store.clone(), config: options.config.clone() };
        let config = store_args.resolve(|k| std::env::var(k).ok()).map_err(CommandError::Config)?;
        let store: Arc<dyn ChunkStore> = if options.inspect {
            crate::commands::open_existing(&config.store)?
        } else {
            let chunk_size =
                options.chunk_size.or(config.file.chunk_size).unwrap_or(DEFAULT_CHUNK_SIZE);
            Arc::new(MdbxStore::open(&config.store, chunk_size).map_err(CommandError::Store)?)
        };
        // As the mount: the option can only say "on"; HF_HUB_OFFLINE=0 can say "off".
        let env_offline = std::env::var("HF_HUB_OFFLINE").ok().filter(|v| !v.is_empty());
        let offline = options.offline
            || options.inspect
            || env_offline.map(|v| crate::cli::truthy(&v)).or(config.file.offline).unwrap_or(false);
        let mut hub = HubConfig::from_env();
        let env_endpoint = std::env::var("HF_ENDPOINT").ok().filter(|v| !v.is_empty());
        let file_endpoint = config.file.endpoint.clone().filter(|_| env_endpoint.is_none());
        if let Some(endpoint) = options.endpoint.as_ref().or(file_endpoint.as_ref()) {
            hub.endpoint = crate::hub::client::parse_endpoint(endpoint)
                .map_err(|why| CommandError::Endpoint(endpoint.clone(), why))?;
        }
        if let Some(token) = options.token.clone().filter(|t| !t.is_empty()) {
            hub.token = Some(token);
        }
        hub.read_timeout = options.read_timeout.max(Duration::from_secs(1));
        hub.max_connections = options.max_connections.max(1);
        let client = Arc::new(HubClient::new(hub).map_err(CommandError::Hub)?);
        let rt = runtime()?;
        let lease = if options.inspect {
            None
        } else {
            let _rt = rt.enter();
            Some(
                Evictor::new(store.clone(), Some(&config.store), Policy::default())
                    .map_err(CommandError::Evict)?,
            )
        };
        let config_tier = config.file.tier.clone().filter(|_| options.config_tier);
        let tier = match options.tier.clone().or(config_tier).filter(|_| !options.inspect) {
            Some(url) => Some(TierClient::new(
                Arc::new(ObjectTier::from_url(&url).map_err(CommandError::Tier)?),
                store.clone(),
            )),
            None => None,
        };
        let parts = Parts {
            store,
            store_dir: Some(config.store.clone()),
            source: client.clone(),
            origin: client,
            offline,
            lease,
            tier,
            max_connections: options.max_connections,
            read_timeout: options.read_timeout,
        };
        Ok(Self::assemble(parts, rt))
    }

    /// A cache over given parts: the in-memory store and Hub doubles in tests.
    ///
    /// ```
    /// use std::io::{Read, Seek, SeekFrom};
    /// use std::sync::Arc;
    /// use modelfs::cache::{ModelCache, Parts, QuantStatus};
    /// use modelfs::hub::memory::MemoryHub;
    /// use modelfs::manifest::RepoId;
    /// use modelfs::store::memory::MemoryStore;
    ///
    /// let hub = Arc::new(MemoryHub::new());
    /// let weights: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    /// hub.add_repo(
    ///     RepoId::new("org", "model"),
    ///     "0123456789abcdef0123456789abcdef01234567",
    ///     "main",
    ///     None,
    ///     vec![("config.json", b"{}".to_vec(), false), ("model-Q4_K_M.gguf", weights.clone(), true)],
    /// );
    /// let cache = ModelCache::from_parts(Parts {
    ///     store: Arc::new(MemoryStore::new(1024)),
    ///     store_dir: None,
    ///     source: hub.clone(),
    ///     origin: hub,
    ///     offline: false,
    ///     lease: None,
    ///     tier: None,
    ///     max_connections: 4,
    ///     read_timeout: std::time::Duration::from_secs(5),
    /// })?;
    /// let manifest = cache.scan_repo("org/model")?;
    /// assert_eq!(manifest.quants.keys().collect::<Vec<_>>(), ["Q4_K_M", "all"]);
    /// cache.download_quant("org/model", "q4_k_m", |loaded, total| loaded <= total)?;
    /// assert_eq!(cache.get_manifest("org/model")?.quants["Q4_K_M"].status, QuantStatus::Downloaded);
    /// let mut f = cache.open_file("org/model", "model-Q4_K_M.gguf")?;
    /// f.seek(SeekFrom::Start(2000))?;
    /// let mut tail = Vec::new();
    /// f.read_to_end(&mut tail)?;
    /// assert_eq!(tail, weights[2000..]);
    /// assert_eq!(cache.get_file("org/model", "config.json")?, b"{}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_parts(parts: Parts) -> Result<Self, CacheError> {
        Ok(Self::assemble(parts, runtime()?))
    }

    fn assemble(parts: Parts, rt: tokio::runtime::Runtime) -> Self {
        let config = FsConfig { offline: parts.offline, serve_stale: true, ..FsConfig::default() };
        let fs = {
            // Read-ahead is spawned on the runtime current at construction.
            let _rt = rt.enter();
            let limits = PrefetchLimits::new(
                parts.store.chunk_size(),
                crate::fetch::DEFAULT_MAX_INFLIGHT_BYTES,
                parts.max_connections,
                crate::fetch::DEFAULT_MAX_REQUEST_BYTES,
            );
            let mut fs = ModelFs::new(
                config,
                parts.store.clone(),
                parts.source.clone(),
                parts.origin.clone(),
                parts.read_timeout,
                limits,
            );
            if let Some(lease) = &parts.lease {
                fs.set_evictor(lease.clone());
            }
            if let Some(tier) = &parts.tier {
                fs.set_tier(tier.clone());
            }
            Arc::new(fs)
        };
        Self {
            inner: Arc::new(Inner {
                fs,
                store: parts.store,
                source: parts.source,
                origin: parts.origin,
                store_dir: parts.store_dir,
                lease: parts.lease,
                tier: parts.tier,
                max_connections: parts.max_connections.max(1),
                read_timeout: parts.read_timeout,
                rt,
            }),
        }
    }

    /// The store directory (`None` for a cache over parts without one).
    pub fn store_dir(&self) -> Option<&std::path::Path> {
        self.inner.store_dir.as_deref()
    }

    /// What `repo` (`org/name` or `org/name@rev`) holds: its commit, files and views. Asks the
    /// Hub at most once per revalidation interval, as a mount does.
    pub fn scan_repo(&self, repo: &str) -> Result<RepoManifest, CacheError> {
        let target = Target::parse(repo)?;
        let snap = self
            .block_on(self.inner.fs.snapshot(&target.repo, target.rev.as_deref()))
            .map_err(|e| CacheError::fs(repo, e))?;
        let files = snap
            .manifest
            .files
            .iter()
            .map(|f| RepoFile {
                path: f.path.clone(),
                size: f.size,
                sha256: f.hash.lfs_sha256_hex(),
            })
            .collect();
        let mut quants = BTreeMap::new();
        for (kind, name) in snap.view_names() {
            let Some(view) = snap.view(kind) else { continue };
            let entries: Vec<_> = view.files.iter().filter_map(|&i| snap.file(i)).collect();
            quants.insert(
                name.to_string(),
                Quant {
                    name: name.to_string(),
                    files: entries.iter().map(|f| f.path.clone()).collect(),
                    total_bytes: entries.iter().map(|f| f.size).sum(),
                },
            );
        }
        Ok(RepoManifest {
            repo: snap.manifest.repo.to_string(),
            commit: snap.manifest.commit.clone(),
            pipeline_tag: snap.manifest.pipeline_tag.clone(),
            files,
            quants,
        })
    }

    /// Download every file of the quant view `quant` of `repo` (`all`: the whole repo) that
    /// the store lacks, in parallel, checked and verified as a mount would; `progress` is told
    /// `(loaded, total)` bytes as chunks land, and stops the download by returning `false`
    /// ([`ErrorKind::Interrupted`]). Fails if any file does not end verified.
    pub fn download_quant(
        &self,
        repo: &str,
        quant: &str,
        progress: impl Fn(u64, u64) -> bool + Send + Sync + 'static,
    ) -> Result<PullReport, CacheError> {
        let quants = if quant == crate::fs::ALL_VIEW { vec![] } else { vec![quant.to_string()] };
        let request = self.pull_request(Target::parse(repo)?, quants, vec![]);
        let report = self.pull(&request, &Progress::callback(Box::new(progress)))?;
        if !report.failed.is_empty() {
            return Err(CommandError::PullFailed {
                target: repo.to_string(),
                failed: report.failed.into_iter().map(|(path, _)| path).collect(),
            }
            .into());
        }
        Ok(report)
    }

    /// A download request with this cache's settings (`modelfs pull` adds its flags' choices).
    pub fn pull_request(
        &self,
        target: Target,
        quants: Vec<String>,
        include: Vec<String>,
    ) -> PullRequest {
        PullRequest {
            target,
            quants,
            include,
            max_connections: self.inner.max_connections,
            read_timeout: self.inner.read_timeout,
            lease: self.inner.lease.clone(),
            tier: self.inner.tier.clone(),
        }
    }

    /// Run a download (what `modelfs pull` runs); files that failed are in the report.
    pub fn pull(
        &self,
        request: &PullRequest,
        progress: &Progress,
    ) -> Result<PullReport, CacheError> {
        let inner = &self.inner;
        let pull = crate::commands::pull_into(
            inner.store.clone(),
            inner.source.clone(),
            inner.origin.clone(),
            request,
            progress,
        );
        Ok(self.block_on(pull)?)
    }

    /// The whole of `path` in `repo`, fetching what the store lacks.
    pub fn get_file(&self, repo: &str, path: &str) -> Result<Vec<u8>, CacheError> {
        let mut file = self.open_file(repo, path)?;
        let mut out = Vec::with_capacity(file.len() as usize);
        file.read_to_end(&mut out).map_err(|e| CacheError::fs(path, FsError::Io(e.to_string())))?;
        Ok(out)
    }

    /// `path` in `repo` as a reader that fetches what it reads (with read-ahead, like a file
    /// in the mount), at the commit `repo` resolves to now, which it keeps.
    pub fn open_file(&self, repo: &str, path: &str) -> Result<ModelFile, CacheError> {
        let target = Target::parse(repo)?;
        let what = format!("{repo}: {path}");
        let fs = &self.inner.fs;
        let ino = self
            .block_on(async {
                let org = fs.lookup(ROOT_INO, &target.repo.org).await?;
                let name = match &target.rev {
                    Some(rev) => format!("{}@{rev}", target.repo.name),
                    None => target.repo.name.clone(),
                };
                let mut ino = fs.lookup(org.attr.ino, &name).await?.attr.ino;
                ino = fs.lookup(ino, crate::fs::ALL_VIEW).await?.attr.ino;
                for part in path.split('/') {
                    ino = fs.lookup(ino, part).await?.attr.ino;
                }
                Ok::<u64, FsError>(ino)
            })
            .map_err(|e| CacheError::fs(&what, e))?;
        let size = fs.getattr(ino).map_err(|e| CacheError::fs(&what, e))?.attr.size;
        let fh = fs.open(ino, false).map_err(|e| CacheError::fs(&what, e))?;
        Ok(ModelFile { inner: self.inner.clone(), fh, size, pos: 0, what })
    }

    /// Every view of `repo` with what the store holds of it, from the same xattrs a mount
    /// shows (a download in another process shows as `Downloading`).
    pub fn get_manifest(&self, repo: &str) -> Result<ManifestStatus, CacheError> {
        let target = Target::parse(repo)?;
        let snap = self
            .block_on(self.inner.fs.snapshot(&target.repo, target.rev.as_deref()))
            .map_err(|e| CacheError::fs(repo, e))?;
        let commit = snap.manifest.commit.clone();
        let views =
            self.block_on(crate::commands::commit_views(&self.inner.fs, &target.repo, &commit))?;
        let quants = views
            .views
            .into_iter()
            .map(|v| {
                let state = QuantState {
                    status: QuantStatus::parse(&v.status),
                    cached_bytes: v.cached_bytes,
                    total_bytes: v.total_bytes,
                };
                (v.name, state)
            })
            .collect();
        Ok(ManifestStatus { repo: target.repo.to_string(), commit, quants })
    }

    /// What `modelfs status` shows: every repo of the store, or `target`'s refs and commits.
    pub fn status(&self, target: Option<&Target>) -> Result<StatusReport, CacheError> {
        let dir =
            self.inner.store_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default();
        let activity = self.inner.store_dir.clone().map(|d| {
            Arc::new(crate::evict::StoreActivity(d)) as Arc<dyn crate::evict::FetchActivity>
        });
        let store = self.inner.store.clone();
        Ok(self.block_on(crate::commands::status_report(store, &dir, target, activity))?)
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.inner.rt.block_on(f)
    }
}

/// What a [`ModelCache`] is made of, for [`ModelCache::from_parts`].
pub struct Parts {
    pub store: Arc<dyn ChunkStore>,
    pub store_dir: Option<PathBuf>,
    pub source: Arc<dyn RepoSource>,
    pub origin: Arc<dyn RangeFetcher>,
    pub offline: bool,
    pub lease: Option<Arc<Evictor>>,
    pub tier: Option<Arc<TierClient>>,
    pub max_connections: usize,
    pub read_timeout: Duration,
}

fn runtime() -> Result<tokio::runtime::Runtime, CacheError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("modelfs-cache")
        .build()
        .map_err(|e| CommandError::Runtime(e).into())
}

/// A file of a repo at one commit, read through the cache: `Read + Seek`, fetching what it
/// reads. Kept open (and so never evicted) until dropped.
pub struct ModelFile {
    inner: Arc<Inner>,
    fh: u64,
    size: u64,
    pos: u64,
    what: String,
}

/// Largest read asked of the filesystem core at once: the largest a FUSE read is, so a reader
/// through the library drives read-ahead as one through the mount does.
const READ_PIECE: usize = 1 << 20;

impl ModelFile {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

impl Read for ModelFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(READ_PIECE).min(self.size.saturating_sub(self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let fs = &self.inner.fs;
        let (fh, pos) = (self.fh, self.pos);
        let io = |e: FsError| std::io::Error::from(CacheError::fs(&self.what, e));
        // The warm path first, straight into `buf`, as the FUSE edge does; a miss fetches.
        let mut n = 0;
        let hit = fs
            .read_cached(fh, pos, want as u32, &mut |bytes| {
                n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
            })
            .map_err(io)?;
        if !hit {
            let data = self.inner.rt.block_on(fs.read(fh, pos, want as u32)).map_err(io)?;
            n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ModelFile {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        self.pos = target;
        Ok(target)
    }
}

impl Drop for ModelFile {
    fn drop(&mut self) {
        self.inner.fs.release(self.fh);
    }
}
