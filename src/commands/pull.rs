//! `modelfs pull ORG/REPO[@REV] [--quant Q]... [--include GLOB]...`: download now what the
//! mount would fetch on demand.
//!
//! The repo is resolved, and its manifest and ref recorded, by [`ModelFs::snapshot`] (with a
//! zero revalidate interval: a pull asks the Hub which commit a branch is now), so a pulled
//! repo is exactly what the mount then serves offline. Files are chosen by quant view (the
//! quant's files plus the shared ones, as the mount lists them) and globs, and their missing
//! chunks fetched through a [`ChunkFetcher`]: the same length check, store write and
//! whole-file verification as a read through the mount. At most `--max-connections` chunk
//! fetches are in flight; they are handed out in file order, so files complete one after the
//! other rather than all at the end.
//!
//! A daemon may serve the same store meanwhile: its xattrs show each chunk as it is committed,
//! and a chunk both fetch is stored once (a second write of a stored chunk changes nothing).
//! A pull ends only when every file it fetched is verified (by its own fetcher, or by the
//! daemon that completed it) or has failed.

use crate::lock;
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use indicatif::ProgressBar;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

pub use super::progress::Progress;
use super::{blocking, human_bytes, plural, resolve, short, CommandError, Target};
use crate::cache::{CacheOptions, ModelCache};
use crate::cli::PullArgs;
use crate::evict::Evictor;
use crate::fetch::{verify_file, ChunkFetcher, FileRef, PrefetchLimits, Verdict};
use crate::fs::{FsConfig, FsError, ModelFs, Snapshot};
use crate::hub::{RangeFetcher, RepoSource};
use crate::store::{chunk_count, chunk_len, ChunkStore, FileState, StoreError};
use crate::tier::TierClient;

/// What to pull.
#[derive(Clone, Debug)]
pub struct PullRequest {
    pub target: Target,
    /// Quant views whose files to pull (union); empty: the whole repo.
    pub quants: Vec<String>,
    /// Globs a file's repo path must match (any of them); empty: no filter.
    pub include: Vec<String>,
    /// Chunk fetches in flight at once.
    pub max_connections: usize,
    /// Upper bound on one chunk fetch, retries included.
    pub read_timeout: Duration,
    /// Publishes the files being pulled as open, so that neither a mount's eviction nor a
    /// `gc` removes a file while it is pulled (see `evict`). `None` in tests without a store
    /// directory.
    pub lease: Option<Arc<Evictor>>,
    /// The shared tier to read through and to seed with every chunk of the pulled files.
    pub tier: Option<Arc<TierClient>>,
}

/// What a pull did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullReport {
    pub commit: String,
    /// Files selected.
    pub files: usize,
    pub total_bytes: u64,
    /// Bytes of the selected files already stored when the pull started.
    pub already_bytes: u64,
    /// Bytes this pull asked the Hub for and got.
    pub fetched_bytes: u64,
    /// `(path, reason)` of every file that did not end verified, in path order.
    pub failed: Vec<(String, String)>,
    /// With a tier: bytes of chunks written to it (or found there, written by another node).
    pub tier_stored_bytes: Option<u64>,
}

/// How often the store is asked whether a downloaded file has been verified yet.
const VERIFY_POLL: Duration = Duration::from_millis(50);

/// How long a downloaded file may stay `complete` (hash check pending) before the pull
/// checks it itself: a fixed allowance plus one second per 64 MiB, far slower than sha256 on
/// any machine, so this only fires when the process that completed the file died before
/// checking it.
const VERIFY_WAIT_BASE: Duration = Duration::from_secs(10);
const VERIFY_WAIT_BYTES_PER_SEC: u64 = 64 << 20;

