//! The store commands that run beside (or without) a mount: `pull`, `status`, `verify`,
//! `gc`, `import`, `remove` (doc/OPERATIONS.md).
//!
//! None of them talks to a daemon: each opens the store itself (libmdbx is multi-process, so
//! a mount may serve the same store meanwhile) and goes through the same code the mount runs,
//! so that what they do and report cannot drift from what the mount does and shows.
//! `pull` resolves and records a repo with [`crate::fs::ModelFs::snapshot`] and fetches with
//! [`crate::fetch::ChunkFetcher`] (length checks, whole-file verification); `status` reads the
//! numbers through [`crate::fs::ModelFs::xattrs`] of an offline filesystem over the store;
//! `verify` runs [`crate::fetch::verify_file`], which discards and marks `failed` exactly as
//! the daemon's background check does; `gc` is [`crate::evict::gc`].

mod import;
mod progress;
mod pull;
mod status;
mod verify;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

pub use progress::{Progress, ProgressCallback};
pub use pull::{pull_into, select_files, PullReport, PullRequest};
pub use status::{commit_views, render_table, status_report, FileCounts, StatusReport, ViewStatus};
pub use verify::{verify_store, VerifyReport};

use crate::cli::{
    GcArgs, ImportArgs, PullArgs, RemoveArgs, StatusArgs, StoreArgs, StoreConfig, VerifyArgs,
};
use crate::manifest::RepoId;
use crate::store::mdbx::MdbxStore;
use crate::store::{ChunkStore, StoreError, DEFAULT_CHUNK_SIZE};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0:?} is not ORG/REPO or ORG/REPO@REVISION (names as the Hub allows them)")]
    BadTarget(String),
    #[error("no store at {0} (nothing was ever mounted or pulled there; see --store)")]
    NoStore(String),
    #[error("store {0} is not a directory (see --store)")]
    StoreNotDir(String),
    #[error("{target}: no file matches {filters}; nothing to pull")]
    NothingSelected { target: String, filters: String },
    #[error("{0} is not in the store")]
    NotInStore(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Hub client: {0}")]
    Hub(#[from] crate::hub::HubError),
    #[error("endpoint {0:?} {1}")]
    Endpoint(String, String),
    #[error("{target}: {}", resolve_reason(source))]
    Resolve { target: String, source: crate::fs::FsError },
    #[error("stopped: the progress callback asked to stop")]
    Cancelled,
    #[error("{repo} has no quant {quant:?}; its views are: {}", available.join(", "))]
    UnknownQuant { repo: String, quant: String, available: Vec<String> },
    #[error("--include {pattern:?}: {reason}")]
    BadGlob { pattern: String, reason: String },
    #[error("{target}: {} failed: {}", plural(failed.len(), "file"), failed.join(", "))]
    PullFailed { target: String, failed: Vec<String> },
    #[error("store damaged: {} did not match the Hub's hash (discarded and marked failed), \
             {} had a chunk that failed its checksum (dropped); both are fetched again on demand \
             or by `modelfs pull`", plural(*mismatches, "file"), plural(*damaged, "file"))]
    Damaged { mismatches: usize, damaged: usize },
    #[error(
        "gc needs a bound: pass --max-cache-size SIZE (e.g. 50G), or set max_cache_size in the \
         config file"
    )]
    NoBound,
    #[error("eviction: {0}")]
    Evict(#[from] crate::evict::EvictError),
    #[error("--tier: {0}")]
    Tier(#[from] crate::tier::TierError),
    #[error(transparent)]
    Import(#[from] crate::import::ImportError),
    #[error(transparent)]
    Csi(#[from] crate::csi::CsiError),
    #[error("{repo} is imported here, but {} of it did not reach the tier (see the log); \
             import it again to retry", human_bytes(*missing))]
    TierIncomplete { repo: String, missing: u64 },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("writing the output: {0}")]
    Output(std::io::Error),
    #[error("internal: {0}")]
    Internal(String),
}

/// Why a repo could not be resolved, for people.
fn resolve_reason(e: &crate::fs::FsError) -> String {
    use crate::fs::FsError;
    match e {
        FsError::NotFound => {
            "not found on the Hub (no such repo or revision, or private and no valid token)".into()
        }
        FsError::Denied(why) => format!("access denied ({why}); gated or private: set HF_TOKEN"),
        FsError::Io(why) => why.clone(),
        other => other.to_string(),
    }
}

/// A repo and, optionally, a revision, as given on the command line: `ORG/REPO[@REV]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub repo: RepoId,
    pub rev: Option<String>,
}

impl Target {
    /// Parse `ORG/REPO` or `ORG/REPO@REV` with the mount's own name rules, so that whatever a
    /// command accepts is a path the mount shows (`/ORG/REPO@REV`), and nothing else.
    pub fn parse(s: &str) -> Result<Self, CommandError> {
        let bad = || CommandError::BadTarget(s.to_string());
        let (org, rest) = s.split_once('/').ok_or_else(bad)?;
        if !crate::names::valid_org(org) {
            return Err(bad());
        }
        let (name, rev) = crate::names::parse_repo_component(rest).ok_or_else(bad)?;
        Ok(Self { repo: RepoId::new(org, name), rev: rev.map(str::to_string) })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.rev {
            Some(rev) => write!(f, "{}@{rev}", self.repo),
            None => write!(f, "{}", self.repo),
        }
    }
}

pub fn pull(args: PullArgs) -> Result<(), CommandError> {
    pull::run(args)
}

pub fn status(args: StatusArgs) -> Result<(), CommandError> {
    status::run(args)
}

pub fn verify(args: VerifyArgs) -> Result<(), CommandError> {
    verify::run(args)
}

pub fn import(args: ImportArgs) -> Result<(), CommandError> {
    import::run(args)
}

pub fn remove(args: RemoveArgs) -> Result<(), CommandError> {
    import::run_remove(args)
}

/// `modelfs csi`: serve the CSI node plugin until SIGTERM or SIGINT.
pub fn csi(args: crate::cli::CsiArgs) -> Result<(), CommandError> {
    let socket = crate::csi::socket_path(&args.endpoint)?;
    let node_id = args
        .node_id
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|v| !v.is_empty()))
        .or_else(|| nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()))
        .unwrap_or_else(|| "unknown".into());
    runtime()?.block_on(async {
        let plugin = crate::csi::Plugin::new(args.mount, node_id);
        plugin.serve(&socket, crate::daemon::wait_for_shutdown_signal()).await
    })?;
    Ok(())
}

