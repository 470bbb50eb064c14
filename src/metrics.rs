//! Process-wide metrics and the HTTP endpoints of `--metrics-addr` (doc/OPERATIONS.md, "Metrics and
//! health"): `/metrics` in the OpenMetrics text format (which Prometheus scrapes natively),
//! `/healthz` (the process answers) and `/readyz` (mounted with the store open).
//!
//! Metrics are global ([`get`]) rather than threaded through every layer: the places that
//! count (the FUSE edge, the filesystem core, the fetcher, the Hub client's retry loop, the
//! eviction code) have nothing else in common, and a counter is one atomic add. Every series
//! that a hot path touches is resolved to its own handle once, at start, so the warm read path
//! pays an atomic increment and never a label lookup.
//!
//! Cardinality is bounded by construction: every label value is a `&'static str` chosen here
//! from a fixed set, so no repo, path, URL or token can ever become a label.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::hub::HubError;

mod traffic;
pub use traffic::Traffic;

/// What `prometheus-client` encodes: OpenMetrics 1.0 text. Prometheus asks for it first in
/// its `Accept` header and parses it natively.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the fetch latency buckets, in seconds: from a chunk served by a CDN edge
/// next door (1 ms) to the default `--read-timeout` (60 s), in 1-2.5-5 steps, so both a LAN
/// mirror and a slow transatlantic link land in buckets that tell them apart.
const FETCH_BUCKETS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Upper bounds of the tier latency buckets, in seconds: from an object in a bucket or shared
/// directory next door (1 ms) to the tier's own timeout (5 s), in 1-2.5-5 steps.
const TIER_BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Connections the endpoint serves at once. A scraper and a few probes need a handful; the
/// bound keeps a misbehaving client from costing the daemon more than a little memory.
const MAX_CONNECTIONS: usize = 32;

/// How long a client may take to send its request head before it is dropped (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A pause after an `accept` error such as `EMFILE`, so that running out of descriptors does
/// not become a busy loop; the listener is retried after it.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

type Label = [(&'static str, &'static str); 1];

/// Where the bytes of a read came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The chunk was stored when the read looked for it.
    Store,
    /// The read waited for the chunk to be fetched from the Hub (by itself, by a concurrent
    /// reader, or by read-ahead already on its way).
    Network,
}

/// Why a Hub request is tried again. The labels of `modelfs_retries_total`.
pub const RETRY_REASONS: [&str; 9] = [
    "timeout",
    "reset",
    "connect",
    "truncated",
    "status_5xx",
    "rate_limited",
    "cdn_denied",
    "protocol",
    "other",
];

/// The errno values modelfs answers the kernel with, by name; anything else is `other`.
const ERRNO_NAMES: [(i32, &str); 13] = [
    (libc::ENOENT, "ENOENT"),
    (libc::EIO, "EIO"),
    (libc::EACCES, "EACCES"),
    (libc::EROFS, "EROFS"),
    (libc::ENOTDIR, "ENOTDIR"),
    (libc::EISDIR, "EISDIR"),
    (libc::ENODATA, "ENODATA"),
    (libc::ERANGE, "ERANGE"),
    (libc::EBADF, "EBADF"),
    (libc::EINVAL, "EINVAL"),
    (libc::EPERM, "EPERM"),
    (libc::ENOSYS, "ENOSYS"),
    (libc::EINTR, "EINTR"),
];

/// Every metric modelfs exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    read_store: Counter,
    read_network: Counter,
    fetch_ok: Counter,
    fetch_error: Counter,
    fetch_duration: Histogram,
    fetched_bytes: Counter,
    retries: Family<Label, Counter>,
    cache_bytes: Gauge<u64, AtomicU64>,
    cache_bound: OptionalGauge,
    evictions: Counter,
    evicted_bytes: Counter,
    open_handles: Gauge,
    fuse_errors: Family<Label, Counter>,
    chunk_checksum_failures: Counter,
    verified: Counter,
    verify_failed: Counter,
    hub_reachable: Gauge,
    passthrough: Gauge,
    passthrough_opens: Counter,
    load_plans: Family<Label, Counter>,
    plan_fetched_bytes: Counter,
    plan_unread_bytes: Counter,
    plan_pushed_bytes: Counter,
    demand_fetched_bytes: Counter,
    tier_fetched_bytes: Counter,
    tier_stored_bytes: Counter,
    tier_uploads_deferred: Counter,
    tier_revisions_served: Counter,
    store_ro_read_bytes: Counter,
    tier_errors: Family<Label, Counter>,
    tier_get_duration: Histogram,
    tier_put_duration: Histogram,
    /// What `modelfs status` reports of the tier's latency: the mean of every request.
    tier_micros: AtomicU64,
    tier_requests: AtomicU64,
}

