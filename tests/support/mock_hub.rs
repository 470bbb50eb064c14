//! A mock HuggingFace Hub: two HTTP origins on 127.0.0.1 that answer the way huggingface.co and
//! its LFS CDN do, as far as modelfs and the official `huggingface_hub` client depend on them.
//!
//! The Hub origin (`http://127.0.0.1:P`) serves model info, paged tree listings and `/resolve/`;
//! the CDN origin (`http://localhost:Q`, a different host *name*, so that "the token is never
//! sent to another host" is observable) serves LFS blobs by sha256. Every request is recorded
//! with the Authorization header it carried. Repos are built in memory from [`MockRepo`]s
//! (commits, branches, tags) or loaded from a directory. Fidelity to the real Hub is itself
//! tested with huggingface_hub in `tests/hub_fidelity.rs`; when the real Hub's behaviour is
//! copied here, the comment says which client code relies on it.
//!
//! The server is plain hyper on its own tokio runtime and thread, so it can be started from
//! synchronous tests and from inside `#[tokio::test]` alike, and so that it owns its sockets:
//! [`MockHub::stop`] closes the listeners *and* every open connection, which is what an offline
//! test needs (a pooled keep-alive connection must not keep the "network" alive). Faults are
//! injected per request through [`MockHub::inject`] ([`FaultRule`], [`Fault`]), or at random
//! with a seeded generator through [`MockHub::inject_random`] ([`RandomFaults`]); every fault
//! that changed an answer is counted ([`MockHub::faults_injected`]).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as StdTcpListener};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Files at least this big are stored in LFS, as `huggingface_hub.upload_folder` does by
/// default (its threshold is 10 MiB; 1 MiB keeps test fixtures small while still exercising
/// both paths).
pub const DEFAULT_LFS_THRESHOLD: u64 = 1 << 20;

/// Extensions the Hub's default `.gitattributes` routes to LFS whatever their size.
const LFS_EXTENSIONS: &[&str] = &["onnx", "onnx_data", "gguf", "safetensors", "bin"];

/// The real Hub lists at most 1000 tree entries per page.
const DEFAULT_PAGE_SIZE: usize = 1000;

/// How long the signed CDN URL claims to be valid, as the real redirect does.
const CDN_URL_EXPIRES_SECS: u64 = 3600;

/// Long enough for hyper to write out the part of a truncated body that is sent.
const TRUNCATE_FLUSH_PAUSE: Duration = Duration::from_millis(20);

/// The message the real Hub puts in `X-Error-Message` for a token it does not know;
/// huggingface_hub tests for this exact string to tell a bad token from a missing repo.
const INVALID_CREDENTIALS: &str = "Invalid credentials in Authorization header";

// ---------------------------------------------------------------------------------------------
// Repos
// ---------------------------------------------------------------------------------------------

/// A file to put in a commit.
#[derive(Clone, Debug)]
pub struct MockFile {
    pub path: String,
    pub data: Vec<u8>,
    /// Stored in LFS: `/resolve/` redirects to the CDN and listings carry an `lfs` object.
    pub lfs: bool,
}

impl MockFile {
    /// LFS when at least [`DEFAULT_LFS_THRESHOLD`] bytes or when the extension is one the Hub
    /// always stores in LFS.
    pub fn new(path: &str, data: Vec<u8>) -> Self {
        let lfs = is_lfs_by_default(path, data.len() as u64, DEFAULT_LFS_THRESHOLD);
        MockFile { path: path.to_owned(), data, lfs }
    }

    /// A file stored in git itself, whatever its size.
    pub fn git(path: &str, data: Vec<u8>) -> Self {
        MockFile { path: path.to_owned(), data, lfs: false }
    }

    /// A file stored in LFS, whatever its size.
    pub fn lfs(path: &str, data: Vec<u8>) -> Self {
        MockFile { path: path.to_owned(), data, lfs: true }
    }
}

fn is_lfs_by_default(path: &str, len: u64, threshold: u64) -> bool {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    // `model.onnx_data_1` is a split external-data file: LFS like `model.onnx_data`.
    len >= threshold
        || LFS_EXTENSIONS.contains(&ext.as_str())
        || ext.strip_prefix("onnx_data_").is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
}

/// One file as stored at a commit: its bytes and every hash the Hub reports for it.
#[derive(Debug)]
struct StoredFile {
    /// Shared by every commit that has the file; ranges are zero-copy slices.
    data: Bytes,
    lfs: bool,
    /// sha256 of `data`: the LFS oid, and what the CDN serves by.
    sha256: String,
    /// Git blob oid of what git stores: `data` itself, or the LFS pointer file.
    git_oid: String,
    /// Git blob oid of `data` itself: what a commit hashes, so that moving a file between
    /// git and LFS changes the commit.
    content_oid: String,
    /// Length of the LFS pointer file (only meaningful when `lfs`).
    pointer_size: u64,
}

impl StoredFile {
    fn new(data: Bytes, lfs: bool) -> Self {
        let sha256 = hex::encode(Sha256::digest(&data));
        let content_oid = git_blob_oid(&data);
        let pointer = lfs_pointer(&sha256, data.len() as u64);
        let (git_oid, pointer_size) = if lfs {
            (git_blob_oid(pointer.as_bytes()), pointer.len() as u64)
        } else {
            (content_oid.clone(), 0)
        };
        StoredFile { data, lfs, sha256, git_oid, content_oid, pointer_size }
    }

    fn size(&self) -> u64 {
        self.data.len() as u64
    }
}

/// `sha1("blob {len}\0" + data)`, as `git hash-object` computes it.
pub fn git_blob_oid(data: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex::encode(h.finalize())
}