pub(super) fn run(args: PullArgs) -> Result<(), CommandError> {
    let target = Target::parse(&args.repo)?;
    let config = resolve(&args.store)?;
    // The config's tier only for a repo whose profile there shares it; --tier always.
    let shares = crate::profile::Profiles::new(
        config.file.profile,
        crate::config::named_profiles(&config.file.repos),
        true,
    )
    .map_or(true, |p| p.shares(&target.repo));
    let options = CacheOptions {
        store: args.store.store.clone(),
        config: args.store.config.clone(),
        endpoint: args.endpoint.clone(),
        tier: args.tier.clone().or(config.file.tier.filter(|_| shares)),
        config_tier: false,
        max_connections: args.max_connections.max(1),
        read_timeout: Duration::from_secs(args.read_timeout.max(1)),
        chunk_size: args.chunk_size,
        ..CacheOptions::default()
    };
    let cache = ModelCache::open(options)?;
    let request = cache.pull_request(target, args.quant, args.include);
    let progress =
        if std::io::stderr().is_terminal() { Progress::bars() } else { Progress::plain() };
    let started = Instant::now();
    let report = cache.pull(&request, &progress)?;
    println!("{}", summary(&request.target, &report, started.elapsed()));
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(CommandError::PullFailed {
            target: request.target.to_string(),
            failed: report.failed.into_iter().map(|(path, _)| path).collect(),
        })
    }
}