/// The labels of `modelfs_load_plans_total`: the loaders a plan imitates
/// ([`crate::plan::PlanFormat::as_str`]).
pub const PLAN_FORMATS: [&str; 3] = ["safetensors", "gguf", "onnx"];

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics, created on first use.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("modelfs");

        let read = Family::<Label, Counter>::default();
        r.register_with_unit(
            "read",
            "Bytes answered to reads, by where they came from: the store (the chunk was stored \
             when the read looked) or the network (the read waited for a fetch)",
            Unit::Bytes,
            read.clone(),
        );
        let fetches = Family::<Label, Counter>::default();
        r.register(
            "fetches",
            "Chunk fetches from the Hub (one range, over one or more requests, retries included), by result",
            fetches.clone(),
        );
        let fetch_duration = Histogram::new(FETCH_BUCKETS);
        r.register_with_unit(
            "fetch_duration",
            "Time one chunk fetch took, retries included, successful or not",
            Unit::Seconds,
            fetch_duration.clone(),
        );
        let fetched_bytes = Counter::default();
        r.register_with_unit(
            "fetched",
            "Bytes of chunks fetched from the Hub",
            Unit::Bytes,
            fetched_bytes.clone(),
        );
        let retries = Family::<Label, Counter>::default();
        r.register("retries", "Hub requests tried again, by reason", retries.clone());
        let cache_bytes = Gauge::<u64, AtomicU64>::default();
        r.register_with_unit(
            "cache",
            "Bytes of file contents the store holds",
            Unit::Bytes,
            cache_bytes.clone(),
        );
        let cache_bound = OptionalGauge::default();
        r.register_with_unit(
            "cache_bound",
            "The store's size bound (--max-cache-size); absent when unbounded",
            Unit::Bytes,
            cache_bound.clone(),
        );
        let evictions = Counter::default();
        r.register(
            "evictions",
            "Files evicted from the store to keep it under its bound",
            evictions.clone(),
        );
        let evicted_bytes = Counter::default();
        r.register_with_unit(
            "evicted",
            "Bytes evicted from the store to keep it under its bound",
            Unit::Bytes,
            evicted_bytes.clone(),
        );
        let open_handles = Gauge::default();
        r.register("open_handles", "Files open through the mount", open_handles.clone());
        let fuse_errors = Family::<Label, Counter>::default();
        r.register(
            "fuse_errors",
            "Errors answered to the kernel, by errno (ENOENT for lookups of missing names included)",
            fuse_errors.clone(),
        );
        let chunk_checksum_failures = Counter::default();
        r.register(
            "chunk_checksum_failures",
            "Stored chunks that failed their crc32c on read and were dropped (fetched again)",
            chunk_checksum_failures.clone(),
        );
        let verifications = Family::<Label, Counter>::default();
        r.register(
            "file_verifications",
            "Whole-file hash checks of completed files against the Hub's sha256 (or git blob \
             id), by result; a failed file is discarded and not served",
            verifications.clone(),
        );
        let passthrough = Gauge::default();
        r.register(
            "passthrough",
            "1 when verified files are served by FUSE passthrough (the kernel reads their data \
             files directly), 0 when every read goes through the daemon",
            passthrough.clone(),
        );
        let passthrough_opens = Counter::default();
        r.register(
            "passthrough_opens",
            "Opens of verified files answered with FUSE passthrough",
            passthrough_opens.clone(),
        );
        let load_plans = Family::<Label, Counter>::default();
        r.register(
            "load_plans",
            "Load plans started (a program walked a model file's tensor data, or a sharded \
             checkpoint's loader was one shard ahead), by file format",
            load_plans.clone(),
        );
        let plan_fetched_bytes = Counter::default();
        r.register_with_unit(
            "plan_fetched",
            "Bytes fetched from the Hub by load plans, ahead of the reads that need them",
            Unit::Bytes,
            plan_fetched_bytes.clone(),
        );
        let plan_pushed_bytes = Counter::default();
        r.register_with_unit(
            "plan_pushed",
            "Bytes of load-plan chunks handed to the kernel's page cache, once per inode open through it",
            Unit::Bytes,
            plan_pushed_bytes.clone(),
        );
        let demand_fetched_bytes = Counter::default();
        r.register_with_unit(
            "demand_fetched",
            "Bytes of chunks fetched because a read needed them and nothing (read-ahead, a load \
             plan) had fetched them ahead: what readers waited a whole request for",
            Unit::Bytes,
            demand_fetched_bytes.clone(),
        );
        let tier_fetched_bytes = Counter::default();
        r.register_with_unit(
            "tier_fetched",
            "Bytes of chunks read from the shared tier (--tier), checked, instead of the Hub",
            Unit::Bytes,
            tier_fetched_bytes.clone(),
        );
        let tier_stored_bytes = Counter::default();
        r.register_with_unit(
            "tier_stored",
            "Bytes of chunks fetched from the Hub and written to the shared tier (or found \
             there already, written by another node)",
            Unit::Bytes,
            tier_stored_bytes.clone(),
        );
        let tier_uploads_deferred = Counter::default();
        r.register(
            "tier_uploads_deferred",
            "Chunks offered to the tier while its uploads were all busy: uploaded later, read \
             back from the local store",
            tier_uploads_deferred.clone(),
        );
        let store_ro_read_bytes = Counter::default();
        r.register_with_unit(
            "store_ro_read",
            "Bytes of chunks read from read-only stores (--store-ro) because the store did not \
             have them",
            Unit::Bytes,
            store_ro_read_bytes.clone(),
        );
        let tier_revisions_served = Counter::default();
        r.register(
            "tier_revisions_served",
            "Repo revisions this node had no record of, served from the refs and manifests in \
             the shared tier because the Hub could not answer",
            tier_revisions_served.clone(),
        );
        let tier_errors = Family::<Label, Counter>::default();
        r.register(
            "tier_errors",
            "Tier requests that failed and fell back to the Hub, by kind: unavailable (down, \
             refused, an error answer), denied (the credentials refused), timeout, corrupt \
             (an object that failed its checks)",
            tier_errors.clone(),
        );
        let tier_duration =
            Family::<Label, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(TIER_BUCKETS)
            });
        r.register_with_unit(
            "tier_request_duration",
            "Time one tier request took (a chunk or metadata object read, or a write), by \
             operation, successful or not",
            Unit::Seconds,
            tier_duration.clone(),
        );
        for kind in crate::tier::TIER_ERROR_KINDS {
            drop(tier_errors.get_or_create(&[("kind", kind)]));
        }
        let plan_unread_bytes = Counter::default();
        r.register_with_unit(
            "plan_unread",
            "Bytes load plans fetched that no read asked for by the time the program closed \
             the model's files (whole chunks)",
            Unit::Bytes,
            plan_unread_bytes.clone(),
        );
        let hub_reachable = Gauge::default();
        hub_reachable.set(1);
        r.register(
            "hub_reachable",
            "1 while the Hub answers (or nothing has failed to reach it yet), 0 while connections \
             to it are refused or its name does not resolve",
            hub_reachable.clone(),
        );
        r.register(
            "build",
            "The running modelfs",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );

        // Series with a fixed label set exist from the start, at 0, so that rate() and
        // absent-means-zero alerts work before the first event.
        for reason in RETRY_REASONS {
            drop(retries.get_or_create(&[("reason", reason)]));
        }
        // The errors a program can see (doc/SEMANTICS.md, "Reads").
        for errno in ["ENOENT", "EACCES", "EIO", "EROFS"] {
            drop(fuse_errors.get_or_create(&[("errno", errno)]));
        }
        for format in PLAN_FORMATS {
            drop(load_plans.get_or_create(&[("format", format)]));
        }
        Metrics {
            read_store: read.get_or_create_owned(&[("source", "store")]),
            read_network: read.get_or_create_owned(&[("source", "network")]),
            fetch_ok: fetches.get_or_create_owned(&[("result", "ok")]),
            fetch_error: fetches.get_or_create_owned(&[("result", "error")]),
            verified: verifications.get_or_create_owned(&[("result", "verified")]),
            verify_failed: verifications.get_or_create_owned(&[("result", "failed")]),
            registry: root,
            fetch_duration,
            fetched_bytes,
            retries,
            cache_bytes,
            cache_bound,
            evictions,
            evicted_bytes,
            open_handles,
            fuse_errors,
            chunk_checksum_failures,
            hub_reachable,
            passthrough,
            passthrough_opens,
            load_plans,
            plan_fetched_bytes,
            plan_unread_bytes,
            plan_pushed_bytes,
            demand_fetched_bytes,
            tier_fetched_bytes,
            tier_stored_bytes,
            tier_uploads_deferred,
            tier_revisions_served,
            store_ro_read_bytes,
            tier_errors,
            tier_get_duration: tier_duration.get_or_create_owned(&[("op", "get")]),
            tier_put_duration: tier_duration.get_or_create_owned(&[("op", "put")]),
            tier_micros: AtomicU64::new(0),
            tier_requests: AtomicU64::new(0),
        }
    }

    /// A tier request (`put`: a write, else a read) took `took`.
    pub fn tier_request(&self, put: bool, took: Duration) {
        let histogram = if put { &self.tier_put_duration } else { &self.tier_get_duration };
        histogram.observe(took.as_secs_f64());
        self.tier_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.tier_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tier_fetched(&self, bytes: u64) {
        self.tier_fetched_bytes.inc_by(bytes);
    }

    pub fn tier_stored(&self, bytes: u64) {
        self.tier_stored_bytes.inc_by(bytes);
    }

    pub fn tier_upload_deferred(&self) {
        self.tier_uploads_deferred.inc();
    }

    /// `bytes` of a chunk were read from a read-only store.
    pub fn store_ro_read(&self, bytes: usize) {
        self.store_ro_read_bytes.inc_by(bytes as u64);
    }

    pub fn tier_revision_served(&self) {
        self.tier_revisions_served.inc();
    }

    /// A tier request failed (`kind`: one of [`crate::tier::TIER_ERROR_KINDS`]).
    pub fn tier_error(&self, kind: &'static str) {
        self.tier_errors.get_or_create(&[("kind", kind)]).inc();
    }

    /// A read's own fetch stored `bytes` (see `modelfs_demand_fetched_bytes`).
    pub fn demand_fetched(&self, bytes: u64) {
        self.demand_fetched_bytes.inc_by(bytes);
    }

    /// A load plan started for a file of `format`.
    pub fn plan_started(&self, format: crate::plan::PlanFormat) {
        self.load_plans.get_or_create(&[("format", format.as_str())]).inc();
    }

    /// A load plan's request stored `bytes`.
    pub fn plan_fetched(&self, bytes: u64) {
        self.plan_fetched_bytes.inc_by(bytes);
    }

    /// `bytes` of a plan's chunk went into the kernel's page cache (`fs::pages`).
    pub fn plan_pushed(&self, bytes: u64) {
        self.plan_pushed_bytes.inc_by(bytes);
    }

    /// `bytes` a plan fetched were never read.
    pub fn plan_unread(&self, bytes: u64) {
        self.plan_unread_bytes.inc_by(bytes);
    }

    /// `bytes` answered to a read from `source`.
    pub fn read_bytes(&self, source: Source, bytes: usize) {
        let counter = match source {
            Source::Store => &self.read_store,
            Source::Network => &self.read_network,
        };
        counter.inc_by(bytes as u64);
    }

    /// Count one chunk fetch: its result, its duration and its bytes. Wrap the fetch future
    /// itself: a fetch dropped before it ends (the caller's read timeout fired) counts as an
    /// error, with the time it had run.
    pub async fn timed_fetch<T: Fetched, E>(
        &'static self,
        fetch: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let mut timer = FetchTimer { metrics: self, start: Instant::now(), done: false };
        let result = fetch.await;
        timer.finish(result.as_ref().ok().map(Fetched::fetched_bytes));
        result
    }

    /// A Hub request failed with `error` and will be tried again. `rate_limited` is whether
    /// the server asked for the pause (429 with `Retry-After`).
    pub fn retry(&self, error: &HubError, rate_limited: bool) {
        let reason = if rate_limited { "rate_limited" } else { retry_reason(error) };
        self.retries.get_or_create(&[("reason", reason)]).inc();
    }

    /// Whether FUSE passthrough is in effect.
    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.set(i64::from(on));
    }

    /// An open answered with FUSE passthrough.
    pub fn passthrough_opened(&self) {
        self.passthrough_opens.inc();
    }

    /// Whether the Hub answers.
    pub fn set_hub_reachable(&self, reachable: bool) {
        self.hub_reachable.set(i64::from(reachable));
    }

    /// The store now holds `bytes` bytes of file contents.
    pub fn set_cache_bytes(&self, bytes: u64) {
        self.cache_bytes.set(bytes);
    }

    /// The store's bound; `None` is unbounded, and then the series is absent (so an alert on
    /// `cache > bound` cannot fire, rather than comparing with a made-up number).
    pub fn set_cache_bound(&self, bound: Option<u64>) {
        self.cache_bound.0.store(bound.unwrap_or(UNSET), Ordering::Relaxed);
    }

    /// One file of `bytes` bytes was evicted.
    pub fn evicted(&self, bytes: u64) {
        self.evictions.inc();
        self.evicted_bytes.inc_by(bytes);
    }

    pub fn handle_opened(&self) {
        self.open_handles.inc();
    }

    pub fn handle_released(&self) {
        self.open_handles.dec();
    }

    /// The kernel was answered with errno `code`.
    pub fn fuse_error(&self, code: i32) {
        self.fuse_errors.get_or_create(&[("errno", errno_name(code))]).inc();
    }

    /// A stored chunk failed its crc32c and was dropped.
    pub fn chunk_checksum_failed(&self) {
        self.chunk_checksum_failures.inc();
    }

    /// A completed file was checked against the Hub's hash: `matched` or not.
    pub fn file_verified(&self, matched: bool) {
        if matched { &self.verified } else { &self.verify_failed }.inc();
    }

    /// The whole exposition, `# EOF` included.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// A gauge that is absent from the exposition (no sample, no descriptor) while unset: for a