/// The pointer file git stores in place of an LFS object (git-lfs spec v1).
pub fn lfs_pointer(sha256: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

#[derive(Clone, Debug)]
struct Commit {
    sha: String,
    /// Position in the repo's history: gives each commit a distinct, deterministic date.
    seq: u64,
    files: BTreeMap<String, Arc<StoredFile>>,
}

/// A model repo: commits, branches and tags.
#[derive(Clone, Debug)]
pub struct MockRepo {
    /// `org/name`.
    pub id: String,
    /// Gated repos show their info and tree to anyone but serve files only with a valid token.
    pub gated: bool,
    /// Private repos do not exist for a request without a valid token.
    pub private: bool,
    pub pipeline_tag: Option<String>,
    pub library_name: Option<String>,
    commits: HashMap<String, Commit>,
    branches: BTreeMap<String, String>,
    tags: BTreeMap<String, String>,
}

impl MockRepo {
    /// A repo with one commit holding `files`, with branch `main` pointing at it.
    pub fn new(id: &str, files: Vec<MockFile>) -> Self {
        let stored =
            files.into_iter().map(|f| (f.path, StoredFile::new(Bytes::from(f.data), f.lfs)));
        Self::from_stored(id, stored)
    }

    fn from_stored(id: &str, files: impl IntoIterator<Item = (String, StoredFile)>) -> Self {
        let mut repo = MockRepo {
            id: id.to_owned(),
            gated: false,
            private: false,
            pipeline_tag: None,
            library_name: None,
            commits: HashMap::new(),
            branches: BTreeMap::new(),
            tags: BTreeMap::new(),
        };
        let files = files.into_iter().map(|(p, f)| (p, Arc::new(f))).collect();
        let sha = repo.add_commit(None, files);
        repo.branches.insert("main".to_owned(), sha);
        repo
    }

    /// A new commit on `main`: the files of the current head with `files` added or replaced
    /// (as `HfApi.create_commit` with add operations does). Returns its sha.
    pub fn commit(&mut self, files: Vec<MockFile>) -> String {
        let parent = self.head();
        let mut tree = self.commits[&parent].files.clone();
        for f in files {
            tree.insert(f.path, Arc::new(StoredFile::new(Bytes::from(f.data), f.lfs)));
        }
        let sha = self.add_commit(Some(&parent), tree);
        self.branches.insert("main".to_owned(), sha.clone());
        sha
    }

    /// Point tag `name` at `commit` (a sha of this repo).
    pub fn tag(&mut self, name: &str, commit: &str) {
        assert!(self.commits.contains_key(commit), "tag {name}: no commit {commit} in {}", self.id);
        self.tags.insert(name.to_owned(), commit.to_owned());
    }

    /// Create or move branch `name` to `commit` (a sha of this repo).
    pub fn branch(&mut self, name: &str, commit: &str) {
        assert!(
            self.commits.contains_key(commit),
            "branch {name}: no commit {commit} in {}",
            self.id
        );
        self.branches.insert(name.to_owned(), commit.to_owned());
    }

    /// The commit `main` points at.
    pub fn head(&self) -> String {
        self.branches["main"].clone()
    }

    /// The commit a branch, tag or full sha names, as the Hub resolves it.
    pub fn resolve(&self, rev: &str) -> Option<String> {
        self.resolve_commit(rev).map(|c| c.sha.clone())
    }

    fn resolve_commit(&self, rev: &str) -> Option<&Commit> {
        let sha = self
            .branches
            .get(rev)
            .or_else(|| self.tags.get(rev))
            .map(String::as_str)
            .unwrap_or(rev);
        self.commits.get(sha)
    }

    /// The commit sha is a sha1 over the parent and the (path, content oid, lfs) list, so the
    /// same history always yields the same shas.
    fn add_commit(
        &mut self,
        parent: Option<&str>,
        files: BTreeMap<String, Arc<StoredFile>>,
    ) -> String {
        let mut h = Sha1::new();
        h.update(format!("parent {}\n", parent.unwrap_or("")).as_bytes());
        for (path, f) in &files {
            h.update(format!("{path}\0{}\0{}\n", f.content_oid, f.lfs).as_bytes());
        }
        let sha = hex::encode(h.finalize());
        let seq = self.commits.len() as u64;
        self.commits.insert(sha.clone(), Commit { sha: sha.clone(), seq, files });
        sha
    }

    fn lfs_blobs(&self) -> impl Iterator<Item = &Arc<StoredFile>> {
        self.commits.values().flat_map(|c| c.files.values()).filter(|f| f.lfs)
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration, records, faults
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Tree listing page size.
    pub page_size: usize,
    /// Bearer tokens the mock accepts; any other token gets 401.
    pub valid_tokens: Vec<String>,
    /// Where LFS `/resolve/` redirects point: `{cdn_base}/lfs/<sha256>?X-Amz-...`. `None` is
    /// the mock's own CDN origin. Benchmarks set it to an external server (nginx) that
    /// serves the same blobs by sha256, so that the bytes come from a real static server
    /// with a per-connection rate cap, as a real CDN's do.
    pub cdn_base: Option<String>,
    /// What the mock's own CDN makes every download wait before its answer (headers and
    /// first byte): a real CDN's time to first byte (the round trip plus the edge's lookup),
    /// paid per request.
    pub cdn_first_byte: Duration,
    /// Bytes per second each CDN download is paced at, as an edge caps a connection.
    pub cdn_rate: Option<u64>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            page_size: DEFAULT_PAGE_SIZE,
            valid_tokens: vec!["hf_mock_token".to_owned()],
            cdn_base: None,
            cdn_first_byte: Duration::ZERO,
            cdn_rate: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    Hub,
    Cdn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub origin: Origin,
    pub method: String,
    /// As sent, still percent-encoded.
    pub path_and_query: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    /// The status sent; 0 when the connection was dropped without an answer.
    pub status: u16,
    /// Every request header as received (names lowercase, values lossily decoded), so
    /// tests can check what each origin was told, the token above all.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// A mount's "does the Hub answer" at start.
    pub fn is_probe(&self) -> bool {
        self.method == "HEAD" && self.path_and_query == "/"
    }
}

/// What goes wrong with one answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Drop the connection without answering.
    Reset,
    /// Answer with this status and a JSON error body instead of the real answer.
    Status(u16),
    /// 429 with `Retry-After: secs`.
    RateLimited { retry_after_secs: u64 },
    /// Send the real headers (full `Content-Length`) but only the first `after` body bytes,
    /// then drop the connection.
    Truncate { after: usize },
    /// Send the headers, then wait this long before the body.
    Stall(Duration),
    /// Send the real headers and a body of the right length with its first byte flipped.
    WrongBytes,
    /// 429 with the IETF `RateLimit` headers the Hub sends since late 2025
    /// (`RateLimit: "api";r=0;t=<reset_secs>` and `RateLimit-Policy`), and no `Retry-After`.
    RateLimitedIetf { reset_secs: u64 },
    /// A range answer whose `Content-Range` is not the range asked for (see [`RangeSkew`]).
    /// Only requests with a `Range` header that would get a 206 are affected.
    WrongContentRange(RangeSkew),
    /// Ignore the `Range` header and send the whole file with 200, as a server or proxy
    /// without range support does. Only requests that would get a 206 are affected.
    FullBody,
    /// 403 from the CDN with the body S3/CloudFront send for a signed URL past its expiry.
    Expired,
    /// Send the headers and the first `after` body bytes, then nothing for `pause`, then
    /// the rest: a connection that goes quiet mid-body.
    StallAfter { after: usize, pause: Duration },
    /// This status with `X-Error-Code: code`, as the Hub's own errors (`GatedRepo`, ...).
    Coded { status: u16, code: String },
}

/// How a [`Fault::WrongContentRange`] answer differs from the range asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeSkew {
    /// The bytes and header of the range one byte later (`a+1-b+1`), a misaligned server.
    Shifted,
    /// The bytes and header of a shorter range (`a-b-1`, or `a-a` for one byte asked).
    Short,
    /// The right bytes, but a `Content-Range` total one byte off: another size of the file.
    WrongTotal,
}

impl Fault {
    /// A short name per kind, for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Reset => "reset",
            Fault::Status(_) => "status",
            Fault::RateLimited { .. } => "429-retry-after",
            Fault::Truncate { .. } => "truncate",
            Fault::Stall(_) => "stall",
            Fault::WrongBytes => "wrong-bytes",
            Fault::RateLimitedIetf { .. } => "429-ratelimit",
            Fault::WrongContentRange(_) => "wrong-content-range",
            Fault::FullBody => "200-not-206",
            Fault::Expired => "cdn-expired",
            Fault::StallAfter { .. } => "stall-mid-body",
            Fault::Coded { .. } => "coded-error",
        }
    }
}

/// Faults drawn at random: each matching request gets one with `probability`, chosen
/// uniformly among the `kinds` allowed for its origin, from a generator seeded by the test so
/// a failing run can be replayed (up to thread interleaving).
#[derive(Debug)]
pub struct RandomFaults {
    pub seed: u64,
    pub probability: f64,
    /// Only requests with a `Range` header (chunk fetches), when set.
    pub ranged_only: bool,
    /// Each kind with the origin it may hit (`None`: both).
    pub kinds: Vec<(Option<Origin>, Fault)>,
}

/// When a [`Fault`] applies: to the next `times` requests that match.
#[derive(Clone, Debug)]
pub struct FaultRule {
    /// `None` matches both origins.
    pub origin: Option<Origin>,
    /// Matches when the raw path and query contain this string (`""` matches all).
    pub path_contains: String,
    /// Only requests with a `Range` header (chunk fetches), when set.
    pub ranged_only: bool,
    pub times: usize,
    pub fault: Fault,
}

impl FaultRule {
    /// A rule for range requests only (chunk fetches): listings and revision calls pass.
    pub fn ranged(origin: Option<Origin>, path_contains: &str, times: usize, fault: Fault) -> Self {
        FaultRule { ranged_only: true, ..FaultRule::new(origin, path_contains, times, fault) }
    }

    pub fn new(origin: Option<Origin>, path_contains: &str, times: usize, fault: Fault) -> Self {
        FaultRule {
            origin,
            path_contains: path_contains.to_owned(),
            ranged_only: false,
            times,
            fault,
        }
    }
}

/// The fault hook consulted once per request, before it is answered.
#[derive(Debug, Default)]
struct Faults {
    rules: Vec<FaultRule>,
    random: Option<(RandomFaults, rand::rngs::StdRng)>,
    /// Faults that changed an answer, by [`Fault::kind`].
    injected: BTreeMap<&'static str, usize>,
}

