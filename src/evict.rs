//! Eviction: keeping the store under `--max-cache-size`, and making room when the disk or the
//! map is full (doc/DESIGN.md, "Eviction and full disks").
//!
//! The unit of eviction is a whole file, least recently used first (`FileRecord::last_access`,
//! moved on every open and chunk write): a file is either as the Hub has it or absent, never
//! a patchwork that verification would have to redo. Two kinds of file are never evicted:
//!
//! - files that are **open**, in this process (counted on `open`/`release`) or in any other
//!   process on the same store (a mount, a second mount): each process that serves files
//!   publishes the set it has open in `<store>/leases/`, next to a lock file it holds with
//!   `flock` for as long as it lives. A lease whose lock can be taken belongs to a dead process
//!   and is removed; so a `kill -9` never pins files forever, and pid reuse cannot fake a lease.
//!   An eviction pass (a mount's, or `modelfs gc`) holds `<store>/leases/eviction.mutex`
//!   exclusively while it reads the leases and removes files, and a process publishing a newly
//!   opened file holds it shared while it writes: so once `open` has returned, no pass in any
//!   process can miss that file. An open that meets a pass waits for it (milliseconds).
//! - files of **pinned** repos (config `[[repo]] pin = true`): every file of every stored
//!   manifest of such a repo.
//!
//! The daemon keeps an estimate of the bytes stored, grown by its own chunk writes and reset by
//! a full scan of the file records at each eviction pass; when the estimate passes the bound a
//! pass evicts down to [`LOW_WATER`] of it, so that a store at its bound is not scanned on every
//! chunk. Nothing here holds a store transaction across anything: each record listing and
//! each file removal is one short transaction of its own.

use crate::lock;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::manifest::{ContentId, RepoId};
use crate::store::{ChunkStore, StoreError};

/// An eviction pass brings the store down to this fraction of its bound: 90% leaves room for
/// a few hundred MiB of new chunks on a typical bound before the next pass, without evicting
/// much more than needed.
pub const LOW_WATER: f64 = 0.9;

/// Own chunk writes after which the estimate is refreshed by a scan even below the bound, so
/// that bytes written by other processes (a `pull`) are noticed: 1 GiB, a few seconds of a
/// fast download, one record scan each.
const RESCAN_EVERY: u64 = 1 << 30;

/// Resolution of access times kept for LRU, in seconds: eviction orders files by minutes and
/// hours of disuse, so finer times would only cost write transactions.
const TOUCH_GRANULARITY: u64 = 60;

/// Directory of the store where serving processes publish their open files.
const LEASES_DIR: &str = "leases";

/// The lock file that orders eviction passes against publications of open files (its name
/// does not end in `.lock`, which is how leases are found).
const EVICTION_MUTEX: &str = "eviction.mutex";

#[derive(Debug, thiserror::Error)]
pub enum EvictError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("leases in {path}: {source}")]
    Leases { path: String, source: io::Error },
}

/// What may be evicted, and down to what. Reloadable (SIGHUP).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `None`: no bound; eviction runs only to make room when the store is full.
    pub max_cache_size: Option<u64>,
    /// Repos none of whose files are ever evicted.
    pub pinned: Vec<RepoId>,
}

/// What [`Evictor::make_room`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    /// Files were evicted (by this call or by a pass that ran meanwhile): try the write again.
    Made,
    /// Nothing could be evicted: everything stored is open or pinned.
    None,
}

/// What one eviction pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EvictReport {
    /// Bytes stored before and after the pass.
    pub before: u64,
    pub after: u64,
    pub evicted_files: usize,
    pub evicted_bytes: u64,
    /// Files that would have gone but were open somewhere, or pinned.
    pub kept_open: usize,
    pub kept_pinned: usize,
}

/// The daemon's side of eviction: open-file accounting, the bound, and passes.
pub struct Evictor {
    store: Arc<dyn ChunkStore>,
    policy: RwLock<Policy>,
    /// Open handles per content in this process.
    open: Mutex<HashMap<ContentId, usize>>,
    /// Chunk fetches in flight per content in this process (`user.modelfs.status` says
    /// `downloading` for a view while any process fetches one of its files).
    fetching: Mutex<HashMap<ContentId, usize>>,
    /// Held while publishing the open set: the snapshot and the write that follows happen
    /// under it, so the last file written is the newest set (two publications racing could
    /// otherwise leave an older list in place, or one open file out of it).
    publishing_open: Mutex<()>,
    /// The same for the fetching set.
    publishing_fetching: Mutex<()>,
    leases: Option<Leases>,
    /// Bytes stored, as of the last scan plus this process's writes since.
    estimate: AtomicU64,
    /// Own writes since the last scan.
    since_scan: AtomicU64,
    /// Own writes ever: a pass reads it before its scan and after, so that what was written
    /// meanwhile (which the scan may have missed) stays in the estimate.
    written: AtomicU64,
    /// One pass at a time. A bound check during a pass does not wait for it: it leaves this
    /// flag, and the pass checks the bound once more when it ends (its scan may have missed
    /// that write). A writer that needs room waits for the pass (see [`Evictor::make_room`]).
    pass: Mutex<()>,
    missed_check: AtomicBool,
    /// Passes run so far, so a writer that waited for another's pass knows to try its write
    /// again before evicting more.
    passes: AtomicU64,
    /// A pass after a close is queued and has not started yet.
    close_pass_queued: AtomicBool,
    /// The last lease publication failed (logged once, not at every open).
    publish_failing: AtomicBool,
}