/// value that may not exist, where any stand-in number would mislead a query.
#[derive(Clone, Debug)]
struct OptionalGauge(Arc<AtomicU64>);

/// The unset value. No real byte count reaches it (a bound of 16 EiB is no bound).
const UNSET: u64 = u64::MAX;

impl Default for OptionalGauge {
    fn default() -> Self {
        Self(Arc::new(AtomicU64::new(UNSET)))
    }
}

impl EncodeMetric for OptionalGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0.load(Ordering::Relaxed))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }

    fn is_empty(&self) -> bool {
        self.0.load(Ordering::Relaxed) == UNSET
    }
}

/// Records a fetch when it finishes, or as an error when it is dropped unfinished.
/// What a fetch returns, as far as its byte count goes: the bytes themselves, or (for a range
/// whose pieces went elsewhere as they arrived) how many there were.
pub trait Fetched {
    fn fetched_bytes(&self) -> usize;
}

impl Fetched for Bytes {
    fn fetched_bytes(&self) -> usize {
        self.len()
    }
}

impl Fetched for usize {
    fn fetched_bytes(&self) -> usize {
        *self
    }
}

struct FetchTimer {
    metrics: &'static Metrics,
    start: Instant,
    done: bool,
}

impl FetchTimer {
    fn finish(&mut self, ok_bytes: Option<usize>) {
        self.done = true;
        let m = self.metrics;
        m.fetch_duration.observe(self.start.elapsed().as_secs_f64());
        match ok_bytes {
            Some(n) => {
                m.fetch_ok.inc();
                m.fetched_bytes.inc_by(n as u64);
            }
            None => {
                m.fetch_error.inc();
            }
        }
    }
}

