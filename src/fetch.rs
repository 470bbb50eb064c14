//! Getting one chunk of one file, whether or not it is stored: the single-flight fetch layer
//! between the filesystem core and the two seams ([`ChunkStore`], [`RangeFetcher`]).
//!
//! A chunk that is stored is read from the store. A chunk that is not is fetched as one
//! range (over several parallel requests when connections are spare, `split.rs`), checked
//! for length, written to the store, and handed to every reader that
//! asked for it meanwhile: concurrent readers of one chunk share one fetch. When the last
//! chunk of a file lands, the whole file is checked against the Hub's hash in the background;
//! a mismatch discards the file and marks it `failed` (doc/DESIGN.md, "Integrity").
//!
//! Store calls are synchronous and may touch the disk, so on the runtime they run through
//! `spawn_blocking`; no store transaction is ever held across an `.await`.

use crate::lock;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, Semaphore};

mod split;
mod verify;

pub use verify::{verify_file, Verdict};
use verify::{FileHasher, InOrder, Prefixed};

use crate::evict::Evictor;
use crate::hub::{HubError, LinkEstimate, RangeFetcher, RemoteFile};
use crate::manifest::{ContentId, FileHash};
use crate::profile::Profiles;
use crate::store::{chunk_len, ChunkStore, FileRecord, FileState, StoreError};
use crate::tier::TierClient;

#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Hub(#[from] HubError),
    /// Shared: a flight's error reaches every reader waiting on it, so it must be `Clone`.
    #[error("store: {0}")]
    Store(#[source] Arc<StoreError>),
    #[error("no answer within the read timeout of {0:?}")]
    Timeout(Duration),
    #[error("the Hub sent {got} bytes for chunk {index} of {path}, expected {expected}")]
    WrongLength { path: String, index: u64, got: usize, expected: u64 },
    #[error("{path} did not match the Hub's hash; marked failed")]
    Failed { path: String },
    #[error("internal: {0}")]
    Internal(String),
}

impl From<StoreError> for FetchError {
    fn from(e: StoreError) -> Self {
        FetchError::Store(Arc::new(e))
    }
}

/// Everything needed to fetch, store and verify one file's bytes.
#[derive(Clone, Debug)]
pub struct FileRef {
    pub remote: RemoteFile,
    pub hash: FileHash,
}

impl FileRef {
    pub fn content(&self) -> ContentId {
        self.hash.content_id()
    }
}

type ChunkKey = (ContentId, u64);

/// Who registered a fetch: read-ahead (a load plan's included), which holds its connection
/// permits, or a reader waiting for the chunk, which holds none (see
/// `ChunkFetcher::prefetch_slots`).
#[derive(Clone, Copy, Debug)]
enum Caller {
    ReadAhead,
    Demand,
}

/// Whom a fetch started by [`ChunkFetcher::chunk`] or [`ChunkFetcher::chunk_for_plan`] is
/// for, which says which counter its bytes add to.
#[derive(Clone, Copy, Debug)]
enum Need {
    /// A reader waiting for the bytes (`modelfs_demand_fetched_bytes_total`).
    Read,
    /// A load plan reading ahead of every reader (`modelfs_plan_fetched_bytes_total`).
    Plan,
}

/// One chunk's fetch, awaited by every reader of that chunk until it is stored. A `Shared`
/// future is driven by whoever polls it; if all of them give up, the next caller drives it on.
type Flight = Shared<BoxFuture<'static, Result<Bytes, FetchError>>>;
/// One range request for a run of adjacent chunks, shared by the run's chunk flights. It
/// hands each chunk to that chunk's [`Slot`] once stored; its own result is the request's.
type RunFlight = Shared<BoxFuture<'static, Result<(), FetchError>>>;
/// Where a run publishes one chunk's bytes, the moment they are stored.
type Slot = watch::Sender<Option<Bytes>>;

pub struct ChunkFetcher {
    store: Arc<dyn ChunkStore>,
    origin: Arc<dyn RangeFetcher>,
    /// Upper bound on one chunk fetch, retries included. The Hub client has its own budget;
    /// this one guarantees that no reader waits forever whatever the fetcher does.
    read_timeout: Duration,
    in_flight: Mutex<HashMap<ChunkKey, Flight>>,
    /// Contents whose whole-file check is running, so a file is checked once at a time.
    verifying: Mutex<HashSet<ContentId>>,
    /// Contents the background pass has checked (tests: which check verified a file).
    #[cfg(test)]
    verified_in_background: Mutex<HashSet<ContentId>>,
    /// One permit per connection read-ahead may use; a read-ahead request takes `parts` of
    /// them: bounds the memory that read-ahead holds (each request buffers up to `run_chunks`
    /// chunks) and the connections it opens. Demand reads take none for their first
    /// connection, so a reader never queues behind read-ahead, and split their chunk only over
    /// the permits free at that moment, so splitting never takes `--max-connections` past
    /// what it was without.
    prefetch_slots: Arc<Semaphore>,
    /// Most chunks one read-ahead request asks for (see [`PrefetchLimits::run_chunks`]).
    run_chunks: u64,
    /// Requests one chunk's transfer is split into (see [`PrefetchLimits::parts`]).
    parts: u64,
    /// Where read-ahead fetches run; the FUSE threads that trigger them are not on the runtime.
    runtime: Option<Handle>,
    /// Keeps the store under its bound and makes room when it is full; without one a full
    /// store just stops caching.
    evictor: OnceLock<Arc<Evictor>>,
    /// Chunks fetched but not stored (a full store with nothing evictable, a damaged one):
    /// the last few, so that a reader going through one in kernel-sized pieces fetches it
    /// once, not once per piece.
    unstored: Mutex<Unstored>,
    /// The last store write failed: read-ahead would only fetch what cannot be kept.
    store_failing: AtomicBool,
    /// Told of every content found bad here (see `ModelFs::set_on_failed`).
    on_failed: OnceLock<FailedHook>,
    /// Files hashed as their chunks are stored, in order.
    in_order: Arc<InOrder>,
    /// The shared tier, asked before the Hub and given what the Hub sent.
    tier: OnceLock<Arc<TierClient>>,
    /// Which repos are stored, and which shared through the tier.
    profiles: OnceLock<Arc<Profiles>>,
}

/// What is told of a content found bad.
type FailedHook = Arc<dyn Fn(&ContentId) + Send + Sync>;

/// Chunks [`ChunkFetcher`] keeps in memory when the store cannot keep them: a reader
/// streams through the current chunk in 128 KiB reads and the kernel has a few of those in
/// flight out of order, so four chunks (32 MiB of default chunks) are enough, and bound what
/// a store that cannot store costs in memory.
const UNSTORED_CHUNKS: u64 = 4;

/// What the memory cache may hold when a repo's profile is `none` (nothing stored; see
/// [`crate::profile`]): the chunks read-ahead fetched and the reader has not reached yet,
/// besides those it is reading. 64 MiB holds read-ahead's default 32 MiB in flight with room
/// for the chunks being read, and keeps such a mount's RSS near 128 MiB.
pub const STREAM_CACHE_BYTES: u64 = 64 << 20;

/// The unstored chunks, least recently used first, at most `max_bytes` of them.
#[derive(Default)]
struct Unstored {
    chunks: std::collections::VecDeque<(ChunkKey, Bytes)>,
    bytes: u64,
    max_bytes: u64,
}

impl Unstored {
    fn new(max_bytes: u64) -> Self {
        Self { max_bytes, ..Self::default() }
    }

    fn get(&mut self, key: &ChunkKey) -> Option<Bytes> {
        let at = self.chunks.iter().position(|(k, _)| k == key)?;
        let entry = self.chunks.remove(at)?;
        let bytes = entry.1.clone();
        self.chunks.push_back(entry);
        Some(bytes)
    }

    fn contains(&self, key: &ChunkKey) -> bool {
        self.chunks.iter().any(|(k, _)| k == key)
    }

    fn put(&mut self, key: ChunkKey, bytes: Bytes) {
        if let Some(at) = self.chunks.iter().position(|(k, _)| *k == key) {
            if let Some((_, old)) = self.chunks.remove(at) {
                self.bytes -= old.len() as u64;
            }
        }
        while self.bytes + bytes.len() as u64 > self.max_bytes {
            let Some((_, old)) = self.chunks.pop_front() else { break };
            self.bytes -= old.len() as u64;
        }
        self.bytes += bytes.len() as u64;
        self.chunks.push_back((key, bytes));
    }
}

