//! The shared tier: chunk objects in an S3-compatible bucket or a shared directory, between
//! the local store and the Hub, so that a chunk crosses the Hub link once per cluster
//! (doc/DESIGN.md, "The shared tier").
//!
//! A local miss reads the tier; a chunk the tier does not have is fetched from the Hub and
//! then offered to the tier, written once (`PutMode::Create`; "already exists" is success:
//! another node wrote the same bytes). Objects are keyed by content, chunk size and index,
//! and each carries its length and crc32c, so a node checks what it reads exactly as it
//! checks the Hub's bytes; the whole-file sha256 check against the Hub's oid follows as for
//! any file. A bad, truncated or missing object, a tier that is down, slow or refusing
//! credentials: each is a miss, logged and counted, and the read goes to the Hub. Two
//! breakers, one for reads and one for writes, stop asking a tier that keeps failing for a
//! while, so a tier that stalls costs a reader at most [`BREAKER_FAILURES`] waits of
//! [`TIER_TIMEOUT`] per [`BREAKER_OPEN`], not one per read.
//!
//! The seam is [`Tier`] (get and create-only put of opaque objects), with the `object_store`
//! backends behind it and `object_store`'s in-memory store as the double in tests.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use tokio::sync::Semaphore;

use crate::fetch::FileRef;
use crate::manifest::ContentId;
use crate::store::chunk_len;

pub mod access;
pub mod catalog;

/// How long one tier request may take before it counts as a miss: a bucket in the same
/// region answers a chunk in tens of milliseconds; five seconds is a tier in trouble, and the
/// Hub is asked instead.
pub const TIER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting to a tier may take: a bucket endpoint on the same network connects in
/// milliseconds.
const TIER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Failures in a row (of reads, or of writes) after which the tier is not sent requests of
/// that kind for [`BREAKER_OPEN`].
pub const BREAKER_FAILURES: u32 = 3;

/// How long a tier that keeps failing reads (or writes) is left alone before it is tried
/// again.
pub const BREAKER_OPEN: Duration = Duration::from_secs(30);

/// How long the Hub's word that this node may read a restricted repo holds until the mount
/// sets its revalidation interval: the same as the mount's default.
const DEFAULT_CONFIRMATION: Duration = Duration::from_secs(600);

/// Uploads to the tier in flight at once, each holding its chunk: 8 chunks, 64 MiB of default
/// chunks. A chunk offered while all are busy is remembered by key alone and uploaded later
/// from the local store, so a tier slower than the Hub costs no memory and loses no chunk.
const MAX_UPLOADS: usize = 8;

/// How often [`TierClient::flush`] looks whether the backlog has drained: a command's exit
/// waits at most this much longer than its uploads.
const FLUSH_POLL: Duration = Duration::from_millis(20);

/// An object's header: magic, format version, data length, crc32c of the data.
const MAGIC: &[u8; 4] = b"MFSC";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 8 + 4;

#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// The tier did not answer, refused, or failed (the backend's error is kept).
    #[error("tier unavailable: {0}")]
    Unavailable(#[source] object_store::Error),
    /// The tier refused the credentials (401, 403: a wrong or rotated key, a policy that does
    /// not grant the bucket). Told apart from [`TierError::Unavailable`] because it does not
    /// heal by itself: someone has to fix the credentials.
    #[error("tier refused the credentials: {0}")]
    Denied(#[source] object_store::Error),
    #[error("tier request took longer than {0:?}")]
    Timeout(Duration),
    /// An object that is not what its key says: wrong header, length or crc32c.
    #[error("tier object {key} is corrupt: {what}")]
    Corrupt { key: String, what: &'static str },
    #[error("tier URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    /// The breaker is open: the tier was not asked (see [`BREAKER_OPEN`]).
    #[error("the tier keeps failing and is not asked for a while")]
    Paused,
}

impl TierError {
    /// The label of `modelfs_tier_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            TierError::Unavailable(_) => "unavailable",
            TierError::Denied(_) => "denied",
            TierError::Timeout(_) => "timeout",
            TierError::Corrupt { .. } => "corrupt",
            TierError::BadUrl { .. } => "config",
            TierError::Paused => "paused",
        }
    }

    /// A backend's error: a refusal of the credentials, or the tier being unavailable.
    fn backend(e: object_store::Error) -> Self {
        match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => TierError::Denied(e),
            e => TierError::Unavailable(e),
        }
    }
}

/// Labels of `modelfs_tier_errors_total`.
pub const TIER_ERROR_KINDS: [&str; 4] = ["unavailable", "denied", "timeout", "corrupt"];

