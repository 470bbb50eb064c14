//! [`HubClient`]: the Hub over HTTP, as modelfs needs it — a revision's commit, a commit's
//! file list, and ranges of one file's bytes — with the retry, redirect and auth rules that
//! make those three calls safe to put under a filesystem.
//!
//! Every call has one time budget (`read_timeout`, doc/SEMANTICS.md, "Reads": "never a hang
//! forever"): attempts are retried with jittered exponential backoff until it is spent, and each
//! attempt is itself bounded by what is left of it, so a stalled body cannot outlive the budget.
//! Only answers that can change on a second try (5xx, 429, resets, timeouts, truncated or
//! mismatched range bodies) are retried; "no such repo" or "gated" are answered at once.
//!
//! Redirects are followed by hand, not by reqwest, for two reasons: the token must only ever go
//! to the Hub's own origin (a redirect to the CDN, another host, must not carry it), and the
//! CDN target of a file can be remembered so later ranges of the same file go straight to the
//! CDN instead of paying a Hub round trip per chunk. A remembered target that stops working
//! (signed URLs expire) is forgotten and the Hub is asked again.
//!
//! No byte is returned unless the answer says it is exactly the range asked for, of a file of
//! exactly the expected size: the store above trusts what this returns.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rand::Rng;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, LINK, LOCATION, RANGE,
    RETRY_AFTER,
};
use reqwest::{Response, StatusCode, Url};
use serde::Deserialize;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{
    HubError, LinkEstimate, RangeFetcher, RemoteFile, RepoSource, RevisionInfo, TreeEntry,
};
use crate::manifest::{FileHash, RepoId};

/// Where huggingface_hub goes when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// doc/SEMANTICS.md, "Reads": a read that cannot be answered fails with `EIO` after 60 s by
/// default.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Enough parallel connections per host for read-ahead to fill a fast link (parallel
/// downloaders such as hf_transfer use a similar number), few enough not to be rate limited.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// The Hub answers `/resolve/` with one redirect (to the CDN or to a cache path); 5 leaves room
/// for a proxy or a renamed repo and still stops a loop quickly.
const MAX_REDIRECTS: usize = 5;

/// A tree listing of this many pages (millions of files) is not a model repo; more likely a
/// `Link` loop that escaped the repeat check.
const MAX_TREE_PAGES: usize = 10_000;

/// First retry delay: long enough for a reset connection to be replaced, short enough that
/// one lost packet costs little.
const BACKOFF_START: Duration = Duration::from_millis(100);

/// Longest delay between two attempts, so a Hub that comes back is noticed within seconds.
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// The least time worth starting an attempt with: less cannot bring a chunk from a CDN, so
/// a budget with less left is spent.
const LAST_ATTEMPT: Duration = Duration::from_millis(500);

/// `Retry-After` is obeyed up to this; the call's budget bounds it anyway.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(30);

/// Remembered CDN targets. An entry is ~300 bytes; files open at once are far fewer than this,
/// and a forgotten entry only costs one extra Hub round trip.
const MAX_REMEMBERED_REDIRECTS: usize = 4096;

/// Largest JSON answer read (one tree page, one revision). The Hub's pages are well under
/// 1 MiB; this only stops a misbehaving server from filling memory.
const MAX_JSON_BYTES: usize = 64 << 20;

/// Percent-encode everything in a URL path segment except RFC 3986 unreserved characters, so
/// `/`, spaces, `#`, `?`, `%` and non-ASCII in a revision or file name stay inside their
/// segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// How to reach the Hub.
#[derive(Clone)]
pub struct HubConfig {
    pub endpoint: Url,
    pub token: Option<String>,
    /// Budget for one call, retries included.
    pub read_timeout: Duration,
    /// Idle connections kept per host.
    pub max_connections: usize,
    pub user_agent: String,
}