/// How far and how wide read-ahead goes.
#[derive(Clone, Copy, Debug)]
pub struct PrefetchLimits {
    /// Read-ahead requests in flight at once (each holds its chunks in memory until stored).
    pub max_in_flight: usize,
    /// Largest read-ahead window, in bytes.
    pub max_window: u64,
    /// Adjacent chunks coalesced into one read-ahead request, at most. More than one only
    /// when connections, not memory, bound what is in flight: then one request per
    /// connection carrying several chunks keeps the memory budget in use and pays the CDN's
    /// time to first byte once per run instead of once per chunk. When memory is the bound
    /// (the default), splitting the same bytes over more, smaller requests is faster: more
    /// connections share a per-connection cap, and each chunk is stored and served as soon
    /// as it lands rather than when the whole run has (measured in doc/BENCHMARKS.md).
    pub run_chunks: u64,
    /// Parallel requests one chunk's range is split into (see `fetch/split.rs`). More than
    /// one only when memory, not connections, is the bound: the chunk buffers memory allows
    /// then carry `parts` connections each, so a per-connection cap is paid `parts` times
    /// over instead of once, for the same bytes in memory.
    pub parts: u64,
}

impl PrefetchLimits {
    /// No read-ahead: for one-shot processes (`status`, `pull`, which fetch what they choose
    /// themselves) and tests of demand reads.
    pub const NONE: PrefetchLimits =
        PrefetchLimits { max_in_flight: 1, max_window: 0, run_chunks: 1, parts: 1 };

    /// From the operator's budgets: as many bytes in flight as memory allows, over at most
    /// `max_connections` requests, each at most `max_request_bytes` long (and at least one
    /// chunk), or, when memory allows fewer chunks than connections, each chunk over several.
    pub fn new(
        chunk_size: u64,
        max_inflight_bytes: u64,
        max_connections: usize,
        max_request_bytes: u64,
    ) -> Self {
        let chunk_size = chunk_size.max(1);
        let by_memory = (max_inflight_bytes / chunk_size).max(1);
        let connections = max_connections.max(1) as u64;
        let longest = (max_request_bytes / chunk_size).max(1);
        let run_chunks = (by_memory / connections).clamp(1, longest);
        let max_in_flight = (by_memory / run_chunks).min(connections).max(1) as usize;
        // Connections memory leaves unused go to splitting each chunk's transfer.
        let parts = if run_chunks == 1 { (connections / max_in_flight as u64).max(1) } else { 1 };
        Self { max_in_flight, max_window: MAX_WINDOW, run_chunks, parts }
    }
}

impl Default for PrefetchLimits {
    fn default() -> Self {
        Self::new(
            crate::store::DEFAULT_CHUNK_SIZE,
            DEFAULT_MAX_INFLIGHT_BYTES,
            16,
            DEFAULT_MAX_REQUEST_BYTES,
        )
    }
}

/// Default bound on read-ahead memory: 4 chunks of 8 MiB, each split over 4 of the 16
/// connections (`fetch/split.rs`), so read-ahead fills a link whose CDN caps each connection
/// at a sixteenth of it (640 MB/s at a 40 MB/s cap) and the daemon's peak RSS stays under
/// 128 MiB while streaming. Measured with `scripts/bench/cold_probe.sh` (1 GiB, 3 runs each,
/// free page reporting off), split transfers: 40 MiB (5 chunks over 3 connections each) took
/// 2.21 s capped at 40 MB/s with a VmHWM of 118-159 MiB, and 1.85 s uncapped (99-111 MiB);
/// 32 MiB took 1.92 s capped (93-105 MiB) and 1.74 s uncapped (102-108 MiB). Before chunks
/// were split, 64, 48, 40 and 32 MiB gave 140-155, 120-150, 98-116 and 98-106 MiB.
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 32 << 20;

/// Default cap on one coalesced read-ahead request: 64 MiB holds a connection for about a
/// second at 64 MB/s, so a reader who stops early wastes at most that, and a failed request
/// retries no more than that.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 64 << 20;

/// Largest read-ahead window: far enough ahead that parallel fetches never run dry on a fast
/// link, small enough that a reader who stops early wastes little.
pub const MAX_WINDOW: u64 = 256 << 20;

impl ChunkFetcher {
    /// Read-ahead runs on the tokio runtime current at construction; built outside one, the
    /// fetcher does no read-ahead.
    pub fn new(
        store: Arc<dyn ChunkStore>,
        origin: Arc<dyn RangeFetcher>,
        read_timeout: Duration,
        limits: PrefetchLimits,
    ) -> Arc<Self> {
        Arc::new(Self {
            unstored: Mutex::new(Unstored::new(
                (UNSTORED_CHUNKS * store.chunk_size()).max(STREAM_CACHE_BYTES),
            )),
            store,
            origin,
            read_timeout,
            in_flight: Mutex::default(),
            verifying: Mutex::default(),
            #[cfg(test)]
            verified_in_background: Mutex::default(),
            prefetch_slots: Arc::new(Semaphore::new(
                limits.max_in_flight.max(1).saturating_mul(limits.parts.max(1) as usize),
            )),
            run_chunks: limits.run_chunks.max(1),
            parts: limits.parts.max(1),
            runtime: Handle::try_current().ok(),
            evictor: OnceLock::new(),
            store_failing: false.into(),
            on_failed: OnceLock::new(),
            in_order: Arc::default(),
            tier: OnceLock::new(),
            profiles: OnceLock::new(),
        })
    }

    /// Where each repo's bytes are kept (once; later calls are ignored). Without profiles,
    /// every repo is stored, and shared when there is a tier.
    pub fn set_profiles(&self, profiles: Arc<Profiles>) {
        let _ = self.profiles.set(profiles);
    }

    fn shares(&self, file: &FileRef) -> bool {
        self.shares_repo(&file.remote.repo)
    }

    /// Whether the shared tier holds `repo`'s chunks and metadata (profile `shared`).
    pub(crate) fn shares_repo(&self, repo: &crate::manifest::RepoId) -> bool {
        self.profiles.get().is_none_or(|p| p.shares(repo))
    }

    /// Whether `file`'s chunks are kept in memory only (profile `none`).
    pub(crate) fn streams(&self, file: &FileRef) -> bool {
        self.profiles.get().is_some_and(|p| p.streams(&file.remote.repo))
    }

    #[cfg(test)]
    pub(crate) fn was_verified_in_background(&self, content: &ContentId) -> bool {
        lock(&self.verified_in_background).contains(content)
    }

    /// Whom to tell when a content is found bad (once; later calls are ignored).
    pub fn set_on_failed(&self, hook: FailedHook) {
        let _ = self.on_failed.set(hook);
    }

    /// A whole-file hash did not match: the store has discarded it and marked it failed.
    fn found_bad(&self, file: &FileRef) {
        tracing::error!(
            repo = %file.remote.repo,
            path = %file.remote.path,
            "file does not match the Hub's hash; discarded and marked failed"
        );
        self.failed(&file.content());
        // Its chunks may have come from the tier, or gone to it before the hash was decided:
        // the next node must not be served them.
        if let Some(tier) = self.tier.get().filter(|_| self.shares(file)) {
            tier.forget_file(file);
        }
    }

    fn failed(&self, content: &ContentId) {
        if let Some(hook) = self.on_failed.get() {
            hook(content);
        }
    }

    /// Give the fetcher an evictor (once; later calls are ignored).
    pub fn set_evictor(&self, evictor: Arc<Evictor>) {
        let _ = self.evictor.set(evictor);
    }

    /// Read through a shared tier before the Hub (once; later calls are ignored).
    pub fn set_tier(&self, tier: Arc<TierClient>) {
        let _ = self.tier.set(tier);
    }

    /// Hand chunks the Hub sent to the tier, if there is one.
    fn offer_to_tier(&self, file: &FileRef, chunks: &[(u64, Bytes)]) {
        if let Some(tier) = self.tier.get().filter(|_| self.shares(file)) {
            tier.offer(file, chunks);
        }
    }