/// Objects by key: the seam between the tier logic and a bucket.
pub trait Tier: Send + Sync + 'static {
    /// The object at `key`, or `None` if there is none.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, TierError>>;
    /// Create the object at `key` unless it exists (then nothing changes, and it is `Ok`).
    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<(), TierError>>;
    /// Write the object at `key`, replacing one that is there: for what moves (a ref).
    fn replace<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<(), TierError>>;
    /// Remove the object at `key` (one found corrupt), so that a good copy can be created.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), TierError>>;
}

/// A [`Tier`] on any `object_store` backend.
pub struct ObjectTier {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// The backend does not do create-only puts (an S3 implementation without conditional
    /// writes): objects are content-addressed, so overwriting one with the same bytes is
    /// harmless, and puts fall back to that.
    overwrite: std::sync::atomic::AtomicBool,
}

impl ObjectTier {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self { store, prefix: prefix.trim_matches('/').to_owned(), overwrite: false.into() }
    }

    /// `s3://BUCKET[/PREFIX]` (credentials, region and endpoint from the standard `AWS_*`
    /// environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`) or `file:///DIR`.
    pub fn from_url(url: &str) -> Result<Self, TierError> {
        Self::from_url_in(url, std::env::vars())
    }

    /// [`ObjectTier::from_url`] with the `AWS_*` settings taken from `env`.
    fn from_url_in(
        url: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, TierError> {
        let bad = |why: &str| TierError::BadUrl { url: url.to_owned(), why: why.to_owned() };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket"));
            }
            // The Hub is the fallback, so a tier gets few retries and short waits: a dead tier
            // must cost a read about a second, not object_store's default three minutes.
            let retry = object_store::RetryConfig {
                max_retries: 1,
                retry_timeout: TIER_TIMEOUT,
                ..object_store::RetryConfig::default()
            };
            // The client's own timeout is only a backstop, and longer than the one
            // `TierClient` puts on every request: at the same length the two raced, and a tier
            // that stalls was counted as `unavailable` (the client's "error sending request")
            // as often as `timeout`, which is what it is.
            let client = object_store::ClientOptions::new()
                .with_connect_timeout(TIER_CONNECT_TIMEOUT)
                .with_timeout(2 * TIER_TIMEOUT);
            // The client options first, then the environment (as `from_env` reads it) on top:
            // `with_client_options` replaces every client setting, `AWS_ALLOW_HTTP` included.
            let mut builder = object_store::aws::AmazonS3Builder::new()
                .with_client_options(client)
                .with_retry(retry);
            for (name, value) in env {
                if !name.starts_with("AWS_") {
                    continue;
                }
                if let Ok(key) =
                    name.to_ascii_lowercase().parse::<object_store::aws::AmazonS3ConfigKey>()
                {
                    builder = builder.with_config(key, value);
                }
            }
            let s3 = builder
                .with_bucket_name(bucket)
                .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
                .build()
                .map_err(|e| bad(&e.to_string()))?;
            return Ok(Self::new(Arc::new(s3), prefix));
        }
        if let Some(dir) = url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(bad("a file:// tier needs an absolute path (file:///DIR)"));
            }
            std::fs::create_dir_all(dir).map_err(|e| bad(&e.to_string()))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| bad(&e.to_string()))?;
            return Ok(Self::new(Arc::new(fs), ""));
        }
        Err(bad("expected s3://BUCKET/PREFIX or file:///DIR"))
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }
}