impl HubConfig {
    /// Defaults for `endpoint`, without a token.
    pub fn new(endpoint: Url) -> Self {
        Self {
            endpoint,
            token: None,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            user_agent: concat!("modelfs/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }

    /// `HF_ENDPOINT` (default <https://huggingface.co>) and [`discover_token`], as
    /// huggingface_hub reads them. An `HF_ENDPOINT` that is not an http(s) URL is reported and
    /// the default is used.
    pub fn from_env() -> Self {
        let mut config = Self::new(endpoint_from(std::env::var("HF_ENDPOINT").ok()));
        config.token = discover_token();
        config
    }
}

fn default_endpoint() -> Url {
    // A constant that parses; a failure here is a bug in this file, caught by the tests.
    Url::parse(DEFAULT_ENDPOINT).expect("DEFAULT_ENDPOINT is a valid URL")
}

fn endpoint_from(value: Option<String>) -> Url {
    let Some(value) = value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) else {
        return default_endpoint();
    };
    match parse_endpoint(&value) {
        Ok(url) => url,
        Err(why) => {
            warn!(endpoint = %value, "HF_ENDPOINT {why}; using {DEFAULT_ENDPOINT}");
            default_endpoint()
        }
    }
}

/// An endpoint as a user writes it (`--endpoint`, `HF_ENDPOINT`, the config file): an http(s)
/// URL with a host. The error says what is wrong, for the user, before any request is made
/// (`localhost:8080` parses as a URL of scheme `localhost`).
pub fn parse_endpoint(value: &str) -> Result<Url, String> {
    match Url::parse(value.trim()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(url),
        _ if !value.contains("://") => {
            Err(format!("is not an http(s) URL (did you mean http://{}?)", value.trim()))
        }
        _ => Err("is not an http(s) URL with a host, e.g. https://huggingface.co".into()),
    }
}

impl fmt::Debug for HubConfig {
    // Hand-written so the token can never reach a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("read_timeout", &self.read_timeout)
            .field("max_connections", &self.max_connections)
            .field("user_agent", &self.user_agent)
            .finish()
    }
}

/// The token huggingface_hub would use: `HF_TOKEN` (or its legacy name
/// `HUGGING_FACE_HUB_TOKEN`), else the token file. The token file is `HF_TOKEN_PATH` when set,
/// else `$HF_HOME/token`, else `$XDG_CACHE_HOME/huggingface/token`, else
/// `~/.cache/huggingface/token` (hf_hub's [`hf_hub::Cache`] location). Values are trimmed;
/// an empty one counts as none.
pub fn discover_token() -> Option<String> {
    discover_token_with(&|name| std::env::var(name).ok(), &|path| {
        std::fs::read_to_string(path).ok()
    })
}

/// [`discover_token`] over an injected environment and file reader, so its order can be tested
/// without touching the process environment.
fn discover_token_with(
    env: &dyn Fn(&str) -> Option<String>,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Option<String> {
    let clean = |s: String| Some(s.trim().to_owned()).filter(|t| !t.is_empty());
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(token) = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
        .into_iter()
        .find_map(|name| env(name).and_then(clean))
    {
        return Some(token);
    }
    // As in huggingface_hub, HF_TOKEN_PATH replaces the default file rather than adding one.
    let path = if let Some(path) = set("HF_TOKEN_PATH") {
        PathBuf::from(path)
    } else if let Some(home) = set("HF_HOME") {
        hf_hub::Cache::new(PathBuf::from(home).join("hub")).token_path()
    } else if let Some(xdg) = set("XDG_CACHE_HOME") {
        PathBuf::from(xdg).join("huggingface").join("token")
    } else {
        hf_hub::Cache::default().token_path()
    };
    read(&path).and_then(clean)
}

/// The Hub over HTTP. One pooled `reqwest::Client` serves every call; cheap to share behind an
/// `Arc`.
pub struct HubClient {
    http: reqwest::Client,
    /// Where API paths are appended; no trailing `/`.
    base: String,
    endpoint: Url,
    /// `Bearer <token>`, marked sensitive; sent only to `endpoint`'s origin.
    auth: Option<HeaderValue>,
    read_timeout: Duration,
    /// Final redirect target of each file already fetched, keyed by (repo, commit, path).
    redirects: Mutex<HashMap<RedirectKey, Url>>,
    /// Moving averages of what requests to remembered (CDN) targets cost.
    link: Mutex<Option<LinkEstimate>>,
    /// Whether the Hub answers at all, and since when it has not.
    reach: Reachability,
}

/// An attempt made while the Hub is unreachable and its outage's budget is spent: one try,
/// long enough for a connection to be refused or made, and for a Hub that is back to answer.
const PROBE_ATTEMPT: Duration = Duration::from_secs(2);

/// Whether the Hub's own host answers, as the requests to it find out.
///
/// A connection that is refused, a name that does not resolve, a connect that times out: the
/// Hub is not there, which is not the same as a Hub that answers 503. Such failures are
/// retried like any other, but **one outage has one budget**: calls that start while the Hub
/// is down get what is left of `read_timeout` counted from the outage's first failure, and
/// once that is spent, a single quick attempt each ([`PROBE_ATTEMPT`]). So a reader that
/// issues two reads, or a `pull` that resolves and then fetches, waits one `read_timeout` in
/// all, not one per call; and the first answer from the Hub (any HTTP status) ends the outage.
/// Lookups that have a commit to fall back on do not wait at all (see `crate::fs`).
struct Reachability {
    down: Mutex<Option<Outage>>,
    /// Woken when an outage starts.
    changed: tokio::sync::Notify,
}

#[derive(Clone, Copy)]
struct Outage {
    since: Instant,
}

impl Reachability {
    fn new() -> Self {
        Self { down: Mutex::new(None), changed: tokio::sync::Notify::new() }
    }

    fn outage(&self) -> Option<Outage> {
        self.down.lock().ok().and_then(|d| *d)
    }

    /// A request to the Hub could not even connect.
    fn failed(&self, endpoint: &Url, cause: &str, read_timeout: Duration) {
        let Ok(mut down) = self.down.lock() else { return };
        if down.is_none() {
            *down = Some(Outage { since: Instant::now() });
            warn!(
                endpoint = %redact(endpoint),
                cause,
                "the Hub does not answer; retrying for up to {} s",
                read_timeout.as_secs()
            );
            crate::metrics::get().set_hub_reachable(false);
            self.changed.notify_waiters();
        }
    }

    /// The Hub answered (whatever it said).
    fn answered(&self, endpoint: &Url) {
        let Ok(mut down) = self.down.lock() else { return };
        if let Some(outage) = down.take() {
            tracing::info!(
                endpoint = %redact(endpoint),
                "the Hub answers again after {:.1} s",
                outage.since.elapsed().as_secs_f64()
            );
            crate::metrics::get().set_hub_reachable(true);
        }
    }

    async fn wait_until_down(&self) {
        loop {
            let changed = self.changed.notified();
            if self.outage().is_some() {
                return;
            }
            changed.await;
        }
    }
}

/// Weight of the newest sample in [`HubClient::link`]'s moving averages: a few requests
/// follow a change of link, one odd request does not swing it.
const LINK_EWMA_WEIGHT: f64 = 0.2;

/// A body shorter than this says little about a connection's rate (it is mostly latency).
const LINK_MIN_SAMPLE_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RedirectKey {
    repo: RepoId,
    commit: String,
    path: String,
}

impl RedirectKey {
    fn of(file: &RemoteFile) -> Self {
        Self { repo: file.repo.clone(), commit: file.commit.clone(), path: file.path.clone() }
    }
}

impl HubClient {
    pub fn new(config: HubConfig) -> Result<Self, HubError> {
        let endpoint = config.endpoint;
        if !matches!(endpoint.scheme(), "http" | "https") || !endpoint.has_host() {
            return Err(HubError::Protocol(format!(
                "endpoint {} is not an http(s) URL",
                redact(&endpoint)
            )));
        }
        let auth = match config.token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            Some(token) => {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        HubError::Denied(
                            "the token has characters an HTTP header cannot carry".into(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent)
            // Redirects are followed by hand: see the module comment.
            .redirect(reqwest::redirect::Policy::none())
            // HTTP/1.1 with one connection per in-flight range: a single HTTP/2 connection
            // would multiplex every read-ahead range over one TCP flow and cap throughput at
            // what one congestion window carries, which is what parallel downloaders avoid.
            .http1_only()
            .pool_max_idle_per_host(config.max_connections)
            .tcp_nodelay(true)
            .connect_timeout(config.read_timeout.min(Duration::from_secs(10)))
            // Catch a stall (no byte for this long) well before the call's budget is gone, so
            // the call still has time to retry on a fresh connection.
            .read_timeout(stall_timeout(config.read_timeout))
            .build()
            .map_err(|e| HubError::Unavailable(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: endpoint.as_str().trim_end_matches('/').to_owned(),
            endpoint,
            auth,
            read_timeout: config.read_timeout,
            redirects: Mutex::new(HashMap::new()),
            link: Mutex::new(None),
            reach: Reachability::new(),
        })
    }

    /// The time budget of a call starting now: `read_timeout`, or, while the Hub is
    /// unreachable, what is left of the outage's (see [`Reachability`]).
    fn budget(&self) -> Budget {
        let now = Instant::now();
        match self.reach.outage() {
            Some(outage) if outage.since + self.read_timeout > now + PROBE_ATTEMPT => {
                Budget::until(outage.since + self.read_timeout)
            }
            Some(_) => Budget::probe(PROBE_ATTEMPT),
            None => Budget::new(self.read_timeout),
        }
    }

    /// Whether the Hub is known not to answer right now.
    pub fn is_unreachable(&self) -> bool {
        self.reach.outage().is_some()
    }

    /// Ask the Hub once whether it answers (`HEAD` of the endpoint, no token, nothing read):
    /// at a mount's start, so that the log says at once when the endpoint is dead (the mount
    /// still starts and serves the store). Any HTTP answer counts.
    pub async fn probe(&self) -> Result<(), HubError> {
        let url = self.endpoint.clone();
        let attempt = async {
            match self.http.head(url.clone()).send().await {
                Ok(_) => {
                    self.answered(&url);
                    Ok(())
                }
                Err(e) => Err(self.transport_failure(e, &url)),
            }
        };
        match Budget::probe(self.read_timeout.min(Duration::from_secs(10))).run(attempt).await {
            Ok(()) => Ok(()),
            Err(Failure::Fatal(e) | Failure::Retry { error: e, .. }) => Err(e),
        }
    }

    /// A request that got no answer at all. To the Hub itself, a connect-level failure starts
    /// (or continues) an outage; an HTTP answer is noted by [`Self::answered`].
    fn transport_failure(&self, e: reqwest::Error, url: &Url) -> Failure {
        if e.is_connect() && self.is_hub(url) {
            let cause = root_cause(&e);
            self.reach.failed(&self.endpoint, &cause, self.read_timeout);
            return Failure::Retry {
                error: HubError::Unavailable(format!(
                    "the Hub at {} does not answer ({cause})",
                    redact(&self.endpoint)
                )),
                after: None,
            };
        }
        transport(e, url)
    }

    fn answered(&self, url: &Url) {
        if self.is_hub(url) {
            self.reach.answered(&self.endpoint);
        }
    }

    /// Whether `url` is the Hub itself (same scheme, host and port), the only place the token
    /// may go.
    fn is_hub(&self, url: &Url) -> bool {
        url.origin() == self.endpoint.origin()
    }

    fn url(&self, segments: &[&str], query: &str) -> Result<Url, HubError> {
        let mut s = self.base.clone();
        for segment in segments {
            // `.` and `..` (even percent-encoded) would be normalised away by the URL parser
            // and address another resource; no valid name is one.
            if segment.is_empty() || *segment == "." || *segment == ".." {
                return Err(HubError::NotFound(format!("invalid name component {segment:?}")));
            }
            s.push('/');
            s.extend(utf8_percent_encode(segment, SEGMENT));
        }
        s.push_str(query);
        Url::parse(&s).map_err(|e| HubError::Protocol(format!("cannot build a URL: {e}")))
    }

    fn get(&self, url: &Url, range: Option<&HeaderValue>) -> reqwest::RequestBuilder {
        let mut request = self.http.get(url.clone());
        if let Some(range) = range {
            request = request.header(RANGE, range.clone());
        }
        if let Some(auth) = &self.auth {
            if self.is_hub(url) {
                request = request.header(AUTHORIZATION, auth.clone());
            }
        }
        request
    }

    /// GET `url`, following up to [`MAX_REDIRECTS`] redirects. Returns the URL that answered,
    /// its answer, and how many redirects led there.
    async fn get_following(
        &self,
        mut url: Url,
        range: Option<&HeaderValue>,
    ) -> Result<(Url, Response, usize), Failure> {
        for hops in 0..=MAX_REDIRECTS {
            let response =
                self.get(&url, range).send().await.map_err(|e| self.transport_failure(e, &url))?;
            self.answered(&url);
            if !is_redirect(response.status()) {
                return Ok((url, response, hops));
            }
            let location =
                response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(
                    || {
                        fatal_protocol(format!(
                            "{} redirected ({}) without a usable Location",
                            redact(&url),
                            response.status()
                        ))
                    },
                )?;
            let next = url.join(location).map_err(|e| {
                fatal_protocol(format!("{} redirected to an invalid URL: {e}", redact(&url)))
            })?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(fatal_protocol(format!(
                    "{} redirected to a {} URL",
                    redact(&url),
                    next.scheme()
                )));
            }
            debug!(from = %redact(&url), to = %redact(&next), status = %response.status(), "redirect");
            url = next;
        }
        Err(fatal_protocol(format!(
            "more than {MAX_REDIRECTS} redirects, last to {}",
            redact(&url)
        )))
    }

    /// Run `attempt` until it succeeds, fails for good, or the call's budget is spent.
    async fn with_retries<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, HubError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut budget = self.budget();
        loop {
            match budget.run(attempt()).await {
                Ok(value) => return Ok(value),
                Err(failure) => budget.after_failure(failure, what).await?,
            }
        }
    }

    async fn resolve_once(
        &self,
        url: &Url,
        repo: &RepoId,
        rev: &str,
    ) -> Result<RevisionInfo, Failure> {
        let (_, response, _) = self.get_following(url.clone(), None).await?;
        let target = Target { repo, rev: Some(rev), path: None };
        if !response.status().is_success() {
            return Err(self.status_failure(&response, &target));
        }
        let body = read_limited(response, MAX_JSON_BYTES).await?;
        parse_revision(&body, repo, rev).map_err(Failure::Fatal)
    }

    /// One page of the tree listing: its entries and the next page's URL.
    async fn tree_page_once(
        &self,
        url: &Url,
        repo: &RepoId,
        commit: &str,
    ) -> Result<(Vec<TreeEntry>, Option<Url>), Failure> {
        let (final_url, response, _) = self.get_following(url.clone(), None).await?;
        let target = Target { repo, rev: Some(commit), path: None };
        if !response.status().is_success() {
            return Err(self.status_failure(&response, &target));
        }
        let next = next_page(response.headers(), &final_url).map_err(Failure::Fatal)?;
        let body = read_limited(response, MAX_JSON_BYTES).await?;
        let entries = parse_tree_page(&body, repo).map_err(Failure::Fatal)?;
        Ok((entries, next))
    }

    async fn list_files_inner(
        &self,
        repo: &RepoId,
        commit: &str,
    ) -> Result<Vec<TreeEntry>, HubError> {
        let first = self.url(
            &["api", "models", &repo.org, &repo.name, "tree", commit],
            "?recursive=true&expand=false",
        )?;
        let what = format!("listing {repo} at {commit}");
        let mut files = Vec::new();
        let mut pages = HashSet::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            if pages.len() >= MAX_TREE_PAGES {
                return Err(HubError::Protocol(format!(
                    "{what}: more than {MAX_TREE_PAGES} pages"
                )));
            }
            if !pages.insert(url.clone()) {
                return Err(HubError::Protocol(format!(
                    "{what}: page {} is linked twice",
                    redact(&url)
                )));
            }
            // The budget is per page: a long listing of a healthy Hub must not time out, and
            // a failing page still fails within one budget.
            let (entries, following) =
                self.with_retries(&what, || self.tree_page_once(&url, repo, commit)).await?;
            files.extend(entries);
            if files.len() > MAX_TREE_FILES {
                return Err(HubError::Protocol(format!(
                    "{what}: more than {MAX_TREE_FILES} files"
                )));
            }
            next = following;
        }
        // Duplicates and file/directory clashes across pages are left for Manifest::build.
        Ok(files)
    }

    fn remembered(&self, key: &RedirectKey) -> Option<Url> {
        self.redirects.lock().ok()?.get(key).cloned()
    }

    fn remember(&self, key: RedirectKey, target: Url) {
        if let Ok(mut map) = self.redirects.lock() {
            if map.len() >= MAX_REMEMBERED_REDIRECTS && !map.contains_key(&key) {
                // Any entry will do: losing one costs a single Hub round trip.
                if let Some(victim) = map.keys().next().cloned() {
                    map.remove(&victim);
                }
            }
            map.insert(key, target);
        }
    }

    /// Fold one request to a remembered target into [`Self::link`]: its time to headers, and
    /// its rate if its body was long enough to say.
    fn observe_link(&self, first_byte: Duration, bytes: u64, flowing: Duration) {
        let Ok(mut link) = self.link.lock() else { return };
        let rate = (bytes >= LINK_MIN_SAMPLE_BYTES && !flowing.is_zero())
            .then(|| bytes as f64 / flowing.as_secs_f64());
        let ewma = |old: f64, new: f64| old + LINK_EWMA_WEIGHT * (new - old);
        *link = match (*link, rate) {
            (None, Some(rate)) => Some(LinkEstimate { first_byte, bytes_per_sec: rate }),
            (None, None) => None,
            (Some(old), rate) => Some(LinkEstimate {
                first_byte: Duration::from_secs_f64(ewma(
                    old.first_byte.as_secs_f64(),
                    first_byte.as_secs_f64(),
                )),
                bytes_per_sec: rate.map_or(old.bytes_per_sec, |r| ewma(old.bytes_per_sec, r)),
            }),
        };
    }

    fn forget(&self, key: &RedirectKey) {
        if let Ok(mut map) = self.redirects.lock() {
            map.remove(key);
        }
    }

    async fn fetch_once(
        &self,
        file: &RemoteFile,
        range: &Range<u64>,
        hub_url: &Url,
        out: &mut Pieces<'_>,
    ) -> Result<(), Failure> {
        let range_header =
            &HeaderValue::from_str(&format!("bytes={}-{}", range.start, range.end - 1))
                .map_err(|e| fatal_protocol(format!("range header: {e}")))?;
        let key = RedirectKey::of(file);
        let target = Target { repo: &file.repo, rev: Some(&file.commit), path: Some(&file.path) };
        if let Some(remembered) = self.remembered(&key) {
            let sent = Instant::now();
            match self.get(&remembered, Some(range_header)).send().await {
                Ok(response)
                    if matches!(response.status().as_u16(), 403 | 404 | 410)
                        || is_redirect(response.status()) =>
                {
                    debug!(url = %redact(&remembered), status = %response.status(),
                           "remembered target stopped working; asking the Hub again");
                    self.forget(&key);
                }
                Ok(response) => {
                    let before = *out.delivered;
                    out.first_body = None;
                    let answer = self.read_range(response, file, range, &target, out).await;
                    // A CDN may send its headers before it has the bytes: the first byte of
                    // the body is what the reader waits for.
                    if let Some(first) = out.first_body {
                        let bytes = *out.delivered - before;
                        self.observe_link(first - sent, bytes, first.elapsed());
                    }
                    if answer.is_err() {
                        // Whatever went wrong, the next attempt starts from the Hub.
                        self.forget(&key);
                    }
                    return answer;
                }
                Err(e) => {
                    debug!(url = %redact(&remembered), "remembered target unreachable ({}); asking the Hub again",
                           describe(e));
                    self.forget(&key);
                }
            }
        }
        let (final_url, response, hops) =
            self.get_following(hub_url.clone(), Some(range_header)).await?;
        if hops > 0 && matches!(response.status(), StatusCode::PARTIAL_CONTENT | StatusCode::OK) {
            self.remember(key, final_url);
        }
        self.read_range(response, file, range, &target, out).await
    }

    /// Check an answer to a range request and hand exactly its bytes to `out`.
    async fn read_range(
        &self,
        response: Response,
        file: &RemoteFile,
        range: &Range<u64>,
        target: &Target<'_>,
        out: &mut Pieces<'_>,
    ) -> Result<(), Failure> {
        let len = range.end - range.start;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let header = response.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok());
                let asked = (range.start, range.end - 1, Some(file.size));
                match header.and_then(parse_content_range) {
                    Some(got) if got == asked => {}
                    _ => {
                        return Err(retry_protocol(format!(
                            "{target}: asked bytes {}-{}/{}, got Content-Range {:?}",
                            range.start,
                            range.end - 1,
                            file.size,
                            header.unwrap_or("(none)")
                        )))
                    }
                }
                read_exact(response, len, target, out).await
            }
            StatusCode::OK => {
                if *range != (0..file.size) {
                    return Err(retry_protocol(format!(
                        "{target}: the whole file (HTTP 200) was sent for bytes {}-{}",
                        range.start,
                        range.end - 1
                    )));
                }
                read_exact(response, file.size, target, out).await
            }
            _ => Err(self.status_failure(&response, target)),
        }
    }

    /// What a non-success status means, for the resource described by `target`.
    fn status_failure(&self, response: &Response, target: &Target<'_>) -> Failure {
        let status = response.status();
        let from_hub = self.is_hub(response.url());
        let code = response.headers().get("x-error-code").and_then(|v| v.to_str().ok());
        match status.as_u16() {
            401 | 403 if from_hub => match code {
                Some("GatedRepo") => Failure::Fatal(HubError::Denied(format!(
                    "{} is gated and the token does not give access",
                    target.repo
                ))),
                // The Hub answers 401 rather than 404 for repos it will not admit exist.
                Some("RepoNotFound") if status == StatusCode::UNAUTHORIZED => {
                    Failure::Fatal(HubError::NotFound(format!("repo {}", target.repo)))
                }
                _ => Failure::Fatal(HubError::Denied(format!("{target} (HTTP {status})"))),
            },
            // A CDN that refuses a URL the Hub just signed: ask the Hub for a fresh one.
            401 | 403 => Failure::Retry {
                error: HubError::Unavailable(format!("{target}: the CDN answered HTTP {status}")),
                after: None,
            },
            404 | 410 => Failure::Fatal(HubError::NotFound(match code {
                Some("RepoNotFound") => format!("repo {}", target.repo),
                Some("RevisionNotFound") => {
                    format!("revision {} of {}", target.rev.unwrap_or("?"), target.repo)
                }
                _ => target.to_string(),
            })),
            416 => Failure::Fatal(HubError::Protocol(format!(
                "{target}: range not satisfiable (HTTP 416); the file is not the size the listing said"
            ))),
            429 => Failure::Retry {
                error: HubError::Unavailable(format!("{target}: rate limited (HTTP 429)")),
                after: Some(retry_after(response.headers())),
            },
            408 | 500..=599 => Failure::Retry {
                error: HubError::Unavailable(format!("{target}: HTTP {status}")),
                after: None,
            },
            _ => Failure::Fatal(HubError::Protocol(format!("{target}: unexpected HTTP {status}"))),
        }
    }
}