    /// Chunks `run` of `file` from the tier, checked as the Hub's would be: each for its
    /// length and crc32c by the tier, and a run that is the whole file against the Hub's
    /// hash. `None`: not all there, or not right; the Hub is asked.
    async fn read_from_tier(
        &self,
        file: &FileRef,
        run: std::ops::Range<u64>,
    ) -> Option<Vec<(u64, Bytes)>> {
        let tier = self.tier.get().filter(|_| self.shares(file))?;
        if !self.tier_may_serve(tier, file).await {
            return None;
        }
        let chunks = tier.read_run(file, run.clone()).await?;
        let cs = self.store.chunk_size();
        if run.start == 0 && run.end * cs >= file.remote.size {
            let whole: Vec<u8> = chunks.iter().flat_map(|(_, b)| b.iter().copied()).collect();
            if !FileHasher::digest_matches(&file.hash, &whole) {
                crate::metrics::get().tier_error("corrupt");
                tracing::warn!(path = %file.remote.path, "the tier's copy does not match the file's hash; removing it and asking the Hub");
                // Removed, so that the Hub's bytes, once this node has them, replace it.
                tier.forget_file(file);
                return None;
            }
        }
        Some(chunks)
    }

    /// Whether the tier may serve `file`'s chunks to this node: a restricted repo's only
    /// once the Hub has served this node, with its own token, a byte of this file within the
    /// revalidation interval (`tier/access.rs`). That byte costs one tiny request per repo
    /// per interval; a refusal leaves the read to the Hub, which refuses it too.
    async fn tier_may_serve(&self, tier: &TierClient, file: &FileRef) -> bool {
        use crate::tier::access::Decision;
        let repo = &file.remote.repo;
        if tier.access().decide(repo) == Decision::Serve {
            return true;
        }
        match self.origin.fetch_range(&file.remote, 0..1).await {
            Ok(_) => {
                tier.access().confirmed(repo);
                true
            }
            // The Hub cannot say (down, or --offline): the tier's manifest of the commit, which
            // a node wrote with what its Hub said, tells whether the repo is public.
            Err(HubError::Unavailable(_) | HubError::Offline) => {
                crate::tier::catalog::public_in_tier(tier, repo, &file.remote.commit).await
            }
            Err(e) => {
                tracing::debug!(repo = %repo, error = %e, "the Hub did not confirm access; not reading the tier");
                false
            }
        }
    }

    /// Make sure chunks `chunks` of `file` get stored, in the background, at most
    /// `max_in_flight` requests at a time, each for a run of up to `run_chunks` adjacent
    /// chunks. Chunks already stored or being fetched cost nothing.
    pub fn prefetch(self: &Arc<Self>, file: &FileRef, mut chunks: std::ops::Range<u64>) {
        let Some(rt) = &self.runtime else { return };
        if self.store_failing.load(Ordering::Relaxed) {
            return;
        }
        if self.streams(file) {
            // Only as far ahead as the memory cache holds beside the chunks being read: a
            // chunk fetched further ahead would be dropped before it is read, and fetched again.
            let ahead = (STREAM_CACHE_BYTES / self.store.chunk_size() / 2).max(1);
            chunks.end = chunks.end.min(chunks.start.saturating_add(ahead));
        }
        let run_len = run_length(self.run_chunks, self.origin.link(), self.store.chunk_size());
        let mut first = chunks.start;
        while first < chunks.end {
            let group = first..chunks.end.min(first.saturating_add(run_len));
            first = group.end;
            let this = self.clone();
            let file = file.clone();
            rt.spawn(async move {
                // The permit is taken before the flights are registered, so a demand read of a
                // chunk whose read-ahead is still queued fetches it at once, not after the queue.
                let Ok(_permit) = this.read_ahead_permit().await else { return };
                let group: Vec<u64> = group.collect();
                for (run, flights) in this.claim(&file, &group, Caller::ReadAhead) {
                    // The permit is held until the run is stored: that bounds the memory.
                    if let Err(e) = run.await {
                        tracing::debug!(path = %file.remote.path, error = %e, "read-ahead fetch failed");
                    }
                    this.retire(&file, &flights);
                }
            });
        }
    }

    /// Fetch `chunks` of `file` in the order given (a load plan's), each run of adjacent ones
    /// up to the read-ahead run length as one request, through the same permits as read-ahead:
    /// the permits are taken in order, so the plan's first chunks are on the wire first, and
    /// demand reads, which take none, still go before all of it. Before each request
    /// `keep_going` is asked (the program may have closed the file); `fetched` is told each
    /// chunk this call stored, with its length. Returns once every request is issued (or
    /// `keep_going` said stop): what is still on the wire is the returned [`InFlight`], so
    /// that the caller can queue what comes next behind it while its tail finishes.
    pub async fn fetch_in_order(
        self: &Arc<Self>,
        file: &FileRef,
        chunks: &[u64],
        keep_going: impl Fn() -> bool,
        fetched: impl Fn(u64, u64) + Clone + Send + 'static,
    ) -> InFlight {
        let cs = self.store.chunk_size();
        let run_len = run_length(self.run_chunks, self.origin.link(), cs).max(1);
        let mut requests = tokio::task::JoinSet::new();
        for group in in_order_runs(chunks, run_len) {
            if !keep_going() || self.store_failing.load(Ordering::Relaxed) {
                break;
            }
            let Ok(permit) = self.read_ahead_permit().await else { break };
            let (this, file, fetched) = (self.clone(), file.clone(), fetched.clone());
            requests.spawn(async move {
                let _permit = permit;
                for (run, flights) in this.claim(&file, &group, Caller::ReadAhead) {
                    match run.await {
                        Ok(()) => {
                            for (index, _) in &flights {
                                fetched(*index, chunk_len(file.remote.size, cs, *index));
                            }
                        }
                        Err(e) => {
                            tracing::debug!(path = %file.remote.path, error = %e, "load plan fetch failed")
                        }
                    }
                    this.retire(&file, &flights);
                }
            });
        }
        InFlight(requests)
    }

    pub fn store(&self) -> &Arc<dyn ChunkStore> {
        &self.store
    }