impl Drop for FetchTimer {
    fn drop(&mut self) {
        if !self.done {
            self.finish(None);
        }
    }
}

fn errno_name(code: i32) -> &'static str {
    ERRNO_NAMES.iter().find(|(c, _)| *c == code).map_or("other", |(_, name)| name)
}

/// The reason label for a retryable Hub error. The Hub client (src/hub/client.rs) says why an
/// attempt failed only in its error text, so this reads the phrases it and its HTTP stack
/// (hyper, reqwest) use; tests/metrics.rs checks them against real faults from the mock Hub.
/// Only the last `: `-separated parts are looked at where a repo path precedes them, so a
/// file named like a phrase cannot change the label (and could only ever pick another fixed
/// label: the text never leaves this function).
pub fn retry_reason(error: &HubError) -> &'static str {
    let message = match error {
        HubError::Protocol(_) => return "protocol",
        HubError::Unavailable(m) => m.as_str(),
        HubError::NotFound(_) | HubError::Denied(_) | HubError::Offline => return "other",
    };
    // Client-made messages, "{target}: ..." with the reason at the end.
    if message == "no complete answer in time" {
        return "timeout";
    }
    if let Some((_, tail)) = message.rsplit_once(": HTTP ") {
        return match tail.as_bytes().first() {
            Some(b'5') => "status_5xx",
            _ if tail.starts_with("408") => "timeout",
            _ if tail.starts_with("429") => "rate_limited",
            _ => "other",
        };
    }
    if let Some((_, tail)) = message.rsplit_once(": body ended after ") {
        if tail.ends_with(" bytes") {
            return "truncated";
        }
    }
    if let Some((_, tail)) = message.rsplit_once(": the CDN answered HTTP ") {
        if tail.starts_with('4') {
            return "cdn_denied";
        }
    }
    if message.ends_with("rate limited (HTTP 429)") {
        return "rate_limited";
    }
    // Transport errors: "{url without query}: {reqwest error and its causes}". The URL is
    // percent-encoded, so it holds none of these phrases (they all contain a space).
    let lower = message.to_ascii_lowercase();
    let has = |phrase: &str| lower.contains(phrase);
    if has("error trying to connect")
        || has("connection refused")
        || has("dns error")
        || has("does not answer (")
    {
        "connect"
    } else if has("timed out") || has("deadline has elapsed") {
        "timeout"
    } else if has("end of file before message length reached")
        || has("error decoding response body")
        || has("error reading a body")
    {
        "truncated"
    } else if has("connection reset")
        || has("connection closed before message completed")
        || has("broken pipe")
        || has("connection aborted")
    {
        "reset"
    } else {
        "other"
    }
}