impl Faults {
    /// The first rule that matches and has uses left is spent by one; when none does, the
    /// random faults (if any) get a chance.
    fn take(&mut self, origin: Origin, path_and_query: &str, ranged: bool) -> Option<Fault> {
        let rule = self.rules.iter_mut().find(|r| {
            r.times > 0
                && r.origin.is_none_or(|o| o == origin)
                && (!r.ranged_only || ranged)
                && path_and_query.contains(&r.path_contains)
        });
        if let Some(rule) = rule {
            rule.times -= 1;
            return Some(rule.fault.clone());
        }
        use rand::Rng;
        let (random, rng) = self.random.as_mut()?;
        if (random.ranged_only && !ranged) || !rng.gen_bool(random.probability) {
            return None;
        }
        let allowed: Vec<&Fault> = random
            .kinds
            .iter()
            .filter(|(o, _)| o.is_none_or(|o| o == origin))
            .map(|(_, f)| f)
            .collect();
        if allowed.is_empty() {
            return None;
        }
        Some(allowed[rng.gen_range(0..allowed.len())].clone())
    }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

struct Shared {
    config: MockConfig,
    hub_origin: String,
    cdn_origin: String,
    repos: Mutex<BTreeMap<String, MockRepo>>,
    /// LFS blobs by sha256, for the CDN. Only grows: content-addressed bytes never change.
    blobs: Mutex<HashMap<String, Bytes>>,
    requests: Mutex<Vec<RecordedRequest>>,
    faults: Mutex<Faults>,
}

/// A test never leaves shared state half-updated across a panic, so a poisoned lock is
/// still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct MockHub {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    /// Taken by the first `stop()`, which joins the server thread.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl MockHub {
    /// Start on ephemeral ports. Panics when it cannot bind 127.0.0.1 (test support).
    pub fn start(config: MockConfig) -> MockHub {
        match Self::start_on(config, 0, 0) {
            Ok(hub) => hub,
            Err(e) => panic!("mock Hub: cannot start: {e}"),
        }
    }

    /// Start with the Hub on `hub_port` and the CDN on `cdn_port` (0 = ephemeral).
    pub fn start_on(config: MockConfig, hub_port: u16, cdn_port: u16) -> io::Result<MockHub> {
        // Bound here, synchronously, so the ports are known and bind errors reach the caller.
        let hub = StdTcpListener::bind((Ipv4Addr::LOCALHOST, hub_port))?;
        let cdn = StdTcpListener::bind((Ipv4Addr::LOCALHOST, cdn_port))?;
        let hub_port = hub.local_addr()?.port();
        let cdn_port = cdn.local_addr()?.port();
        // `localhost` may resolve to ::1 first; serve there too when the host has IPv6.
        let cdn6 = StdTcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, cdn_port))).ok();
        let mut listeners = vec![(Origin::Hub, hub), (Origin::Cdn, cdn)];
        listeners.extend(cdn6.map(|l| (Origin::Cdn, l)));
        for (_, l) in &listeners {
            l.set_nonblocking(true)?;
        }

        let shared = Arc::new(Shared {
            config,
            hub_origin: format!("http://127.0.0.1:{hub_port}"),
            cdn_origin: format!("http://localhost:{cdn_port}"),
            repos: Mutex::new(BTreeMap::new()),
            blobs: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mock-hub")
            .enable_all()
            .build()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new().name("mock-hub".to_owned()).spawn(move || {
            runtime.block_on(async move {
                let mut servers = JoinSet::new();
                for (origin, l) in listeners {
                    match TcpListener::from_std(l) {
                        Ok(l) => {
                            servers.spawn(serve(
                                l,
                                origin,
                                thread_shared.clone(),
                                shutdown_rx.clone(),
                            ));
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                while servers.join_next().await.is_some() {}
            });
            // Dropping the runtime here aborts whatever is left.
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("mock Hub thread died while starting")),
        }
        Ok(MockHub { shared, shutdown, thread: Mutex::new(Some(thread)) })
    }

    /// `http://127.0.0.1:P`, what `HF_ENDPOINT` should be.
    pub fn endpoint(&self) -> String {
        self.shared.hub_origin.clone()
    }

    /// `http://localhost:Q`, the mock's own CDN origin.
    pub fn cdn_origin(&self) -> String {
        self.shared.cdn_origin.clone()
    }

    /// Where LFS downloads are redirected: [`MockConfig::cdn_base`] when set (without a
    /// trailing `/`), else [`Self::cdn_origin`].
    pub fn cdn_base(&self) -> String {
        cdn_base(&self.shared)
    }

    /// Add a repo, replacing one with the same id.
    pub fn add_repo(&self, repo: MockRepo) {
        self.index_blobs(&repo);
        lock(&self.shared.repos).insert(repo.id.clone(), repo);
    }

    /// Change a repo in place (push a commit, move a branch, make it gated...).
    /// Panics when there is no such repo (test support).
    pub fn update_repo(&self, id: &str, f: impl FnOnce(&mut MockRepo)) {
        let mut repos = lock(&self.shared.repos);
        let repo = repos.get_mut(id).unwrap_or_else(|| panic!("mock Hub: no repo {id}"));
        f(repo);
        let mut blobs = lock(&self.shared.blobs);
        for b in repo.lfs_blobs() {
            blobs.entry(b.sha256.clone()).or_insert_with(|| b.data.clone());
        }
    }

    fn index_blobs(&self, repo: &MockRepo) {
        let mut blobs = lock(&self.shared.blobs);
        for b in repo.lfs_blobs() {
            blobs.entry(b.sha256.clone()).or_insert_with(|| b.data.clone());
        }
    }

    /// Every `DIR/<org>/<repo>/` becomes a repo with one commit of all its files (recursively;
    /// `.git` is skipped), LFS from [`DEFAULT_LFS_THRESHOLD`] bytes or by extension.
    /// Returns the repo ids, sorted.
    pub fn load_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.load_dir_with_threshold(dir, DEFAULT_LFS_THRESHOLD)
    }

    /// [`Self::load_dir`] with files of at least `lfs_threshold` bytes in LFS. Files are
    /// memory-mapped, not copied: they must not change while the mock serves them.
    pub fn load_dir_with_threshold(
        &self,
        dir: &Path,
        lfs_threshold: u64,
    ) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for org in sorted_dir(dir)? {
            if !org.is_dir() {
                continue;
            }
            for repo_dir in sorted_dir(&org)? {
                if !repo_dir.is_dir() {
                    continue;
                }
                let id = format!("{}/{}", utf8_name(&org)?, utf8_name(&repo_dir)?);
                let mut files = Vec::new();
                collect_files(&repo_dir, "", lfs_threshold, &mut files)?;
                self.add_repo(MockRepo::from_stored(&id, files));
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Every request about repos answered so far, in order: all but the mount's liveness
    /// probe at start (`HEAD /`, see [`MockHub::probes`]).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).iter().filter(|r| !r.is_probe()).cloned().collect()
    }

    /// How many liveness probes (`HEAD /`) were answered.
    pub fn probes(&self) -> usize {
        lock(&self.shared.requests).iter().filter(|r| r.is_probe()).count()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// A mock Hub with the default configuration, serving `repos`.
    pub fn with_repos(repos: Vec<MockRepo>) -> MockHub {
        let hub = MockHub::start(MockConfig::default());
        for repo in repos {
            hub.add_repo(repo);
        }
        hub
    }

    /// Make every ranged CDN answer for the file with these bytes (up to 100 of them) wait
    /// `each` before its body: a download of it that goes one chunk at a time takes a while,
    /// for a test to watch.
    pub fn slow_ranges_of(&self, data: &[u8], each: Duration) {
        let sha = hex::encode(Sha256::digest(data));
        self.inject(FaultRule::ranged(Some(Origin::Cdn), &sha, 100, Fault::Stall(each)));
    }

    /// Apply `rule.fault` to the next `rule.times` matching requests. Rules are tried in the
    /// order they were added.
    pub fn inject(&self, rule: FaultRule) {
        lock(&self.shared.faults).rules.push(rule);
    }

    /// Stop injecting: drop every rule and the random faults (the counts stay).
    pub fn clear_faults(&self) {
        let mut faults = lock(&self.shared.faults);
        faults.rules.clear();
        faults.random = None;
    }

    /// Drop the rules whose `path_contains` is exactly `path_contains`.
    pub fn remove_faults(&self, path_contains: &str) {
        lock(&self.shared.faults).rules.retain(|r| r.path_contains != path_contains);
    }

    /// Uses left of the rules whose `path_contains` is exactly `path_contains`: 0 once a
    /// fault injected for N requests was served N times.
    pub fn faults_left(&self, path_contains: &str) -> usize {
        let faults = lock(&self.shared.faults);
        faults.rules.iter().filter(|r| r.path_contains == path_contains).map(|r| r.times).sum()
    }

    /// Draw faults at random for requests that no rule matches, until [`Self::clear_faults`].
    pub fn inject_random(&self, faults: RandomFaults) {
        use rand::SeedableRng;
        let rng = rand::rngs::StdRng::seed_from_u64(faults.seed);
        lock(&self.shared.faults).random = Some((faults, rng));
    }

    /// How many answers each kind of fault changed so far, by [`Fault::kind`].
    pub fn faults_injected(&self) -> BTreeMap<&'static str, usize> {
        lock(&self.shared.faults).injected.clone()
    }

    /// Stop answering: close the listeners (new connections are refused) and every open
    /// connection, and wait until that is done. Repos and records stay readable.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sorted_dir(dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    let mut entries =
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<io::Result<Vec<_>>>()?;
    entries.sort();
    Ok(entries)
}

fn utf8_name(path: &Path) -> io::Result<&str> {
    path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("not a UTF-8 name: {}", path.display()))
    })
}