impl std::fmt::Debug for Evictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evictor")
            .field("policy", &self.policy())
            .field("estimate", &self.stored_estimate())
            .finish_non_exhaustive()
    }
}

impl Evictor {
    /// `store_dir`: where the leases live (the store's directory); `None` for a store without
    /// one (the in-memory double), which then only knows this process's open files.
    pub fn new(
        store: Arc<dyn ChunkStore>,
        store_dir: Option<&Path>,
        policy: Policy,
    ) -> Result<Arc<Self>, EvictError> {
        let leases = store_dir.map(Leases::acquire).transpose()?;
        let estimate = stored_bytes(store.as_ref())?;
        crate::metrics::get().set_cache_bytes(estimate);
        crate::metrics::get().set_cache_bound(policy.max_cache_size);
        Ok(Arc::new(Self {
            store,
            policy: RwLock::new(policy),
            open: Mutex::default(),
            fetching: Mutex::default(),
            publishing_open: Mutex::default(),
            publishing_fetching: Mutex::default(),
            leases,
            estimate: AtomicU64::new(estimate),
            since_scan: AtomicU64::new(0),
            written: AtomicU64::new(0),
            pass: Mutex::new(()),
            missed_check: AtomicBool::new(false),
            passes: AtomicU64::new(0),
            close_pass_queued: AtomicBool::new(false),
            publish_failing: AtomicBool::new(false),
        }))
    }