/// Resolve, select, fetch and verify. Fails only when nothing can be pulled (unknown repo,
/// quant or glob, the store unusable); a file that fails is reported in
/// [`PullReport::failed`] while the others go on.
pub async fn pull_into(
    store: Arc<dyn ChunkStore>,
    source: Arc<dyn RepoSource>,
    origin: Arc<dyn RangeFetcher>,
    request: &PullRequest,
    progress: &Progress,
) -> Result<PullReport, CommandError> {
    let globs = build_globs(&request.include)?;
    // What this process writes to the tier is counted process-wide: the difference is the
    // pull's (one pull per process, as the command runs it).
    let tier_stored_before = crate::metrics::get().traffic().stored_to_tier;
    // Zero revalidate: a branch is resolved on the Hub now, whatever the store recorded.
    // No stale commit either: a pull that cannot ask the Hub says so.
    let config = FsConfig {
        offline: false,
        serve_stale: false,
        revalidate: Duration::ZERO,
        ..FsConfig::default()
    };
    let fs = ModelFs::new(
        config,
        store.clone(),
        source,
        origin.clone(),
        request.read_timeout,
        PrefetchLimits::NONE,
    );
    if let Some(tier) = &request.tier {
        // The ref and manifest the Hub confirms are published to it.
        fs.set_tier(tier.clone());
    }
    let target = &request.target;
    let snap = fs
        .snapshot(&target.repo, target.rev.as_deref())
        .await
        .map_err(|e| resolve_error(target, e))?;
    let selected = select_files(&snap, &request.quants, globs.as_ref())?;
    if selected.is_empty() && (!request.quants.is_empty() || !request.include.is_empty()) {
        let mut filters: Vec<String> =
            request.quants.iter().map(|q| format!("--quant {q}")).collect();
        filters.extend(request.include.iter().map(|g| format!("--include {g:?}")));
        return Err(CommandError::NothingSelected {
            target: format!("{}@{}", target.repo, short(&snap.manifest.commit)),
            filters: filters.join(" "),
        });
    }
    let files: Vec<FileRef> = selected.iter().filter_map(|&i| snap.file_ref(i)).collect();
    let plans = {
        let store = store.clone();
        blocking(move || plan(store.as_ref(), files)).await?
    };

    // Held open until the pull ends, however it ends (a library process lives on after it).
    let _held = request.lease.clone().map(|lease| {
        let contents: Vec<_> = plans.iter().map(|p| p.file.content()).collect();
        for content in &contents {
            lease.opened(content);
        }
        Held { lease, contents }
    });
    let total_bytes: u64 = plans.iter().map(|p| p.file.remote.size).sum();
    let already_bytes: u64 = plans.iter().map(|p| p.stored).sum();
    progress.start(total_bytes, already_bytes);
    // The pull asks for every chunk itself; read-ahead would only duplicate its requests.
    let fetcher =
        ChunkFetcher::new(store.clone(), origin, request.read_timeout, PrefetchLimits::NONE);
    if let Some(lease) = &request.lease {
        // Its fetches then show as `downloading` in every mount's xattrs, and a full store
        // makes room as a mount's does.
        fetcher.set_evictor(lease.clone());
    }
    if let Some(tier) = &request.tier {
        // Missing chunks come from the tier when it has them, the rest from the Hub, then
        // go to it; what this store held already is offered to it from here.
        fetcher.set_tier(tier.clone());
        for plan in &plans {
            tier.offer_stored(&plan.file, plan.held.iter().copied());
        }
    }
    let ctx =
        Arc::new(Ctx { fetcher, store, progress: progress.clone(), fetched: AtomicU64::new(0) });
    let permits = Arc::new(Semaphore::new(request.max_connections.max(1)));
    let mut tasks: JoinSet<Option<(String, Result<(), String>)>> = JoinSet::new();
    let files = plans.len();
    for plan in plans {
        let file = Arc::new(InFlight {
            remaining: AtomicU64::new(plan.missing.len() as u64),
            failure: Mutex::new(None),
            bar: Mutex::new(None),
            file: plan.file,
        });
        if plan.missing.is_empty() {
            let ctx = ctx.clone();
            tasks.spawn(async move { Some(finish(&ctx, &file, false).await) });
            continue;
        }
        for (n, index) in plan.missing.into_iter().enumerate() {
            // Permits are taken here, in file order, so earlier files finish first.
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| CommandError::Internal(e.to_string()))?;
            if progress.stopped() {
                // Chunks in flight end (a chunk is stored whole or not at all).
                while tasks.join_next().await.is_some() {}
                progress.finish();
                return Err(CommandError::Cancelled);
            }
            if n == 0 {
                let bar = ctx.progress.file_started(&file.file.remote, plan.stored);
                *lock(&file.bar) = Some(bar);
            }
            tasks.spawn(fetch_chunk(ctx.clone(), file.clone(), index, permit));
        }
    }
    let mut failed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if progress.stopped() {
            // Chunks in flight end (each is stored whole or not at all); the others see the
            // stop and start nothing. Not aborted: a fetch dropped half-way would leave its
            // file counted as in flight in this process's lease (`downloading` everywhere)
            // for as long as the process lives, which for a library is long.
            while tasks.join_next().await.is_some() {}
            progress.finish();
            return Err(CommandError::Cancelled);
        }
        match joined {
            Ok(Some((path, Err(reason)))) => failed.push((path, reason)),
            Ok(_) => {}
            Err(e) => return Err(CommandError::Internal(e.to_string())),
        }
    }
    failed.sort();
    let tier_stored_bytes = match &request.tier {
        Some(tier) => {
            tier.flush().await;
            Some(crate::metrics::get().traffic().stored_to_tier - tier_stored_before)
        }
        None => None,
    };
    progress.finish();
    Ok(PullReport {
        commit: snap.manifest.commit.clone(),
        files,
        total_bytes,
        already_bytes,
        fetched_bytes: ctx.fetched.load(Ordering::Relaxed),
        failed,
        tier_stored_bytes,
    })
}

/// The files to pull, as indices into the manifest, in path order: the files of the quant
/// views named (each as the mount shows it: its own files plus the shared ones), or of the
/// whole repo when none is, that match one of the globs, if any.
pub fn select_files(
    snap: &Snapshot,
    quants: &[String],
    include: Option<&GlobSet>,
) -> Result<Vec<usize>, CommandError> {
    let mut chosen: BTreeSet<usize> = BTreeSet::new();
    if quants.is_empty() {
        chosen.extend(&snap.all.files);
    }
    for quant in quants {
        let view = snap.find_view(quant).and_then(|kind| snap.view(kind)).ok_or_else(|| {
            CommandError::UnknownQuant {
                repo: snap.manifest.repo.to_string(),
                quant: quant.clone(),
                available: snap.view_names().map(|(_, name)| name.to_string()).collect(),
            }
        })?;
        chosen.extend(&view.files);
    }
    let matches = |i: &usize| match (include, snap.file(*i)) {
        (None, _) => true,
        (Some(globs), Some(entry)) => globs.is_match(&entry.path),
        (Some(_), None) => false,
    };
    Ok(chosen.into_iter().filter(matches).collect())
}