fn collect_files(
    dir: &Path,
    prefix: &str,
    threshold: u64,
    out: &mut Vec<(String, StoredFile)>,
) -> io::Result<()> {
    for path in sorted_dir(dir)? {
        let name = utf8_name(&path)?;
        if name == ".git" {
            continue;
        }
        let rel = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") };
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            collect_files(&path, &rel, threshold, out)?;
        } else if meta.is_file() {
            let data = if meta.len() == 0 {
                Bytes::new()
            } else {
                let file = std::fs::File::open(&path)?;
                // SAFETY: the mapping is read-only and the caller promises the file does not
                // change while it is served (documented on load_dir_with_threshold).
                let map = unsafe { memmap2::Mmap::map(&file)? };
                Bytes::from_owner(map)
            };
            let lfs = is_lfs_by_default(&rel, meta.len(), threshold);
            out.push((rel, StoredFile::new(data, lfs)));
        }
    }
    Ok(())
}

async fn serve(
    listener: TcpListener,
    origin: Origin,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(shared.clone(), origin, req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    // Abort open connections too: a pooled keep-alive connection must not outlive stop().
    conns.shutdown().await;
}

/// What a route decided, before faults and HEAD are applied.
struct Reply {
    status: StatusCode,
    headers: Vec<(HeaderName, String)>,
    body: Bytes,
}

impl Reply {
    fn new(status: StatusCode) -> Self {
        Reply { status, headers: Vec::new(), body: Bytes::new() }
    }

    fn header(mut self, name: impl TryInto<HeaderName>, value: impl Into<String>) -> Self {
        if let Ok(name) = name.try_into() {
            self.headers.push((name, value.into()));
        }
        self
    }

    fn json(status: StatusCode, value: &Value) -> Self {
        Reply::new(status)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(value.to_string())
    }

    fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// An error the way the Hub sends it: `X-Error-Code`, `X-Error-Message` and
    /// `{"error": message}`. huggingface_hub maps the code to its exception classes.
    fn error(status: StatusCode, code: Option<&str>, message: &str) -> Self {
        let mut r =
            Reply::json(status, &json!({ "error": message })).header("x-error-message", message);
        if let Some(code) = code {
            r = r.header("x-error-code", code);
        }
        r
    }
}

/// The connection is dropped without an answer (a `Fault::Reset`).
#[derive(Debug, thiserror::Error)]
#[error("mock Hub: connection reset by fault injection")]
struct ResetByFault;

async fn handle(
    shared: Arc<Shared>,
    origin: Origin,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ResetByFault> {
    let method = req.method().clone();
    let path_and_query =
        req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".to_owned());
    let header_str =
        |name: HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let range = header_str(header::RANGE);
    let authorization = header_str(header::AUTHORIZATION);
    let host = header_str(header::HOST);
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let fault = lock(&shared.faults).take(origin, &path_and_query, range.is_some());

    let record = |status: u16| {
        lock(&shared.requests).push(RecordedRequest {
            origin,
            method: method.to_string(),
            path_and_query: path_and_query.clone(),
            range: range.clone(),
            authorization: authorization.clone(),
            status,
            headers: headers.clone(),
        })
    };
    let count =
        |fault: &Fault| *lock(&shared.faults).injected.entry(fault.kind()).or_default() += 1;
    if fault == Some(Fault::Reset) {
        count(&Fault::Reset);
        record(0);
        return Err(ResetByFault);
    }

    // Range faults change the request the routes see: a server that ignored the range, or
    // answered a neighbouring one.
    let routed_range = match (&fault, range.as_deref()) {
        (Some(Fault::FullBody), _) => None,
        (Some(Fault::WrongContentRange(skew)), Some(r)) => Some(skewed_range(*skew, r)),
        _ => range.clone(),
    };
    let reply = if method != Method::GET && method != Method::HEAD {
        Reply::error(StatusCode::METHOD_NOT_ALLOWED, None, "Method not allowed")
    } else {
        let ctx = Ctx {
            shared: &shared,
            range: routed_range.as_deref(),
            authorization: authorization.as_deref(),
            host: host.as_deref(),
        };
        match origin {
            Origin::Hub => route_hub(&ctx, &path_and_query),
            Origin::Cdn => route_cdn(&ctx, &path_and_query),
        }
    };
    let mut applied = match &fault {
        None | Some(Fault::Reset) => false,
        Some(Fault::FullBody) => range.is_some() && reply.status == StatusCode::OK,
        Some(Fault::WrongContentRange(_)) => {
            range.is_some() && reply.status == StatusCode::PARTIAL_CONTENT
        }
        Some(
            Fault::Truncate { .. } | Fault::Stall(_) | Fault::WrongBytes | Fault::StallAfter { .. },
        ) => !reply.body.is_empty() && method == Method::GET,
        Some(_) => true,
    };
    let reply = match &fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Reply::error(status, None, "Injected failure")
        }
        Some(Fault::Coded { status, code }) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Reply::error(status, Some(code), "Injected failure")
        }
        Some(Fault::RateLimited { retry_after_secs }) => {
            Reply::error(StatusCode::TOO_MANY_REQUESTS, None, "Too many requests")
                .header(header::RETRY_AFTER, retry_after_secs.to_string())
        }
        // As huggingface.co sends them (huggingface_hub#3553): the exhausted group, nothing
        // remaining, seconds to the window's end; the policy names the window.
        Some(Fault::RateLimitedIetf { reset_secs }) => Reply::error(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            "We had to rate limit you, you hit the quota of 500 api requests per 5 minutes period.",
        )
        .header("ratelimit", format!("\"api\";r=0;t={reset_secs}"))
        .header("ratelimit-policy", "\"fixed window\";\"api\";q=500;w=300"),
        Some(Fault::Expired) => {
            Reply::new(StatusCode::FORBIDDEN).header(header::CONTENT_TYPE, "application/xml").body(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>\
                 <Message>Request has expired</Message></Error>",
            )
        }
        Some(Fault::WrongContentRange(RangeSkew::WrongTotal)) if applied => {
            let mut reply = reply;
            for (name, value) in &mut reply.headers {
                if *name == header::CONTENT_RANGE {
                    if let Some((span, total)) = value.rsplit_once('/') {
                        let total = total.parse::<u64>().map_or(0, |t| t + 1);
                        *value = format!("{span}/{total}");
                    }
                }
            }
            reply
        }
        _ => reply,
    };
    if let (Some(Fault::WrongContentRange(_)), StatusCode::RANGE_NOT_SATISFIABLE) =
        (&fault, reply.status)
    {
        // Shifted past the end: a 416 is a different fault from the one asked for.
        applied = true;
    }
    if applied {
        if let Some(f) = &fault {
            count(f);
        }
    }
    record(reply.status.as_u16());
    let paced_cdn = origin == Origin::Cdn
        && method == Method::GET
        && fault.is_none()
        && reply.status.is_success()
        && !reply.body.is_empty();
    if paced_cdn && !shared.config.cdn_first_byte.is_zero() {
        tokio::time::sleep(shared.config.cdn_first_byte).await;
    }

    let mut response = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            response = response.header(name, value);
        }
    }
    // Set explicitly so that a HEAD answer reports the length a GET would send.
    response = response.header(header::CONTENT_LENGTH, reply.body.len());
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        use futures::StreamExt;
        match fault {
            Some(Fault::Truncate { after }) => {
                let head = reply.body.slice(..after.min(reply.body.len()));
                // hyper flushes what it has buffered only when the body is pending: without
                // the pause the error would discard the headers and the head of the body too.
                let cut = futures::stream::once(async {
                    tokio::time::sleep(TRUNCATE_FLUSH_PAUSE).await;
                    Err(io::Error::other("mock Hub: body truncated by fault injection"))
                });
                Body::from_stream(futures::stream::iter([Ok(head)]).chain(cut))
            }
            Some(Fault::Stall(pause)) => {
                let data = reply.body;
                Body::from_stream(futures::stream::once(async move {
                    tokio::time::sleep(pause).await;
                    Ok::<_, Infallible>(data)
                }))
            }
            Some(Fault::StallAfter { after, pause }) => {
                let split = after.min(reply.body.len());
                let (head, tail) = (reply.body.slice(..split), reply.body.slice(split..));
                let rest = futures::stream::once(async move {
                    tokio::time::sleep(pause).await;
                    Ok::<_, Infallible>(tail)
                });
                Body::from_stream(futures::stream::iter([Ok(head)]).chain(rest))
            }
            Some(Fault::WrongBytes) if !reply.body.is_empty() => {
                let mut data = reply.body.to_vec();
                data[0] ^= 0xff;
                Body::from(data)
            }
            None if paced_cdn => paced(reply.body, shared.config.cdn_rate),
            _ => Body::from(reply.body),
        }
    };
    // The builder only fails on invalid parts, and every part above was checked.
    Ok(response.body(body).unwrap_or_else(|_| Response::new(Body::empty())))
}