    pub fn policy(&self) -> Policy {
        self.policy.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Apply a new bound and pin list (config reload). A lower bound takes effect at the next
    /// write, or at once through [`Evictor::evict_to_bound`].
    pub fn set_policy(&self, policy: Policy) {
        crate::metrics::get().set_cache_bound(policy.max_cache_size);
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = policy;
    }

    /// Bytes stored, as last estimated.
    pub fn stored_estimate(&self) -> u64 {
        self.estimate.load(Ordering::Relaxed)
    }

    /// A handle on `content` was opened: it cannot be evicted until closed.
    pub fn opened(&self, content: &ContentId) {
        if count_up(&self.open, content, 1) {
            self.publish();
        }
        self.touch(content);
    }

    /// Move the access time that drives LRU, at most once per [`TOUCH_GRANULARITY`]: a touch
    /// is a write transaction, and a loader opening one file a hundred times needs one.
    fn touch(&self, content: &ContentId) {
        let now = crate::store::unix_now();
        let fresh = match self.store.file_record(content) {
            Ok(Some(record)) => now.saturating_sub(record.last_access) < TOUCH_GRANULARITY,
            Ok(None) => true,
            Err(_) => false,
        };
        // A failed write only makes the file look older than it is.
        if !fresh {
            if let Err(e) = self.store.touch(content) {
                tracing::debug!(content = %content.to_hex(), error = %e, "access time not updated");
            }
        }
    }

    /// Whether the store is over its bound, as last estimated: after the last handle on a
    /// file closes, a store that open files kept over its bound can come back under it.
    pub fn over_bound(&self) -> bool {
        self.policy().max_cache_size.is_some_and(|bound| self.stored_estimate() > bound)
    }

    /// A handle on `content` was released.
    pub fn closed(&self, content: &ContentId) {
        if count_down(&self.open, content, 1) {
            self.publish();
        }
    }

    /// `chunks` chunk fetches of `content` started in this process.
    pub fn fetch_started(&self, content: &ContentId, chunks: usize) {
        if count_up(&self.fetching, content, chunks) {
            self.publish_fetching();
        }
    }

    /// `chunks` chunk fetches of `content` ended (stored, or failed) in this process.
    pub fn fetch_ended(&self, content: &ContentId, chunks: usize) {
        if count_down(&self.fetching, content, chunks) {
            self.publish_fetching();
        }
    }

    fn publish(&self) {
        let Some(leases) = &self.leases else { return };
        let _serial = lock(&self.publishing_open);
        let open: Vec<ContentId> = lock(&self.open).keys().copied().collect();
        self.report_publication(leases.publish_open(&open), "open");
    }

    fn publish_fetching(&self) {
        let Some(leases) = &self.leases else { return };
        let _serial = lock(&self.publishing_fetching);
        let fetching: Vec<ContentId> = lock(&self.fetching).keys().copied().collect();
        self.report_publication(leases.publish(FETCHING_SUFFIX, &fetching), "fetching");
    }

    fn report_publication(&self, result: io::Result<()>, what: &str) {
        match result {
            // Logged once per failure spell (a full disk fails every open): another process's
            // pass could then evict a file open here; this process's passes never will.
            Err(e) if !self.publish_failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(error = %e, what, "files not published to other processes")
            }
            Err(_) => {}
            Ok(()) => {
                if self.publish_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("files published to other processes again");
                }
            }
        }
    }

    /// Contents a chunk fetch is in flight for, in this process or any other on the store.
    pub fn fetching_anywhere(&self) -> HashSet<ContentId> {
        let mut all: HashSet<ContentId> = lock(&self.fetching).keys().copied().collect();
        if let Some(leases) = &self.leases {
            match Leases::read_all(&leases.dir, Some(&leases.name), FETCHING_SUFFIX) {
                Ok(others) => all.extend(others),
                Err(e) => tracing::debug!(error = %e, "fetching sets of other processes unknown"),
            }
        }
        all
    }

    /// This process stored `bytes` more. True when the store is now over its bound and a pass
    /// should run ([`Evictor::evict_to_bound`], off the async workers).
    pub fn stored(&self, bytes: u64) -> bool {
        self.written.fetch_add(bytes, Ordering::AcqRel);
        let estimate = self.estimate.fetch_add(bytes, Ordering::Relaxed) + bytes;
        crate::metrics::get().set_cache_bytes(estimate);
        let since = self.since_scan.fetch_add(bytes, Ordering::Relaxed) + bytes;
        match self.policy().max_cache_size {
            Some(bound) => estimate > bound || since >= RESCAN_EVERY,
            None => false,
        }
    }

    /// Evict down to [`LOW_WATER`] of the bound if the store is over it. Runs at most one pass
    /// at a time: `None` when another pass was already running. That pass then runs once more
    /// if, when it ends, the store is still over the bound by its estimate: its scan may have
    /// missed the write that made this call, and a store left over its bound with no write
    /// to come (the last chunk of a model) would stay there.
    pub fn evict_to_bound(&self) -> Result<Option<EvictReport>, EvictError> {
        let mut last = None;
        loop {
            let guard = match self.pass.try_lock() {
                Ok(guard) => guard,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    self.missed_check.store(true, Ordering::Release);
                    return Ok(last);
                }
            };
            // Checks that arrive from here on are this pass's to cover.
            self.missed_check.store(false, Ordering::Release);
            let report = self.finish_pass(guard, || self.pass_to_bound())?;
            last = Some(report);
            if !(self.missed_check.swap(false, Ordering::AcqRel) && self.over_bound()) {
                return Ok(last);
            }
        }
    }

    /// One pass down to [`LOW_WATER`] of the bound, if the store (scanned now) is over it.
    fn pass_to_bound(&self) -> Result<EvictReport, EvictError> {
        let before = stored_bytes(self.store.as_ref())?;
        match self.policy().max_cache_size {
            Some(bound) if before > bound => {
                self.evict(before, (bound as f64 * LOW_WATER) as u64, 0)
            }
            _ => Ok(EvictReport { before, after: before, ..EvictReport::default() }),
        }
    }

    /// Whether a pass after a close should be queued now: at most one waits at a time, so
    /// a loader closing thousands of files while pinned or open files keep the store over its
    /// bound costs one pass per pass, not one per close.
    pub fn queue_close_pass(&self) -> bool {
        !self.close_pass_queued.swap(true, Ordering::AcqRel)
    }

    /// After the last handle on a file closed: like [`Evictor::evict_to_bound`], but a pass
    /// already running is waited for rather than taken as covering this call. That pass
    /// may have started while the file was open, and kept it.
    pub fn evict_to_bound_after_close(&self) -> Result<EvictReport, EvictError> {
        let guard = lock(&self.pass);
        // Closes from here on need a pass after this one.
        self.close_pass_queued.store(false, Ordering::Release);
        let report = self.finish_pass(guard, || self.pass_to_bound())?;
        self.cover_missed_checks()?;
        Ok(report)
    }

    /// After a pass other than [`Evictor::evict_to_bound`]'s: the bound checks it made skip
    /// get their pass now.
    fn cover_missed_checks(&self) -> Result<(), EvictError> {
        if self.missed_check.load(Ordering::Acquire) {
            self.evict_to_bound()?;
        }
        Ok(())
    }

    /// Passes so far: read before a write that may find the store full, and hand to
    /// [`Evictor::make_room`].
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Acquire)
    }

    /// The store is full (map or disk): evict least recently used files until at least `need`
    /// bytes are freed, whatever the bound. `seen` is [`Evictor::passes`] from before the write
    /// that failed: if a pass has run since (or was running, and this call waited for it), the
    /// write is worth trying again first, and nothing more is evicted now. Many writers that
    /// find the store full at once thus share the room one pass makes, instead of each
    /// evicting a file more.
    pub fn make_room(&self, need: u64, seen: u64) -> Result<Room, EvictError> {
        let guard = lock(&self.pass);
        if self.passes() != seen {
            return Ok(Room::Made);
        }
        let report = self.finish_pass(guard, || {
            let before = stored_bytes(self.store.as_ref())?;
            self.evict(before, before.saturating_sub(need), need)
        })?;
        self.cover_missed_checks()?;
        Ok(if report.evicted_files > 0 { Room::Made } else { Room::None })
    }

    /// Run `pass` with the pass lock held, then account for what it did.
    fn finish_pass(
        &self,
        guard: std::sync::MutexGuard<'_, ()>,
        pass: impl FnOnce() -> Result<EvictReport, EvictError>,
    ) -> Result<EvictReport, EvictError> {
        let written_before = self.written.load(Ordering::Acquire);
        let result = pass();
        // Writes during the pass may or may not be in its scan: counting them again can only
        // overstate the estimate (and cost a scan), leaving them out could hide a store over
        // its bound until some later write.
        let written_during = self.written.load(Ordering::Acquire) - written_before;
        self.passes.fetch_add(1, Ordering::AcqRel);
        drop(guard);
        let report = result?;
        let metrics = crate::metrics::get();
        let estimate = report.after + written_during;
        metrics.set_cache_bytes(estimate);
        if report.evicted_files > 0 {
            // Per pass, not per file: the counter counts files, the bytes are exact either way.
            for _ in 1..report.evicted_files {
                metrics.evicted(0);
            }
            metrics.evicted(report.evicted_bytes);
        }
        self.estimate.store(estimate, Ordering::Relaxed);
        self.since_scan.store(0, Ordering::Relaxed);
        if report.evicted_files > 0 {
            tracing::info!(
                files = report.evicted_files,
                bytes = report.evicted_bytes,
                after = report.after,
                kept_open = report.kept_open,
                kept_pinned = report.kept_pinned,
                "evicted least recently used files"
            );
        }
        Ok(report)
    }

    fn evict(&self, before: u64, target: u64, need: u64) -> Result<EvictReport, EvictError> {
        // Held for the whole pass: no file opened in any process from here on goes unseen.
        let _pass = self.leases.as_ref().map(Leases::exclusive).transpose()?;
        let mut open: HashSet<ContentId> = lock(&self.open).keys().copied().collect();
        if let Some(leases) = &self.leases {
            open.extend(leases.others()?);
        }
        let pinned = pinned_contents(self.store.as_ref(), &self.policy().pinned)?;
        evict_lru(self.store.as_ref(), before, target, need, &open, &pinned)
    }
}

