//! Getting one chunk of one file, whether or not it is stored: the single-flight fetch layer
//! between the filesystem core and the two seams ([`ChunkStore`], [`RangeFetcher`]).
//!
//! A chunk that is stored is read from the store. A chunk that is not is fetched with one
//! range request, checked for length, written to the store, and handed to every reader that
//! asked for it meanwhile: concurrent readers of one chunk share one fetch. When the last
//! chunk of a file lands, the whole file is checked against the Hub's hash in the background;
//! a mismatch discards the file and marks it `failed` (SPEC §4).
//!
//! Store calls are synchronous and may touch the disk, so on the runtime they run through
//! `spawn_blocking`; no store transaction is ever held across an `.await`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use tokio::sync::{OnceCell, Semaphore};

use crate::evict::Evictor;
use crate::hub::{HubError, RangeFetcher, RemoteFile};
use crate::manifest::{ContentId, FileHash};
use crate::store::{chunk_count, chunk_len, ChunkStore, FileRecord, FileState, StoreError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("store: {0}")]
    Store(String),
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
        FetchError::Store(e.to_string())
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
type Flight = Arc<OnceCell<Result<Bytes, FetchError>>>;

pub struct ChunkFetcher {
    store: Arc<dyn ChunkStore>,
    origin: Arc<dyn RangeFetcher>,
    /// Upper bound on one chunk fetch, retries included. The Hub client has its own budget;
    /// this one guarantees that no reader waits forever whatever the fetcher does.
    read_timeout: Duration,
    in_flight: Mutex<HashMap<ChunkKey, Flight>>,
    /// Contents whose whole-file check is running, so a file is checked once at a time.
    verifying: Mutex<HashSet<ContentId>>,
    /// One permit per read-ahead fetch in flight: bounds the memory that read-ahead holds
    /// (each fetch buffers one chunk) and the connections it opens. Demand reads do not take
    /// permits, so a reader never queues behind read-ahead.
    prefetch_slots: Arc<Semaphore>,
    /// Where read-ahead fetches run; the FUSE threads that trigger them are not on the runtime.
    runtime: Option<Handle>,
    /// Keeps the store under its bound and makes room when it is full; without one a full
    /// store just stops caching.
    evictor: OnceLock<Arc<Evictor>>,
}

/// How far and how wide read-ahead goes.
#[derive(Clone, Copy, Debug)]
pub struct PrefetchLimits {
    /// Read-ahead fetches in flight at once (each holds one chunk in memory until stored).
    pub max_in_flight: usize,
    /// Largest read-ahead window, in bytes.
    pub max_window: u64,
}

impl PrefetchLimits {
    /// From the operator's byte and connection budgets: as many chunk fetches as both allow,
    /// at least one.
    pub fn new(chunk_size: u64, max_inflight_bytes: u64, max_connections: usize) -> Self {
        let by_memory = (max_inflight_bytes / chunk_size.max(1)).max(1) as usize;
        Self { max_in_flight: by_memory.min(max_connections.max(1)), max_window: MAX_WINDOW }
    }
}

impl Default for PrefetchLimits {
    fn default() -> Self {
        Self::new(crate::store::DEFAULT_CHUNK_SIZE, DEFAULT_MAX_INFLIGHT_BYTES, 16)
    }
}