/// `modelfs gc`: evict least recently used files until the store is under the bound (the
/// flag, else the config file's `max_cache_size`), sparing files open in any serving process
/// and the files of the repos the config file pins.
pub fn gc(args: GcArgs) -> Result<(), CommandError> {
    let config = resolve(&args.store)?;
    let bound = args.max_cache_size.or(config.file.max_cache_size).ok_or(CommandError::NoBound)?;
    let store = open_existing(&config.store)?;
    let policy = crate::evict::Policy { max_cache_size: Some(bound), pinned: config.pinned() };
    let report = crate::evict::gc(&config.store, store, policy)?;
    print!("{}", render_gc(&report, bound));
    Ok(())
}

/// What `gc` prints.
pub fn render_gc(r: &crate::evict::EvictReport, bound: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "store: {} before, {} after (bound {})",
        human_bytes(r.before),
        human_bytes(r.after),
        human_bytes(bound)
    );
    let _ = writeln!(
        out,
        "evicted {} ({}); kept {} open and {} pinned",
        plural(r.evicted_files, "file"),
        human_bytes(r.evicted_bytes),
        plural(r.kept_open, "file"),
        plural(r.kept_pinned, "file"),
    );
    if r.after > bound {
        let _ = writeln!(out, "still over the bound: what is left is open or pinned");
    }
    out
}

/// The store directory and the configuration file's settings: `--store`, else
/// `$MODELFS_STORE`, else the file's `store`, else the default every command and the mount
/// share (doc/DESIGN.md, "Store format 2").
fn resolve(args: &StoreArgs) -> Result<StoreConfig, CommandError> {
    Ok(args.resolve(|k| std::env::var(k).ok())?)
}