impl Tier for ObjectTier {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, TierError>> {
        Box::pin(async move {
            let got = match self.store.get(&self.path(key)).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(TierError::backend(e)),
            };
            match got.bytes().await {
                Ok(bytes) => Ok(Some(bytes)),
                // Deleted between the answer and its body.
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(TierError::backend(e)),
            }
        })
    }

    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<(), TierError>> {
        Box::pin(async move {
            let path = self.path(key);
            let mode = if self.overwrite.load(Ordering::Relaxed) {
                PutMode::Overwrite
            } else {
                PutMode::Create
            };
            let opts = PutOptions { mode, ..PutOptions::default() };
            match self.store.put_opts(&path, PutPayload::from(value.clone()), opts).await {
                Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
                Err(object_store::Error::NotImplemented)
                | Err(object_store::Error::NotSupported { .. }) => {
                    tracing::info!("the tier does not do create-only writes; overwriting (objects are content-addressed)");
                    self.overwrite.store(true, Ordering::Relaxed);
                    self.store
                        .put(&path, PutPayload::from(value))
                        .await
                        .map(|_| ())
                        .map_err(TierError::backend)
                }
                Err(e) => Err(TierError::backend(e)),
            }
        })
    }

    fn replace<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<(), TierError>> {
        Box::pin(async move {
            self.store
                .put(&self.path(key), PutPayload::from(value))
                .await
                .map(|_| ())
                .map_err(TierError::backend)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), TierError>> {
        Box::pin(async move {
            match self.store.delete(&self.path(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(TierError::backend(e)),
            }
        })
    }
}

/// How [`TierClient::put_object`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Create unless it exists: what is named by its content never changes.
    Once,
    /// Replace what is there: a ref, which moves.
    Replace,
}

/// The key of chunk `index` of `content` in a store of `chunk_size` chunks. The first two hex
/// digits spread keys over prefixes, as S3 partitions by them.
pub fn chunk_key(content: &ContentId, chunk_size: u64, index: u64) -> String {
    let hex = content.to_hex();
    format!("chunks/v1/{}/{hex}/{chunk_size}/{index}", &hex[..2])
}

/// The object for a chunk's `data`: header, then the bytes.
pub fn encode(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(HEADER_LEN + data.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    out.extend_from_slice(data);
    Bytes::from(out)
}

/// The data of a chunk object, checked: header, the length expected for that chunk, crc32c.
pub fn decode(key: &str, object: &Bytes, expected_len: u64) -> Result<Bytes, TierError> {
    let corrupt = |what| TierError::Corrupt { key: key.to_owned(), what };
    if object.len() < HEADER_LEN {
        return Err(corrupt("shorter than its header"));
    }
    if &object[..4] != MAGIC || object[4] != VERSION {
        return Err(corrupt("not a chunk object of a known version"));
    }
    let len = u64::from_le_bytes(object[5..13].try_into().map_err(|_| corrupt("header"))?);
    let crc = u32::from_le_bytes(object[13..17].try_into().map_err(|_| corrupt("header"))?);
    if len != expected_len || (object.len() - HEADER_LEN) as u64 != len {
        return Err(corrupt("wrong length"));
    }
    let data = object.slice(HEADER_LEN..);
    if crc32c::crc32c(&data) != crc {
        return Err(corrupt("crc32c mismatch"));
    }
    Ok(data)
}

/// The tier as the fetcher uses it: checked reads of runs of chunks, bounded uploads, the
/// breaker, and the counts.
pub struct TierClient {
    tier: Arc<dyn Tier>,
    /// Where chunks offered while every upload was busy are read back from.
    store: Arc<dyn crate::store::ChunkStore>,
    chunk_size: u64,
    /// Chunks waiting for an upload, by key alone, with what reading them back needs.
    backlog: std::sync::Mutex<std::collections::BTreeMap<(ContentId, u64), u64>>,
    /// A task drains `backlog`.
    draining: std::sync::atomic::AtomicBool,
    timeout: Duration,
    uploads: Arc<Semaphore>,
    /// One breaker for reads and one for writes: a tier can fail one and not the other (a
    /// key that may only read, a bucket refusing writes, GETs that hang while a create-only
    /// PUT is answered "already exists" at once), and with one breaker the successes of one
    /// would keep resetting the failures of the other.
    reads: Breaker,
    writes: Breaker,
    access: access::AccessTable,
}

/// Failures in a row of one kind of request, and until when that kind is not sent.
struct Breaker {
    /// What the node does while this one is open, for the log.
    meanwhile: &'static str,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the tier is not sent this kind of request.
    open_until_ms: AtomicU64,
    /// Opened since the last success: the first request after a pause is a probe (half-open),
    /// and its failure opens the breaker again at once, instead of after another
    /// [`BREAKER_FAILURES`], so a tier that stays dead costs one wait per pause, not three.
    tripped: std::sync::atomic::AtomicBool,
    epoch: Instant,
}

impl std::fmt::Debug for TierClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierClient")
            .field("chunk_size", &self.chunk_size)
            .field("reads_paused", &self.reads.is_open())
            .field("writes_paused", &self.writes.is_open())
            .finish_non_exhaustive()
    }
}