// ------------------------------------------------------------------------------ the endpoint

/// Bind `addr` now (so that a bad or busy address fails the start, before anything is
/// mounted), log where it listens (`metrics listening on http://ADDR`, the port resolved when
/// `addr` asked for port 0), and [`serve`] on `runtime`. Returns the bound address.
pub fn spawn(
    runtime: &tokio::runtime::Handle,
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
) -> io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let listener = {
        let _entered = runtime.enter();
        TcpListener::from_std(listener)?
    };
    tracing::info!("metrics listening on http://{bound}");
    runtime.spawn(async move {
        if let Err(e) = serve(listener, ready).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until the process ends. `/readyz`
/// answers 200 while `ready` is set (the daemon sets it once mounted, and clears it when it
/// starts shutting down), 503 otherwise. Returns only if the listener itself breaks.
pub async fn serve(listener: TcpListener, ready: Arc<AtomicBool>) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if listener_broken(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Over the bound: close at once rather than queue (a scraper retries next interval).
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let response = respond(request.method(), request.uri().path(), &ready);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics endpoint: connection ended");
            }
            drop(slot);
        });
    }
}

/// Errors that say the listening socket itself is unusable; anything else (out of
/// descriptors, a connection aborted before accept) passes.
fn listener_broken(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP))
}