/// `--include` patterns as one set; `None` when there are none. As huggingface_hub's
/// `allow_patterns` (fnmatch), `*` matches across `/`, and a pattern ending in `/` means
/// everything below that folder.
pub fn build_globs(patterns: &[String]) -> Result<Option<GlobSet>, CommandError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        let full = if pattern.ends_with('/') { format!("{pattern}*") } else { pattern.to_string() };
        let glob = GlobBuilder::new(&full).literal_separator(false).build().map_err(|e| {
            CommandError::BadGlob { pattern: pattern.clone(), reason: e.kind().to_string() }
        })?;
        set.add(glob);
    }
    set.build().map(Some).map_err(|e| CommandError::BadGlob {
        pattern: patterns.join(" "),
        reason: e.kind().to_string(),
    })
}

fn resolve_error(target: &Target, e: FsError) -> CommandError {
    CommandError::Resolve { target: target.to_string(), source: e }
}

/// One selected file before the download: which chunks it lacks.
struct FilePlan {
    file: FileRef,
    missing: Vec<u64>,
    /// The chunks already stored, and their bytes.
    held: Vec<u64>,
    stored: u64,
}

fn plan(store: &dyn ChunkStore, files: Vec<FileRef>) -> Result<Vec<FilePlan>, StoreError> {
    let cs = store.chunk_size();
    let mut plans = Vec::with_capacity(files.len());
    for file in files {
        let content = file.content();
        let size = file.remote.size;
        if store.file_record(&content)?.is_some_and(|r| r.state == FileState::Failed) {
            // The mount never fetches a failed file again; a pull is the operator asking for
            // it explicitly (the Hub or a proxy may have served bad bytes then), so the mark
            // is cleared and the file fetched afresh, and verified again.
            tracing::info!(path = %file.remote.path, "retrying a file that failed verification");
            store.evict_file(&content)?;
        }
        let (mut missing, mut held) = (Vec::new(), Vec::new());
        let mut stored = 0;
        for index in 0..chunk_count(size, cs) {
            if store.has_chunk(&content, index)? {
                stored += chunk_len(size, cs, index);
                held.push(index);
            } else {
                missing.push(index);
            }
        }
        plans.push(FilePlan { file, missing, held, stored });
    }
    Ok(plans)
}

/// The files of a pull, published as open for as long as it runs.
struct Held {
    lease: Arc<Evictor>,
    contents: Vec<crate::manifest::ContentId>,
}

impl Drop for Held {
    fn drop(&mut self) {
        for content in &self.contents {
            self.lease.closed(content);
        }
    }
}

/// What the download tasks share.
struct Ctx {
    store: Arc<dyn ChunkStore>,
    fetcher: Arc<ChunkFetcher>,
    progress: Progress,
    fetched: AtomicU64,
}

/// A file being downloaded.
struct InFlight {
    file: FileRef,
    /// Chunk tasks not yet ended; the one that brings it to 0 finishes the file.
    remaining: AtomicU64,
    /// The first error; later chunks of the file are skipped.
    failure: Mutex<Option<String>>,
    bar: Mutex<Option<ProgressBar>>,
}