impl RepoSource for HubClient {
    fn resolve<'a>(
        &'a self,
        repo: &'a RepoId,
        rev: &'a str,
    ) -> BoxFuture<'a, Result<RevisionInfo, HubError>> {
        Box::pin(async move {
            let url = self.url(&["api", "models", &repo.org, &repo.name, "revision", rev], "")?;
            let what = format!("resolving {repo}@{rev}");
            self.with_retries(&what, || self.resolve_once(&url, repo, rev)).await
        })
    }

    fn list_files<'a>(
        &'a self,
        repo: &'a RepoId,
        commit: &'a str,
    ) -> BoxFuture<'a, Result<Vec<TreeEntry>, HubError>> {
        Box::pin(self.list_files_inner(repo, commit))
    }

    fn unreachable(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.reach.wait_until_down())
    }
}

impl RangeFetcher for HubClient {
    fn link(&self) -> Option<LinkEstimate> {
        self.link.lock().ok().and_then(|link| *link)
    }

    fn fetch_range<'a>(
        &'a self,
        file: &'a RemoteFile,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, HubError>> {
        Box::pin(async move {
            let len = range.end.saturating_sub(range.start);
            let mut whole = None;
            self.fetch_pieces(file, range, len, &mut |bytes| whole = Some(bytes)).await?;
            whole.ok_or_else(|| HubError::Protocol("a range ended without its bytes".into()))
        })
    }

    /// One request for the whole range; its body is cut into pieces as it arrives. An attempt
    /// that fails after delivering pieces is followed by one for the rest only, and delivered
    /// pieces count as progress: the time budget starts over after each attempt that delivered
    /// any, so a long range on a slow link is bounded by time without progress, not in total.
    fn fetch_pieces<'a>(
        &'a self,
        file: &'a RemoteFile,
        range: Range<u64>,
        piece: u64,
        sink: &'a mut (dyn FnMut(Bytes) + Send),
    ) -> BoxFuture<'a, Result<(), HubError>> {
        Box::pin(async move {
            if range.start >= range.end || range.end > file.size || piece == 0 {
                return Err(HubError::Protocol(format!(
                    "range {range:?} of {} ({} bytes) in pieces of {piece}",
                    file.path, file.size
                )));
            }
            let mut segments =
                vec![file.repo.org.as_str(), &file.repo.name, "resolve", &file.commit];
            segments.extend(file.path.split('/'));
            let hub_url = self.url(&segments, "")?;
            let what = format!("fetching {} of {}@{}", file.path, file.repo, file.commit);
            let mut budget = self.budget();
            let mut next = range.start;
            loop {
                let before = next;
                let mut out =
                    Pieces { piece, sink: &mut *sink, delivered: &mut next, first_body: None };
                let rest = before..range.end;
                let answer = budget.run(self.fetch_once(file, &rest, &hub_url, &mut out)).await;
                match answer {
                    Ok(()) => return Ok(()),
                    Err(failure) => {
                        if next > before {
                            budget = self.budget();
                        }
                        budget.after_failure(failure, &what).await?;
                    }
                }
            }
        })
    }
}