/// A CDN answer's body at `rate` bytes per second (in pieces of [`PACE_PIECE`], each sent on
/// schedule), or all at once without a rate.
fn paced(data: Bytes, rate: Option<u64>) -> Body {
    use futures::StreamExt;
    if rate.is_none() {
        return Body::from(data);
    }
    let pieces: Vec<Bytes> = (0..data.len())
        .step_by(PACE_PIECE)
        .map(|at| data.slice(at..(at + PACE_PIECE).min(data.len())))
        .collect();
    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    Body::from_stream(futures::stream::iter(pieces).then(move |piece| {
        // Each piece leaves when the bytes before it would have at `rate`.
        let due = start
            + rate
                .map_or(Duration::ZERO, |r| Duration::from_secs_f64(sent as f64 / r.max(1) as f64));
        sent += piece.len() as u64;
        async move {
            tokio::time::sleep_until(due).await;
            Ok::<_, Infallible>(piece)
        }
    }))
}

/// Pacing granularity of [`paced`]: small against a chunk, large enough that the timer is
/// not the bottleneck.
const PACE_PIECE: usize = 256 << 10;

/// The `Range` header a [`Fault::WrongContentRange`] answers instead of `range`; unchanged
/// when it is not a plain `bytes=a-b`.
fn skewed_range(skew: RangeSkew, range: &str) -> String {
    let parsed = range
        .trim()
        .strip_prefix("bytes=")
        .and_then(|s| s.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    match (skew, parsed) {
        (RangeSkew::Shifted, Some((a, b))) => format!("bytes={}-{}", a + 1, b + 1),
        (RangeSkew::Short, Some((a, b))) => format!("bytes={a}-{}", b.saturating_sub(1).max(a)),
        _ => range.to_owned(),
    }
}

struct Ctx<'a> {
    shared: &'a Shared,
    range: Option<&'a str>,
    authorization: Option<&'a str>,
    host: Option<&'a str>,
}

/// Whether the request carries a token, and whether the mock knows it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    Anonymous,
    Valid,
    Invalid,
}

impl Ctx<'_> {
    fn auth(&self) -> Auth {
        match self.authorization {
            None => Auth::Anonymous,
            Some(value) => match value.strip_prefix("Bearer ") {
                Some(token)
                    if self.shared.config.valid_tokens.iter().any(|t| t == token.trim()) =>
                {
                    Auth::Valid
                }
                _ => Auth::Invalid,
            },
        }
    }
}

/// Percent-decoded path segments, or `None` when one is not UTF-8.
fn decode_segments(path: &str) -> Option<Vec<String>> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned()))
        .collect()
}

/// `application/x-www-form-urlencoded` query pairs, decoded.
fn parse_query(query: &str) -> Vec<(String, String)> {
    let decode =
        |s: &str| percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn is_truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
}

fn route_hub(ctx: &Ctx<'_>, path_and_query: &str) -> Reply {
    let (raw_path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let Some(segs) = decode_segments(raw_path) else {
        return Reply::error(StatusCode::BAD_REQUEST, None, "Invalid path");
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let query = parse_query(query);
    // A token the Hub does not know is refused before anything else is looked at.
    if ctx.auth() == Auth::Invalid {
        return Reply::error(StatusCode::UNAUTHORIZED, None, INVALID_CREDENTIALS);
    }
    match segs.as_slice() {
        ["api", "models", org, name] => model_info(ctx, &format!("{org}/{name}"), "main", &query),
        ["api", "models", org, name, "revision", rev @ ..] if !rev.is_empty() => {
            model_info(ctx, &format!("{org}/{name}"), &rev.join("/"), &query)
        }
        ["api", "models", org, name, "tree", rev, path @ ..] => {
            tree(ctx, &format!("{org}/{name}"), rev, &path.join("/"), raw_path, &query)
        }
        [org, name, "resolve", rev, path @ ..] if !path.is_empty() => {
            // The raw (still encoded) path after the revision, reused in the 307 Location.
            let raw_tail = raw_path.splitn(6, '/').nth(5).unwrap_or("");
            resolve(ctx, &format!("{org}/{name}"), rev, &path.join("/"), raw_tail)
        }
        _ => Reply::error(StatusCode::NOT_FOUND, None, "Not Found"),
    }
}

/// Looks a repo up as the Hub does for this caller: a private repo does not exist without a
/// valid token, and a missing repo is 401 without a token (the Hub does not say whether it
/// exists) but 404 with one.
fn find_repo(ctx: &Ctx<'_>, id: &str) -> Result<MockRepo, Reply> {
    let auth = ctx.auth();
    let repos = lock(&ctx.shared.repos);
    match repos.get(id) {
        Some(repo) if !repo.private || auth == Auth::Valid => Ok(repo.clone()),
        _ if auth == Auth::Valid => {
            Err(Reply::error(StatusCode::NOT_FOUND, Some("RepoNotFound"), "Repository not found"))
        }
        _ => Err(Reply::error(
            StatusCode::UNAUTHORIZED,
            Some("RepoNotFound"),
            "Invalid username or password.",
        )),
    }
}

fn find_commit<'r>(repo: &'r MockRepo, rev: &str) -> Result<&'r Commit, Reply> {
    repo.resolve_commit(rev).ok_or_else(|| {
        Reply::error(
            StatusCode::NOT_FOUND,
            Some("RevisionNotFound"),
            &format!("Invalid rev id: {rev}"),
        )
    })
}

/// `2024-05-01T12:MM:SS.000Z`, distinct per commit of a repo.
fn commit_date(seq: u64) -> String {
    format!("2024-05-01T12:{:02}:{:02}.000Z", (seq / 60) % 60, seq % 60)
}