    /// What one read-ahead request holds while in flight: a connection per part.
    async fn read_ahead_permit(
        &self,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError> {
        let n = u32::try_from(self.parts).unwrap_or(u32::MAX);
        self.prefetch_slots.clone().acquire_many_owned(n).await
    }

    /// The whole of chunk `index` of `file`, from the store or, once for all concurrent
    /// callers, from the Hub; a fetch this call starts counts as a demand fetch.
    pub async fn chunk(self: &Arc<Self>, file: &FileRef, index: u64) -> Result<Bytes, FetchError> {
        self.chunk_for(file, index, Need::Read).await
    }

    /// [`Self::chunk`] for a load plan that must read a file no reader has asked for yet (the
    /// header of a checkpoint's next shard, its index): what this call fetches counts as the
    /// plan's bytes, not a reader's wait. It still borrows free permits as a demand read does,
    /// since the plan it gates waits on it.
    pub async fn chunk_for_plan(
        self: &Arc<Self>,
        file: &FileRef,
        index: u64,
    ) -> Result<Bytes, FetchError> {
        self.chunk_for(file, index, Need::Plan).await
    }

    async fn chunk_for(
        self: &Arc<Self>,
        file: &FileRef,
        index: u64,
        need: Need,
    ) -> Result<Bytes, FetchError> {
        let content = file.content();
        let cs = self.store.chunk_size();
        let len = chunk_len(file.remote.size, cs, index) as usize;
        if let Some(hit) = self.read_stored(content, index, len).await? {
            return Ok(hit);
        }
        if let Some(kept) = lock(&self.unstored).get(&(content, index)) {
            return Ok(kept);
        }
        let claimed = self.claim(file, &[index], Caller::Demand).pop();
        // Nobody was fetching it: this caller started the fetch, and counts its bytes.
        let started = claimed.is_some();
        let flight = match claimed {
            Some((_, mut flights)) => flights.pop().map(|(_, f)| f),
            None => lock(&self.in_flight).get(&(content, index)).cloned(),
        };
        // Retired between our miss and the lookup: it is stored now, or failed and worth a
        // fresh attempt; either way the next call settles it.
        let Some(flight) = flight else { return Box::pin(self.chunk_for(file, index, need)).await };
        let result = flight.clone().await;
        if let (true, Ok(bytes)) = (started, &result) {
            let len = bytes.len() as u64;
            match need {
                Need::Read => crate::metrics::get().demand_fetched(len),
                Need::Plan => crate::metrics::get().plan_fetched(len),
            }
        }
        // Whoever gets here first retires the flight; later callers find the chunk stored (or,
        // after an error, start a fresh attempt instead of inheriting a stale failure).
        self.retire(file, &[(index, flight)]);
        result
    }

    /// Register fetches for those of `indices` (ascending) that are neither stored nor being
    /// fetched: one range request per run of adjacent ones, each run's chunk flights entered
    /// in the in-flight map under one lock, so a concurrent reader of any of them joins
    /// instead of fetching again. Returns each run's request with its chunk flights.
    ///
    /// The store is asked under the lock too. A chunk goes from missing to in flight (here),
    /// to stored, and only then leaves the map, so under the lock "not in the map" and "not
    /// stored" together mean missing; asked apart, a chunk stored and retired in between
    /// would be fetched twice.
    fn claim(
        self: &Arc<Self>,
        file: &FileRef,
        indices: &[u64],
        caller: Caller,
    ) -> Vec<(RunFlight, Vec<(u64, Flight)>)> {
        let content = file.content();
        let streams = self.streams(file);
        let mut map = lock(&self.in_flight);
        let free: Vec<u64> = indices
            .iter()
            .copied()
            .filter(|&i| !map.contains_key(&(content, i)))
            // A store that cannot say is treated as missing: fetching again is safe.
            .filter(|&i| !self.store.has_chunk(&content, i).unwrap_or(false))
            .filter(|&i| !streams || !lock(&self.unstored).contains(&(content, i)))
            .collect();
        let mut claimed = Vec::new();
        for run in adjacent_runs(&free) {
            let (slots, receivers): (Vec<Slot>, Vec<_>) =
                run.clone().map(|_| watch::channel(None)).unzip();
            let (this, f, asked) = (self.clone(), file.clone(), run.clone());
            let request: RunFlight =
                async move { this.fetch_run(&f, asked, slots, caller).await }.boxed().shared();
            let mut flights = Vec::new();
            for (index, slot) in run.zip(receivers) {
                let flight = chunk_of_run(request.clone(), slot);
                map.insert((content, index), flight.clone());
                flights.push((index, flight));
            }
            claimed.push((request, flights));
        }
        drop(map);
        // What is never stored cannot be evicted: nothing to tell other processes of it.
        if let Some(evictor) = self.evictor.get().filter(|_| !streams) {
            let chunks = claimed.iter().map(|(_, flights)| flights.len()).sum();
            evictor.fetch_started(&content, chunks);
        }
        claimed
    }

    /// Take finished flights out of the in-flight map (unless already replaced by newer ones).
    fn retire(&self, file: &FileRef, flights: &[(u64, Flight)]) {
        let content = &file.content();
        let mut removed = 0;
        let mut map = lock(&self.in_flight);
        for (index, flight) in flights {
            let key = (*content, *index);
            if map.get(&key).is_some_and(|f| f.ptr_eq(flight)) {
                map.remove(&key);
                removed += 1;
            }
        }
        drop(map);
        // Every flight entered in the map by `claim` leaves it here exactly once.
        if let Some(evictor) = self.evictor.get().filter(|_| !self.streams(file)) {
            evictor.fetch_ended(content, removed);
        }
    }

    async fn read_stored(
        &self,
        content: ContentId,
        index: u64,
        len: usize,
    ) -> Result<Option<Bytes>, FetchError> {
        let store = self.store.clone();
        blocking(move || {
            let mut out = Vec::with_capacity(len);
            Ok(store.read_chunk(&content, index, 0..len, &mut out)?.then(|| Bytes::from(out)))
        })
        .await
    }

    /// Fetch chunks `run` of `file` with one range request, store them, and publish each in
    /// its slot as soon as it is stored. A run of one chunk, or one that is a whole file, is
    /// checked whole before anything is published; a longer run is streamed, chunk by chunk.
    async fn fetch_run(
        self: &Arc<Self>,
        file: &FileRef,
        run: std::ops::Range<u64>,
        slots: Vec<Slot>,
        caller: Caller,
    ) -> Result<(), FetchError> {
        self.refuse_failed(file).await?;
        let cs = self.store.chunk_size();
        let whole_file = run.start == 0 && run.end * cs >= file.remote.size;
        if let Some(chunks) = self.read_from_tier(file, run.clone()).await {
            self.keep(file, &chunks, whole_file).await;
            for (slot, (_, bytes)) in slots.iter().zip(chunks) {
                slot.send_replace(Some(bytes));
            }
            return Ok(());
        }
        if run.end - run.start == 1 || whole_file {
            let chunks = self.fetch_checked(file, run.clone(), caller).await?;
            self.keep(file, &chunks, whole_file).await;
            self.offer_to_tier(file, &chunks);
            for (slot, (_, bytes)) in slots.iter().zip(chunks) {
                slot.send_replace(Some(bytes));
            }
            return Ok(());
        }
        self.stream(file, run, &slots).await
    }

    /// A file whose bytes did not match the Hub's hash is an integrity failure (EIO), not something
    /// to fetch and serve again and again (doc/SEMANTICS.md, "Reads"), until it is old enough that
    /// the origin may have been fixed.
    async fn refuse_failed(&self, file: &FileRef) -> Result<(), FetchError> {
        let store = self.store.clone();
        let content = file.content();
        let record = blocking(move || Ok(store.file_record(&content)?)).await?;
        if let Some(record) = record.filter(|r| r.state == FileState::Failed) {
            let age = crate::store::unix_now().saturating_sub(record.last_access);
            if age < FAILED_RETRY_AFTER.as_secs() {
                return Err(FetchError::Failed { path: file.remote.path.clone() });
            }
            // Forget the failure and fetch afresh; the new bytes are checked like any others.
            tracing::info!(path = %file.remote.path, age, "fetching again a file that failed verification");
            let (store, content) = (self.store.clone(), file.content());
            blocking(move || Ok(store.evict_file(&content)?)).await?;
        }
        Ok(())
    }

    /// Chunks `run` of `file` in one range, whole (over several requests when it is split,
    /// see [`PrefetchLimits::parts`]), checked for length and, when the run is the whole file,
    /// against the Hub's hash (fetched again on a mismatch, then the file is marked `failed`).
    async fn fetch_checked(
        &self,
        file: &FileRef,
        run: std::ops::Range<u64>,
        caller: Caller,
    ) -> Result<Vec<(u64, Bytes)>, FetchError> {
        let cs = self.store.chunk_size();
        let size = file.remote.size;
        let start = run.start * cs;
        let end = (run.end * cs).min(size);
        let expected = end.saturating_sub(start);
        // The whole file, checked before anyone sees it: config, tokenizer and other small
        // files, the ones read whole and at once. Larger files are checked once complete.
        let whole_file = start == 0 && end == size;
        let wanted = split::part_count(self.parts, expected);
        // Read-ahead holds `parts` permits already; a demand read borrows what is free, and
        // holds it (`_borrowed`) until its fetch is over.
        let (parts, _borrowed): (u64, Vec<_>) = match caller {
            Caller::ReadAhead => (wanted, Vec::new()),
            Caller::Demand => {
                let free: Vec<_> =
                    (1..wanted).map_while(|_| self.prefetch_slots.try_acquire().ok()).collect();
                (1 + free.len() as u64, free)
            }
        };
        let deadline = tokio::time::Instant::now() + self.read_timeout;
        let mut attempt = 0;
        loop {
            attempt += 1;
            tracing::debug!(repo = %file.remote.repo, path = %file.remote.path, index = run.start,
                            chunks = run.end - run.start, attempt, "fetching chunk");
            let bytes = tokio::time::timeout_at(
                deadline,
                crate::metrics::get().timed_fetch(split::fetch_split(
                    &*self.origin,
                    &file.remote,
                    start..end,
                    parts,
                )),
            )
            .await
            .map_err(|_| FetchError::Timeout(self.read_timeout))??;
            if bytes.len() as u64 != expected {
                return Err(FetchError::WrongLength {
                    path: file.remote.path.clone(),
                    index: run.start,
                    got: bytes.len(),
                    expected,
                });
            }
            // Slices of the one buffer: no copy.
            let chunks = split_run(&bytes, run.clone(), cs);
            if !whole_file || FileHasher::digest_matches(&file.hash, &bytes) {
                return Ok(chunks);
            }
            crate::metrics::get().file_verified(false);
            tracing::warn!(
                repo = %file.remote.repo,
                path = %file.remote.path,
                attempt,
                "the Hub sent bytes that do not match the file's hash"
            );
            if attempt >= WHOLE_FILE_ATTEMPTS || tokio::time::Instant::now() >= deadline {
                // As for a larger file found wrong once complete: discarded, `failed`, EIO.
                let (store, content) = (self.store.clone(), file.content());
                blocking(move || {
                    for (index, data) in chunks {
                        store.put_chunk(&content, size, index, &data)?;
                    }
                    Ok(store.discard_file(&content, FileState::Failed)?)
                })
                .await?;
                tracing::error!(repo = %file.remote.repo, path = %file.remote.path, "file does not match the Hub's hash; marked failed");
                self.failed(&file.content());
                return Err(FetchError::Failed { path: file.remote.path.clone() });
            }
            tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
        }
    }

    /// Chunks `run` of `file` in one streamed range request: each chunk is stored and
    /// published in its slot as soon as its last byte is in, while the rest is on its way.
    /// No piece for `read_timeout` is a timeout, however long the run; a request that breaks
    /// off leaves the chunks before the break stored and published.
    async fn stream(
        self: &Arc<Self>,
        file: &FileRef,
        run: std::ops::Range<u64>,
        slots: &[Slot],
    ) -> Result<(), FetchError> {
        let cs = self.store.chunk_size();
        let size = file.remote.size;
        let (start, end) = (run.start * cs, (run.end * cs).min(size));
        tracing::debug!(repo = %file.remote.repo, path = %file.remote.path, index = run.start,
                        chunks = run.end - run.start, streamed = true, "fetching chunk");
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let fetch = async {
            let mut sink = move |piece: Bytes| {
                // The receiver only goes away with this whole future.
                let _ = tx.send(piece);
            };
            let fetched = self.origin.fetch_pieces(&file.remote, start..end, cs, &mut sink);
            let counted = async { fetched.await.map(|()| (end - start) as usize) };
            // Its outcome is for after the pieces are stored, so it is never an `Err` here.
            Ok::<_, FetchError>(crate::metrics::get().timed_fetch(counted).await)
        };
        let keep_all = async {
            let mut index = run.start;
            loop {
                let piece = match tokio::time::timeout(self.read_timeout, rx.recv()).await {
                    Err(_) => return Err(FetchError::Timeout(self.read_timeout)),
                    // The request is over: everything it delivered is stored.
                    Ok(None) => return Ok(index),
                    Ok(Some(piece)) => piece,
                };
                let expected = chunk_len(size, cs, index);
                if index >= run.end || piece.len() as u64 != expected {
                    return Err(FetchError::WrongLength {
                        path: file.remote.path.clone(),
                        index,
                        got: piece.len(),
                        expected,
                    });
                }
                let kept = [(index, piece.clone())];
                self.keep(file, &kept, false).await;
                self.offer_to_tier(file, &kept);
                slots[(index - run.start) as usize].send_replace(Some(piece));
                index += 1;
            }
        };
        let (fetched, stored_to) = futures::future::try_join(fetch, keep_all).await?;
        fetched?;
        if stored_to != run.end {
            return Err(FetchError::Internal(format!(
                "a streamed range of chunks {run:?} ended at chunk {stored_to}"
            )));
        }
        Ok(())
    }

    /// Store fetched chunks and do what follows: mark a file checked whole as verified, start
    /// the whole-file check of one that became complete, let the evictor know. Never fails:
    /// the bytes are right (length-checked against what was asked), and failing to keep them
    /// costs a refetch later, not a failed read now, since the reader is served from memory.
    async fn keep(self: &Arc<Self>, file: &FileRef, chunks: &[(u64, Bytes)], checked_whole: bool) {
        if self.streams(file) {
            // Profile `none`: memory only, and nothing on disk, not even a record.
            let mut unstored = lock(&self.unstored);
            for (index, bytes) in chunks {
                unstored.put((file.content(), *index), bytes.clone());
            }
            return;
        }
        let store = self.store.clone();
        let content = file.content();
        let evictor = self.evictor.get().cloned();
        let size = file.remote.size;
        let bytes: u64 = chunks.iter().map(|(_, b)| b.len() as u64).sum();
        let first = chunks.first().map_or(0, |(i, _)| *i);
        let to_store = chunks.to_vec();
        let stored = blocking(move || {
            let mut last = None;
            for (index, data) in &to_store {
                last =
                    Some(store_chunk(&*store, evictor.as_deref(), &content, *index, data, size)?);
            }
            last.ok_or_else(|| FetchError::Internal("no chunk to store".into()))
        })
        .await;
        let record = match stored {
            Ok(stored) => {
                if self.store_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("chunks are stored again");
                }
                stored
            }
            Err(e) => {
                self.store_failing.store(true, Ordering::Relaxed);
                let mut unstored = lock(&self.unstored);
                for (index, bytes) in chunks {
                    unstored.put((content, *index), bytes.clone());
                }
                return tracing::warn!(
                    path = %file.remote.path,
                    first,
                    error = %e,
                    "chunk not stored; serving it without caching"
                );
            }
        };
        if !checked_whole {
            if first == 0 {
                self.in_order.track(file);
            }
            self.spawn_advance(file.clone());
        }
        if record.state == FileState::Complete && checked_whole {
            // Checked before it was served.
            crate::metrics::get().file_verified(true);
            let (store, content) = (self.store.clone(), file.content());
            let marked = blocking(move || Ok(store.set_file_state(&content, FileState::Verified)?));
            if let Err(e) = marked.await {
                tracing::warn!(path = %file.remote.path, error = %e, "verified state not stored");
            }
        }
        if let Some(evictor) = self.evictor.get() {
            if evictor.stored(bytes) {
                let evictor = evictor.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = evictor.evict_to_bound() {
                        tracing::error!(error = %e, "eviction pass failed");
                    }
                });
            }
        }
    }

    /// Verify `file` in the background if the store holds all of it but has not checked it:
    /// a daemon killed between the last chunk write and the end of the hash leaves such
    /// files, and nothing else would check them, since reads of them never miss. Called on
    /// open, with the file's hash at hand.
    pub fn verify_if_unchecked(self: &Arc<Self>, file: &FileRef) {
        match self.store.file_record(&file.content()) {
            Ok(Some(record)) if record.state == FileState::Complete => {
                self.spawn_verify(file.clone())
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(path = %file.remote.path, error = %e, "no record to check"),
        }
    }

    /// Advance `file`'s in-order hash in the background, behind its readers; a file whose
    /// hash is not tracked and that is whole gets the background pass instead.
    fn spawn_advance(self: &Arc<Self>, file: FileRef) {
        let Some(rt) = self.runtime.clone().or_else(|| Handle::try_current().ok()) else {
            return;
        };
        let this = self.clone();
        rt.spawn(async move {
            let (store, in_order, f) = (this.store.clone(), this.in_order.clone(), file.clone());
            let outcome = blocking(move || Ok(in_order.advance(store.as_ref(), &f)?)).await;
            match outcome {
                Ok(Prefixed::Verified) => {
                    tracing::debug!(path = %file.remote.path, "file verified as its chunks landed, in order");
                }
                Ok(Prefixed::Failed) => this.found_bad(&file),
                Ok(Prefixed::Pending) => {}
                // Not hashed in order here: once whole, the background pass decides.
                Ok(Prefixed::Untracked) => this.verify_if_unchecked(&file),
                Err(e) => tracing::debug!(path = %file.remote.path, error = %e, "in-order hash stopped"),
            }
        });
    }

    fn spawn_verify(self: &Arc<Self>, file: FileRef) {
        let Some(rt) = self.runtime.clone().or_else(|| Handle::try_current().ok()) else {
            return;
        };
        let content = file.content();
        if !lock(&self.verifying).insert(content) {
            return;
        }
        let this = self.clone();
        rt.spawn(async move {
            let store = this.store.clone();
            let f = file.clone();
            let outcome = blocking(move || Ok(verify_file(store.as_ref(), &f)?)).await;
            #[cfg(test)]
            lock(&this.verified_in_background).insert(content);
            match outcome {
                Ok(Verdict::Match) => {
                    tracing::debug!(path = %file.remote.path, "file verified");
                }
                Ok(Verdict::Mismatch) => this.found_bad(&file),
                Ok(Verdict::Incomplete) => {}
                Err(e) => {
                    tracing::warn!(path = %file.remote.path, error = %e, "verification failed to run")
                }
            }
            lock(&this.verifying).remove(&content);
        });
    }
}