impl Breaker {
    fn new(meanwhile: &'static str) -> Self {
        Self {
            meanwhile,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            tripped: false.into(),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn is_open(&self) -> bool {
        self.now_ms() < self.open_until_ms.load(Ordering::Relaxed)
    }

    /// Count a request's outcome: a failure (not a bad object) after [`BREAKER_FAILURES`]
    /// others in a row opens the breaker for [`BREAKER_OPEN`]; any answer closes the count.
    fn record(&self, result: &Result<(), &TierError>) {
        match result {
            Ok(()) => {
                self.failures.store(0, Ordering::Relaxed);
                if self.tripped.swap(false, Ordering::Relaxed) {
                    tracing::info!("the tier answers again");
                }
            }
            // A bad object says nothing of whether the tier answers: it is removed and
            // replaced, and the tier stays in use.
            Err(e @ TierError::Corrupt { .. }) => crate::metrics::get().tier_error(e.kind()),
            Err(e) => {
                crate::metrics::get().tier_error(e.kind());
                let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let tripped = self.tripped.load(Ordering::Relaxed);
                if n >= BREAKER_FAILURES || tripped {
                    let until = self.now_ms() + BREAKER_OPEN.as_millis() as u64;
                    let was_closed =
                        self.open_until_ms.swap(until, Ordering::Relaxed) <= self.now_ms();
                    if was_closed && !tripped {
                        tracing::warn!(error = %e, pause = ?BREAKER_OPEN, "the tier keeps failing; {}", self.meanwhile);
                    } else if was_closed {
                        tracing::debug!(error = %e, pause = ?BREAKER_OPEN, "the tier still fails after a pause");
                    }
                    self.tripped.store(true, Ordering::Relaxed);
                    self.failures.store(0, Ordering::Relaxed);
                }
            }
        }
    }
}

impl TierClient {
    pub fn new(tier: Arc<dyn Tier>, store: Arc<dyn crate::store::ChunkStore>) -> Arc<Self> {
        Arc::new(Self {
            tier,
            chunk_size: store.chunk_size(),
            store,
            backlog: Default::default(),
            draining: false.into(),
            timeout: TIER_TIMEOUT,
            uploads: Arc::new(Semaphore::new(MAX_UPLOADS)),
            reads: Breaker::new("reading from the Hub only for a while"),
            writes: Breaker::new("not writing to it for a while"),
            access: access::AccessTable::new(DEFAULT_CONFIRMATION),
        })
    }

    /// Which repos' chunks this node may be served from the tier.
    /// The chunk size of the store it uploads from (part of every chunk's key).
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    pub fn access(&self) -> &access::AccessTable {
        &self.access
    }

    /// One tier request, cut off at the tier's timeout, and timed (`put`: a write).
    async fn within<T>(
        &self,
        put: bool,
        request: BoxFuture<'_, Result<T, TierError>>,
    ) -> Result<T, TierError> {
        let start = Instant::now();
        let result = tokio::time::timeout(self.timeout, request)
            .await
            .unwrap_or(Err(TierError::Timeout(self.timeout)));
        crate::metrics::get().tier_request(put, start.elapsed());
        result
    }

    /// One object other than a chunk (repo metadata, `tier/catalog.rs`), within the tier's
    /// timeout and through its breaker: `Ok(None)` when there is none.
    pub async fn get_object(&self, key: &str) -> Result<Option<Bytes>, TierError> {
        if self.reads.is_open() {
            return Err(TierError::Paused);
        }
        let got = self.within(false, self.tier.get(key)).await;
        self.reads.record(&got.as_ref().map(|_| ()));
        got
    }

    /// Write one object other than a chunk: created once, or replacing what is there.
    pub async fn put_object(&self, key: &str, value: Bytes, write: Write) -> Result<(), TierError> {
        if self.writes.is_open() {
            return Err(TierError::Paused);
        }
        let put = match write {
            Write::Once => self.tier.create(key, value),
            Write::Replace => self.tier.replace(key, value),
        };
        let put = self.within(true, put).await;
        self.writes.record(&put.as_ref().map(|_| ()));
        put
    }

    /// Remove one object other than a chunk, within the tier's timeout and through its
    /// breaker. Removing what is not there is `Ok`.
    pub async fn delete_object(&self, key: &str) -> Result<(), TierError> {
        if self.writes.is_open() {
            return Err(TierError::Paused);
        }
        let removed = self.within(true, self.tier.delete(key)).await;
        self.writes.record(&removed.as_ref().map(|_| ()));
        removed
    }

    /// A bad object found by a reader: counted, and removed so that a good copy can be
    /// written in its place (create-only writes would keep it forever).
    pub async fn discard(&self, e: &TierError, key: &str) {
        self.reads.record(&Err(e));
        let removed = tokio::time::timeout(self.timeout, self.tier.delete(key)).await;
        if !matches!(removed, Ok(Ok(()))) {
            tracing::warn!(key, "corrupt tier object not removed");
        }
    }

    /// Chunks `run` of `file` from the tier, each checked, or `None` if any is missing or bad
    /// (the caller fetches the run from the Hub). Objects are asked for in parallel.
    pub async fn read_run(
        &self,
        file: &FileRef,
        run: std::ops::Range<u64>,
    ) -> Option<Vec<(u64, Bytes)>> {
        if self.reads.is_open() {
            return None;
        }
        let content = file.content();
        let size = file.remote.size;
        let gets = run.clone().map(|index| {
            let key = chunk_key(&content, self.chunk_size, index);
            async move {
                let got = self.within(false, self.tier.get(&key)).await;
                let checked = match got {
                    Ok(Some(object)) => {
                        decode(&key, &object, chunk_len(size, self.chunk_size, index)).map(Some)
                    }
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                };
                match checked {
                    Ok(found) => {
                        self.reads.record(&Ok(()));
                        found.map(|data| (index, data))
                    }
                    Err(e) => {
                        tracing::warn!(path = %file.remote.path, index, error = %e, "tier read failed; asking the Hub");
                        if matches!(e, TierError::Corrupt { .. }) {
                            // The Hub's bytes replace it once this node has them.
                            self.discard(&e, &key).await;
                        } else {
                            self.reads.record(&Err(&e));
                        }
                        None
                    }
                }
            }
        });
        let found: Option<Vec<(u64, Bytes)>> =
            futures::future::join_all(gets).await.into_iter().collect();
        if let Some(chunks) = &found {
            let bytes = chunks.iter().map(|(_, b)| b.len() as u64).sum();
            crate::metrics::get().tier_fetched(bytes);
        }
        found
    }

    /// Offer chunks fetched from the Hub to the tier, in the background; deferred when
    /// [`MAX_UPLOADS`] are already in flight, dropped while the tier keeps failing writes.
    pub fn offer(self: &Arc<Self>, file: &FileRef, chunks: &[(u64, Bytes)]) {
        if self.writes.is_open() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let content = file.content();
        for (index, data) in chunks {
            let Ok(permit) = self.uploads.clone().try_acquire_owned() else {
                crate::metrics::get().tier_upload_deferred();
                crate::lock(&self.backlog).insert((content, *index), file.remote.size);
                self.drain(&rt);
                continue;
            };
            let this = self.clone();
            let (key, object) = (chunk_key(&content, self.chunk_size, *index), encode(data));
            rt.spawn(async move {
                let _permit = permit;
                this.upload(key, object).await;
            });
        }
    }

    async fn upload(&self, key: String, object: Bytes) {
        let len = (object.len() - HEADER_LEN) as u64;
        let put = self.within(true, self.tier.create(&key, object)).await;
        match &put {
            Ok(()) => crate::metrics::get().tier_stored(len),
            Err(e) => tracing::debug!(key, error = %e, "chunk not written to the tier"),
        }
        self.writes.record(&put.as_ref().map(|_| ()));
    }

    /// Upload chunks `indices` of `file` that the local store holds (a `pull --tier` seeding
    /// the tier with what this node already has): by key, read back from the store as the
    /// uploads free up. Chunks the tier has already are rewritten as nothing (create-only).
    pub fn offer_stored(self: &Arc<Self>, file: &FileRef, indices: impl IntoIterator<Item = u64>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let content = file.content();
        let mut backlog = crate::lock(&self.backlog);
        for index in indices {
            backlog.insert((content, index), file.remote.size);
        }
        drop(backlog);
        self.drain(&rt);
    }

    /// Remove every chunk object of `file` from the tier, in the background: its bytes did not
    /// match the Hub's hash, and every object passed its own checks, so which one is bad
    /// cannot be told. Chunks of it still waiting for an upload are dropped. An upload already
    /// running may land after the removal; the next node to find the file bad removes it again.
    pub fn forget_file(self: &Arc<Self>, file: &FileRef) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let content = file.content();
        crate::lock(&self.backlog).retain(|(c, _), _| *c != content);
        let keys: Vec<String> = (0..crate::store::chunk_count(file.remote.size, self.chunk_size))
            .map(|index| chunk_key(&content, self.chunk_size, index))
            .collect();
        let this = self.clone();
        rt.spawn(async move {
            let Some(_slot) = this.upload_slot().await else { return };
            for key in keys {
                if let Err(e) = this.within(true, this.tier.delete(&key)).await {
                    tracing::warn!(key, error = %e, "object of a bad file not removed from the tier");
                }
            }
        });
    }

    /// A slot among the uploads, for a write that is not a chunk's (repo metadata): held for
    /// the write, so that [`TierClient::flush`] waits for it too.
    pub async fn upload_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.uploads.clone().acquire_owned().await.ok()
    }