/// Open a store that must already exist: the read-side commands (`status`, `verify`, `gc`)
/// must not leave an empty store behind a mistyped `--store`.
pub(crate) fn open_existing(dir: &Path) -> Result<Arc<dyn ChunkStore>, CommandError> {
    if dir.exists() && !dir.is_dir() {
        return Err(CommandError::StoreNotDir(dir.display().to_string()));
    }
    // Format 2's index, or format 1's (which opening migrates).
    use crate::store::mdbx::{INDEX_DIR, MDBX_DATA_FILE};
    if !dir.join(INDEX_DIR).join(MDBX_DATA_FILE).is_file() && !dir.join(MDBX_DATA_FILE).is_file() {
        return Err(CommandError::NoStore(dir.display().to_string()));
    }
    // The chunk size only matters for a new store; an existing one keeps its own.
    Ok(Arc::new(MdbxStore::open(dir, DEFAULT_CHUNK_SIZE)?))
}

/// Bytes the files under `dir` take on disk (allocated blocks, as `du` counts them: sparse
/// holes are free, preallocated space is not). Unreadable entries count as nothing.
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_usage(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The runtime of a command that does a little async work (the tier, the CSI server): two
/// workers, as a command never has much in flight.
fn runtime() -> Result<tokio::runtime::Runtime, CommandError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CommandError::Runtime)
}

/// Run a store call off the async workers (store calls are synchronous and may touch disk).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, CommandError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CommandError::Internal(e.to_string()))?
        .map_err(Into::into)
}

/// `n thing` or `n things`.
fn plural(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// A byte count for people: binary units with one decimal (`1.5 MiB`), exact below 1 KiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A commit shortened for tables and messages: 12 hex digits, as `git log --oneline` would
/// need for a repo of millions of commits.
fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn targets_parse_with_the_mounts_rules() {
        let t = Target::parse("org/repo").unwrap();
        assert_eq!((t.repo, t.rev), (RepoId::new("org", "repo"), None));
        let t = Target::parse("org/repo@v1.0").unwrap();
        assert_eq!(t.rev.as_deref(), Some("v1.0"));
        assert_eq!(t.to_string(), "org/repo@v1.0");
        // A revision may contain `@` (split at the first), never `/`.
        assert_eq!(Target::parse("o/r@a@b").unwrap().rev.as_deref(), Some("a@b"));
        for bad in ["repo", "o/r/x", "o/r@refs/pr/1", "o/r@", "-o/r", "o/r..x", "/r", "o/", ""] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536 << 10), "1.5 MiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn gc_report_reads_as_a_sentence() {
        let r = crate::evict::EvictReport {
            before: 3 << 20,
            after: 2 << 20,
            evicted_files: 1,
            evicted_bytes: 1 << 20,
            kept_open: 0,
            kept_pinned: 2,
        };
        assert_eq!(
            render_gc(&r, 2 << 20),
            "store: 3.0 MiB before, 2.0 MiB after (bound 2.0 MiB)\n\
             evicted 1 file (1.0 MiB); kept 0 files open and 2 files pinned\n"
        );
        let over = crate::evict::EvictReport { after: 3 << 20, ..r };
        assert!(render_gc(&over, 2 << 20).ends_with("what is left is open or pinned\n"));
    }

    proptest! {
        /// Whatever the mount accepts as `org/name@rev`, a command accepts, and prints back.
        #[test]
        fn valid_targets_round_trip(
            org in "[A-Za-z0-9]([A-Za-z0-9_]{0,10}[A-Za-z0-9])?",
            name in "[A-Za-z0-9]([A-Za-z0-9_.]{0,10}[A-Za-z0-9])?",
            rev in proptest::option::of("[a-z0-9][a-z0-9_@-]{0,20}[a-z0-9]"),
        ) {
            prop_assume!(!name.contains("..") && !name.ends_with(".git"));
            prop_assume!(rev.as_deref().is_none_or(|r| !r.contains("@{")));
            let s = match &rev { Some(r) => format!("{org}/{name}@{r}"), None => format!("{org}/{name}") };
            let t = Target::parse(&s).unwrap();
            prop_assert_eq!(&t.repo, &RepoId::new(org, name));
            prop_assert_eq!(&t.rev, &rev);
            prop_assert_eq!(t.to_string(), s);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,60}") {
            let _ = Target::parse(&s);
        }
    }
}