/// How many times a write that finds the store full makes room and tries again before the
/// chunk is served without being stored: other writers may take the room one pass made.
const FULL_ATTEMPTS: usize = 4;

/// Store one chunk; when the store is full (map or disk), evict least recently used files,
/// just enough for this chunk (each pass evicts whole files, so usually more), and try again.
/// `Err(Full)` after that means nothing could be evicted.
///
/// Making room for a fixed large amount instead (it was 128 MiB) emptied a small disk at the
/// first full write: a 24 MiB store reading its way through 4 MiB files kept one file at a
/// time. And a writer that finds a pass running waits for it and tries again before evicting
/// more, so concurrent writers share the room one pass makes.
fn store_chunk(
    store: &dyn ChunkStore,
    evictor: Option<&Evictor>,
    content: &ContentId,
    index: u64,
    data: &[u8],
    size: u64,
) -> Result<FileRecord, StoreError> {
    for _ in 0..FULL_ATTEMPTS {
        let seen = evictor.map(Evictor::passes);
        match store.put_chunk(content, size, index, data) {
            Err(StoreError::Full) => {
                let (Some(evictor), Some(seen)) = (evictor, seen) else {
                    return Err(StoreError::Full);
                };
                match evictor.make_room(data.len() as u64, seen) {
                    Ok(crate::evict::Room::Made) => {}
                    Ok(crate::evict::Room::None) => return Err(StoreError::Full),
                    Err(e) => {
                        tracing::error!(error = %e, "eviction to make room failed");
                        return Err(StoreError::Full);
                    }
                }
            }
            other => return other,
        }
    }
    Err(StoreError::Full)
}