/// Which contents are being fetched right now, across every process on a store: what makes a
/// view's `user.modelfs.status` say `downloading` rather than `partial`.
pub trait FetchActivity: Send + Sync {
    fn fetching(&self) -> HashSet<ContentId>;
}

impl FetchActivity for Evictor {
    fn fetching(&self) -> HashSet<ContentId> {
        self.fetching_anywhere()
    }
}

/// The fetch activity of a store seen from outside (`modelfs status`): every live lease's.
pub struct StoreActivity(pub PathBuf);

impl FetchActivity for StoreActivity {
    fn fetching(&self) -> HashSet<ContentId> {
        fetching_in(&self.0)
    }
}

/// Contents a chunk fetch is in flight for in any process serving the store in `store_dir`,
/// read without taking a lease (for `modelfs status`, which may not be able to write there).
pub fn fetching_in(store_dir: &Path) -> HashSet<ContentId> {
    Leases::read_all(&store_dir.join(LEASES_DIR), None, FETCHING_SUFFIX).unwrap_or_default()
}

/// `modelfs gc`: one pass down to the bound (to the bound itself, not [`LOW_WATER`] of it:
/// an operator asking for 50G expects 50G), respecting every serving process's open files.
pub fn gc(
    store_dir: &Path,
    store: Arc<dyn ChunkStore>,
    policy: Policy,
) -> Result<EvictReport, EvictError> {
    let before = stored_bytes(store.as_ref())?;
    let Some(bound) = policy.max_cache_size else {
        return Ok(EvictReport { before, after: before, ..EvictReport::default() });
    };
    let dir = store_dir.join(LEASES_DIR);
    let _pass = exclusive_pass(&dir)?;
    let open = Leases::read_all(&dir, None, OPEN_SUFFIX)?;
    let pinned = pinned_contents(store.as_ref(), &policy.pinned)?;
    evict_lru(store.as_ref(), before, bound, 0, &open, &pinned)
}

/// Evict `contents` now, except those open in a serving process (`modelfs remove`, freeing
/// what only the removed repo named). Returns the bytes freed and how many were kept open.
pub fn evict_unless_open(
    store_dir: &Path,
    store: &dyn ChunkStore,
    contents: &HashSet<ContentId>,
) -> Result<(u64, usize), EvictError> {
    if contents.is_empty() {
        return Ok((0, 0));
    }
    let dir = store_dir.join(LEASES_DIR);
    let _pass = exclusive_pass(&dir)?;
    let open = Leases::read_all(&dir, None, OPEN_SUFFIX)?;
    let (mut freed, mut kept) = (0, 0);
    for content in contents {
        if open.contains(content) {
            kept += 1;
        } else {
            freed += store.evict_file(content)?;
        }
    }
    Ok((freed, kept))
}

/// Bytes of data stored, from the file records (which every chunk write keeps exact).
pub fn stored_bytes(store: &dyn ChunkStore) -> Result<u64, StoreError> {
    Ok(store.files()?.iter().map(|(_, r)| r.cached_bytes).sum())
}

/// Every content of every stored manifest of the `pinned` repos, and every content the refs
/// of an imported repo name (its bytes may exist nowhere else: only `modelfs remove` drops
/// them; a commit an import replaced is an ordinary cached file).
fn pinned_contents(
    store: &dyn ChunkStore,
    pinned: &[RepoId],
) -> Result<HashSet<ContentId>, StoreError> {
    let mut out = HashSet::new();
    let mut add = |manifest: Option<crate::manifest::Manifest>| {
        if let Some(manifest) = manifest {
            out.extend(manifest.files.iter().map(|f| f.hash.content_id()));
        }
    };
    for repo in pinned {
        for commit in store.commits(repo)? {
            add(store.manifest(repo, &commit)?);
        }
    }
    for (repo, local) in store.locals()? {
        if local.origin == crate::store::LocalOrigin::Imported {
            for (_, r) in store.refs(&repo)? {
                add(store.manifest(&repo, &r.commit)?);
            }
        }
    }
    Ok(out)
}