fn model_info(ctx: &Ctx<'_>, id: &str, rev: &str, query: &[(String, String)]) -> Reply {
    let repo = match find_repo(ctx, id) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let commit = match find_commit(&repo, rev) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let blobs = query.iter().any(|(k, v)| k == "blobs" && is_truthy(v));
    let siblings: Vec<Value> = commit
        .files
        .iter()
        .map(|(path, f)| {
            let mut s = json!({ "rfilename": path });
            if blobs {
                s["blobId"] = json!(f.git_oid);
                s["size"] = json!(f.size());
                if f.lfs {
                    s["lfs"] = json!({ "sha256": f.sha256, "size": f.size(), "pointerSize": f.pointer_size });
                }
            }
            s
        })
        .collect();
    let created = repo.commits.values().map(|c| c.seq).min().unwrap_or(0);
    let used_storage: u64 = commit.files.values().map(|f| f.size()).sum();
    let mut info = json!({
        "_id": &hex::encode(Sha1::digest(id.as_bytes()))[..24],
        "id": id,
        "modelId": id,
        "author": id.split('/').next().unwrap_or(id),
        "sha": commit.sha,
        "lastModified": commit_date(commit.seq),
        "createdAt": commit_date(created),
        "private": repo.private,
        "gated": if repo.gated { json!("auto") } else { json!(false) },
        "disabled": false,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "spaces": [],
        "usedStorage": used_storage,
    });
    if let Some(tag) = &repo.pipeline_tag {
        info["pipeline_tag"] = json!(tag);
    }
    if let Some(lib) = &repo.library_name {
        info["library_name"] = json!(lib);
    }
    Reply::json(StatusCode::OK, &info)
}

fn tree(
    ctx: &Ctx<'_>,
    id: &str,
    rev: &str,
    base: &str,
    raw_path: &str,
    query: &[(String, String)],
) -> Reply {
    let repo = match find_repo(ctx, id) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let commit = match find_commit(&repo, rev) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let recursive = query.iter().any(|(k, v)| k == "recursive" && is_truthy(v));
    let cursor = match query.iter().find(|(k, _)| k == "cursor").map(|(_, v)| v.parse::<usize>()) {
        None => 0,
        Some(Ok(c)) => c,
        Some(Err(_)) => return Reply::error(StatusCode::BAD_REQUEST, None, "Invalid cursor"),
    };
    let entries = match tree_entries(commit, base, recursive) {
        Some(e) => e,
        None => {
            return Reply::error(
                StatusCode::NOT_FOUND,
                Some("EntryNotFound"),
                &format!("{base} does not exist on \"{rev}\""),
            )
            .header("x-repo-commit", commit.sha.clone())
        }
    };
    let page_size = ctx.shared.config.page_size.max(1);
    let page: Vec<Value> = entries.iter().skip(cursor).take(page_size).cloned().collect();
    let mut reply = Reply::json(StatusCode::OK, &Value::Array(page));
    let next = cursor.saturating_add(page_size);
    if next < entries.len() {
        // Absolute, like the real Hub's: huggingface_hub requests `response.links["next"]["url"]`
        // as is. The host is the one the client used.
        let host = ctx
            .host
            .map(|h| format!("http://{h}"))
            .unwrap_or_else(|| ctx.shared.hub_origin.clone());
        let mut q: Vec<String> = query
            .iter()
            .filter(|(k, _)| k != "cursor")
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect();
        q.push(format!("cursor={next}"));
        reply =
            reply.header(header::LINK, format!("<{host}{raw_path}?{}>; rel=\"next\"", q.join("&")));
    }
    reply
}

fn form_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The listing of `base` ("" = root) at `commit`, sorted by path, or `None` when `base` is
/// not a directory. Directories come from the file paths (git has no empty directories).
fn tree_entries(commit: &Commit, base: &str, recursive: bool) -> Option<Vec<Value>> {
    let prefix = if base.is_empty() { String::new() } else { format!("{base}/") };
    let mut dirs: BTreeMap<String, Sha1> = BTreeMap::new();
    let mut files: Vec<(&String, &Arc<StoredFile>)> = Vec::new();
    for (path, f) in &commit.files {
        let Some(rel) = path.strip_prefix(&prefix) else { continue };
        // Every directory between `base` and the file; each gets an oid over what it holds.
        let parts: Vec<&str> = rel.split('/').collect();
        for depth in 1..parts.len() {
            let dir = format!("{prefix}{}", parts[..depth].join("/"));
            dirs.entry(dir)
                .or_insert_with(|| {
                    let mut h = Sha1::new();
                    h.update(b"tree\0");
                    h
                })
                .update(format!("{path}\0{}\n", f.git_oid).as_bytes());
        }
        if recursive || parts.len() == 1 {
            files.push((path, f));
        }
    }
    if !base.is_empty() && files.is_empty() && dirs.is_empty() {
        return None;
    }
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for (dir, h) in dirs {
        let depth = dir[prefix.len()..].split('/').count();
        if recursive || depth == 1 {
            let oid = hex::encode(h.finalize());
            out.insert(
                dir.clone(),
                json!({ "type": "directory", "oid": oid, "size": 0, "path": dir }),
            );
        }
    }
    for (path, f) in files {
        let mut e = json!({ "type": "file", "oid": f.git_oid, "size": f.size(), "path": path });
        if f.lfs {
            e["lfs"] = json!({ "oid": f.sha256, "size": f.size(), "pointerSize": f.pointer_size });
        }
        out.insert(path.clone(), e);
    }
    Some(out.into_values().collect())
}

fn resolve(ctx: &Ctx<'_>, id: &str, rev: &str, path: &str, raw_tail: &str) -> Reply {
    let repo = match find_repo(ctx, id) {
        Ok(r) => r,
        Err(e) => return e,
    };
    // Gated: info and tree are public, the bytes are not.
    if repo.gated && ctx.auth() != Auth::Valid {
        let message = format!(
            "Access to model {id} is restricted. You must have access to it and be authenticated to access it. Please log in."
        );
        return Reply::error(StatusCode::UNAUTHORIZED, Some("GatedRepo"), &message);
    }
    let commit = match find_commit(&repo, rev) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let Some(file) = commit.files.get(path) else {
        // huggingface_hub caches the absence under this commit (`.no_exist/<commit>/`).
        return Reply::error(StatusCode::NOT_FOUND, Some("EntryNotFound"), "Entry not found")
            .header("x-repo-commit", commit.sha.clone());
    };
    if file.lfs {
        let signature = hex::encode(rand::random::<[u8; 32]>());
        let location = format!(
            "{}/lfs/{}?X-Amz-Expires={CDN_URL_EXPIRES_SECS}&X-Amz-Signature={signature}",
            cdn_base(ctx.shared),
            file.sha256
        );
        let etag = format!("\"{}\"", file.sha256);
        return Reply::new(StatusCode::FOUND)
            .header("x-repo-commit", commit.sha.clone())
            .header(header::ETAG, etag.clone())
            .header("x-linked-etag", etag)
            .header("x-linked-size", file.size().to_string())
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::LOCATION, location.clone())
            .body(format!("Found. Redirecting to {location}"));
    }
    if rev != commit.sha {
        // The real Hub pins a branch or tag to its commit with a relative redirect, which
        // clients must resolve against the request URL.
        let location = format!("/{id}/resolve/{}/{raw_tail}", commit.sha);
        return Reply::new(StatusCode::TEMPORARY_REDIRECT)
            .header("x-repo-commit", commit.sha.clone())
            .header(header::LOCATION, location.clone())
            .body(format!("Temporary Redirect. Redirecting to {location}"));
    }
    ranged(StatusCode::OK, file.data.clone(), ctx.range)
        .header("x-repo-commit", commit.sha.clone())
        .header(header::ETAG, format!("\"{}\"", file.git_oid))
        .header(header::CONTENT_TYPE, "application/octet-stream")
}

fn cdn_base(shared: &Shared) -> String {
    match &shared.config.cdn_base {
        Some(base) => base.trim_end_matches('/').to_owned(),
        None => shared.cdn_origin.clone(),
    }
}