/// Sequential-read detection and the read-ahead window of one open handle.
///
/// A read that starts where the previous reads ended (within [`SEQUENTIAL_SLACK`], since the
/// kernel issues its own read-ahead requests in parallel and they may arrive out of order) is
/// sequential. Once a sequential run crosses into a new chunk, the window opens at
/// [`INITIAL_WINDOW_CHUNKS`] chunks and doubles each time the reader enters another, up to
/// the limit. Any other read is random: the window collapses to
/// nothing, so random access (an index lookup, a header probe) fetches only what it reads.
#[derive(Debug, Default, Clone)]
pub struct ReadAhead {
    /// Where the next sequential read is expected to start.
    next: u64,
    /// Bytes to keep fetched ahead of the reader; 0 while access looks random.
    window: u64,
    /// Chunks below this index have been handed to read-ahead already.
    issued_to: u64,
}

/// Two chunks: enough that the next chunk is on its way while this one is read.
pub const INITIAL_WINDOW_CHUNKS: u64 = 2;

/// How far a read may start from the expected offset and still count as sequential (at most
/// one chunk): the kernel keeps up to 64 background reads of up to 1 MiB in flight, and they
/// may arrive out of order.
pub const SEQUENTIAL_SLACK: u64 = 8 << 20;

impl ReadAhead {
    /// Record a read of `[offset, offset+len)` and return the chunks to fetch ahead now.
    pub fn on_read(
        &mut self,
        file_size: u64,
        chunk_size: u64,
        max_window: u64,
        offset: u64,
        len: u64,
    ) -> std::ops::Range<u64> {
        let end = offset.saturating_add(len).min(file_size);
        // Never more slack than a chunk, so that with small chunks a jump of a few chunks
        // still reads as random.
        let slack = SEQUENTIAL_SLACK.min(chunk_size);
        // A handle's first read counts as sequential only in the first chunk: a reader that
        // opens a file and starts in the middle is probing, not streaming.
        let fresh = self.next == 0 && self.window == 0;
        let sequential = if fresh {
            offset < chunk_size
        } else {
            offset <= self.next.saturating_add(slack) && end.saturating_add(slack) >= self.next
        };
        if !sequential {
            *self = ReadAhead { next: end, window: 0, issued_to: 0 };
            return 0..0;
        }
        let initial = (INITIAL_WINDOW_CHUNKS * chunk_size).min(max_window);
        let entered_new_chunk = end / chunk_size > self.next / chunk_size;
        self.window = match self.window {
            // A run must cross into a new chunk before read-ahead starts: a reader peeking at
            // a header (GGUF metadata, a safetensors index) costs one chunk, not three.
            0 if entered_new_chunk => initial,
            w if entered_new_chunk => w.saturating_mul(2).min(max_window),
            w => w,
        };
        self.next = self.next.max(end);
        if self.window == 0 {
            return 0..0;
        }
        let first = (end / chunk_size).max(self.issued_to);
        let last = end.saturating_add(self.window).min(file_size).div_ceil(chunk_size);
        if first >= last {
            return 0..0;
        }
        self.issued_to = last;
        first..last
    }
}

/// The requests of a [`ChunkFetcher::fetch_in_order`] still running once all were issued.
/// Dropping it cancels them (their chunks are fetched again by whoever needs them).
#[must_use = "dropping it cancels the requests; await `finished`"]
pub struct InFlight(tokio::task::JoinSet<()>);

impl InFlight {
    /// Every request has finished (stored its chunks, or failed and said so at debug).
    pub async fn finished(mut self) {
        while self.0.join_next().await.is_some() {}
    }
}

/// How long a file that failed verification answers EIO before it is fetched afresh: long
/// enough that a bad copy on a CDN is not downloaded again and again, short enough that the
/// mount heals by itself once the origin is fixed (`modelfs pull` clears it at once).
const FAILED_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Fetches of a whole small file whose bytes do not match its hash, before it is marked
/// `failed`: a CDN edge that served a bad copy once rarely does it three times running.
const WHOLE_FILE_ATTEMPTS: u32 = 3;

/// The flight of one chunk of a run: its bytes as soon as the run has stored them, or the
/// run's error if it ended without them. Awaiting it drives the run, so a reader waiting for
/// one chunk keeps the whole request going even if nobody else does.
fn chunk_of_run(run: RunFlight, mut slot: watch::Receiver<Option<Bytes>>) -> Flight {
    async move {
        let mut run = run;
        loop {
            if let Some(bytes) = slot.borrow_and_update().clone() {
                return Ok(bytes);
            }
            let outcome = tokio::select! {
                // The run stored and published this chunk (or dropped its slots: it is over).
                changed = slot.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => run.await,
                },
                outcome = &mut run => outcome,
            };
            // The run is over: the chunk is there, or its error says why not.
            return match slot.borrow().clone() {
                Some(bytes) => Ok(bytes),
                None => Err(outcome.err().unwrap_or_else(|| {
                    FetchError::Internal("a run ended without one of its chunks".into())
                })),
            };
        }
    }
    .boxed()
    .shared()
}

/// How many adjacent chunks one read-ahead request should carry, at most `longest`: enough
/// that the time to first byte, paid once per request, is at most half of the request's
/// transfer time at one connection's rate; one while the link is not known. Measured on an
/// origin with a 150 ms first byte and 100 MB/s per connection (4 connections, 8 MiB chunks),
/// runs of 1, 2, 4 and 8 chunks took 2.56, 2.08, 1.76 and 1.82 s for 256 MiB; this gives 4.
/// With 30 ms and 40 MB/s it gives 1, and runs of 8 were 18% slower than single chunks there:
/// a long run arrives at one connection's rate, in order, while single chunks spread the
/// next few over all connections.
fn run_length(longest: u64, link: Option<LinkEstimate>, chunk_size: u64) -> u64 {
    let Some(link) = link.filter(|l| l.bytes_per_sec.is_finite() && l.bytes_per_sec > 0.0) else {
        return 1;
    };
    let latency_bytes = link.first_byte.as_secs_f64() * link.bytes_per_sec;
    let wanted = (2.0 * latency_bytes / chunk_size.max(1) as f64).ceil();
    // `as` saturates; NaN (impossible after the filter) would give 0, clamped to 1.
    (wanted as u64).clamp(1, longest.max(1))
}