/// Evict files, least recently used first, until at most `target` bytes remain and at least
/// `need` were freed. Records without bytes (a `failed` marker) are left alone: they cost
/// nothing and keep a bad file from being served again.
fn evict_lru(
    store: &dyn ChunkStore,
    before: u64,
    target: u64,
    need: u64,
    open: &HashSet<ContentId>,
    pinned: &HashSet<ContentId>,
) -> Result<EvictReport, EvictError> {
    let mut files = store.files()?;
    // Oldest first; the content id breaks ties so that a pass is deterministic.
    files.sort_by_key(|(content, record)| (record.last_access, *content));
    let mut report = EvictReport { before, after: before, ..EvictReport::default() };
    for (content, record) in files {
        if report.after <= target && report.evicted_bytes >= need {
            break;
        }
        if record.cached_bytes == 0 {
            continue;
        }
        if open.contains(&content) {
            report.kept_open += 1;
            continue;
        }
        if pinned.contains(&content) {
            report.kept_pinned += 1;
            continue;
        }
        let freed = store.evict_file(&content)?;
        report.evicted_files += 1;
        report.evicted_bytes += freed;
        report.after = report.after.saturating_sub(freed);
    }
    Ok(report)
}

/// This process's lease: `<store>/leases/<pid>-<nonce>.lock`, held with an exclusive `flock`
/// for the life of the process, `<pid>-<nonce>.open`, the hex content ids it has open, and
/// `<pid>-<nonce>.fetching`, those it is fetching chunks of; each list replaced atomically
/// (write, then rename) on every change.
struct Leases {
    dir: PathBuf,
    name: String,
    /// Holds the lock; closing it (at exit, however the process ends) releases it.
    _lock: File,
    /// [`EVICTION_MUTEX`], opened twice: `flock` locks belong to an open file description, so
    /// a pass (exclusive) and a publication (shared) in the same process exclude each other
    /// only through two of them.
    pass: File,
    publication: File,
}

const OPEN_SUFFIX: &str = "open";
const FETCHING_SUFFIX: &str = "fetching";

/// The eviction mutex, held exclusively until the returned file is dropped.
fn exclusive_pass(dir: &Path) -> Result<File, EvictError> {
    let err = |source| EvictError::Leases { path: dir.display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(err)?;
    let file = open_mutex(dir).map_err(err)?;
    flock(&file, libc::LOCK_EX).map_err(err)?;
    Ok(file)
}

fn open_mutex(dir: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(EVICTION_MUTEX))
}

/// Releases a lock taken on a borrowed file when dropped.
struct Unlock<'f>(&'f File);

impl Drop for Unlock<'_> {
    fn drop(&mut self) {
        let _ = flock(self.0, libc::LOCK_UN);
    }
}

impl Leases {
    fn acquire(store_dir: &Path) -> Result<Leases, EvictError> {
        let dir = store_dir.join(LEASES_DIR);
        let err = |source| EvictError::Leases { path: dir.display().to_string(), source };
        std::fs::create_dir_all(&dir).map_err(err)?;
        let name = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        let lock = File::create(dir.join(format!("{name}.lock"))).map_err(err)?;
        flock(&lock, libc::LOCK_EX | libc::LOCK_NB).map_err(err)?;
        let pass = open_mutex(&dir).map_err(err)?;
        let publication = open_mutex(&dir).map_err(err)?;
        Ok(Leases { dir, name, _lock: lock, pass, publication })
    }

    /// The eviction mutex, exclusively, for one pass of this process.
    fn exclusive(&self) -> Result<Unlock<'_>, EvictError> {
        let err = |source| EvictError::Leases { path: self.dir.display().to_string(), source };
        flock(&self.pass, libc::LOCK_EX).map_err(err)?;
        Ok(Unlock(&self.pass))
    }

    /// Publish the open set, with the eviction mutex held shared: a pass running now ends
    /// first, and any pass after this sees the new set.
    fn publish_open(&self, open: &[ContentId]) -> io::Result<()> {
        flock(&self.publication, libc::LOCK_SH)?;
        let _unlock = Unlock(&self.publication);
        self.publish(OPEN_SUFFIX, open)
    }

    /// Replace this process's `<suffix>` list. Callers serialise calls per suffix, so the
    /// temporary name is never written by two at once.
    fn publish(&self, suffix: &str, contents: &[ContentId]) -> io::Result<()> {
        let mut text = String::with_capacity(contents.len() * 65);
        for content in contents {
            text.push_str(&content.to_hex());
            text.push('\n');
        }
        let tmp = self.dir.join(format!("{}.{suffix}.tmp", self.name));
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        // No fsync: leases matter only while their process lives, and a crash releases them.
        std::fs::rename(&tmp, self.dir.join(format!("{}.{suffix}", self.name)))
    }

    /// Files open in every other live process.
    fn others(&self) -> Result<HashSet<ContentId>, EvictError> {
        Self::read_all(&self.dir, Some(&self.name), OPEN_SUFFIX)
    }

    /// The `<suffix>` lists of every live process with a lease in `dir` except `skip`, as one
    /// set; leases of dead processes are removed on the way.
    fn read_all(
        dir: &Path,
        skip: Option<&str>,
        suffix: &str,
    ) -> Result<HashSet<ContentId>, EvictError> {
        let err = |source| EvictError::Leases { path: dir.display().to_string(), source };
        let mut out = HashSet::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(err(e)),
        };
        for entry in entries {
            let path = entry.map_err(err)?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            let Some(name) = name.strip_suffix(".lock") else { continue };
            if Some(name) == skip {
                continue;
            }
            let Ok(lock) = File::open(&path) else { continue };
            if flock(&lock, libc::LOCK_SH | libc::LOCK_NB).is_ok() {
                // Nobody holds it: its process is gone. Readers without write access to the
                // store (a `status` by another user) just skip it.
                for list in [OPEN_SUFFIX, FETCHING_SUFFIX] {
                    let _ = std::fs::remove_file(dir.join(format!("{name}.{list}")));
                }
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let text = match std::fs::read_to_string(dir.join(format!("{name}.{suffix}"))) {
                Ok(text) => text,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err(e)),
            };
            for line in text.lines() {
                match hex::decode(line).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                    Some(id) => {
                        out.insert(ContentId(id));
                    }
                    None => tracing::warn!(lease = name, line, "malformed lease line, ignored"),
                }
            }
        }
        Ok(out)
    }
}