/// Where a body's bytes go: cut into pieces of `piece` bytes (the last one of the range may
/// be shorter), each handed to `sink` whole, in order, the moment it is complete.
/// `delivered` is the file offset up to which pieces have been handed over.
struct Pieces<'s> {
    piece: u64,
    sink: &'s mut (dyn FnMut(Bytes) + Send),
    delivered: &'s mut u64,
    /// When the first byte of the current answer's body arrived.
    first_body: Option<Instant>,
}

/// The resource a request is about, for error messages.
struct Target<'a> {
    repo: &'a RepoId,
    rev: Option<&'a str>,
    path: Option<&'a str>,
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path, self.rev) {
            (Some(path), Some(rev)) => write!(f, "{path} in {}@{rev}", self.repo),
            (Some(path), None) => write!(f, "{path} in {}", self.repo),
            (None, Some(rev)) => write!(f, "{}@{rev}", self.repo),
            (None, None) => write!(f, "{}", self.repo),
        }
    }
}

/// How one attempt failed.
#[derive(Debug)]
enum Failure {
    /// Another attempt would get the same answer.
    Fatal(HubError),
    /// Another attempt may succeed, after `after` if the server said so.
    Retry { error: HubError, after: Option<Duration> },
}

fn fatal_protocol(message: String) -> Failure {
    Failure::Fatal(HubError::Protocol(message))
}

fn retry_protocol(message: String) -> Failure {
    Failure::Retry { error: HubError::Protocol(message), after: None }
}

fn transport(e: reqwest::Error, url: &Url) -> Failure {
    Failure::Retry {
        error: HubError::Unavailable(format!("{}: {}", redact(url), describe(e))),
        after: None,
    }
}