async fn fetch_chunk(
    ctx: Arc<Ctx>,
    f: Arc<InFlight>,
    index: u64,
    permit: OwnedSemaphorePermit,
) -> Option<(String, Result<(), String>)> {
    if ctx.progress.stopped() {
        lock(&f.failure).get_or_insert_with(|| "stopped".into());
    }
    if lock(&f.failure).is_none() {
        match ctx.fetcher.chunk(&f.file, index).await {
            Ok(bytes) => {
                let n = bytes.len() as u64;
                ctx.fetched.fetch_add(n, Ordering::Relaxed);
                ctx.progress.advance(lock(&f.bar).as_ref(), n);
            }
            Err(e) => {
                lock(&f.failure).get_or_insert_with(|| e.to_string());
            }
        }
    }
    drop(permit);
    if f.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        Some(finish(&ctx, &f, true).await)
    } else {
        None
    }
}

/// Every chunk of `f` has been asked for: wait for its verdict, and report it.
async fn finish(ctx: &Ctx, f: &InFlight, fetched: bool) -> (String, Result<(), String>) {
    let failure = lock(&f.failure).clone();
    let outcome = match failure {
        Some(reason) => Err(reason),
        None => settle(ctx.store.clone(), &f.file, fetched).await,
    };
    let bar = lock(&f.bar).take();
    ctx.progress.file_done(bar, &f.file.remote, &outcome);
    (f.file.remote.path.clone(), outcome)
}

/// Wait until the whole-file check of a downloaded file has run. The fetcher that stored
/// the last chunk runs it (this process's, or a daemon's that fetched the same file);
/// a file that was already complete before the pull, or still unchecked after the
/// allowance, is checked here.
async fn settle(store: Arc<dyn ChunkStore>, file: &FileRef, fetched: bool) -> Result<(), String> {
    let size = file.remote.size;
    if size == 0 {
        return Ok(());
    }
    let content = file.content();
    let deadline =
        Instant::now() + VERIFY_WAIT_BASE + Duration::from_secs(size / VERIFY_WAIT_BYTES_PER_SEC);
    loop {
        let s = store.clone();
        let record = blocking(move || s.file_record(&content)).await.map_err(|e| e.to_string())?;
        match record.map(|r| r.state) {
            Some(FileState::Verified) => return Ok(()),
            Some(FileState::Failed) => return Err(MISMATCH.into()),
            Some(FileState::Complete) if fetched && Instant::now() < deadline => {}
            Some(FileState::Complete) => break,
            Some(FileState::Partial) | None => return Err(VANISHED.into()),
        }
        tokio::time::sleep(VERIFY_POLL).await;
    }
    let f = file.clone();
    let verdict =
        blocking(move || verify_file(store.as_ref(), &f)).await.map_err(|e| e.to_string())?;
    match verdict {
        Verdict::Match => Ok(()),
        Verdict::Mismatch => Err(MISMATCH.into()),
        Verdict::Incomplete => Err(VANISHED.into()),
    }
}

const MISMATCH: &str = "did not match the Hub's hash; discarded and marked failed";
const VANISHED: &str =
    "chunks went missing after the download (evicted, or dropped for a bad checksum); pull again";