/// The answer to one request; the query string is ignored.
pub fn respond(method: &Method, path: &str, ready: &AtomicBool) -> Response<String> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => match get().encode() {
            Ok(body) => {
                let mut response = Response::new(body);
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE));
                response
            }
            Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"),
        },
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/readyz" if ready.load(Ordering::Acquire) => plain(StatusCode::OK, "ready\n"),
        "/readyz" => plain(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => plain(StatusCode::NOT_FOUND, "not found; try /metrics, /healthz or /readyz\n"),
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<String> {
    let mut response = Response::new(body.to_owned());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn exposition_names_units_and_fixed_series() {
        let text = private().encode().unwrap();
        assert!(text.ends_with("# EOF\n"));
        for line in [
            "# TYPE modelfs_read_bytes counter",
            "# UNIT modelfs_read_bytes bytes",
            "# TYPE modelfs_fetches counter",
            "# TYPE modelfs_fetch_duration_seconds histogram",
            "# UNIT modelfs_fetch_duration_seconds seconds",
            "# TYPE modelfs_fetched_bytes counter",
            "# TYPE modelfs_retries counter",
            "# TYPE modelfs_cache_bytes gauge",
            "# TYPE modelfs_evictions counter",
            "# TYPE modelfs_evicted_bytes counter",
            "# TYPE modelfs_open_handles gauge",
            "# TYPE modelfs_fuse_errors counter",
            "# TYPE modelfs_chunk_checksum_failures counter",
            "# TYPE modelfs_file_verifications counter",
            "# TYPE modelfs_build info",
            "# TYPE modelfs_load_plans counter",
            "# TYPE modelfs_plan_fetched_bytes counter",
            "# TYPE modelfs_plan_pushed_bytes counter",
            "# TYPE modelfs_plan_unread_bytes counter",
            "# TYPE modelfs_demand_fetched_bytes counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
        for reason in RETRY_REASONS {
            let series = format!("modelfs_retries_total{{reason=\"{reason}\"}}");
            assert!(sample(&text, &series).is_some(), "{series} missing");
        }
        for format in PLAN_FORMATS {
            let series = format!("modelfs_load_plans_total{{format=\"{format}\"}}");
            assert!(sample(&text, &series).is_some(), "{series} missing");
        }
        let buckets =
            text.lines().filter(|l| l.starts_with("modelfs_fetch_duration_seconds_bucket"));
        assert_eq!(buckets.count(), FETCH_BUCKETS.len() + 1, "15 bounds and +Inf");
        let version = format!("modelfs_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        assert!(text.lines().any(|l| l == version));
    }

    /// A private instance, so that the counts are exact whatever other tests do meanwhile.
    fn private() -> &'static Metrics {
        Box::leak(Box::new(Metrics::new()))
    }

    #[tokio::test]
    async fn fetches_are_timed_counted_and_cancellation_is_an_error() {
        let m = private();
        let got = m.timed_fetch(async { Ok::<_, HubError>(Bytes::from_static(b"12345")) }).await;
        assert_eq!(got.unwrap().len(), 5);
        let failed = m.timed_fetch(async { Err::<Bytes, _>(HubError::Offline) }).await;
        assert!(failed.is_err());
        let stalled = tokio::time::timeout(
            Duration::from_millis(10),
            m.timed_fetch(std::future::pending::<Result<Bytes, HubError>>()),
        )
        .await;
        assert!(stalled.is_err());
        let text = m.encode().unwrap();
        let want = [
            ("modelfs_fetches_total{result=\"ok\"}", 1.0),
            ("modelfs_fetches_total{result=\"error\"}", 2.0),
            ("modelfs_fetched_bytes_total", 5.0),
            ("modelfs_fetch_duration_seconds_count", 3.0),
            ("modelfs_fetch_duration_seconds_bucket{le=\"+Inf\"}", 3.0),
        ];
        for (series, value) in want {
            assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
        }
        // The cancelled fetch ran at least the 10 ms of the timeout, and the other two far
        // less than a millisecond each.
        let sum = sample(&text, "modelfs_fetch_duration_seconds_sum").unwrap();
        assert!(sum >= 0.010, "{sum}");
        let fast = sample(&text, "modelfs_fetch_duration_seconds_bucket{le=\"0.001\"}");
        assert_eq!(fast, Some(2.0), "{text}");
    }

    #[test]
    fn counters_and_gauges_show_in_the_exposition() {
        let m = private();
        m.read_bytes(Source::Store, 4096);
        m.read_bytes(Source::Network, 100);
        m.read_bytes(Source::Network, 28);
        m.set_cache_bytes(1 << 40);
        m.evicted(300);
        m.evicted(700);
        m.handle_opened();
        m.handle_opened();
        m.handle_released();
        m.fuse_error(libc::EIO);
        m.fuse_error(libc::EIO);
        m.fuse_error(libc::ETXTBSY);
        m.chunk_checksum_failed();
        m.file_verified(true);
        m.file_verified(false);
        m.file_verified(true);
        m.retry(&HubError::Unavailable("x: HTTP 502 Bad Gateway".into()), false);
        m.retry(&HubError::Unavailable("x: HTTP 502 Bad Gateway".into()), true);
        let text = m.encode().unwrap();
        let want = [
            ("modelfs_read_bytes_total{source=\"store\"}", 4096.0),
            ("modelfs_read_bytes_total{source=\"network\"}", 128.0),
            ("modelfs_cache_bytes", (1u64 << 40) as f64),
            ("modelfs_evictions_total", 2.0),
            ("modelfs_evicted_bytes_total", 1000.0),
            ("modelfs_open_handles", 1.0),
            ("modelfs_fuse_errors_total{errno=\"EIO\"}", 2.0),
            ("modelfs_fuse_errors_total{errno=\"other\"}", 1.0),
            ("modelfs_chunk_checksum_failures_total", 1.0),
            ("modelfs_file_verifications_total{result=\"verified\"}", 2.0),
            ("modelfs_file_verifications_total{result=\"failed\"}", 1.0),
            ("modelfs_retries_total{reason=\"status_5xx\"}", 1.0),
            ("modelfs_retries_total{reason=\"rate_limited\"}", 1.0),
            ("modelfs_retries_total{reason=\"reset\"}", 0.0),
            ("modelfs_fetches_total{result=\"ok\"}", 0.0),
        ];
        for (series, value) in want {
            assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
        }
        assert!(!text.lines().any(|l| l.starts_with("modelfs_cache_bound_bytes ")), "unbounded");
        m.set_cache_bound(Some(50 << 30));
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, "modelfs_cache_bound_bytes"), Some((50u64 << 30) as f64));
        m.set_cache_bound(None);
        let text = m.encode().unwrap();
        assert!(!text.lines().any(|l| l.starts_with("modelfs_cache_bound_bytes ")), "unbounded");
    }

    #[test]
    fn retry_reasons_from_client_messages() {
        let un = |m: &str| HubError::Unavailable(m.to_owned());
        let cases = [
            (un("no complete answer in time"), "timeout"),
            (un("f.bin in org/r@abc: HTTP 503 Service Unavailable"), "status_5xx"),
            (un("f.bin in org/r@abc: HTTP 500 Internal Server Error"), "status_5xx"),
            (un("f.bin in org/r@abc: HTTP 408 Request Timeout"), "timeout"),
            (un("org/r@main: rate limited (HTTP 429)"), "rate_limited"),
            (un("f.bin in org/r@abc: body ended after 10 of 65536 bytes"), "truncated"),
            (un("f.bin in org/r@abc: the CDN answered HTTP 403 Forbidden"), "cdn_denied"),
            (
                un("http://127.0.0.1:1/o/r/resolve/c/f.bin: error sending request: client error \
                    (SendRequest): connection closed before message completed"),
                "reset",
            ),
            (
                un("http://h/x: error sending request: connection error: Connection reset by \
                    peer (os error 104)"),
                "reset",
            ),
            (
                un("http://h/x: error decoding response body: request or response body error: \
                    error reading a body from connection: end of file before message length \
                    reached"),
                "truncated",
            ),
            (un("http://h/x: error sending request: operation timed out"), "timeout"),
            (
                un("http://h/x: error sending request: client error (Connect): tcp connect \
                    error: Connection refused (os error 111)"),
                "connect",
            ),
            (un("http://h/x: something new"), "other"),
            (HubError::Protocol("f.bin: Content-Length 3, expected 4".into()), "protocol"),
            // A file named like a reason does not decide it: the status that follows does.
            (un("HTTP 503.bin in org/r@abc: HTTP 404 Not Found"), "other"),
            (un("timed out.bin in org/r@abc: HTTP 502 Bad Gateway"), "status_5xx"),
        ];
        for (error, want) in cases {
            assert_eq!(retry_reason(&error), want, "{error}");
            assert!(RETRY_REASONS.contains(&want));
        }
    }

    #[test]
    fn errno_labels_are_names_from_a_fixed_set() {
        assert_eq!(errno_name(libc::EIO), "EIO");
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(libc::EROFS), "EROFS");
        assert_eq!(errno_name(libc::ETXTBSY), "other");
        assert_eq!(errno_name(-1), "other");
    }

    #[test]
    fn endpoints_answer_by_path_and_method() {
        let ready = AtomicBool::new(false);
        let status = |m: &Method, p: &str| respond(m, p, &ready).status();
        assert_eq!(status(&Method::GET, "/healthz"), StatusCode::OK);
        assert_eq!(status(&Method::GET, "/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        ready.store(true, Ordering::Release);
        assert_eq!(status(&Method::GET, "/readyz"), StatusCode::OK);
        assert_eq!(status(&Method::HEAD, "/readyz"), StatusCode::OK);
        assert_eq!(status(&Method::POST, "/metrics"), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(status(&Method::GET, "/"), StatusCode::NOT_FOUND);
        let metrics = respond(&Method::GET, "/metrics", &ready);
        assert_eq!(metrics.status(), StatusCode::OK);
        assert_eq!(metrics.headers()[CONTENT_TYPE], OPENMETRICS_CONTENT_TYPE);
        assert!(metrics.body().ends_with("# EOF\n"));
    }
}