/// Default bound on read-ahead memory: 8 chunks of 8 MiB. Eight parallel ranges already
/// fill a link whose CDN caps each connection at an eighth of its capacity, and 64 MiB keeps
/// the daemon's peak RSS near 100 MiB while streaming.
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 64 << 20;

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
            store,
            origin,
            read_timeout,
            in_flight: Mutex::default(),
            verifying: Mutex::default(),
            prefetch_slots: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            runtime: Handle::try_current().ok(),
            evictor: OnceLock::new(),
        })
    }

    /// Give the fetcher an evictor (once; later calls are ignored).
    pub fn set_evictor(&self, evictor: Arc<Evictor>) {
        let _ = self.evictor.set(evictor);
    }

    /// Make sure chunks `chunks` of `file` get stored, in the background, at most
    /// `max_in_flight` at a time. Chunks already stored or being fetched cost nothing.
    pub fn prefetch(self: &Arc<Self>, file: &FileRef, chunks: std::ops::Range<u64>) {
        let Some(rt) = &self.runtime else { return };
        for index in chunks {
            let this = self.clone();
            let file = file.clone();
            rt.spawn(async move {
                // The permit is taken before the flight is registered, so a demand read of a
                // chunk whose read-ahead is still queued fetches it at once, not after the queue.
                let Ok(_permit) = this.prefetch_slots.clone().acquire_owned().await else { return };
                let content = file.content();
                if lock(&this.in_flight).contains_key(&(content, index)) {
                    return;
                }
                match this.store.has_chunk(&content, index) {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => return tracing::warn!(error = %e, "read-ahead: store"),
                }
                if let Err(e) = this.chunk(&file, index).await {
                    tracing::debug!(path = %file.remote.path, index, error = %e, "read-ahead fetch failed");
                }
            });
        }
    }

    pub fn store(&self) -> &Arc<dyn ChunkStore> {
        &self.store
    }

    /// The whole of chunk `index` of `file`, from the store or, once for all concurrent
    /// callers, from the Hub.
    pub async fn chunk(self: &Arc<Self>, file: &FileRef, index: u64) -> Result<Bytes, FetchError> {
        let content = file.content();
        let cs = self.store.chunk_size();
        let len = chunk_len(file.remote.size, cs, index) as usize;
        if let Some(hit) = self.read_stored(content, index, len).await? {
            return Ok(hit);
        }
        let key = (content, index);
        let flight = {
            let mut map = lock(&self.in_flight);
            map.entry(key).or_default().clone()
        };
        let result = flight.get_or_init(|| self.fetch_and_store(file, index)).await.clone();
        // Whoever gets here first retires the flight; later callers find the chunk stored (or,
        // after an error, start a fresh attempt instead of inheriting a stale failure).
        {
            let mut map = lock(&self.in_flight);
            if map.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                map.remove(&key);
            }
        }
        result
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

    async fn fetch_and_store(
        self: &Arc<Self>,
        file: &FileRef,
        index: u64,
    ) -> Result<Bytes, FetchError> {
        // A file whose bytes did not match the Hub's hash is an integrity failure (EIO), not
        // something to fetch and serve again and again (SPEC §3).
        let store = self.store.clone();
        let content = file.content();
        let record = blocking(move || Ok(store.file_record(&content)?)).await?;
        if let Some(record) = record.filter(|r| r.state == FileState::Failed) {
            let age = crate::store::unix_now().saturating_sub(record.last_access);
            if age < FAILED_RETRY_AFTER.as_secs() {
                return Err(FetchError::Failed { path: file.remote.path.clone() });
            }
            // Long enough ago that the origin may have been fixed: forget the failure and
            // fetch afresh; the new bytes are checked like any others.
            tracing::info!(path = %file.remote.path, age, "fetching again a file that failed verification");
            let (store, content) = (self.store.clone(), file.content());
            blocking(move || Ok(store.evict_file(&content)?)).await?;
        }
        let cs = self.store.chunk_size();
        let size = file.remote.size;
        let expected = chunk_len(size, cs, index);
        let start = index * cs;
        // A chunk that is the whole file is checked against the Hub's hash before anyone sees
        // it (config, tokenizer and other small files: the ones read whole and at once), and
        // fetched again on a mismatch; larger files can only be checked once complete.
        let whole_file = start == 0 && expected == size;
        let deadline = tokio::time::Instant::now() + self.read_timeout;
        let mut attempt = 0;
        let bytes = loop {
            attempt += 1;
            tracing::debug!(repo = %file.remote.repo, path = %file.remote.path, index, attempt, "fetching chunk");
            let bytes = tokio::time::timeout_at(
                deadline,
                crate::metrics::get()
                    .timed_fetch(self.origin.fetch_range(&file.remote, start..start + expected)),
            )
            .await
            .map_err(|_| FetchError::Timeout(self.read_timeout))??;
            if bytes.len() as u64 != expected {
                return Err(FetchError::WrongLength {
                    path: file.remote.path.clone(),
                    index,
                    got: bytes.len(),
                    expected,
                });
            }
            if !whole_file || FileHasher::digest_matches(&file.hash, &bytes) {
                break bytes;
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
                let (store, content, data) = (self.store.clone(), file.content(), bytes.clone());
                blocking(move || {
                    store.put_chunk(&content, size, index, &data)?;
                    Ok(store.discard_file(&content, FileState::Failed)?)
                })
                .await?;
                tracing::error!(repo = %file.remote.repo, path = %file.remote.path, "file does not match the Hub's hash; marked failed");
                return Err(FetchError::Failed { path: file.remote.path.clone() });
            }
            tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
        };
        let store = self.store.clone();
        let content = file.content();
        let data = bytes.clone();
        let evictor = self.evictor.get().cloned();
        let stored = blocking(move || {
            Ok(store_chunk(&*store, evictor.as_deref(), &content, index, &data, size)?)
        })
        .await;
        match stored {
            Ok(record) => {
                if record.state == FileState::Complete && whole_file {
                    // Checked above, before it was served.
                    crate::metrics::get().file_verified(true);
                    let (store, content) = (self.store.clone(), file.content());
                    let marked =
                        blocking(move || Ok(store.set_file_state(&content, FileState::Verified)?));
                    if let Err(e) = marked.await {
                        tracing::warn!(path = %file.remote.path, error = %e, "verified state not stored");
                    }
                } else if record.state == FileState::Complete {
                    self.spawn_verify(file.clone());
                }
                if let Some(evictor) = self.evictor.get() {
                    if evictor.stored(expected) {
                        let evictor = evictor.clone();
                        tokio::task::spawn_blocking(move || {
                            if let Err(e) = evictor.evict_to_bound() {
                                tracing::error!(error = %e, "eviction pass failed");
                            }
                        });
                    }
                }
            }
            // The bytes are right (length-checked against what was asked); failing to keep them
            // costs a refetch later, not a failed read now: the reader is served from memory.
            Err(e) => tracing::warn!(
                path = %file.remote.path,
                index,
                error = %e,
                "chunk not stored; serving it without caching"
            ),
        }
        Ok(bytes)
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
            match outcome {
                Ok(Verdict::Match) => {
                    tracing::debug!(path = %file.remote.path, "file verified");
                }
                Ok(Verdict::Mismatch) => tracing::error!(
                    repo = %file.remote.repo,
                    path = %file.remote.path,
                    "file does not match the Hub's hash; discarded and marked failed"
                ),
                Ok(Verdict::Incomplete) => {}
                Err(e) => {
                    tracing::warn!(path = %file.remote.path, error = %e, "verification failed to run")
                }
            }
            lock(&this.verifying).remove(&content);
        });
    }
}