/// `indices` (ascending, no duplicates) cut into runs of consecutive values.
/// `chunks` cut, in their order, into groups of at most `longest` that ascend by one: what
/// one request each can fetch. A plan's order jumps between tensors; inside one it ascends.
fn in_order_runs(chunks: &[u64], longest: u64) -> Vec<Vec<u64>> {
    let mut out: Vec<Vec<u64>> = Vec::new();
    for &index in chunks {
        match out.last_mut() {
            Some(group)
                if (group.len() as u64) < longest
                    && group.last() == Some(&(index.wrapping_sub(1))) =>
            {
                group.push(index)
            }
            _ => out.push(vec![index]),
        }
    }
    out
}

fn adjacent_runs(indices: &[u64]) -> Vec<std::ops::Range<u64>> {
    let mut runs: Vec<std::ops::Range<u64>> = Vec::new();
    for &i in indices {
        match runs.last_mut() {
            Some(run) if run.end == i => run.end += 1,
            _ => runs.push(i..i + 1),
        }
    }
    runs
}

/// The bytes of chunks `run`, fetched as one range starting at chunk `run.start`, cut into
/// chunks (zero-copy slices of `bytes`). `bytes` is as long as the run (checked by the caller).
fn split_run(bytes: &Bytes, run: std::ops::Range<u64>, chunk_size: u64) -> Vec<(u64, Bytes)> {
    let (len, first) = (bytes.len() as u64, run.start);
    run.map(|index| {
        let from = ((index - first) * chunk_size).min(len);
        let to = (from + chunk_size).min(len);
        (index, bytes.slice(from as usize..to as usize))
    })
    .collect()
}