    /// [`TierClient::upload_slot`] if one is free now: taken before a write is spawned, it
    /// makes a [`TierClient::flush`] that starts meanwhile wait for the write.
    pub fn try_upload_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.uploads.clone().try_acquire_owned().ok()
    }

    /// Wait until every upload offered so far has ended (written, or failed): what a command
    /// that seeds the tier does before it exits, since uploads run behind the reads.
    pub async fn flush(&self) {
        while self.draining.load(Ordering::Acquire) || !crate::lock(&self.backlog).is_empty() {
            tokio::time::sleep(FLUSH_POLL).await;
        }
        // Every upload holds one of the slots: having them all, none is running.
        if let Ok(all) = self.uploads.acquire_many(MAX_UPLOADS as u32).await {
            drop(all);
        }
    }

    /// Upload the backlog, one chunk per free upload, each read back from the store (one that
    /// is gone, evicted meanwhile, is skipped), until it is empty. One such task at a time.
    fn drain(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        rt.spawn(async move {
            loop {
                let next = crate::lock(&this.backlog).pop_first();
                let Some(((content, index), size)) = next else {
                    this.draining.store(false, Ordering::Release);
                    // An offer between the pop and the flag finds no drain running: look again.
                    if crate::lock(&this.backlog).is_empty()
                        || this.draining.swap(true, Ordering::AcqRel)
                    {
                        return;
                    }
                    continue;
                };
                if this.writes.is_open() {
                    continue;
                }
                let Ok(permit) = this.uploads.clone().acquire_owned().await else { return };
                let (store, cs) = (this.store.clone(), this.chunk_size);
                let read = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    let len = chunk_len(size, cs, index) as usize;
                    store.read_chunk(&content, index, 0..len, &mut out).ok()?.then_some(out)
                })
                .await;
                let Ok(Some(data)) = read else { continue };
                let key = chunk_key(&content, cs, index);
                let uploader = this.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    uploader.upload(key, encode(&data)).await;
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The object format is read by other nodes, other versions: it must not drift.
    #[test]
    fn golden_chunk_object() {
        let object = encode(b"modelfs");
        let want: &[u8] = &[
            b'M', b'F', b'S', b'C', 1, // magic, version
            7, 0, 0, 0, 0, 0, 0, 0, // length
            0x85, 0xd0, 0xce, 0x0f, // crc32c("modelfs") = 0x0fced085, little-endian
            b'm', b'o', b'd', b'e', b'l', b'f', b's',
        ];
        assert_eq!(&object[..], want, "{:02x?}", &object[..]);
        assert_eq!(&decode("k", &object, 7).unwrap()[..], b"modelfs");
    }

    #[test]
    fn keys_name_content_chunk_size_and_index() {
        let key = chunk_key(&ContentId([0xab; 32]), 8 << 20, 3);
        assert_eq!(key, format!("chunks/v1/ab/{}/8388608/3", "ab".repeat(32)));
    }

    proptest! {
        /// Any change to an object (a flipped bit, a cut, a wrong expected length) is found.
        #[test]
        fn damaged_objects_never_decode(
            data in prop::collection::vec(any::<u8>(), 0..300),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
            cut in any::<prop::sample::Index>(),
        ) {
            let object = encode(&data);
            prop_assert_eq!(&decode("k", &object, data.len() as u64).unwrap()[..], &data[..]);
            let mut flipped = object.to_vec();
            flipped[at.index(object.len())] ^= 1 << bit;
            prop_assert!(decode("k", &Bytes::from(flipped), data.len() as u64).is_err());
            let short = object.slice(..cut.index(object.len()));
            prop_assert!(decode("k", &short, data.len() as u64).is_err());
            prop_assert!(decode("k", &object, data.len() as u64 + 1).is_err());
        }
    }

    fn file(size: u64) -> FileRef {
        FileRef {
            remote: crate::hub::RemoteFile {
                repo: crate::manifest::RepoId::new("o", "r"),
                commit: "c".repeat(40),
                path: "w.bin".into(),
                size,
            },
            hash: crate::manifest::FileHash::Lfs([7; 32]),
        }
    }

    /// A tier slower than the Hub: every create waits. More chunks are offered than uploads
    /// can hold; the rest are read back from the store later, and all reach the tier.
    struct Slow(ObjectTier);

    impl Tier for Slow {
        fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, TierError>> {
            self.0.get(key)
        }
        fn create<'a>(
            &'a self,
            key: &'a str,
            value: Bytes,
        ) -> BoxFuture<'a, Result<(), TierError>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.0.create(key, value).await
            })
        }
        fn replace<'a>(
            &'a self,
            key: &'a str,
            value: Bytes,
        ) -> BoxFuture<'a, Result<(), TierError>> {
            self.0.replace(key, value)
        }
        fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), TierError>> {
            self.0.delete(key)
        }
    }

    #[tokio::test]
    async fn chunks_offered_while_uploads_are_busy_reach_the_tier_from_the_store() {
        let memory = Arc::new(object_store::memory::InMemory::new());
        let store = Arc::new(crate::store::memory::MemoryStore::new(4));
        let f = file(4 * 20);
        let chunks: Vec<(u64, Bytes)> =
            (0..20).map(|i| (i, Bytes::from(vec![i as u8; 4]))).collect();
        for (i, data) in &chunks {
            crate::store::ChunkStore::put_chunk(&*store, &f.content(), 80, *i, data).unwrap();
        }
        let client =
            TierClient::new(Arc::new(Slow(ObjectTier::new(memory.clone(), ""))), store.clone());
        client.offer(&f, &chunks);
        assert!(!crate::lock(&client.backlog).is_empty(), "more offered than uploads hold");
        let mut all = None;
        for _ in 0..400 {
            all = client.read_run(&f, 0..20).await;
            if all.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(all, Some(chunks));
    }

    /// A tier whose reads or writes fail fast, as one answering 5xx does, counting what it is
    /// asked.
    struct Failing {
        inner: ObjectTier,
        reads_fail: bool,
        writes_fail: bool,
        gets: AtomicU32,
        creates: AtomicU32,
    }

    impl Failing {
        fn new(reads_fail: bool, writes_fail: bool) -> Arc<Self> {
            let memory = Arc::new(object_store::memory::InMemory::new());
            Arc::new(Self {
                inner: ObjectTier::new(memory, ""),
                reads_fail,
                writes_fail,
                gets: AtomicU32::new(0),
                creates: AtomicU32::new(0),
            })
        }
    }

    fn down() -> TierError {
        TierError::Unavailable(object_store::Error::Generic {
            store: "test",
            source: "503 Service Unavailable".into(),
        })
    }

    impl Tier for Failing {
        fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, TierError>> {
            self.gets.fetch_add(1, Ordering::Relaxed);
            if self.reads_fail {
                return Box::pin(async { Err(down()) });
            }
            self.inner.get(key)
        }
        fn create<'a>(
            &'a self,
            key: &'a str,
            value: Bytes,
        ) -> BoxFuture<'a, Result<(), TierError>> {
            self.creates.fetch_add(1, Ordering::Relaxed);
            if self.writes_fail {
                return Box::pin(async { Err(down()) });
            }
            self.inner.create(key, value)
        }
        fn replace<'a>(
            &'a self,
            key: &'a str,
            value: Bytes,
        ) -> BoxFuture<'a, Result<(), TierError>> {
            self.create(key, value)
        }
        fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), TierError>> {
            self.inner.delete(key)
        }
    }

    async fn uploads_done(client: &TierClient) {
        for _ in 0..400 {
            if client.uploads.available_permits() == MAX_UPLOADS
                && crate::lock(&client.backlog).is_empty()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("uploads still running");
    }

    /// GETs that fail while PUTs succeed (a create-only PUT of a chunk that is there is
    /// answered at once): the writes' successes must not keep the reads' breaker closed, or
    /// every read would wait on the failing tier.
    /// After a pause, the first request is a probe: its failure opens the breaker again at
    /// once (a dead tier costs one wait per pause, not three); a success closes it for good.
    #[test]
    fn a_failed_probe_after_the_pause_opens_the_breaker_again_at_once() {
        let b = Breaker::new("test");
        let fail = || b.record(&Err(&TierError::Timeout(TIER_TIMEOUT)));
        for _ in 0..BREAKER_FAILURES {
            assert!(!b.is_open());
            fail();
        }
        assert!(b.is_open());
        // The pause ends.
        b.open_until_ms.store(0, Ordering::Relaxed);
        assert!(!b.is_open());
        fail();
        assert!(b.is_open(), "one failed probe reopens it");
        b.open_until_ms.store(0, Ordering::Relaxed);
        b.record(&Ok(()));
        fail();
        assert!(!b.is_open(), "after a success, it takes BREAKER_FAILURES again");
        fail();
        fail();
        assert!(b.is_open());
    }

    #[tokio::test]
    async fn failing_reads_open_their_breaker_whatever_the_writes_do() {
        let tier = Failing::new(true, false);
        let client =
            TierClient::new(tier.clone(), Arc::new(crate::store::memory::MemoryStore::new(4)));
        let f = file(4 * 8);
        for index in 0..u64::from(BREAKER_FAILURES) {
            assert!(client.read_run(&f, index..index + 1).await.is_none());
            client.offer(&f, &[(index, Bytes::from_static(b"abcd"))]);
            uploads_done(&client).await;
        }
        assert_eq!(tier.creates.load(Ordering::Relaxed), BREAKER_FAILURES, "writes went on");
        let gets = tier.gets.load(Ordering::Relaxed);
        assert!(client.read_run(&f, 5..6).await.is_none());
        assert_eq!(
            tier.gets.load(Ordering::Relaxed),
            gets,
            "the tier was read with the breaker open"
        );
    }

    /// PUTs that fail (a key that may only read, a bucket refusing writes) stop the uploads
    /// for a while, not the reads.
    #[tokio::test]
    async fn failing_writes_stop_the_writes_not_the_reads() {
        let tier = Failing::new(false, true);
        let client =
            TierClient::new(tier.clone(), Arc::new(crate::store::memory::MemoryStore::new(4)));
        let f = file(4 * 8);
        let key = chunk_key(&f.content(), 4, 7);
        tier.inner.create(&key, encode(b"wxyz")).await.unwrap();
        let chunks: Vec<(u64, Bytes)> =
            (0..u64::from(BREAKER_FAILURES)).map(|i| (i, Bytes::from_static(b"abcd"))).collect();
        client.offer(&f, &chunks);
        uploads_done(&client).await;
        client.offer(&f, &[(4, Bytes::from_static(b"abcd"))]);
        uploads_done(&client).await;
        assert_eq!(
            tier.creates.load(Ordering::Relaxed),
            BREAKER_FAILURES,
            "writes with the breaker open"
        );
        assert_eq!(client.read_run(&f, 7..8).await, Some(vec![(7, Bytes::from_static(b"wxyz"))]));
    }

    /// A refusal of the credentials is a kind of its own: it needs a person, not time.
    #[test]
    fn refused_credentials_are_denied_not_unavailable() {
        let source = || "403 Forbidden: SignatureDoesNotMatch".into();
        let kind = |e| TierError::backend(e).kind();
        assert_eq!(
            kind(object_store::Error::PermissionDenied { path: "k".into(), source: source() }),
            "denied"
        );
        assert_eq!(
            kind(object_store::Error::Unauthenticated { path: "k".into(), source: source() }),
            "denied"
        );
        assert_eq!(
            kind(object_store::Error::Generic { store: "S3", source: source() }),
            "unavailable"
        );
        assert!(TIER_ERROR_KINDS.contains(&"denied"));
    }

    /// An S3 endpoint that takes requests and never answers: the request runs into
    /// `TierClient`'s timeout (counted as `timeout`), not into the S3 client's own (which
    /// would be an `unavailable` "error sending request").
    #[tokio::test]
    async fn a_stalled_s3_request_ends_at_the_tier_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().flatten() {
                held.push(conn);
            }
        });
        let env = [
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
        ];
        let env = env.map(|(k, v)| (k.to_owned(), v.to_owned()));
        let tier = ObjectTier::from_url_in("s3://bucket/prefix", env).unwrap();
        let got = tokio::time::timeout(TIER_TIMEOUT, tier.get("chunks/v1/ab/x/4/0")).await;
        assert!(got.is_err(), "the S3 client gave up first: {:?}", got.map(|r| r.map(|_| ())));
    }

    #[tokio::test]
    async fn offered_chunks_read_back_and_bad_objects_are_misses() {
        let memory = Arc::new(object_store::memory::InMemory::new());
        let tier = Arc::new(ObjectTier::new(memory.clone(), "pfx"));
        let client =
            TierClient::new(tier.clone(), Arc::new(crate::store::memory::MemoryStore::new(4)));
        let f = file(10);
        assert!(client.read_run(&f, 0..3).await.is_none(), "empty tier");
        let chunks = vec![
            (0, Bytes::from_static(b"abcd")),
            (1, Bytes::from_static(b"efgh")),
            (2, Bytes::from_static(b"ij")),
        ];
        client.offer(&f, &chunks);
        // Uploads run in the background: wait for the three objects.
        for _ in 0..200 {
            if client.uploads.available_permits() == MAX_UPLOADS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(client.read_run(&f, 0..3).await, Some(chunks.clone()));
        // A second create of the same key succeeds and changes nothing.
        let key = chunk_key(&f.content(), 4, 1);
        tier.create(&key, encode(b"zzzz")).await.unwrap();
        assert_eq!(client.read_run(&f, 1..2).await, Some(vec![chunks[1].clone()]));
        // An object cut short is a miss, not bytes.
        let path = ObjectPath::from(format!("pfx/{key}"));
        memory.put(&path, PutPayload::from(encode(b"efgh").slice(..10))).await.unwrap();
        assert!(client.read_run(&f, 0..3).await.is_none());
    }
}