/// The innermost cause of `e`, the one a person can act on ("Connection refused (os error
/// 111)", "failed to lookup address information: Name or service not known").
fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// A reqwest error and its causes, without the URL (which may carry a CDN signature).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// `url` without its query and fragment: CDN URLs carry signatures there, which do not belong
/// in logs or error messages.
fn redact(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// How long to wait before retrying a stall: a quarter of the budget (so a stalled attempt
/// leaves room for retries), between 250 ms and 20 s.
fn stall_timeout(read_timeout: Duration) -> Duration {
    (read_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(20))
}

/// How long a 429 asks us to wait: `Retry-After` in seconds (the Hub never sends the
/// HTTP-date form) or the reset time of the IETF `RateLimit` header the Hub sends since late
/// 2025 (`"api";r=0;t=55`), whichever is later, since both mean "not before". Capped at
/// [`RETRY_AFTER_CAP`]; the normal backoff start when neither is there or readable.
fn retry_after(headers: &HeaderMap) -> Duration {
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let reset = headers
        .get_all(RATELIMIT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(ratelimit_reset)
        .max();
    match retry_after.max(reset) {
        Some(secs) => Duration::from_secs(secs).min(RETRY_AFTER_CAP),
        None => BACKOFF_START,
    }
}

/// The `RateLimit` response header (draft-ietf-httpapi-ratelimit-headers-09), as the Hub
/// sends it with a 429: a list of `"<policy>";r=<remaining>;t=<seconds to reset>`. Not in
/// the `http` crate's list of names.
const RATELIMIT: &str = "ratelimit";

/// Seconds until the exhausted quota of one `RateLimit` value resets: the largest `t` among
/// the items whose remaining `r` is 0 (the quota that caused the 429), or among all items when
/// none says so. `None` when no item has a readable `t`.
fn ratelimit_reset(value: &str) -> Option<u64> {
    let mut exhausted = None;
    let mut any = None;
    // Items are separated by `,` and parameters by `;`; policy names are quoted tokens in
    // practice, so a comma or semicolon inside quotes is not expected and would only make
    // one item unreadable, not the others.
    for item in value.split(',') {
        let mut remaining = None;
        let mut reset = None;
        for param in item.split(';').skip(1) {
            let Some((key, val)) = param.split_once('=') else { continue };
            let val = val.trim();
            if !(1..=19).contains(&val.len()) || !val.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            match key.trim() {
                "r" => remaining = val.parse::<u64>().ok(),
                "t" => reset = val.parse::<u64>().ok(),
                _ => {}
            }
        }
        if let Some(t) = reset {
            any = any.max(Some(t));
            if remaining == Some(0) {
                exhausted = exhausted.max(Some(t));
            }
        }
    }
    exhausted.or(any)
}

#[cfg(test)]
mod retry_after_tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn ratelimit_values_as_the_hub_sends_them() {
        assert_eq!(ratelimit_reset(r#""api";r=0;t=55"#), Some(55));
        assert_eq!(ratelimit_reset(r#""api";r=489;t=189"#), Some(189));
        assert_eq!(ratelimit_reset(r#""api";r=3;t=100, "resolvers";r=0;t=7"#), Some(7));
        assert_eq!(ratelimit_reset(r#""a";r=0;t=7, "b";r=0;t=9"#), Some(9));
        assert_eq!(ratelimit_reset(r#""api" ; r = 0 ; t = 12"#), Some(12));
        for bad in ["", r#""api";r=0"#, r#""api";t=-1"#, r#""api";t=1.5"#, "t=5", "garbage"] {
            assert_eq!(ratelimit_reset(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_takes_the_later_of_both_headers_capped() {
        assert_eq!(retry_after(&headers(&[])), BACKOFF_START);
        assert_eq!(retry_after(&headers(&[("retry-after", "3")])), Duration::from_secs(3));
        assert_eq!(
            retry_after(&headers(&[
                ("ratelimit", r#""api";r=0;t=12"#),
                ("ratelimit-policy", r#""fixed window";"api";q=500;w=300"#),
            ])),
            Duration::from_secs(12)
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2"), ("ratelimit", r#""api";r=0;t=4"#)])),
            Duration::from_secs(4)
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "9"), ("ratelimit", r#""api";r=0;t=4"#)])),
            Duration::from_secs(9)
        );
        assert_eq!(
            retry_after(&headers(&[("ratelimit", r#""api";r=0;t=86400"#)])),
            RETRY_AFTER_CAP
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), BACKOFF_START);
    }

    proptest! {
        #[test]
        fn ratelimit_round_trips(r in 0u64..1_000_000, t in 0u64..1_000_000, name in "[a-z]{1,10}") {
            prop_assert_eq!(ratelimit_reset(&format!("\"{name}\";r={r};t={t}")), Some(t));
        }

        #[test]
        fn ratelimit_never_panics(s in "\\PC{0,60}") {
            let _ = ratelimit_reset(&s);
        }
    }
}

/// Delay before attempt `failures + 1`: exponential from [`BACKOFF_START`], capped at
/// [`BACKOFF_CAP`], with "equal jitter" (a random point in the upper half) so that many readers
/// failing together do not retry in lockstep.
fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_START.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let ceiling = exp.min(BACKOFF_CAP);
    let half = ceiling / 2;
    half + half.mul_f64(rand::thread_rng().gen::<f64>())
}

/// The time budget of one call and what its attempts have seen.
struct Budget {
    start: Instant,
    deadline: Instant,
    failures: u32,
    /// One attempt only: a failure is the answer.
    single: bool,
}

impl Budget {
    fn new(limit: Duration) -> Self {
        Self::until(Instant::now() + limit)
    }

    fn until(deadline: Instant) -> Self {
        Self { start: Instant::now(), deadline, failures: 0, single: false }
    }

    fn probe(limit: Duration) -> Self {
        Self { single: true, ..Self::new(limit) }
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// One attempt, cut off when the budget ends.
    async fn run<T>(
        &self,
        attempt: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.remaining(), attempt).await {
            Ok(answer) => answer,
            Err(_) => Err(Failure::Retry {
                error: HubError::Unavailable("no complete answer in time".into()),
                after: None,
            }),
        }
    }

    /// After a failed attempt: wait and return `Ok` to try again, or return the error to give.
    async fn after_failure(&mut self, failure: Failure, what: &str) -> Result<(), HubError> {
        let (error, after) = match failure {
            Failure::Fatal(error) => return Err(error),
            Failure::Retry { error, after } => (error, after),
        };
        self.failures += 1;
        let remaining = self.remaining();
        // Our own backoff is shortened so that one last attempt still fits in the budget: a
        // fault that clears just before the deadline is then served, and `EIO` comes only
        // when the budget is really spent. A wait the server asked for is not: retrying
        // before it would only be refused again.
        let wait = match after {
            Some(after) => after,
            None => backoff(self.failures).min(remaining.saturating_sub(LAST_ATTEMPT)),
        };
        if self.single || wait >= remaining || remaining.saturating_sub(wait) < LAST_ATTEMPT {
            let spent = self.start.elapsed().as_secs_f64();
            let tail = format!("{} attempts in {spent:.1} s", self.failures);
            return Err(match error {
                HubError::Protocol(m) => HubError::Protocol(format!("{what}: {m} ({tail})")),
                HubError::Unavailable(m) => HubError::Unavailable(format!("{what}: {m} ({tail})")),
                other => HubError::Unavailable(format!("{what}: {other} ({tail})")),
            });
        }
        debug!(
            attempt = self.failures,
            wait_ms = wait.as_millis() as u64,
            "{what}: {error}; retrying"
        );
        crate::metrics::get().retry(&error, after.is_some());
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

/// Read a whole body, failing (retryably) if it is longer than `limit`.
async fn read_limited(mut response: Response, limit: usize) -> Result<Bytes, Failure> {
    let url = response.url().clone();
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(e, &url))? {
        if body.len() + chunk.len() > limit {
            return Err(fatal_protocol(format!("{}: answer over {limit} bytes", redact(&url))));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Read a body that must be exactly `expected` bytes into `out`'s pieces; anything else is
/// retryable. A piece is handed over only when complete: a body that breaks off leaves the
/// pieces before the break delivered and the partial one dropped.
async fn read_exact(
    mut response: Response,
    expected: u64,
    target: &Target<'_>,
    out: &mut Pieces<'_>,
) -> Result<(), Failure> {
    let url = response.url().clone();
    if let Some(declared) = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if declared != expected {
            return Err(retry_protocol(format!(
                "{target}: Content-Length {declared}, expected {expected}"
            )));
        }
    }
    let piece = usize::try_from(out.piece.min(expected))
        .map_err(|_| fatal_protocol(format!("{target}: {expected} bytes do not fit in memory")))?;
    let mut left = expected;
    let mut body = BytesMut::with_capacity(piece);
    while let Some(mut chunk) = response.chunk().await.map_err(|e| transport(e, &url))? {
        out.first_body.get_or_insert_with(Instant::now);
        if chunk.len() as u64 > left {
            return Err(retry_protocol(format!("{target}: more than the {expected} bytes asked")));
        }
        left -= chunk.len() as u64;
        while !chunk.is_empty() {
            // The piece being filled: a full piece, or what is left of the body if less.
            let want =
                piece.min(body.len() + usize::try_from(left).unwrap_or(usize::MAX) + chunk.len());
            let take = (want - body.len()).min(chunk.len());
            body.extend_from_slice(&chunk.split_to(take));
            if body.len() == want {
                *out.delivered += want as u64;
                (out.sink)(body.split().freeze());
                body.reserve(piece.min(usize::try_from(left).unwrap_or(usize::MAX) + chunk.len()));
            }
        }
    }
    if left != 0 {
        return Err(Failure::Retry {
            error: HubError::Unavailable(format!(
                "{target}: body ended after {} of {expected} bytes",
                expected - left
            )),
            after: None,
        });
    }
    Ok(())
}

#[derive(Deserialize)]
struct RawRevision {
    sha: Option<String>,
    pipeline_tag: Option<String>,
    private: Option<bool>,
    /// `false`, or how access is granted (`"auto"`, `"manual"`).
    gated: Option<serde_json::Value>,
}

impl RawRevision {
    /// Whether only some tokens may read the repo; an answer that does not say is taken as
    /// restricted, the side that cannot widen access.
    fn restricted(&self) -> bool {
        let public = self.private == Some(false)
            && matches!(self.gated, Some(serde_json::Value::Bool(false)));
        !public
    }
}

fn parse_revision(body: &[u8], repo: &RepoId, rev: &str) -> Result<RevisionInfo, HubError> {
    let raw: RawRevision = serde_json::from_slice(body).map_err(|e| {
        HubError::Protocol(format!("revision {rev} of {repo}: not the expected JSON: {e}"))
    })?;
    let restricted = raw.restricted();
    match raw.sha {
        Some(sha) if is_lower_hex(&sha, 40) => {
            Ok(RevisionInfo { restricted, commit: sha, pipeline_tag: raw.pipeline_tag })
        }
        other => Err(HubError::Protocol(format!(
            "revision {rev} of {repo}: sha {other:?} is not a 40-hex commit"
        ))),
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Largest file size a listing may give: 2^53 bytes (8 PiB). No file on the Hub comes near it
/// (LFS caps files at 50 GB), a JSON number above it cannot be exact for the many parsers that
/// read numbers as doubles, and it keeps every `offset + length` computed from a size far from
/// overflowing `u64` or the kernel's signed `off_t`.
pub const MAX_FILE_SIZE: u64 = 1 << 53;

/// Most files one listing may have: 20 times the 100k files per repo the Hub recommends as
/// its limit. Bounds what a hostile or looping listing can make us hold (~100 bytes a file).
pub const MAX_TREE_FILES: usize = 2_000_000;

/// Skipped entries of one page logged one by one; the rest are counted in a single line, so a
/// page of a million bad entries costs a few log lines, not a million.
const MAX_SKIP_WARNINGS: usize = 20;

/// Longest piece of Hub-supplied text (a path, an oid, a parser message quoting the input)
/// put into a log line or an error: a 4 MB file name must not become a 4 MB log line.
const MAX_QUOTED_BYTES: usize = 200;

/// `s`, cut to [`MAX_QUOTED_BYTES`] on a character boundary, with its full length when cut.
fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_QUOTED_BYTES {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = MAX_QUOTED_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}... ({} bytes)", &s[..end], s.len()))
}

/// One page of a tree listing (`/api/models/{repo}/tree/{rev}`): the body must be a JSON
/// array, or the whole page is a [`HubError::Protocol`] (invalid UTF-8, bad syntax, nesting
/// deeper than serde_json's limit of 128, trailing bytes). Within it, every element that is a
/// servable file becomes a [`TreeEntry`]; directories are left out silently, and any other
/// element (missing or mistyped fields, unsafe or overlong path, size over
/// [`MAX_FILE_SIZE`], malformed hash) is skipped with a warning.
///
/// Elements are converted one at a time as the array is read, so memory is the entries kept,
/// not a parsed copy of the page. Paths are checked here with
/// [`crate::names::valid_repo_path`]; duplicates and file/directory clashes between entries
/// are left to [`crate::manifest::Manifest::build`], the one place that decides them.
pub fn parse_tree_page(body: &[u8], repo: &RepoId) -> Result<Vec<TreeEntry>, HubError> {
    let bad = |e: serde_json::Error| {
        HubError::Protocol(format!(
            "tree page of {repo} is not a JSON array of entries: {}",
            clip(&e.to_string())
        ))
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let files =
        serde::Deserializer::deserialize_seq(&mut de, TreePageVisitor { repo }).map_err(bad)?;
    de.end().map_err(bad)?;
    Ok(files)
}

struct TreePageVisitor<'r> {
    repo: &'r RepoId,
}

impl<'de> serde::de::Visitor<'de> for TreePageVisitor<'_> {
    type Value = Vec<TreeEntry>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of tree entries")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let repo = self.repo;
        let mut files = Vec::new();
        let mut skipped = 0usize;
        while let Some(value) = seq.next_element::<serde_json::Value>()? {
            match parse_tree_entry(value) {
                Ok(Some(entry)) => files.push(entry),
                Ok(None) => {}
                Err(reason) => {
                    skipped += 1;
                    if skipped <= MAX_SKIP_WARNINGS {
                        warn!(%repo, "skipping tree entry: {}", clip(&reason));
                    }
                }
            }
        }
        if skipped > MAX_SKIP_WARNINGS {
            warn!(%repo, "skipping {} more tree entries of this page", skipped - MAX_SKIP_WARNINGS);
        }
        Ok(files)
    }
}

/// One element of a tree page. Everything is optional because the Hub omits what does not
/// apply (`lfs` on git files) and a missing field must skip one entry, not fail the listing.
#[derive(Deserialize)]
struct RawTreeEntry {
    #[serde(rename = "type")]
    kind: Option<String>,
    path: Option<String>,
    oid: Option<String>,
    size: Option<u64>,
    lfs: Option<RawLfs>,
}

#[derive(Deserialize)]
struct RawLfs {
    oid: Option<String>,
    size: Option<u64>,
}

/// `Ok(None)` for a directory; `Err` for anything else that is not a file entry that can be
/// served safely.
fn parse_tree_entry(value: serde_json::Value) -> Result<Option<TreeEntry>, String> {
    let raw: RawTreeEntry =
        serde_json::from_value(value).map_err(|e| format!("malformed entry: {e}"))?;
    match raw.kind.as_deref() {
        Some("file") => {}
        Some("directory") => return Ok(None),
        Some(other) => return Err(format!("entry of unknown type {:?}", clip(other))),
        None => return Err("entry without a type".into()),
    }
    let path = raw.path.ok_or("file entry without a path")?;
    if !crate::names::valid_repo_path(&path) {
        return Err(format!("unsafe path {:?}", clip(&path)));
    }
    let shown = clip(&path);
    // An `lfs` object decides: its hash must be valid; falling back to the git oid of the
    // pointer file would verify the pointer, not the contents.
    let (hash, size) = match raw.lfs {
        Some(lfs) => {
            let oid = lfs.oid.as_deref().and_then(decode_hex::<32>);
            let hash = oid.ok_or_else(|| {
                format!("{shown:?}: malformed lfs.oid {:?}", lfs.oid.as_deref().map(clip))
            })?;
            (FileHash::Lfs(hash), lfs.size.or(raw.size))
        }
        None => {
            let oid = raw.oid.as_deref().and_then(decode_hex::<20>);
            let hash = oid.ok_or_else(|| {
                format!("{shown:?}: malformed oid {:?}", raw.oid.as_deref().map(clip))
            })?;
            (FileHash::Git(hash), raw.size)
        }
    };
    let size = size.ok_or_else(|| format!("{shown:?}: no size"))?;
    if size > MAX_FILE_SIZE {
        return Err(format!("{shown:?}: size {size} is over {MAX_FILE_SIZE} bytes"));
    }
    Ok(Some(TreeEntry { path, size, hash }))
}

fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    (s.len() == 2 * N).then_some(())?;
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// The `rel="next"` target among the `Link` headers, resolved against the page's URL. A
/// header that is not ASCII, or a target that is not an http(s) URL, is an error rather than
/// the end of the listing: stopping there would present a repo with files missing.
pub fn next_page(headers: &HeaderMap, base: &Url) -> Result<Option<Url>, HubError> {
    for value in headers.get_all(LINK) {
        let value =
            value.to_str().map_err(|_| HubError::Protocol("Link header is not ASCII".into()))?;
        if let Some(target) = parse_link_next(value) {
            let url = base
                .join(target)
                .map_err(|e| HubError::Protocol(format!("Link target {:?}: {e}", clip(target))))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(HubError::Protocol(format!(
                    "Link target {:?} is not an http(s) URL",
                    clip(target)
                )));
            }
            return Ok(Some(url));
        }
    }
    Ok(None)
}

/// The URL of the `rel="next"` link in one `Link` header value (RFC 8288):
/// `<url>; rel="next", <url2>; rel="prev"`. Quoted parameter values may contain `,` and `;`.
/// The target returned is always a slice of `value` that was between `<` and `>`.
pub fn parse_link_next(value: &str) -> Option<&str> {
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        let inner = rest.strip_prefix('<')?;
        let close = inner.find('>')?;
        let target = &inner[..close];
        rest = &inner[close + 1..];
        // Parameters run to the next `,` outside quotes, and are separated by `;` outside
        // quotes: `title="x; rel=next"` is a title, not a rel.
        let end = find_unquoted(rest, ',');
        let mut params = &rest[..end];
        rest = &rest[end..];
        let mut is_next = false;
        while !params.is_empty() {
            let cut = find_unquoted(params, ';');
            let param = &params[..cut];
            params = params.get(cut + 1..).unwrap_or("");
            let Some((name, val)) = param.split_once('=') else { continue };
            is_next |= name.trim().eq_ignore_ascii_case("rel")
                && val
                    .trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|rel| rel.eq_ignore_ascii_case("next"));
        }
        if is_next {
            return Some(target);
        }
    }
}

/// Byte offset of the first `sep` in `s` outside a quoted string (`"..."`, in which `\`
/// escapes the next character), or `s.len()` when there is none.
fn find_unquoted(s: &str, sep: char) -> usize {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => return i,
            _ => {}
        }
    }
    s.len()
}

/// `bytes first-last/total` (`total` may be `*`) → `(first, last, total)`. Strict: anything
/// else, `last < first`, or `last >= total` (RFC 9110 calls that invalid), is `None`.
pub fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let (unit, rest) = value.trim().split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (span, total) = rest.trim_start().split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u64>().ok())?
    };
    let (first, last) = (number(first)?, number(last)?);
    let total = if total == "*" { None } else { Some(number(total)?) };
    (first <= last && total.is_none_or(|t| last < t)).then_some((first, last, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn link_next_is_found_among_others() {
        assert_eq!(
            parse_link_next(r#"<https://hub/api/x?cursor=abc>; rel="next""#),
            Some("https://hub/api/x?cursor=abc")
        );
        assert_eq!(
            parse_link_next(r#"<https://hub/p1>; rel="prev", <https://hub/p3>; rel="next""#),
            Some("https://hub/p3")
        );
        assert_eq!(
            parse_link_next(r#"</api/x?c=1,2>; title="a, b; c"; rel=next"#),
            Some("/api/x?c=1,2")
        );
        assert_eq!(
            parse_link_next(r#"<https://hub/p>; REL="prefetch next""#),
            Some("https://hub/p")
        );
        assert_eq!(parse_link_next(r#"<https://hub/p>; rel="prev""#), None);
        assert_eq!(parse_link_next(r#"<https://hub/p>; rel="nextpage""#), None);
        assert_eq!(parse_link_next(""), None);
        assert_eq!(parse_link_next("garbage"), None);
        assert_eq!(parse_link_next("<unterminated; rel=next"), None);
        assert_eq!(parse_link_next(r#"<x>; title="<y>; rel=next", <z>; rel=next"#), Some("z"));
        assert_eq!(parse_link_next(r#"<x>; title="a\"; rel=next"; rel=prev"#), None);
    }

    #[test]
    fn next_page_resolves_relative_and_absolute_links() {
        let base = Url::parse("http://127.0.0.1:9/api/models/o/r/tree/c?recursive=true").unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(next_page(&headers, &base).unwrap(), None);
        headers.insert(
            LINK,
            HeaderValue::from_static(r#"</api/models/o/r/tree/c?cursor=2>; rel="next""#),
        );
        assert_eq!(
            next_page(&headers, &base).unwrap().unwrap().as_str(),
            "http://127.0.0.1:9/api/models/o/r/tree/c?cursor=2"
        );
        headers
            .insert(LINK, HeaderValue::from_static(r#"<http://other:1/x?cursor=3>; rel="next""#));
        assert_eq!(
            next_page(&headers, &base).unwrap().unwrap().as_str(),
            "http://other:1/x?cursor=3"
        );
    }

    #[test]
    fn content_range_parses_strictly() {
        assert_eq!(parse_content_range("bytes 0-99/1000"), Some((0, 99, Some(1000))));
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(parse_content_range(" BYTES 1-2/3 "), Some((1, 2, Some(3))));
        for bad in [
            "bytes 9-1/10",
            "bytes */10",
            "bytes 1-/10",
            "bytes -1/10",
            "bytes 1-2",
            "items 1-2/3",
            "bytes +1-2/3",
            "bytes 1-2/3x",
            "bytes 1-99999999999999999999/3",
            "bytes 0-10/10",
            "bytes 0-0/0",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn content_range_round_trips(a in 0u64..u64::MAX / 2, len in 1u64..u64::MAX / 4, extra in 0u64..1000) {
            let b = a + len - 1;
            let total = b + 1 + extra;
            prop_assert_eq!(parse_content_range(&format!("bytes {a}-{b}/{total}")), Some((a, b, Some(total))));
        }

        #[test]
        fn content_range_never_panics(s in "\\PC{0,40}") {
            let _ = parse_content_range(&s);
        }

        #[test]
        fn link_parser_never_panics(s in "[<>;,=\" a-z/:]{0,60}") {
            let _ = parse_link_next(&s);
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    fn read_real(path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    #[test]
    fn token_discovery_order() {
        let dir = tempfile::tempdir().unwrap();
        let token_path = dir.path().join("explicit");
        std::fs::write(&token_path, "  hf_from_path\n").unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::write(home.join("token"), "hf_from_home\n").unwrap();
        let xdg = dir.path().join("xdg");
        std::fs::create_dir_all(xdg.join("huggingface")).unwrap();
        std::fs::write(xdg.join("huggingface/token"), "hf_from_xdg").unwrap();
        let (tp, hh, xd) =
            (token_path.to_str().unwrap(), home.to_str().unwrap(), xdg.to_str().unwrap());

        let all = [
            ("HF_TOKEN", " hf_env \n"),
            ("HF_TOKEN_PATH", tp),
            ("HF_HOME", hh),
            ("XDG_CACHE_HOME", xd),
        ];
        assert_eq!(discover_token_with(&env_of(&all), &read_real).as_deref(), Some("hf_env"));
        // An empty HF_TOKEN counts as unset.
        let mut empty_env = all;
        empty_env[0] = ("HF_TOKEN", "  ");
        assert_eq!(
            discover_token_with(&env_of(&empty_env), &read_real).as_deref(),
            Some("hf_from_path")
        );
        assert_eq!(
            discover_token_with(
                &env_of(&[("HUGGING_FACE_HUB_TOKEN", "hf_legacy"), ("HF_HOME", hh)]),
                &read_real
            )
            .as_deref(),
            Some("hf_legacy")
        );
        assert_eq!(
            discover_token_with(&env_of(&all[1..]), &read_real).as_deref(),
            Some("hf_from_path")
        );
        assert_eq!(
            discover_token_with(&env_of(&all[2..]), &read_real).as_deref(),
            Some("hf_from_home")
        );
        assert_eq!(
            discover_token_with(&env_of(&all[3..]), &read_real).as_deref(),
            Some("hf_from_xdg")
        );
        // HF_TOKEN_PATH replaces the default file, as in huggingface_hub.
        let missing = dir.path().join("missing");
        let replaced = [("HF_TOKEN_PATH", missing.to_str().unwrap()), ("HF_HOME", hh)];
        assert_eq!(discover_token_with(&env_of(&replaced), &read_real), None);
        // An empty token file is no token.
        std::fs::write(home.join("token"), " \n").unwrap();
        assert_eq!(discover_token_with(&env_of(&all[2..]), &read_real), None);
    }

    #[test]
    fn token_default_file_is_hf_hub_cache_location() {
        let asked = Mutex::new(Vec::new());
        let read = |p: &Path| {
            asked.lock().unwrap().push(p.to_path_buf());
            Some("hf_default".to_owned())
        };
        assert_eq!(discover_token_with(&env_of(&[]), &read).as_deref(), Some("hf_default"));
        assert_eq!(*asked.lock().unwrap(), vec![hf_hub::Cache::default().token_path()]);
    }

    #[test]
    fn config_debug_never_shows_the_token() {
        let mut config = HubConfig::new(default_endpoint());
        config.token = Some("hf_secret_value".into());
        let shown = format!("{config:?}");
        assert!(!shown.contains("hf_secret_value"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn endpoints_as_users_write_them() {
        assert_eq!(
            parse_endpoint("http://localhost:8080").unwrap().as_str(),
            "http://localhost:8080/"
        );
        assert_eq!(
            parse_endpoint("localhost:8080").unwrap_err(),
            "is not an http(s) URL (did you mean http://localhost:8080?)"
        );
        assert!(parse_endpoint("ftp://hub").unwrap_err().contains("with a host"));
    }

    #[test]
    fn endpoint_from_env_value() {
        assert_eq!(endpoint_from(None).as_str(), "https://huggingface.co/");
        assert_eq!(endpoint_from(Some(" ".into())).as_str(), "https://huggingface.co/");
        assert_eq!(
            endpoint_from(Some("http://127.0.0.1:8080".into())).as_str(),
            "http://127.0.0.1:8080/"
        );
        assert_eq!(endpoint_from(Some("ftp://x".into())).as_str(), "https://huggingface.co/");
        assert_eq!(endpoint_from(Some("not a url".into())).as_str(), "https://huggingface.co/");
    }

    #[test]
    fn urls_encode_each_segment() {
        let mut config = HubConfig::new(Url::parse("http://127.0.0.1:1/mirror/").unwrap());
        config.token = None;
        let client = HubClient::new(config).unwrap();
        assert_eq!(
            client.url(&["api", "models", "o", "r", "revision", "refs/pr/1"], "").unwrap().as_str(),
            "http://127.0.0.1:1/mirror/api/models/o/r/revision/refs%2Fpr%2F1"
        );
        assert_eq!(
            client.url(&["o", "r", "resolve", "c", "dir", "a b#?%é.txt"], "").unwrap().as_str(),
            "http://127.0.0.1:1/mirror/o/r/resolve/c/dir/a%20b%23%3F%25%C3%A9.txt"
        );
        for bad in ["..", ".", ""] {
            assert!(matches!(client.url(&["api", bad], ""), Err(HubError::NotFound(_))), "{bad:?}");
        }
    }

    #[test]
    fn auth_goes_only_to_the_hub_origin() {
        let mut config = HubConfig::new(Url::parse("http://127.0.0.1:8000").unwrap());
        config.token = Some("hf_t".into());
        let client = HubClient::new(config).unwrap();
        let with_auth = |u: &str| {
            let request = client.get(&Url::parse(u).unwrap(), None).build().unwrap();
            request.headers().get(AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            with_auth("http://127.0.0.1:8000/o/r/resolve/c/f").as_deref(),
            Some("Bearer hf_t")
        );
        assert_eq!(with_auth("http://localhost:8000/o/r/resolve/c/f"), None);
        assert_eq!(with_auth("http://127.0.0.1:8001/x"), None);
        assert_eq!(with_auth("https://127.0.0.1:8000/x"), None);
    }

    fn entry(json: serde_json::Value) -> Result<Option<TreeEntry>, String> {
        parse_tree_entry(json)
    }

    #[test]
    fn tree_entries_take_lfs_then_git_hashes() {
        let lfs = "a".repeat(64);
        let git = "b".repeat(40);
        let e = entry(serde_json::json!({"type":"file","path":"m.onnx","oid":git,"size":134,
                                        "lfs":{"oid":lfs,"size":5000,"pointerSize":134}}));
        assert_eq!(
            e,
            Ok(Some(TreeEntry {
                path: "m.onnx".into(),
                size: 5000,
                hash: FileHash::Lfs([0xaa; 32])
            }))
        );
        let e = entry(serde_json::json!({"type":"file","path":"config.json","oid":git,"size":12}));
        assert_eq!(
            e,
            Ok(Some(TreeEntry {
                path: "config.json".into(),
                size: 12,
                hash: FileHash::Git([0xbb; 20])
            }))
        );
        assert_eq!(
            entry(serde_json::json!({"type":"directory","path":"onnx","oid":git,"size":0})),
            Ok(None)
        );
        assert!(entry(serde_json::json!({"type":"file","path":"x","oid":"b".repeat(39),"size":1}))
            .is_err());
        assert!(entry(serde_json::json!({"type":"file","path":"x","oid":git,"size":1,"lfs":{"oid":"zz","size":1}})).is_err());
        assert!(entry(serde_json::json!({"type":"file","path":"x","oid":git})).is_err());
        assert!(entry(serde_json::json!({"type":"file","oid":git,"size":1})).is_err());
        assert!(entry(serde_json::json!({"type":"file","path":"x","oid":git,"size":"1"})).is_err());
        assert!(entry(serde_json::json!("not an object")).is_err());
    }

    #[test]
    fn tree_pages_keep_files_and_skip_the_rest() {
        let repo = RepoId::new("o", "r");
        let git = "c".repeat(40);
        let page = serde_json::json!([
            {"type":"directory","path":"d","oid":git,"size":0},
            {"type":"file","path":"d/ok.txt","oid":git,"size":3},
            {"type":"file","path":"../escape","oid":git,"size":1},
            {"type":"file","path":"/abs","oid":git,"size":1},
            {"type":"file","path":"big","oid":git,"size":MAX_FILE_SIZE + 1},
            {"type":"file","path":"edge","oid":git,"size":MAX_FILE_SIZE},
            {"type":"file","path":"neg","oid":git,"size":-1},
            {"path":"untyped","oid":git,"size":1},
            {"type":"submodule","path":"sub","oid":git,"size":1},
            {"type":"file","path":"d/ok.txt","oid":git,"size":4},
        ])
        .to_string();
        let got = parse_tree_page(page.as_bytes(), &repo).unwrap();
        let kept: Vec<(&str, u64)> = got.iter().map(|e| (e.path.as_str(), e.size)).collect();
        // Duplicates are kept here: Manifest::build decides between them.
        assert_eq!(kept, vec![("d/ok.txt", 3), ("edge", MAX_FILE_SIZE), ("d/ok.txt", 4)]);
    }

    #[test]
    fn tree_pages_that_are_not_arrays_are_errors() {
        let repo = RepoId::new("o", "r");
        let deep = format!("[{}{}]", "[".repeat(200), "]".repeat(200));
        for bad in [
            &b""[..],
            b"{}",
            b"null",
            b"[1,",
            b"[] []",
            b"[\"\xff\"]",
            b"[{\"type\":\"file\",\"path\":\"\\ud800\"}]",
            deep.as_bytes(),
        ] {
            match parse_tree_page(bad, &repo) {
                Err(HubError::Protocol(m)) => assert!(m.contains("o/r"), "{m}"),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        assert_eq!(parse_tree_page(b" [ ] ", &repo).unwrap(), vec![]);
    }

    #[test]
    fn quoted_hub_text_is_clipped() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(1000);
        let shown = clip(&long);
        assert!(shown.len() < MAX_QUOTED_BYTES + 30, "{}", shown.len());
        assert!(shown.ends_with("... (2000 bytes)"), "{shown}");
        let huge = "x".repeat(10_000);
        let reason =
            entry(serde_json::json!({"type":"file","path":huge,"oid":"0","size":1})).unwrap_err();
        assert!(reason.len() < 300, "{}", reason.len());
    }

    #[test]
    fn next_page_refuses_non_http_targets_and_non_ascii() {
        let base = Url::parse("http://127.0.0.1:9/api/models/o/r/tree/c").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(LINK, HeaderValue::from_static(r#"<file:///etc/passwd>; rel="next""#));
        assert!(matches!(next_page(&headers, &base), Err(HubError::Protocol(_))));
        headers.insert(LINK, HeaderValue::from_bytes(b"<http://h/\xff>; rel=next").unwrap());
        assert!(matches!(next_page(&headers, &base), Err(HubError::Protocol(_))));
        headers.insert(LINK, HeaderValue::from_static(r#"<http://[::1>; rel="next""#));
        assert!(matches!(next_page(&headers, &base), Err(HubError::Protocol(_))));
    }

    #[test]
    fn revision_answers_are_checked() {
        let repo = RepoId::new("o", "r");
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let ok = serde_json::json!({"id":"o/r","sha":sha,"pipeline_tag":"text-generation",
            "private":false,"gated":false})
        .to_string();
        assert_eq!(
            parse_revision(ok.as_bytes(), &repo, "main").unwrap(),
            RevisionInfo {
                commit: sha.into(),
                pipeline_tag: Some("text-generation".into()),
                restricted: false
            }
        );
        // Private, gated either way, or not said: restricted.
        for extra in [
            serde_json::json!({"private": true, "gated": false}),
            serde_json::json!({"private": false, "gated": "auto"}),
            serde_json::json!({"private": false, "gated": "manual"}),
            serde_json::json!({}),
        ] {
            let mut answer = serde_json::json!({"sha": sha});
            answer.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let info = parse_revision(answer.to_string().as_bytes(), &repo, "main").unwrap();
            assert!(info.restricted, "{answer}");
        }
        let upper = serde_json::json!({"sha": sha.to_uppercase()}).to_string();
        assert!(matches!(
            parse_revision(upper.as_bytes(), &repo, "main"),
            Err(HubError::Protocol(_))
        ));
        assert!(matches!(parse_revision(b"{}", &repo, "main"), Err(HubError::Protocol(_))));
        assert!(matches!(parse_revision(b"[", &repo, "main"), Err(HubError::Protocol(_))));
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        for failures in 1..40 {
            let exp = BACKOFF_START.saturating_mul(1 << (failures - 1).min(16)).min(BACKOFF_CAP);
            let wait = backoff(failures);
            assert!(wait >= exp / 2 && wait <= exp, "{failures}: {wait:?} vs {exp:?}");
        }
    }
}