/// How much a full store makes room for: sixteen default chunks, so that the writes that follow
/// (read-ahead stores several chunks at once) do not each hit the wall and run a pass.
const ROOM_ON_FULL: u64 = 16 * crate::store::DEFAULT_CHUNK_SIZE;

/// Store one chunk; when the store is full (map or disk), evict least recently used files and
/// try once more. `Err(Full)` after that means nothing could be evicted.
fn store_chunk(
    store: &dyn ChunkStore,
    evictor: Option<&Evictor>,
    content: &ContentId,
    index: u64,
    data: &[u8],
    size: u64,
) -> Result<FileRecord, StoreError> {
    match store.put_chunk(content, size, index, data) {
        Err(StoreError::Full) => {
            let Some(evictor) = evictor else { return Err(StoreError::Full) };
            match evictor.make_room(ROOM_ON_FULL.max(data.len() as u64)) {
                Ok(Some(report)) if report.evicted_files == 0 => return Err(StoreError::Full),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "eviction to make room failed"),
            }
            store.put_chunk(content, size, index, data)
        }
        other => other,
    }
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

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Match,
    Mismatch,
    /// A chunk went missing meanwhile (dropped for a bad crc, or evicted): nothing to decide.
    Incomplete,
}

/// Hash every stored chunk of `file` and compare with the Hub's hash: `Verified` on a match,
/// chunks discarded and `Failed` on a mismatch. Synchronous: reads the whole file.
pub fn verify_file(store: &dyn ChunkStore, file: &FileRef) -> Result<Verdict, StoreError> {
    let content = file.content();
    let cs = store.chunk_size();
    let size = file.remote.size;
    let mut hasher = FileHasher::new(&file.hash, size);
    let mut buf = Vec::with_capacity(cs as usize);
    for index in 0..chunk_count(size, cs) {
        buf.clear();
        let len = chunk_len(size, cs, index) as usize;
        if !store.read_chunk(&content, index, 0..len, &mut buf)? {
            return Ok(Verdict::Incomplete);
        }
        hasher.update(&buf);
    }
    let matches = hasher.matches();
    crate::metrics::get().file_verified(matches);
    if matches {
        store.set_file_state(&content, FileState::Verified)?;
        Ok(Verdict::Match)
    } else {
        store.discard_file(&content, FileState::Failed)?;
        Ok(Verdict::Mismatch)
    }
}

/// How long a file that failed verification answers EIO before it is fetched afresh: long
/// enough that a bad copy on a CDN is not downloaded again and again, short enough that the
/// mount heals by itself once the origin is fixed (`modelfs pull` clears it at once).
const FAILED_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Fetches of a whole small file whose bytes do not match its hash, before it is marked
/// `failed`: a CDN edge that served a bad copy once rarely does it three times running.
const WHOLE_FILE_ATTEMPTS: u32 = 3;

/// The hash the Hub gives a file, computed over its bytes in order: sha256 for LFS files, the
/// git blob sha1 (`"blob <size>\0"` then the bytes) for files stored in git.
struct FileHasher {
    want: FileHash,
    sha256: Sha256,
    sha1: Sha1,
}

impl FileHasher {
    fn new(want: &FileHash, size: u64) -> Self {
        let mut sha1 = Sha1::new();
        if let FileHash::Git(_) = want {
            sha1.update(format!("blob {size}\0").as_bytes());
        }
        Self { want: *want, sha256: Sha256::new(), sha1 }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self.want {
            FileHash::Lfs(_) => self.sha256.update(bytes),
            FileHash::Git(_) => self.sha1.update(bytes),
        }
    }

    fn matches(self) -> bool {
        match self.want {
            FileHash::Lfs(want) => <[u8; 32]>::from(self.sha256.finalize()) == want,
            FileHash::Git(want) => <[u8; 20]>::from(self.sha1.finalize()) == want,
        }
    }

    /// Whether `bytes`, a whole file, have the hash `want`.
    fn digest_matches(want: &FileHash, bytes: &[u8]) -> bool {
        let mut hasher = Self::new(want, bytes.len() as u64);
        hasher.update(bytes);
        hasher.matches()
    }
}

/// Run a store call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| FetchError::Internal(e.to_string()))?
}

/// A poisoned lock here only means another task panicked while holding a map of in-flight
/// work; the map itself is still consistent (every update is a single insert or remove).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