fn route_cdn(ctx: &Ctx<'_>, path_and_query: &str) -> Reply {
    let raw_path = path_and_query.split_once('?').map_or(path_and_query, |(p, _)| p);
    let Some(sha256) = raw_path.strip_prefix("/lfs/") else {
        return Reply::error(StatusCode::NOT_FOUND, None, "NoSuchKey");
    };
    let data = lock(&ctx.shared.blobs).get(sha256).cloned();
    match data {
        Some(data) => ranged(StatusCode::OK, data, ctx.range)
            .header(header::ETAG, format!("\"{sha256}\""))
            .header(header::CONTENT_TYPE, "application/octet-stream"),
        None => Reply::error(StatusCode::NOT_FOUND, None, "NoSuchKey"),
    }
}

/// The answer for `data` to a request with this `Range` header (if any).
fn ranged(full_status: StatusCode, data: Bytes, range: Option<&str>) -> Reply {
    let total = data.len() as u64;
    let reply = match range.map(|r| parse_range(r, total)) {
        None | Some(RangeOutcome::Full) => Reply::new(full_status).body(data),
        Some(RangeOutcome::Partial { start, end }) => Reply::new(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{total}"))
            .body(data.slice(start as usize..=end as usize)),
        Some(RangeOutcome::Unsatisfiable) => Reply::new(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{total}")),
    };
    reply.header(header::ACCEPT_RANGES, "bytes")
}

/// How a `Range` header applies to a representation of `total` bytes (RFC 9110 §14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeOutcome {
    /// No usable range (malformed, several ranges, another unit): send everything, 200.
    Full,
    /// 206 with bytes `start..=end`, both inside the representation.
    Partial { start: u64, end: u64 },
    /// 416.
    Unsatisfiable,
}

/// Parse `bytes=a-b`, `bytes=a-` or `bytes=-n`. Servers may ignore a range they do not
/// understand, so anything else (multiple ranges included) is [`RangeOutcome::Full`].
pub fn parse_range(header: &str, total: u64) -> RangeOutcome {
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return RangeOutcome::Full };
    if spec.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeOutcome::Full };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (first.is_empty(), last.is_empty()) {
        // `-n`: the last n bytes; a suffix of 0 bytes or of an empty file selects nothing.
        (true, false) => match num(last) {
            None => RangeOutcome::Full,
            Some(0) => RangeOutcome::Unsatisfiable,
            Some(_) if total == 0 => RangeOutcome::Unsatisfiable,
            Some(n) => RangeOutcome::Partial { start: total.saturating_sub(n), end: total - 1 },
        },
        // `a-`: from a to the end.
        (false, true) => match num(first) {
            None => RangeOutcome::Full,
            Some(a) if a >= total => RangeOutcome::Unsatisfiable,
            Some(a) => RangeOutcome::Partial { start: a, end: total - 1 },
        },
        // `a-b`: b past the end is clamped; b < a is malformed, hence ignored.
        (false, false) => match (num(first), num(last)) {
            (Some(a), Some(b)) if a <= b => {
                if a >= total {
                    RangeOutcome::Unsatisfiable
                } else {
                    RangeOutcome::Partial { start: a, end: b.min(total - 1) }
                }
            }
            _ => RangeOutcome::Full,
        },
        (true, true) => RangeOutcome::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    #[test]
    fn range_forms() {
        use RangeOutcome::*;
        assert_eq!(parse_range("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=90-200", 100), Partial { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=10-", 100), Partial { start: 10, end: 99 });
        assert_eq!(parse_range("bytes=-10", 100), Partial { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=-1000", 100), Partial { start: 0, end: 99 });
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-100", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-4", 100), Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=a-b", 100), Full);
        assert_eq!(parse_range("bytes=-", 100), Full);
        assert_eq!(parse_range("bytes=+1-2", 100), Full);
    }

    proptest! {
        #[test]
        fn closed_range_is_clamped_or_unsatisfiable(total in 0u64..10_000, a in 0u64..12_000, len in 0u64..12_000) {
            let b = a + len;
            match parse_range(&format!("bytes={a}-{b}"), total) {
                RangeOutcome::Partial { start, end } => {
                    prop_assert!(a < total);
                    prop_assert_eq!(start, a);
                    prop_assert_eq!(end, b.min(total - 1));
                }
                RangeOutcome::Unsatisfiable => prop_assert!(a >= total),
                RangeOutcome::Full => prop_assert!(false, "a valid range was ignored"),
            }
        }

        #[test]
        fn open_and_suffix_ranges(total in 0u64..10_000, n in 0u64..12_000) {
            match parse_range(&format!("bytes={n}-"), total) {
                RangeOutcome::Partial { start, end } => {
                    prop_assert!(n < total);
                    prop_assert_eq!((start, end), (n, total - 1));
                }
                other => prop_assert!(n >= total && other == RangeOutcome::Unsatisfiable),
            }
            match parse_range(&format!("bytes=-{n}"), total) {
                RangeOutcome::Partial { start, end } => {
                    prop_assert!(n > 0 && total > 0);
                    prop_assert_eq!((start, end), (total.saturating_sub(n), total - 1));
                    prop_assert_eq!(end - start + 1, n.min(total));
                }
                other => prop_assert!((n == 0 || total == 0) && other == RangeOutcome::Unsatisfiable),
            }
        }
    }

    /// A minimal HTTP/1.1 GET, so these tests need no client crate and no runtime.
    fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let rest = url.strip_prefix("http://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap());
        let mut stream = TcpStream::connect(authority).unwrap();
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(raw[..split].to_vec()).unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        (status, headers, raw[split + 4..].to_vec())
    }

    fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn tree_pages_follow_absolute_link_until_done() {
        let hub = MockHub::start(MockConfig { page_size: 2, ..MockConfig::default() });
        let files = (0..5).map(|i| MockFile::git(&format!("d/f{i}.txt"), vec![b'x'; i])).collect();
        hub.add_repo(MockRepo::new("org/paged", files));

        let mut url = format!(
            "{}/api/models/org/paged/tree/main?recursive=true&expand=false",
            hub.endpoint()
        );
        let mut paths = Vec::new();
        let mut pages = 0;
        loop {
            let (status, headers, body) = get(&url, &[]);
            assert_eq!(status, 200);
            pages += 1;
            let page: Vec<Value> = serde_json::from_slice(&body).unwrap();
            assert!(page.len() <= 2);
            paths.extend(page.iter().map(|e| e["path"].as_str().unwrap().to_owned()));
            match header(&headers, "link") {
                None => break,
                Some(link) => {
                    let next =
                        link.strip_prefix('<').unwrap().split_once(">; rel=\"next\"").unwrap().0;
                    assert!(next.starts_with(&hub.endpoint()), "{next}");
                    assert!(
                        next.contains("recursive=true") && next.contains("expand=false"),
                        "{next}"
                    );
                    url = next.to_owned();
                }
            }
        }
        // The directory `d` plus five files, in path order, over three pages of two.
        assert_eq!(pages, 3);
        assert_eq!(paths, ["d", "d/f0.txt", "d/f1.txt", "d/f2.txt", "d/f3.txt", "d/f4.txt"]);
    }

    #[test]
    fn ranges_on_both_origins() {
        let hub = MockHub::start(MockConfig::default());
        let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        hub.add_repo(MockRepo::new(
            "org/r",
            vec![MockFile::git("a.txt", data.clone()), MockFile::lfs("b.bin", data.clone())],
        ));
        let sha = {
            let (s, h, _) = get(&format!("{}/org/r/resolve/main/a.txt", hub.endpoint()), &[]);
            assert_eq!(s, 307);
            header(&h, "x-repo-commit").unwrap().to_owned()
        };
        let (s, h, b) = get(
            &format!("{}/org/r/resolve/{sha}/a.txt", hub.endpoint()),
            &[("Range", "bytes=-10")],
        );
        assert_eq!((s, header(&h, "content-range")), (206, Some("bytes 2990-2999/3000")));
        assert_eq!(b, &data[2990..]);
        let (s, h, _) = get(
            &format!("{}/org/r/resolve/{sha}/a.txt", hub.endpoint()),
            &[("Range", "bytes=3000-")],
        );
        assert_eq!((s, header(&h, "content-range")), (416, Some("bytes */3000")));

        let (s, h, _) = get(&format!("{}/org/r/resolve/main/b.bin", hub.endpoint()), &[]);
        assert_eq!(s, 302);
        let location = header(&h, "location").unwrap().to_owned();
        assert!(location.starts_with(&format!("{}/lfs/", hub.cdn_origin())), "{location}");
        let (s, h, b) = get(&location, &[("Range", "bytes=100-")]);
        assert_eq!((s, header(&h, "content-range")), (206, Some("bytes 100-2999/3000")));
        assert_eq!(b, &data[100..]);
    }

    #[test]
    fn lfs_redirects_go_to_the_configured_cdn_base() {
        let config = MockConfig {
            cdn_base: Some("http://127.0.0.1:9/".to_owned()),
            ..MockConfig::default()
        };
        let hub = MockHub::start(config);
        let data = b"external cdn".to_vec();
        let sha256 = hex::encode(Sha256::digest(&data));
        hub.add_repo(MockRepo::new("org/r", vec![MockFile::lfs("w.bin", data)]));
        assert_eq!(hub.cdn_base(), "http://127.0.0.1:9");
        let (s, h, _) = get(&format!("{}/org/r/resolve/main/w.bin", hub.endpoint()), &[]);
        assert_eq!(s, 302);
        let location = header(&h, "location").unwrap();
        let prefix = format!("http://127.0.0.1:9/lfs/{sha256}?X-Amz-Expires=3600&X-Amz-Signature=");
        assert!(location.starts_with(&prefix), "{location}");
        assert_eq!(location.len(), prefix.len() + 64, "{location}");
        // The mock's own CDN still serves the blob, for anyone who asks it directly.
        assert_eq!(get(&format!("{}/lfs/{sha256}", hub.cdn_origin()), &[]).2, b"external cdn");
    }

    #[test]
    fn faults_hit_matching_requests_then_stop() {
        let hub = MockHub::start(MockConfig::default());
        let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        hub.add_repo(MockRepo::new("org/f", vec![MockFile::lfs("w.bin", data.clone())]));
        let sha256 = hex::encode(Sha256::digest(&data));
        let cdn = format!("{}/lfs/{sha256}", hub.cdn_origin());

        hub.inject(FaultRule::new(Some(Origin::Cdn), "/lfs/", 1, Fault::Status(503)));
        assert_eq!(get(&cdn, &[]).0, 503);
        assert_eq!(get(&cdn, &[]).0, 200, "a rule with times = 1 applies once");

        hub.inject(FaultRule::new(
            Some(Origin::Hub),
            "",
            1,
            Fault::RateLimited { retry_after_secs: 7 },
        ));
        let (s, h, _) = get(&format!("{}/api/models/org/f", hub.endpoint()), &[]);
        assert_eq!((s, header(&h, "retry-after")), (429, Some("7")));

        hub.inject(FaultRule::new(None, &sha256, 1, Fault::Truncate { after: 10 }));
        let (s, h, b) = get(&cdn, &[]);
        assert_eq!(
            (s, header(&h, "content-length"), b.as_slice()),
            (200, Some("3000"), &data[..10])
        );

        hub.inject(FaultRule::new(None, &sha256, 1, Fault::WrongBytes));
        let (_, _, b) = get(&cdn, &[("Range", "bytes=5-9")]);
        assert_eq!((b[0], &b[1..]), (data[5] ^ 0xff, &data[6..10]));

        hub.inject(FaultRule::new(None, &sha256, 1, Fault::Reset));
        let authority = cdn.strip_prefix("http://").unwrap().split('/').next().unwrap().to_owned();
        let mut stream = TcpStream::connect(authority).unwrap();
        stream
            .write_all(format!("GET /lfs/{sha256} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        assert!(raw.is_empty(), "a reset connection answered: {:?}", String::from_utf8_lossy(&raw));

        let statuses: Vec<u16> = hub.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [503, 200, 429, 200, 206, 0]);
    }

    #[test]
    fn range_rate_limit_and_expiry_faults() {
        let hub = MockHub::start(MockConfig::default());
        let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        hub.add_repo(MockRepo::new("org/f", vec![MockFile::lfs("w.bin", data.clone())]));
        let sha256 = hex::encode(Sha256::digest(&data));
        let cdn = format!("{}/lfs/{sha256}", hub.cdn_origin());
        let range = [("Range", "bytes=10-19")];
        let once = |fault: Fault| hub.inject(FaultRule::new(Some(Origin::Cdn), "/lfs/", 1, fault));

        once(Fault::WrongContentRange(RangeSkew::Shifted));
        let (s, h, b) = get(&cdn, &range);
        assert_eq!((s, header(&h, "content-range")), (206, Some("bytes 11-20/3000")));
        assert_eq!(b, &data[11..=20]);
        once(Fault::WrongContentRange(RangeSkew::Short));
        let (s, h, b) = get(&cdn, &range);
        assert_eq!((s, header(&h, "content-range")), (206, Some("bytes 10-18/3000")));
        assert_eq!(b, &data[10..=18]);
        once(Fault::WrongContentRange(RangeSkew::WrongTotal));
        let (s, h, b) = get(&cdn, &range);
        assert_eq!((s, header(&h, "content-range")), (206, Some("bytes 10-19/3001")));
        assert_eq!(b, &data[10..=19]);
        once(Fault::FullBody);
        let (s, h, b) = get(&cdn, &range);
        assert_eq!((s, header(&h, "content-range"), b.len()), (200, None, 3000));
        once(Fault::RateLimitedIetf { reset_secs: 12 });
        let (s, h, _) = get(&cdn, &range);
        assert_eq!(
            (s, header(&h, "ratelimit"), header(&h, "retry-after")),
            (429, Some(r#""api";r=0;t=12"#), None)
        );
        assert_eq!(header(&h, "ratelimit-policy"), Some(r#""fixed window";"api";q=500;w=300"#));
        once(Fault::Expired);
        let (s, _, b) = get(&cdn, &range);
        assert_eq!(s, 403);
        assert!(String::from_utf8(b).unwrap().contains("Request has expired"));
        once(Fault::StallAfter { after: 4, pause: Duration::from_millis(50) });
        let (s, _, b) = get(&cdn, &range);
        assert_eq!((s, b.as_slice()), (206, &data[10..=19]));
        // A fault that cannot apply (no range asked) is not counted.
        once(Fault::FullBody);
        assert_eq!(get(&cdn, &[]).0, 200);
        let counted: Vec<(&str, usize)> = hub.faults_injected().into_iter().collect();
        assert_eq!(
            counted,
            [
                ("200-not-206", 1),
                ("429-ratelimit", 1),
                ("cdn-expired", 1),
                ("stall-mid-body", 1),
                ("wrong-content-range", 3)
            ]
        );
        // Headers are recorded per request, as received.
        let last = hub.requests().pop().unwrap();
        assert!(last.headers.iter().any(|(k, v)| k == "host" && !v.is_empty()), "{last:?}");
    }

    #[test]
    fn random_faults_follow_their_origin_and_probability() {
        let hub = MockHub::start(MockConfig::default());
        let data = vec![7u8; 100];
        hub.add_repo(MockRepo::new("org/f", vec![MockFile::lfs("w.bin", data.clone())]));
        let cdn = format!("{}/lfs/{}", hub.cdn_origin(), hex::encode(Sha256::digest(&data)));
        hub.inject_random(RandomFaults {
            seed: 1,
            probability: 1.0,
            ranged_only: true,
            kinds: vec![(Some(Origin::Hub), Fault::Status(500)), (None, Fault::Status(503))],
        });
        for _ in 0..5 {
            assert_eq!(get(&cdn, &[("Range", "bytes=0-9")]).0, 503, "only 503 may hit the CDN");
            assert_eq!(get(&cdn, &[]).0, 200, "unranged requests are spared");
        }
        hub.clear_faults();
        assert_eq!(get(&cdn, &[("Range", "bytes=0-9")]).0, 206);
        assert_eq!(hub.faults_injected().get("status"), Some(&5));
    }
}