/// `flock(2)` on `file`: the locks that leases, the eviction mutex and the mount registry
/// rest on (held by an open file description, released when it closes, however the process
/// ends).
pub(crate) fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Add `n` to `content`'s count; whether it was the first (the count was zero before).
fn count_up(counts: &Mutex<HashMap<ContentId, usize>>, content: &ContentId, n: usize) -> bool {
    if n == 0 {
        return false;
    }
    let mut counts = lock(counts);
    let count = counts.entry(*content).or_default();
    *count += n;
    *count == n
}

/// Take `n` from `content`'s count, dropping it at zero; whether that was the last.
fn count_down(counts: &Mutex<HashMap<ContentId, usize>>, content: &ContentId, n: usize) -> bool {
    if n == 0 {
        return false;
    }
    let mut counts = lock(counts);
    match counts.get_mut(content) {
        Some(count) if *count > n => {
            *count -= n;
            false
        }
        Some(_) => {
            counts.remove(content);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{FileEntry, FileHash, Manifest};
    use crate::store::memory::MemoryStore;
    use proptest::prelude::*;

    const CS: u64 = 1024;

    fn id(n: u8) -> ContentId {
        ContentId([n; 32])
    }

    /// Store `n` chunks of content `c`, a file of `n * CS` bytes.
    fn put(store: &dyn ChunkStore, c: u8, n: u64) {
        for i in 0..n {
            store.put_chunk(&id(c), n * CS, i, &vec![c; CS as usize]).unwrap();
        }
    }

    /// Access times have one-second resolution, so files put in one test share one: the
    /// content id breaks the tie (lower ids are "older").
    fn cached(store: &dyn ChunkStore, c: u8) -> u64 {
        store.file_record(&id(c)).unwrap().map_or(0, |r| r.cached_bytes)
    }

    #[test]
    fn lru_pass_evicts_whole_files_down_to_the_target() {
        let store = MemoryStore::new(CS);
        for c in 1..=5 {
            put(&store, c, 2);
        }
        let none = HashSet::new();
        let report = evict_lru(&store, 10 * CS, 7 * CS, 0, &none, &none).unwrap();
        // Same access second: the content id orders them, 1 and 2 go (4 chunks), 6 remain.
        assert_eq!(report.evicted_files, 2);
        assert_eq!(report.evicted_bytes, 4 * CS);
        assert_eq!(report.after, 6 * CS);
        assert_eq!((cached(&store, 1), cached(&store, 2), cached(&store, 3)), (0, 0, 2 * CS));
        assert_eq!(stored_bytes(&store).unwrap(), 6 * CS);
    }

    #[test]
    fn open_and_pinned_files_are_never_evicted() {
        let store = MemoryStore::new(CS);
        for c in 1..=4 {
            put(&store, c, 1);
        }
        let open: HashSet<_> = [id(1)].into();
        let pinned: HashSet<_> = [id(2)].into();
        let report = evict_lru(&store, 4 * CS, 0, 0, &open, &pinned).unwrap();
        assert_eq!((report.evicted_files, report.kept_open, report.kept_pinned), (2, 1, 1));
        assert_eq!(report.after, 2 * CS);
        assert_eq!((cached(&store, 1), cached(&store, 2)), (CS, CS));
    }

    #[test]
    fn evictor_counts_open_handles_and_pins_manifest_files() {
        let store: Arc<dyn ChunkStore> = Arc::new(MemoryStore::new(CS));
        for c in 1..=3 {
            put(store.as_ref(), c, 1);
        }
        let repo = RepoId::new("o", "pinned");
        let manifest = Manifest::build(
            repo.clone(),
            "c".repeat(40),
            None,
            vec![FileEntry { path: "w.bin".into(), size: CS, hash: FileHash::Lfs([3; 32]) }],
        );
        store.put_manifest(&manifest).unwrap();
        let policy = Policy { max_cache_size: Some(CS), pinned: vec![repo] };
        let ev = Evictor::new(store.clone(), None, policy).unwrap();
        ev.opened(&id(1));
        ev.opened(&id(1));
        ev.closed(&id(1));
        // Still open once: only content 2 can go, leaving 2 KiB over a 1 KiB bound.
        assert!(ev.stored(0));
        let report = ev.evict_to_bound().unwrap().unwrap();
        assert_eq!((report.evicted_files, report.kept_open, report.kept_pinned), (1, 1, 1));
        assert_eq!(ev.stored_estimate(), 2 * CS);
        ev.closed(&id(1));
        let report = ev.evict_to_bound().unwrap().unwrap();
        assert_eq!(report.evicted_files, 1);
        assert_eq!((cached(store.as_ref(), 1), cached(store.as_ref(), 3)), (0, CS));
    }

    /// The last chunks of a file arrive while a pass evicts: the pass must neither forget them
    /// (its scan came first) nor take the writer's skipped check as covered. Before, the
    /// estimate fell to what the scan saw, the store stayed over its bound with every file
    /// closed, and nothing ran a pass again.
    #[test]
    fn writes_during_a_pass_keep_the_bound_checked() {
        let memory = Arc::new(MemoryStore::new(CS));
        let store: Arc<dyn ChunkStore> = memory.clone();
        // held (1): 20 chunks, open; a (2), b (3): 10 each; big (4): 10 of its 40 so far.
        for (c, n) in [(1, 20), (2, 10), (3, 10)] {
            put(store.as_ref(), c, n);
        }
        for i in 0..10 {
            store.put_chunk(&id(4), 40 * CS, i, &[4; CS as usize]).unwrap();
        }
        let policy = Policy { max_cache_size: Some(48 * CS), pinned: vec![] };
        let ev = Evictor::new(store.clone(), None, policy).unwrap();
        ev.opened(&id(1));
        ev.opened(&id(4));
        // At the first eviction, big's other 30 chunks land and their writer checks the bound.
        let (writer_ev, writer_store) = (Arc::downgrade(&ev), store.clone());
        let wrote = Arc::new(AtomicBool::new(false));
        let once = wrote.clone();
        memory.set_before_evict(move |_| {
            if once.swap(true, Ordering::SeqCst) {
                return;
            }
            let ev = writer_ev.upgrade().unwrap();
            for i in 10..40 {
                writer_store.put_chunk(&id(4), 40 * CS, i, &[4; CS as usize]).unwrap();
            }
            assert!(ev.stored(30 * CS));
            assert!(ev.evict_to_bound().unwrap().is_none(), "a pass is running");
        });
        assert!(ev.stored(0));
        ev.evict_to_bound().unwrap().unwrap();
        assert!(wrote.load(Ordering::SeqCst));
        // The pass ran again for the skipped check: a and b are gone, held and big are open.
        assert_eq!(stored_bytes(store.as_ref()).unwrap(), 60 * CS);
        assert!(ev.stored_estimate() >= 60 * CS, "estimate {} forgot writes", ev.stored_estimate());
        // Closing big is what lets the store come back under its bound.
        ev.closed(&id(4));
        assert!(ev.over_bound());
        let report = ev.evict_to_bound_after_close().unwrap();
        assert_eq!((report.after, report.evicted_files), (20 * CS, 1));
        assert_eq!(cached(store.as_ref(), 1), 20 * CS);
    }

    #[test]
    fn make_room_ignores_the_bound_but_not_open_files() {
        let store: Arc<dyn ChunkStore> = Arc::new(MemoryStore::new(CS));
        for c in 1..=3 {
            put(store.as_ref(), c, 1);
        }
        let ev = Evictor::new(store.clone(), None, Policy::default()).unwrap();
        assert!(!ev.stored(1 << 40), "no bound: never over it");
        ev.opened(&id(1));
        assert_eq!(ev.make_room(CS + 1, ev.passes()).unwrap(), Room::Made);
        assert_eq!(stored_bytes(store.as_ref()).unwrap(), CS, "2 and 3 went, the open 1 stayed");
        // A writer that saw the store full before that pass tries again without evicting.
        assert_eq!(ev.make_room(1, 0).unwrap(), Room::Made);
        assert_eq!(stored_bytes(store.as_ref()).unwrap(), CS);
        assert_eq!(ev.make_room(1, ev.passes()).unwrap(), Room::None, "only the open file is left");
    }

    #[test]
    fn leases_are_seen_by_others_and_dropped_with_their_process() {
        let dir = tempfile::tempdir().unwrap();
        let a = Leases::acquire(dir.path()).unwrap();
        let b = Leases::acquire(dir.path()).unwrap();
        a.publish_open(&[id(7), id(8)]).unwrap();
        assert_eq!(b.others().unwrap(), HashSet::from([id(7), id(8)]));
        assert_eq!(a.others().unwrap(), HashSet::new());
        // `gc` (no lease of its own) sees everyone's.
        b.publish_open(&[id(9)]).unwrap();
        let all = Leases::read_all(&dir.path().join(LEASES_DIR), None, OPEN_SUFFIX).unwrap();
        assert_eq!(all, HashSet::from([id(7), id(8), id(9)]));
        // A process that ends releases its lock; its lease files are cleaned up by the next
        // reader. (flock locks belong to the open file description: dropping it is the same
        // as the process dying.)
        drop(a);
        assert_eq!(b.others().unwrap(), HashSet::new());
        let names: Vec<_> = std::fs::read_dir(dir.path().join(LEASES_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| n.starts_with(&b.name) || n == EVICTION_MUTEX), "{names:?}");
    }

    fn published(dir: &Path) -> HashSet<ContentId> {
        Leases::read_all(&dir.join(LEASES_DIR), None, OPEN_SUFFIX).unwrap()
    }

    /// Eight threads opening and closing files at once: after every round, what the lease
    /// says is exactly what is open (the race this replaced left 6 of 8 open files listed,
    /// or a closed one).
    #[test]
    fn concurrent_opens_and_closes_publish_exactly_the_open_set() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ChunkStore> = Arc::new(MemoryStore::new(CS));
        let ev = Evictor::new(store, Some(dir.path()), Policy::default()).unwrap();
        for round in 0..20u8 {
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let threads: Vec<_> = (0..8u8)
                .map(|t| {
                    let (ev, barrier) = (ev.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        ev.opened(&id(t + 1));
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
            let all: HashSet<_> = (1..=8).map(id).collect();
            assert_eq!(published(dir.path()), all, "round {round}: after 8 concurrent opens");
            let threads: Vec<_> = (0..8u8)
                .filter(|t| t % 2 == round % 2)
                .map(|t| {
                    let ev = ev.clone();
                    std::thread::spawn(move || ev.closed(&id(t + 1)))
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
            let left: HashSet<_> =
                (0..8u8).filter(|t| t % 2 != round % 2).map(|t| id(t + 1)).collect();
            assert_eq!(published(dir.path()), left, "round {round}: after 4 concurrent closes");
            for t in 0..8u8 {
                if t % 2 != round % 2 {
                    ev.closed(&id(t + 1));
                }
            }
            assert!(published(dir.path()).is_empty());
        }
    }

    /// An open that starts while a pass (here `gc`'s, as another process would run it)
    /// holds the eviction mutex is published only after the pass: the pass could not have
    /// missed a file whose open had returned.
    #[test]
    fn a_publication_waits_for_a_running_pass() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ChunkStore> = Arc::new(MemoryStore::new(CS));
        let ev = Evictor::new(store, Some(dir.path()), Policy::default()).unwrap();
        let pass = exclusive_pass(&dir.path().join(LEASES_DIR)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let opener = {
            let ev = ev.clone();
            std::thread::spawn(move || {
                ev.opened(&id(1));
                tx.send(()).unwrap();
            })
        };
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300)).is_err(),
            "the open returned while a pass held the mutex"
        );
        drop(pass);
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("open after the pass");
        opener.join().unwrap();
        assert_eq!(published(dir.path()), HashSet::from([id(1)]));
    }

    #[test]
    fn fetching_sets_are_published_beside_the_open_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ChunkStore> = Arc::new(MemoryStore::new(CS));
        let ev = Evictor::new(store.clone(), Some(dir.path()), Policy::default()).unwrap();
        ev.fetch_started(&id(3), 1);
        ev.fetch_started(&id(3), 1);
        ev.fetch_ended(&id(3), 1);
        assert_eq!(fetching_in(dir.path()), HashSet::from([id(3)]));
        assert_eq!(ev.fetching_anywhere(), HashSet::from([id(3)]));
        let other = Evictor::new(store, Some(dir.path()), Policy::default()).unwrap();
        assert_eq!(other.fetching_anywhere(), HashSet::from([id(3)]), "seen from another lease");
        ev.fetch_ended(&id(3), 1);
        assert!(fetching_in(dir.path()).is_empty());
    }

    proptest! {
        /// Whatever the sizes, a pass stops as soon as both goals are met, frees exactly what
        /// the records held, and leaves protected files alone.
        #[test]
        fn passes_meet_their_goal_and_no_more(
            chunks in proptest::collection::vec(1u64..4, 1..12),
            target_frac in 0.0f64..1.0,
            protect in proptest::collection::vec(any::<bool>(), 12),
        ) {
            let store = MemoryStore::new(CS);
            for (i, n) in chunks.iter().enumerate() {
                put(&store, i as u8 + 1, *n);
            }
            let before = stored_bytes(&store).unwrap();
            let target = (before as f64 * target_frac) as u64;
            let open: HashSet<_> =
                (0..chunks.len()).filter(|&i| protect[i]).map(|i| id(i as u8 + 1)).collect();
            let report = evict_lru(&store, before, target, 0, &open, &HashSet::new()).unwrap();
            prop_assert_eq!(report.after, stored_bytes(&store).unwrap());
            prop_assert_eq!(report.before - report.after, report.evicted_bytes);
            for c in &open {
                prop_assert!(store.file_record(c).unwrap().is_some());
            }
            let evictable: u64 = chunks.iter().enumerate()
                .filter(|(i, _)| !protect[*i]).map(|(_, n)| n * CS).sum();
            if report.after > target {
                // Missed only because everything evictable is gone.
                prop_assert_eq!(report.evicted_bytes, evictable);
            } else {
                // Stopped at the first file that got it under: without the last one evicted,
                // it would still be over.
                let last = chunks.iter().enumerate()
                    .filter(|(i, _)| !protect[*i] && store.file_record(&id(*i as u8 + 1)).unwrap().is_none())
                    .map(|(_, n)| n * CS).last();
                if let Some(last) = last {
                    prop_assert!(report.after + last > target);
                }
            }
        }
    }
}
