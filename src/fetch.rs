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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::hub::{HubError, RangeFetcher, RemoteFile};
use crate::manifest::{ContentId, FileHash};
use crate::store::{chunk_count, chunk_len, ChunkStore, FileState, StoreError};

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
}

impl ChunkFetcher {
    pub fn new(
        store: Arc<dyn ChunkStore>,
        origin: Arc<dyn RangeFetcher>,
        read_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            origin,
            read_timeout,
            in_flight: Mutex::default(),
            verifying: Mutex::default(),
        })
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
        let cs = self.store.chunk_size();
        let size = file.remote.size;
        let expected = chunk_len(size, cs, index);
        let start = index * cs;
        let range = start..start + expected;
        tracing::debug!(repo = %file.remote.repo, path = %file.remote.path, index, "fetching chunk");
        let bytes =
            tokio::time::timeout(self.read_timeout, self.origin.fetch_range(&file.remote, range))
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
        let store = self.store.clone();
        let content = file.content();
        let data = bytes.clone();
        let stored = blocking(move || Ok(store.put_chunk(&content, size, index, &data)?)).await;
        match stored {
            Ok(record) if record.state == FileState::Complete => self.spawn_verify(file.clone()),
            Ok(_) => {}
            // The bytes are right (length-checked against what was asked); failing to keep them
            // costs a refetch later, not a failed read now.
            Err(e) => {
                tracing::warn!(path = %file.remote.path, index, error = %e, "chunk not stored")
            }
        }
        Ok(bytes)
    }

    fn spawn_verify(self: &Arc<Self>, file: FileRef) {
        let content = file.content();
        if !lock(&self.verifying).insert(content) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
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
    let mut sha256 = Sha256::new();
    let mut sha1 = Sha1::new();
    if let FileHash::Git(_) = file.hash {
        sha1.update(format!("blob {size}\0").as_bytes());
    }
    let mut buf = Vec::with_capacity(cs as usize);
    for index in 0..chunk_count(size, cs) {
        buf.clear();
        let len = chunk_len(size, cs, index) as usize;
        if !store.read_chunk(&content, index, 0..len, &mut buf)? {
            return Ok(Verdict::Incomplete);
        }
        match file.hash {
            FileHash::Lfs(_) => sha256.update(&buf),
            FileHash::Git(_) => sha1.update(&buf),
        }
    }
    let matches = match file.hash {
        FileHash::Lfs(want) => <[u8; 32]>::from(sha256.finalize()) == want,
        FileHash::Git(want) => <[u8; 20]>::from(sha1.finalize()) == want,
    };
    if matches {
        store.set_file_state(&content, FileState::Verified)?;
        Ok(Verdict::Match)
    } else {
        store.discard_file(&content, FileState::Failed)?;
        Ok(Verdict::Mismatch)
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