/// Run a store call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| FetchError::Internal(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CS: u64 = 1 << 20;

    #[test]
    fn window_grows_with_sequential_reads_and_collapses_on_random_ones() {
        let mut ra = ReadAhead::default();
        let size = 1 << 30;
        // Reads inside chunk 0 (a header, say): no read-ahead yet.
        assert_eq!(ra.on_read(size, CS, 64 * CS, 0, 128 << 10), 0..0);
        assert_eq!(ra.on_read(size, CS, 64 * CS, 128 << 10, 128 << 10), 0..0);
        // Crossing into chunk 1 opens a two-chunk window past the reader: chunks 1..4.
        assert_eq!(ra.on_read(size, CS, 64 * CS, CS - 4096, 8192), 1..4);
        // Still in chunk 1: nothing new. Entering chunk 2 doubles it: up to chunk 7.
        assert_eq!(ra.on_read(size, CS, 64 * CS, CS + 4096, 4096), 0..0);
        assert_eq!(ra.on_read(size, CS, 64 * CS, 2 * CS - 4096, 8192), 4..7);
        // A jump far away is random: no read-ahead, and the window starts over.
        assert_eq!(ra.on_read(size, CS, 64 * CS, 700 * CS, 4096), 0..0);
        assert_eq!(ra.on_read(size, CS, 64 * CS, 100 * CS, 4096), 0..0);
        // Sequential again from there: the window opens anew once a chunk is crossed.
        assert_eq!(ra.on_read(size, CS, 64 * CS, 100 * CS + 4096, 4096), 0..0);
        assert_eq!(ra.on_read(size, CS, 64 * CS, 101 * CS - 4096, 8192), 101..104);
    }

    /// An origin that streams: each piece of a range comes `gap` after the one before, and
    /// the request breaks off (an error) after `fail_after` pieces when that is set.
    struct Trickle {
        data: Bytes,
        gap: Duration,
        fail_after: Mutex<Option<usize>>,
        asked: Mutex<Vec<std::ops::Range<u64>>>,
    }

    impl RangeFetcher for Trickle {
        /// Slow to answer against what a chunk takes: read-ahead asks for the longest runs.
        fn link(&self) -> Option<LinkEstimate> {
            Some(LinkEstimate { first_byte: Duration::from_secs(1), bytes_per_sec: 1e9 })
        }

        fn fetch_range<'a>(
            &'a self,
            _: &'a RemoteFile,
            range: std::ops::Range<u64>,
        ) -> BoxFuture<'a, Result<Bytes, HubError>> {
            lock(&self.asked).push(range.clone());
            let bytes = self.data.slice(range.start as usize..range.end as usize);
            Box::pin(async move { Ok(bytes) })
        }

        fn fetch_pieces<'a>(
            &'a self,
            _: &'a RemoteFile,
            range: std::ops::Range<u64>,
            piece: u64,
            sink: &'a mut (dyn FnMut(Bytes) + Send),
        ) -> BoxFuture<'a, Result<(), HubError>> {
            lock(&self.asked).push(range.clone());
            let fail_after = lock(&self.fail_after).take();
            Box::pin(async move {
                for (n, at) in (range.start..range.end).step_by(piece as usize).enumerate() {
                    if fail_after == Some(n) {
                        return Err(HubError::Unavailable("broke off".into()));
                    }
                    tokio::time::sleep(self.gap).await;
                    let end = (at + piece).min(range.end);
                    sink(self.data.slice(at as usize..end as usize));
                }
                Ok(())
            })
        }
    }

    fn trickle(chunks: u64, gap: Duration) -> (Arc<ChunkFetcher>, Arc<Trickle>, FileRef) {
        let limits =
            PrefetchLimits { max_in_flight: 1, max_window: 64 * CS, run_chunks: 4, parts: 1 };
        trickle_over(CS, chunks, gap, limits)
    }

    /// `chunks` chunks of `cs` bytes behind a [`Trickle`], fetched within `limits`.
    fn trickle_over(
        cs: u64,
        chunks: u64,
        gap: Duration,
        limits: PrefetchLimits,
    ) -> (Arc<ChunkFetcher>, Arc<Trickle>, FileRef) {
        let data: Bytes = (0..chunks * cs).map(|i| (i * 7 % 253) as u8).collect::<Vec<_>>().into();
        let file = FileRef {
            remote: RemoteFile {
                repo: crate::manifest::RepoId::new("org", "repo"),
                commit: "c".repeat(40),
                path: "w.bin".into(),
                size: data.len() as u64,
            },
            hash: crate::hub::memory::hub_hash(&data, true),
        };
        let origin =
            Arc::new(Trickle { data, gap, fail_after: Mutex::new(None), asked: Mutex::default() });
        let store = Arc::new(crate::store::memory::MemoryStore::new(cs));
        let fetcher = ChunkFetcher::new(store, origin.clone(), Duration::from_secs(10), limits);
        (fetcher, origin, file)
    }

    #[tokio::test]
    async fn a_streamed_run_serves_its_first_chunk_before_its_last_arrives() {
        // Six chunks, so that the run of four is not the whole file (which is checked whole).
        let (fetcher, origin, file) = trickle(6, Duration::from_millis(300));
        fetcher.prefetch(&file, 0..4);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The reader joins the run and gets chunk 0 while the rest is still on its way.
        let first = fetcher.chunk(&file, 0).await.unwrap();
        assert_eq!(first, origin.data.slice(..CS as usize));
        let content = file.content();
        assert!(!fetcher.store().has_chunk(&content, 3).unwrap(), "chunk 3 came with chunk 0");
        for i in 0..4u64 {
            let got = fetcher.chunk(&file, i).await.unwrap();
            assert_eq!(got, origin.data.slice((i * CS) as usize..((i + 1) * CS) as usize));
        }
        let asked = lock(&origin.asked).clone();
        assert_eq!(asked.len(), 1, "one request for the run, none for the reader: {asked:?}");
        assert_eq!(asked[0], 0..4 * CS);
    }

    #[tokio::test]
    async fn a_run_that_breaks_off_keeps_what_came_and_the_rest_is_fetched_again() {
        let (fetcher, origin, file) = trickle(6, Duration::from_millis(5));
        *lock(&origin.fail_after) = Some(2);
        fetcher.prefetch(&file, 0..4);
        let content = file.content();
        // Chunks 0 and 1 came whole before the break: stored. Chunk 2 and 3 never came.
        for _ in 0..200 {
            if lock(&origin.asked).len() == 1 && fetcher.store().has_chunk(&content, 1).unwrap() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stored: Vec<bool> =
            (0..4).map(|i| fetcher.store().has_chunk(&content, i).unwrap()).collect();
        assert_eq!(stored, [true, true, false, false]);
        // A reader of chunk 2 fetches it afresh and gets the right bytes.
        let got = fetcher.chunk(&file, 2).await.unwrap();
        assert_eq!(got, origin.data.slice((2 * CS) as usize..(3 * CS) as usize));
        assert_eq!(*lock(&origin.asked), [0..4 * CS, 2 * CS..3 * CS]);
    }

    #[tokio::test]
    async fn a_chunk_crosses_over_its_parts_and_is_stored_whole() {
        const BIG: u64 = 4 << 20;
        let limits = PrefetchLimits { max_in_flight: 1, max_window: 0, run_chunks: 1, parts: 3 };
        let (fetcher, origin, file) = trickle_over(BIG, 3, Duration::ZERO, limits);
        let store = fetcher.store().clone();
        let got = fetcher.chunk(&file, 1).await.unwrap();
        assert_eq!(got, origin.data.slice(BIG as usize..2 * BIG as usize));
        let asked = lock(&origin.asked).clone();
        assert_eq!(asked.len(), 3, "three parts: {asked:?}");
        assert_eq!((asked[0].start, asked[2].end), (BIG, 2 * BIG));
        assert!(asked.windows(2).all(|w| w[0].end == w[1].start), "{asked:?}");
        // Stored whole: the next read asks the origin nothing.
        let mut out = Vec::new();
        assert!(store.read_chunk(&file.content(), 1, 0..BIG as usize, &mut out).unwrap());
        assert_eq!(&out[..], &got[..]);
        fetcher.chunk(&file, 1).await.unwrap();
        assert_eq!(lock(&origin.asked).len(), 3);
    }

    #[test]
    fn runs_grow_with_the_time_to_first_byte() {
        const MIB: u64 = 1 << 20;
        let link = |ms: u64, mbps: f64| {
            Some(LinkEstimate { first_byte: Duration::from_millis(ms), bytes_per_sec: mbps * 1e6 })
        };
        assert_eq!(run_length(8, None, 8 * MIB), 1, "unknown link");
        assert_eq!(run_length(8, link(1, 1000.0), 8 * MIB), 1, "a LAN");
        assert_eq!(run_length(8, link(30, 40.0), 8 * MIB), 1);
        assert_eq!(run_length(8, link(150, 100.0), 8 * MIB), 4);
        assert_eq!(run_length(2, link(150, 100.0), 8 * MIB), 2, "capped by the limits");
        assert_eq!(run_length(8, link(5000, 1000.0), 8 * MIB), 8);
        assert_eq!(run_length(8, link(150, f64::NAN), 8 * MIB), 1);
        assert_eq!(run_length(0, link(150, 100.0), 8 * MIB), 1);
    }

    #[test]
    fn coalescing_only_when_connections_are_the_bound() {
        const MIB: u64 = 1 << 20;
        let default = PrefetchLimits::default();
        assert_eq!(
            (default.max_in_flight, default.run_chunks, default.parts),
            (4, 1, 4),
            "32M of 8M chunks over 16 connections: each chunk over 4"
        );
        let few = PrefetchLimits::new(8 * MIB, 256 * MIB, 4, DEFAULT_MAX_REQUEST_BYTES);
        assert_eq!((few.max_in_flight, few.run_chunks, few.parts), (4, 8, 1), "32 chunks over 4");
        let off = PrefetchLimits::new(8 * MIB, 256 * MIB, 4, 8 * MIB);
        assert_eq!((off.max_in_flight, off.run_chunks, off.parts), (4, 1, 1), "one chunk each");
        let wide = PrefetchLimits::new(8 * MIB, 128 * MIB, 16, DEFAULT_MAX_REQUEST_BYTES);
        assert_eq!((wide.max_in_flight, wide.parts), (16, 1), "a chunk per connection");
    }

    proptest! {
        /// The limits never hold more in flight than the memory budget (or one chunk) nor use
        /// more connections than allowed, and requests stay within the longest allowed.
        #[test]
        fn limits_respect_every_budget(
            cs in 1u64..(64 << 20),
            inflight in 0u64..(4 << 30),
            conns in 0usize..64,
            longest in 0u64..(1 << 30),
        ) {
            let l = PrefetchLimits::new(cs, inflight, conns, longest);
            prop_assert!(l.max_in_flight >= 1 && l.run_chunks >= 1 && l.parts >= 1);
            prop_assert!(l.max_in_flight as u64 * l.parts <= conns.max(1) as u64);
            prop_assert!(l.parts == 1 || l.run_chunks == 1, "split runs");
            prop_assert!(l.max_in_flight as u64 * l.run_chunks * cs <= inflight.max(cs));
            prop_assert!(l.run_chunks * cs <= longest.max(cs));
        }

        /// Runs cover exactly the indices given, in order, each of consecutive indices, and
        /// no two runs could be joined; the split of a run's bytes gives back every byte once.
        #[test]
        fn runs_and_splits_are_exact(
            set in proptest::collection::btree_set(0u64..200, 0..60),
            cs in 1u64..64,
            first in 0u64..50,
            count in 1u64..6,
            short in 0u64..64,
        ) {
            let indices: Vec<u64> = set.into_iter().collect();
            let runs = adjacent_runs(&indices);
            let flat: Vec<u64> = runs.iter().flat_map(|r| r.clone()).collect();
            prop_assert_eq!(&flat, &indices);
            for pair in runs.windows(2) {
                prop_assert!(pair[0].end < pair[1].start);
            }
            // The last chunk of a run may be short (the end of the file).
            let len = (count * cs).saturating_sub(short.min(cs - 1)) as usize;
            let bytes = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>());
            let parts = split_run(&bytes, first..first + count, cs);
            prop_assert_eq!(parts.len() as u64, count);
            let mut joined = Vec::new();
            for (k, (index, part)) in parts.iter().enumerate() {
                prop_assert_eq!(*index, first + k as u64);
                prop_assert!(part.len() as u64 <= cs);
                joined.extend_from_slice(part);
            }
            prop_assert_eq!(&joined[..], &bytes[..]);
        }

        /// A plan's chunks are fetched in their order, in groups one request can carry:
        /// ascending by one, at most `longest`, and cut only where they must be.
        #[test]
        fn plan_order_groups_keep_the_order(
            chunks in proptest::collection::vec(0u64..64, 0..80),
            longest in 1u64..6,
        ) {
            let groups = in_order_runs(&chunks, longest);
            let flat: Vec<u64> = groups.iter().flatten().copied().collect();
            prop_assert_eq!(&flat, &chunks);
            for g in &groups {
                prop_assert!(!g.is_empty() && g.len() as u64 <= longest);
                prop_assert!(g.windows(2).all(|w| w[1] == w[0] + 1));
            }
            for pair in groups.windows(2) {
                let joinable = pair[1][0] == pair[0][pair[0].len() - 1] + 1;
                prop_assert!(!joinable || pair[0].len() as u64 == longest);
            }
        }
    }

    proptest! {
        /// Whatever the reads, read-ahead never issues a chunk twice in a row of sequential
        /// reads, never past the end of the file, and never further ahead than the window.
        #[test]
        fn issued_chunks_are_new_bounded_and_inside_the_file(
            size in 1u64..(64 * CS),
            max_window in 0u64..(16 * CS),
            reads in proptest::collection::vec((0u64..(70 * CS), 1u64..(2 * CS)), 1..60),
        ) {
            let mut ra = ReadAhead::default();
            let mut issued: std::collections::HashSet<u64> = Default::default();
            for (offset, len) in reads {
                let before = ra.clone();
                let r = ra.on_read(size, CS, max_window, offset, len);
                prop_assert!(r.end <= size.div_ceil(CS));
                let end = (offset + len).min(size);
                if !r.is_empty() {
                    prop_assert!(r.end * CS <= end + max_window + CS);
                    if before.issued_to > 0 {
                        for i in r.clone() { prop_assert!(issued.insert(i), "chunk {} issued twice", i); }
                    } else {
                        issued = r.clone().collect();
                    }
                } else if ra.issued_to == 0 {
                    issued.clear();
                }
            }
        }
    }
}