fn summary(target: &Target, r: &PullReport, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 && r.fetched_bytes > 0 {
        format!(", {}/s", human_bytes((r.fetched_bytes as f64 / secs) as u64))
    } else {
        String::new()
    };
    let mut out = format!(
        "pulled {} at {}: {}, {} ({} fetched, {} already stored) in {secs:.1} s{rate}",
        target,
        short(&r.commit),
        plural(r.files, "file"),
        human_bytes(r.total_bytes),
        human_bytes(r.fetched_bytes),
        human_bytes(r.already_bytes),
    );
    if let Some(bytes) = r.tier_stored_bytes {
        out.push_str(&format!("; {} in the tier", human_bytes(bytes)));
    }
    if !r.failed.is_empty() {
        out.push_str(&format!("; {} failed", plural(r.failed.len(), "file")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::memory::{hub_hash, MemoryHub};
    use crate::manifest::RepoId;
    use crate::store::memory::MemoryStore;

    const CS: u64 = 1000;
    const C1: &str = "1111111111111111111111111111111111111111";

    fn data(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed)).collect()
    }

    fn files() -> Vec<(&'static str, Vec<u8>, bool)> {
        vec![
            ("config.json", data(1, 10), false),
            ("tokenizer.json", data(2, 20), false),
            ("onnx/model.onnx", data(3, 2500), true),
            ("onnx/model_q4.onnx", data(4, 3000), true),
            ("onnx/model_q4.onnx_data", data(5, 1999), true),
            ("model.safetensors", data(6, 1200), true),
            ("empty.txt", vec![], false),
        ]
    }

    fn world() -> (Arc<MemoryHub>, Arc<MemoryStore>) {
        let hub = Arc::new(MemoryHub::new());
        hub.add_repo(RepoId::new("org", "repo"), C1, "main", None, files());
        (hub, Arc::new(MemoryStore::new(CS)))
    }

    fn request(quants: &[&str], include: &[&str]) -> PullRequest {
        PullRequest {
            target: Target::parse("org/repo").unwrap(),
            quants: quants.iter().map(|s| s.to_string()).collect(),
            include: include.iter().map(|s| s.to_string()).collect(),
            max_connections: 3,
            read_timeout: Duration::from_secs(5),
            lease: None,
            tier: None,
        }
    }

    async fn pull(hub: &Arc<MemoryHub>, store: &Arc<MemoryStore>, req: &PullRequest) -> PullReport {
        pull_into(store.clone(), hub.clone(), hub.clone(), req, &Progress::quiet()).await.unwrap()
    }

    /// State of each file of the repo in the store, by path.
    fn states(store: &MemoryStore) -> Vec<(&'static str, Option<FileState>)> {
        files()
            .into_iter()
            .map(|(p, d, lfs)| {
                let rec = store.file_record(&hub_hash(&d, lfs).content_id()).unwrap();
                (p, rec.map(|r| r.state))
            })
            .collect()
    }

    #[tokio::test]
    async fn whole_repo_is_fetched_verified_and_recorded() {
        let (hub, store) = world();
        let report = pull(&hub, &store, &request(&[], &[])).await;
        let total: u64 = files().iter().map(|f| f.1.len() as u64).sum();
        assert_eq!(
            report,
            PullReport {
                commit: C1.into(),
                files: 7,
                total_bytes: total,
                already_bytes: 0,
                fetched_bytes: total,
                failed: vec![],
                tier_stored_bytes: None,
            }
        );
        for (path, state) in states(&store) {
            let want = if path == "empty.txt" { None } else { Some(FileState::Verified) };
            assert_eq!(state, want, "{path}");
        }
        // Recorded as the mount records it: the ref and the manifest.
        let r = store.get_ref(&RepoId::new("org", "repo"), "main").unwrap().unwrap();
        assert_eq!(r.commit, C1);
        assert!(store.manifest(&RepoId::new("org", "repo"), C1).unwrap().is_some());
        // A second pull fetches nothing.
        let before = hub.fetch_count();
        let again = pull(&hub, &store, &request(&[], &[])).await;
        assert_eq!((again.already_bytes, again.fetched_bytes), (total, 0));
        assert_eq!(hub.fetch_count(), before);
    }

    #[tokio::test]
    async fn a_quant_pulls_its_view_and_globs_filter_it() {
        let (hub, store) = world();
        let report = pull(&hub, &store, &request(&["Q4"], &[])).await;
        assert_eq!(report.files, 5, "q4 files, the two shared files and the empty one");
        assert_eq!(report.fetched_bytes, 10 + 20 + 3000 + 1999);
        let got = states(&store);
        assert_eq!(got[2], ("onnx/model.onnx", None));
        assert_eq!(got[3], ("onnx/model_q4.onnx", Some(FileState::Verified)));
        assert_eq!(got[5], ("model.safetensors", None));

        let (hub, store) = world();
        let report = pull(&hub, &store, &request(&[], &["*.json", "onnx/"])).await;
        assert_eq!(report.files, 5);
        assert_eq!(states(&store)[5], ("model.safetensors", None));
        let (hub, store) = world();
        let report = pull(&hub, &store, &request(&["fp32", "q4"], &["*_data"])).await;
        assert_eq!((report.files, report.fetched_bytes), (1, 1999));
    }

    #[tokio::test]
    async fn unknown_quants_and_bad_globs_are_errors_before_any_fetch() {
        let (hub, store) = world();
        let err = pull_into(
            store.clone(),
            hub.clone(),
            hub.clone(),
            &request(&["q8"], &[]),
            &Progress::quiet(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "org/repo has no quant \"q8\"; its views are: fp32, q4, all");
        let err = pull_into(
            store.clone(),
            hub.clone(),
            hub.clone(),
            &request(&[], &["a[b"]),
            &Progress::quiet(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CommandError::BadGlob { .. }), "{err}");
        let mut unknown = request(&[], &[]);
        unknown.target = Target::parse("org/nope").unwrap();
        let err = pull_into(store.clone(), hub.clone(), hub.clone(), &unknown, &Progress::quiet())
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("org/nope: not found on the Hub"), "{err}");
        assert_eq!(hub.fetch_count(), 0);
    }

    #[tokio::test]
    async fn failed_files_are_reported_and_the_rest_completes() {
        let (hub, store) = world();
        // Every fetch fails at first: the first file to ask gets the errors.
        hub.fail_next_fetches(1);
        let mut req = request(&[], &[]);
        req.max_connections = 1;
        let report = pull(&hub, &store, &req).await;
        assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
        assert_eq!(report.failed[0].0, "config.json");
        assert_eq!(states(&store)[3].1, Some(FileState::Verified));
        // Pulling again fetches what failed.
        let report = pull(&hub, &store, &req).await;
        assert!(report.failed.is_empty());
        assert_eq!(report.fetched_bytes, 10);
    }

    #[tokio::test]
    async fn a_file_marked_failed_is_fetched_afresh() {
        let (hub, store) = world();
        let (_, d, lfs) = &files()[3];
        let content = hub_hash(d, *lfs).content_id();
        store.put_chunk(&content, 3000, 0, &d[..1000]).unwrap();
        store.discard_file(&content, FileState::Failed).unwrap();
        let report = pull(&hub, &store, &request(&["q4"], &["*.onnx"])).await;
        assert_eq!((report.failed.len(), report.fetched_bytes), (0, 3000));
        assert_eq!(store.file_record(&content).unwrap().unwrap().state, FileState::Verified);
    }

    #[tokio::test]
    async fn a_complete_unverified_file_is_checked_by_the_pull() {
        let (hub, store) = world();
        let (_, d, lfs) = &files()[2];
        let content = hub_hash(d, *lfs).content_id();
        let mut bad = d.clone();
        bad[2000] ^= 0xff;
        for i in 0..3u64 {
            let r = (i * CS) as usize..((i + 1) * CS).min(2500) as usize;
            store.put_chunk(&content, 2500, i, &bad[r]).unwrap();
        }
        let report = pull(&hub, &store, &request(&[], &["onnx/model.onnx"])).await;
        assert_eq!(report.failed, vec![("onnx/model.onnx".to_string(), MISMATCH.to_string())]);
        assert_eq!(store.file_record(&content).unwrap().unwrap().state, FileState::Failed);
    }

    #[test]
    fn globs_follow_allow_patterns() {
        let set = build_globs(&["*.json".into(), "onnx/".into()]).unwrap().unwrap();
        assert!(set.is_match("config.json"));
        assert!(set.is_match("sub/dir/x.json"), "`*` matches across `/`");
        assert!(set.is_match("onnx/model.onnx"));
        assert!(!set.is_match("model.safetensors"));
        assert!(build_globs(&[]).unwrap().is_none());
    }
}
