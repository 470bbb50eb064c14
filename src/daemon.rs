//! The mount's life: clear a stale mount, open the store, build the filesystem, mount it,
//! tell whoever waits (systemd, or the terminal a `--daemon` start detached from) that it
//! answers, serve until a signal or an unmount, reload the configuration at SIGHUP, and leave
//! nothing behind (no mount, no pid file).
//!
//! The FUSE session runs on the calling thread (plus its worker threads); fetches run on a
//! tokio runtime owned here. SIGINT and SIGTERM unmount, which ends the session loop. Logging
//! is set up here too ([`Logging`]) because the daemon is what changes it while running: the
//! filter at SIGHUP, and the log file reopened for rotation.
//!
//! `--daemon` forks before anything else runs ([`daemonize`]): a process with threads cannot
//! fork safely, and the tokio runtime, the FUSE workers and even a log writer may start
//! threads.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use fuser::{MountOption, SessionACL};
use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::cli::MountConfig;
use crate::config::LogFormat;
use crate::fetch::PrefetchLimits;
use crate::fs::{FsConfig, ModelFs};
use crate::fuse::FuseAdapter;
use crate::hub::client::{HubClient, HubConfig};
use crate::hub::{OfflineHub, RangeFetcher, RepoSource};
use crate::store::mdbx::MdbxStore;
use crate::store::ChunkStore;

/// How long, after SIGTERM or SIGINT, programs that still have files open may keep reading
/// before the daemon exits anyway: long enough for a reply in flight and a program closing up,
/// short enough for systemd's default stop timeout (90 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long the mount may take to answer its first request before the start is declared
/// failed. The first answer needs only FUSE_INIT and a getattr of the root, no network; a
/// minute covers a machine under heavy load and stays under systemd's start timeout (90 s).
const MOUNT_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the readiness probe looks at the mountpoint again while it is not yet mounted.
const MOUNT_POLL: Duration = Duration::from_millis(10);

/// The first byte a detached daemon sends its waiting parent when the mount answers; anything
/// else on the pipe is an error message.
const READY_BYTE: u8 = 0;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("mountpoint {path}: {source}")]
    Mountpoint { path: String, source: io::Error },
    #[error("mountpoint {path} is not a directory")]
    MountpointNotDir { path: String },
    #[error(transparent)]
    Registry(#[from] crate::mounts::RegistryError),
    #[error("{path} is already served by another modelfs process (not in this user's registry of mounts); unmount it first")]
    AlreadyServed { path: String },
    #[error("{path} is not mounted")]
    NotMounted { path: String },
    #[error("{path} is not a modelfs mount (it is {fstype}); not unmounting it")]
    NotModelfs { path: String, fstype: String },
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("Hub client: {0}")]
    Hub(#[from] crate::hub::HubError),
    #[error("--endpoint {0:?} {1}")]
    Endpoint(String, String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
    #[error("mount at {path} failed: {source}")]
    Mount { path: String, source: io::Error },
    #[error("eviction: {0}")]
    Evict(#[from] crate::evict::EvictError),
    #[error("--tier: {0}")]
    Tier(#[from] crate::tier::TierError),
    #[error(transparent)]
    Profile(#[from] crate::profile::ProfileError),
    #[error("--store-ro {path}: {source}")]
    ReadOnlyStore {
        path: String,
        #[source]
        source: crate::store::layered::ChunkSizeMismatch,
    },
    #[error("unmount of {path} failed: {reason}")]
    Unmount { path: String, reason: String },
    #[error("cannot detach: {0}")]
    Detach(String),
    #[error("pid file {path}: {reason}")]
    PidFile { path: String, reason: String },
    #[error("log file {path}: {source}")]
    LogFile { path: String, source: io::Error },
    #[error("cannot set up logging: {0}")]
    Logging(String),
    #[error("--metrics-addr {addr}: {source}")]
    Metrics { addr: std::net::SocketAddr, source: io::Error },
}

// -------------------------------------------------------------------------------------------
// Detaching
// -------------------------------------------------------------------------------------------

/// How the mount tells the process that started it that it answers (or why it never will).
/// A foreground mount has no one to tell beyond systemd; a detached one tells the parent
/// waiting in [`daemonize`], which then exits with the matching status.
/// Clones report to the same parent; only the first report counts.
#[derive(Debug, Default, Clone)]
pub struct Readiness(Arc<Mutex<Option<File>>>);

impl Readiness {
    /// Nobody waits (foreground).
    pub fn none() -> Self {
        Self::default()
    }

    fn pipe(file: File) -> Self {
        Self(Arc::new(Mutex::new(Some(file))))
    }

    /// The mount answers.
    pub fn ready(&self) {
        self.report(&[READY_BYTE]);
    }

    /// The start failed: the parent prints `message` and exits non-zero.
    pub fn fail(&self, message: &str) {
        self.report(if message.is_empty() { b"failed" } else { message.as_bytes() });
    }

    fn report(&self, bytes: &[u8]) {
        let taken = crate::lock(&self.0).take();
        if let Some(mut pipe) = taken {
            // The parent may have been killed meanwhile; nothing to do about it then.
            let _ = pipe.write_all(bytes);
        }
    }
}

/// Detach from the terminal: fork, start a new session, fork again (so the daemon can never
/// reacquire a controlling terminal), change to `/` and point the standard streams at
/// `/dev/null`. Returns in the daemon only; the original process waits until the daemon
/// reports through the returned [`Readiness`] and exits 0 if the mount answers, 1 otherwise
/// (printing the daemon's error).
///
/// Must be called while the process has a single thread. Every path in the configuration
/// must already be absolute.
pub fn daemonize() -> Result<Readiness, DaemonError> {
    use nix::unistd::{fork, setsid, ForkResult};
    let detach = |what: &str, e: Errno| DaemonError::Detach(format!("{what}: {}", e.desc()));
    let (read_end, write_end) = nix::unistd::pipe().map_err(|e| detach("pipe", e))?;
    // SAFETY: the caller guarantees there is only one thread, so the child inherits no lock
    // held by another thread.
    match unsafe { fork() }.map_err(|e| detach("fork", e))? {
        ForkResult::Parent { child } => {
            drop(write_end);
            // The intermediate child exits at once; reap it.
            let _ = nix::sys::wait::waitpid(child, None);
            let mut report = Vec::new();
            let read = File::from(read_end).read_to_end(&mut report);
            std::process::exit(match (read, report.first()) {
                (Ok(_), Some(&READY_BYTE)) => 0,
                (Ok(_), Some(_)) => {
                    eprintln!("modelfs: {}", String::from_utf8_lossy(&report));
                    1
                }
                (Ok(_), None) | (Err(_), _) => {
                    eprintln!("modelfs: the daemon exited before the mount answered; see its log");
                    1
                }
            })
        }
        ForkResult::Child => {}
    }
    drop(read_end);
    let readiness = Readiness::pipe(File::from(write_end));
    let second = (|| -> Result<(), DaemonError> {
        setsid().map_err(|e| detach("setsid", e))?;
        // SAFETY: still a single thread (the one that forked).
        if let ForkResult::Parent { .. } = unsafe { fork() }.map_err(|e| detach("fork", e))? {
            // SAFETY: _exit skips atexit handlers and stdio flushing, which belong to the
            // original process, not to this intermediate one.
            unsafe { libc::_exit(0) };
        }
        nix::unistd::chdir("/").map_err(|e| detach("chdir /", e))?;
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| DaemonError::Detach(format!("/dev/null: {e}")))?;
        for fd in 0..=2 {
            nix::unistd::dup2(null.as_raw_fd(), fd).map_err(|e| detach("dup2", e))?;
        }
        Ok(())
    })();
    if let Err(e) = second {
        readiness.fail(&e.to_string());
        std::process::exit(1);
    }
    Ok(readiness)
}

/// A pid file, removed when dropped or by [`PidFile::remove`], whichever comes first.
#[derive(Debug)]
struct PidFile {
    path: PathBuf,
    removed: Once,
}

impl PidFile {
    fn create(path: &Path) -> Result<Self, DaemonError> {
        let err =
            |reason: String| DaemonError::PidFile { path: path.display().to_string(), reason };
        // A pid file whose process still lives means a daemon already serves: refuse rather
        // than hide it. One left by a killed daemon is just overwritten.
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                let pid = nix::unistd::Pid::from_raw(pid);
                if pid != nix::unistd::getpid()
                    && pid.as_raw() > 0
                    && nix::sys::signal::kill(pid, None).is_ok()
                {
                    return Err(err(format!("process {pid} is running")));
                }
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        // Written whole to a temporary name and renamed, so a reader never sees it half written.
        let tmp = path.with_extension("pid.tmp");
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| err(e.to_string()))?;
        Ok(Self { path: path.to_path_buf(), removed: Once::new() })
    }

    fn remove(&self) {
        self.removed.call_once(|| {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the pid file");
            }
        });
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        self.remove();
    }
}

// -------------------------------------------------------------------------------------------
// Logging
// -------------------------------------------------------------------------------------------

/// The process's log: where it goes and what it lets through, both changeable while running.
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    file: Option<PathBuf>,
}

impl Logging {
    /// Install the global subscriber: `format` lines, filtered by `filter` (`RUST_LOG`
    /// syntax), to standard error, which is first pointed at `file` (appending) if given.
    /// Redirecting the descriptor rather than handing tracing a writer also puts panics and
    /// anything else written to stderr in the log file.
    pub fn init(format: LogFormat, filter: &str, file: Option<&Path>) -> Result<Self, DaemonError> {
        if let Some(path) = file {
            redirect_stderr(path)?;
        }
        let filter = EnvFilter::builder()
            .parse(filter)
            .map_err(|e| DaemonError::Logging(format!("log filter {filter:?}: {e}")))?;
        let (filter, handle) = reload::Layer::new(filter);
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let (text, json) = match format {
            LogFormat::Text => (
                Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)),
                None,
            ),
            LogFormat::Json => {
                (None, Some(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)))
            }
        };
        tracing_subscriber::registry()
            .with(filter)
            .with(text)
            .with(json)
            .try_init()
            .map_err(|e| DaemonError::Logging(e.to_string()))?;
        Ok(Self { filter: handle, file: file.map(Path::to_path_buf) })
    }

    /// Replace the filter (`RUST_LOG` syntax).
    pub fn set_filter(&self, filter: &str) -> Result<(), String> {
        let parsed = EnvFilter::builder().parse(filter).map_err(|e| e.to_string())?;
        self.filter.reload(parsed).map_err(|e| e.to_string())
    }

    /// Open the log file again, so that a rotated-away file is let go (logrotate's
    /// `postrotate kill -HUP`).
    pub fn reopen(&self) -> Result<(), DaemonError> {
        match &self.file {
            Some(path) => redirect_stderr(path),
            None => Ok(()),
        }
    }
}

/// Point standard output and standard error at `path`, appending, creating it (and its
/// directory) if missing.
fn redirect_stderr(path: &Path) -> Result<(), DaemonError> {
    let err = |source| DaemonError::LogFile { path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
    for fd in [1, 2] {
        // dup2 replaces the descriptor atomically: a concurrent writer writes to the old file
        // or the new one, never to a closed descriptor.
        nix::unistd::dup2(file.as_raw_fd(), fd).map_err(|e| err(io::Error::from(e)))?;
    }
    Ok(())
}

// -------------------------------------------------------------------------------------------
// The mount
// -------------------------------------------------------------------------------------------

/// Mount and serve until unmounted. `readiness` is told once the mount answers, or why it
/// never will; `logging` is adjusted at SIGHUP.
pub fn mount(cfg: MountConfig, readiness: Readiness, logging: Logging) -> Result<(), DaemonError> {
    let result = serve(cfg, readiness.clone(), logging);
    if let Err(e) = &result {
        readiness.fail(&e.to_string());
    }
    result
}

fn serve(cfg: MountConfig, readiness: Readiness, logging: Logging) -> Result<(), DaemonError> {
    let pid_file = cfg.pid_file.as_deref().map(PidFile::create).transpose()?.map(Arc::new);
    let (mp, mut registration) = prepare_mountpoint(&cfg.mountpoint, &cfg.store)?;
    let mp_str = mp.display().to_string();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("modelfs-io")
        .build()
        .map_err(DaemonError::Runtime)?;
    // /readyz answers 200 from the moment the mount answers until shutdown starts. The
    // endpoint is bound before mounting, so a bad or busy address is a startup error.
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(addr) = cfg.metrics_addr {
        crate::metrics::spawn(rt.handle(), addr, ready.clone())
            .map_err(|source| DaemonError::Metrics { addr, source })?;
    }

    spawn_pulls_on_start(&cfg);

    let store = open_stores(&cfg)?;
    let (source, origin): (Arc<dyn RepoSource>, Arc<dyn RangeFetcher>) = if cfg.offline {
        (Arc::new(OfflineHub), Arc::new(OfflineHub))
    } else {
        let mut hub = HubConfig::from_env();
        if let Some(endpoint) = &cfg.endpoint {
            hub.endpoint = crate::hub::client::parse_endpoint(endpoint)
                .map_err(|why| DaemonError::Endpoint(endpoint.clone(), why))?;
        }
        hub.read_timeout = cfg.read_timeout;
        hub.max_connections = cfg.max_connections;
        let client = Arc::new(HubClient::new(hub)?);
        // Offline-first: the mount starts whether or not the Hub answers, and the log says at
        // once which it is.
        let probe = client.clone();
        rt.spawn(async move {
            match probe.probe().await {
                Ok(()) => tracing::debug!("the Hub answers"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "the Hub does not answer at start: serving what the store has; asking again on demand"
                ),
            }
        });
        (client.clone(), client)
    };
    let fs_config = FsConfig {
        offline: cfg.offline,
        serve_stale: true,
        revalidate: cfg.revalidate,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        load_plans: cfg.load_plans,
    };
    let limits = PrefetchLimits::new(
        store.chunk_size(),
        cfg.max_inflight_bytes,
        cfg.max_connections,
        cfg.max_request_size,
    );
    // Built inside the runtime so that read-ahead, triggered from FUSE threads, runs on it.
    // Every serving process evicts (when the store has a bound) and publishes its open files,
    // so that no process, nor `modelfs gc`, evicts a file open in another.
    let policy =
        crate::evict::Policy { max_cache_size: cfg.max_cache_size, pinned: cfg.pinned.clone() };
    let evictor = crate::evict::Evictor::new(store.clone(), Some(&cfg.store), policy)?;
    let profiles = cfg.profiles()?;
    let fs = {
        let _rt = rt.enter();
        let tier_store = store.clone();
        let mut fs = ModelFs::new(fs_config, store, source, origin, cfg.read_timeout, limits);
        fs.set_evictor(evictor.clone());
        fs.set_profiles(Arc::new(profiles));
        fs.set_access(cfg.access.clone());
        if let Some(url) = &cfg.tier {
            let tier = crate::tier::ObjectTier::from_url(url)?;
            fs.set_tier(crate::tier::TierClient::new(Arc::new(tier), tier_store));
            tracing::info!(tier = %url, "reading through the shared tier");
        }
        Arc::new(fs)
    };
    if cfg.max_cache_size.is_some() {
        // A store already over a (new, lower) bound is brought under it at start.
        let evictor = evictor.clone();
        rt.spawn_blocking(move || {
            if let Err(e) = evictor.evict_to_bound() {
                tracing::error!(error = %e, "eviction pass failed");
            }
        });
    }

    let mut options = fuser::Config::default();
    options.mount_options = vec![
        MountOption::FSName("modelfs".into()),
        MountOption::Subtype("modelfs".into()),
        MountOption::RO,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
    ];
    if cfg.allow_other {
        options.acl = SessionACL::All;
    }
    options.n_threads = Some(cfg.threads);
    options.clone_fd = true;

    let adapter = FuseAdapter::new(fs.clone(), rt.handle().clone());
    let how = crate::mounts::FuseMount {
        allow_other: cfg.allow_other,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    };
    let passthrough = adapter.passthrough();
    let kernel_pages = adapter.kernel_pages();
    let (session, own) = start_session(adapter, &mp, &how, options)?;
    // The session has answered INIT: passthrough is decided.
    registration.note_passthrough(&passthrough.describe());
    rt.spawn(publish_traffic(registration.record_path().to_path_buf()));
    crate::fuse::invalidate_failed_files(&fs, session.notifier());
    crate::fuse::invalidate_on_access_change(&fs, session.notifier());
    // Best effort: without it, loaders' page faults are answered by reads, as before.
    if cfg.push_pages {
        if let Err(e) = fs.push_planned_chunks(kernel_pages(session.notifier())) {
            tracing::warn!(error = %e, "cannot start pushing planned chunks to the page cache");
        }
    }
    let signal_ready = ready.clone();
    let signal_own = own.clone();
    let signal_pid_file = pid_file.clone();
    rt.spawn(async move {
        wait_for_shutdown_signal().await;
        signal_ready.store(false, std::sync::atomic::Ordering::Release);
        tracing::info!("signal received, unmounting");
        notify_stopping();
        // Detach: the name goes at once, and programs that still have files open keep
        // reading them; the session ends when the last one is closed.
        signal_own.detach();
        // Do not wait for them forever (a service manager would kill us and leave the
        // connection dead): after a grace period, or at a second signal, exit; the kernel
        // then fails whatever is still open with ENOTCONN.
        tokio::select! {
            _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "files still open after unmount; exiting");
            }
            _ = wait_for_shutdown_signal() => tracing::warn!("second signal; exiting"),
        }
        if let Some(p) = signal_pid_file {
            p.remove();
        }
        std::process::exit(0);
    });
    rt.spawn(reload_on_hangup(cfg.clone(), evictor, fs.clone(), logging));

    // READY means "the mount answers", which Session::new does not promise: the kernel holds
    // every request until the session loop has answered FUSE_INIT. So a probe thread stats
    // the mountpoint (the root's device differing from its parent's shows it is our mount
    // and not the directory underneath) and statfs's it: that request returns only once the
    // loop runs and has answered it.
    let probe_mp = mp.clone();
    let probe_own = own.clone();
    let probe_ready = ready.clone();
    let store_dir = cfg.store.display().to_string();
    let offline = cfg.offline;
    let probe = std::thread::Builder::new().name("modelfs-ready".into()).spawn(move || {
        if wait_until_answering(&probe_own) {
            tracing::info!(mountpoint = %probe_mp.display(), store = %store_dir, offline, "mounted");
            notify_systemd("READY=1");
            probe_ready.store(true, std::sync::atomic::Ordering::Release);
            readiness.ready();
        } else {
            tracing::error!(timeout = ?MOUNT_ANSWER_TIMEOUT, "the mount does not answer; unmounting");
            readiness.fail(&format!(
                "mount at {} did not answer within {MOUNT_ANSWER_TIMEOUT:?}",
                probe_mp.display()
            ));
            probe_own.detach();
        }
    });
    if let Err(e) = probe {
        // Serving matters more than telling: log it and serve unannounced.
        tracing::error!(error = %e, "cannot start the readiness probe; READY will not be sent");
    }

    let served = session.run();
    ready.store(false, std::sync::atomic::Ordering::Release);
    notify_stopping();
    // Replies still owed by tasks are dropped with the runtime; the kernel has already
    // failed them when the mount went away.
    rt.shutdown_timeout(Duration::from_secs(2));
    served.map_err(|source| DaemonError::Mount { path: mp_str, source })?;
    drop(pid_file);
    tracing::info!("unmounted");
    Ok(())
}

/// Stat the mountpoint until its root is our mount and answers, or [`MOUNT_ANSWER_TIMEOUT`]
/// passes.
fn wait_until_answering(own: &OwnMount) -> bool {
    use std::os::unix::fs::MetadataExt;
    let start = Instant::now();
    while start.elapsed() < MOUNT_ANSWER_TIMEOUT {
        if let Ok(root) = std::fs::metadata(&own.path) {
            // The stat may have been answered from the kernel's attribute cache; statfs is
            // always a round trip to the session loop (see `clear_stale_mount`).
            if root.dev() == own.dev && nix::sys::statfs::statfs(&own.path).is_ok() {
                return true;
            }
        }
        std::thread::sleep(MOUNT_POLL);
    }
    false
}

/// Make `mountpoint` ready to mount on, and claim it: a stale mount left by a dead daemon is
/// cleared, a missing directory created; a file, or a mountpoint a live modelfs serves, is
/// refused. Returns the canonical mountpoint (as mountinfo and the registry name it) and the
/// claim, held for as long as the daemon lives.
/// The store, over the read-only stores when there are any (`--store-ro`).
fn open_stores(cfg: &MountConfig) -> Result<Arc<dyn ChunkStore>, DaemonError> {
    let local: Arc<dyn ChunkStore> = Arc::new(MdbxStore::open(&cfg.store, cfg.chunk_size)?);
    if cfg.store_ro.is_empty() {
        return Ok(local);
    }
    let mut read_only: Vec<Arc<dyn ChunkStore>> = Vec::new();
    for dir in &cfg.store_ro {
        read_only.push(Arc::new(MdbxStore::open_read_only(dir)?));
        tracing::info!(store = %dir.display(), "reading through a read-only store");
    }
    let layered = crate::store::layered::LayeredStore::new(local, read_only).map_err(|source| {
        let path = cfg.store_ro[source.index].display().to_string();
        DaemonError::ReadOnlyStore { path, source }
    })?;
    Ok(Arc::new(layered))
}

/// How often the daemon tells `modelfs status` what it served: often enough that a status
/// right after a load shows it, rarely enough to cost nothing (one small file write).
const TRAFFIC_EVERY: Duration = Duration::from_secs(2);

/// Publish the daemon's traffic beside its mount record, for as long as it runs.
async fn publish_traffic(record: std::path::PathBuf) {
    let mut tick = tokio::time::interval(TRAFFIC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        tick.tick().await;
        let now = crate::metrics::get().traffic();
        if last.as_ref() == Some(&now) {
            continue;
        }
        if let Err(e) = crate::mounts::publish_traffic(&record, &now) {
            tracing::debug!(error = %e, "traffic for status not published");
        }
        last = Some(now);
    }
}

fn prepare_mountpoint(
    mountpoint: &Path,
    store: &Path,
) -> Result<(PathBuf, crate::mounts::Registration), DaemonError> {
    let path = mountpoint.display().to_string();
    clear_stale_mount(mountpoint)?;
    match std::fs::metadata(mountpoint) {
        Ok(meta) if !meta.is_dir() => return Err(DaemonError::MountpointNotDir { path }),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir_all(mountpoint)
            .map_err(|source| DaemonError::Mountpoint { path: path.clone(), source })?,
        Err(source) => return Err(DaemonError::Mountpoint { path, source }),
    }
    let mp = crate::mounts::canonical(mountpoint);
    let registration = crate::mounts::Registration::claim(&mp, store)?;
    // A live modelfs that registered elsewhere (another user's runtime directory) still
    // shows in mountinfo; stacking on it would hide it.
    let top = crate::mounts::top_mount_at(&mp)
        .map_err(|source| DaemonError::Mountpoint { path: path.clone(), source })?;
    if top.is_some_and(|m| m.is_modelfs()) {
        return Err(DaemonError::AlreadyServed { path });
    }
    Ok((mp, registration))
}

/// Our own mount: where it is and its device number, to unmount it and nothing else.
#[derive(Clone, Debug)]
struct OwnMount {
    path: PathBuf,
    dev: u64,
}

impl OwnMount {
    /// After mounting: find the mount just made at `path` in mountinfo.
    fn find(path: &Path) -> io::Result<OwnMount> {
        match crate::mounts::top_mount_at(path)? {
            Some(m) if m.is_modelfs() => Ok(OwnMount { path: path.to_path_buf(), dev: m.st_dev() }),
            _ => Err(io::Error::other("the new mount does not show in /proc/self/mountinfo")),
        }
    }

    /// Lazily unmount our mount, if it is still the one on top of the path: an unmount by
    /// path would otherwise take whatever is there now (the mount we were stacked on, or one
    /// stacked on us).
    fn detach(&self) {
        match crate::mounts::top_mount_at(&self.path) {
            Ok(Some(m)) if m.st_dev() == self.dev => {
                if let Err(e) = umount2(&self.path, MntFlags::MNT_DETACH) {
                    tracing::error!(error = %e.desc(), "unmount failed");
                }
            }
            Ok(_) => tracing::info!(
                mountpoint = %self.path.display(),
                "our mount is no longer on top of the mountpoint (unmounted from outside, or covered); leaving it"
            ),
            Err(e) => tracing::error!(error = %e, "cannot read mountinfo; not unmounting"),
        }
    }
}

/// Mount and start the FUSE session. As root the mount is made here ([`crate::mounts`]
/// explains why); otherwise fuser mounts through `fusermount3`.
fn start_session(
    adapter: FuseAdapter,
    mp: &Path,
    how: &crate::mounts::FuseMount,
    options: fuser::Config,
) -> Result<(fuser::Session<FuseAdapter>, OwnMount), DaemonError> {
    let path = mp.display().to_string();
    let mount_err = |source| DaemonError::Mount { path: path.clone(), source };
    if !nix::unistd::geteuid().is_root() {
        let session = fuser::Session::new(adapter, mp, &options).map_err(mount_err)?;
        let own = OwnMount::find(mp).map_err(mount_err)?;
        return Ok((session, own));
    }
    let fd = crate::mounts::mount_fuse(mp, how).map_err(mount_err)?;
    let own = match OwnMount::find(mp) {
        Ok(own) => own,
        Err(e) => {
            let _ = umount2(mp, MntFlags::MNT_DETACH);
            return Err(mount_err(e));
        }
    };
    let acl = options.acl;
    match fuser::Session::from_fd(adapter, fd, acl, options) {
        Ok(session) => Ok((session, own)),
        Err(e) => {
            own.detach();
            Err(mount_err(e))
        }
    }
}

/// At every SIGHUP: reopen the log file, read the configuration again (same command line,
/// same environment) and apply what can change while mounted ([`LiveSettings`]); log the
/// rest as needing a restart. A configuration that does not load changes nothing. The bound and
/// the pins live in the [`crate::evict::Evictor`]'s policy, which every eviction pass reads.
async fn reload_on_hangup(
    mut running: MountConfig,
    evictor: Arc<crate::evict::Evictor>,
    fs: Arc<ModelFs>,
    logging: Logging,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        return tracing::error!("cannot install the SIGHUP handler; reload by restarting");
    };
    while hangup.recv().await.is_some() {
        if let Err(e) = logging.reopen() {
            tracing::error!(error = %e, "cannot reopen the log file");
        }
        let new = match running.reload(|k| std::env::var(k).ok()) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(error = %e, "configuration not reloaded; the running one stays");
                continue;
            }
        };
        let before = running.live_settings();
        let mut after = new.live_settings();
        let mut changed = Vec::new();
        if after.max_cache_size != before.max_cache_size {
            changed.push("max_cache_size");
        }
        if after.pinned != before.pinned {
            changed.push("pinned");
        }
        if after.revalidate != before.revalidate {
            fs.set_revalidate(after.revalidate);
            changed.push("revalidate");
        }
        if after.load_plans != before.load_plans {
            fs.set_load_plans(after.load_plans);
            changed.push("load_plans");
        }
        if after.access != before.access {
            fs.set_access(after.access.clone());
            changed.push("access");
        }
        if after.log_filter != before.log_filter {
            match logging.set_filter(&after.log_filter) {
                Ok(()) => changed.push("log_filter"),
                Err(e) => {
                    tracing::error!(filter = %after.log_filter, error = %e, "log filter not changed");
                    after.log_filter = before.log_filter.clone();
                }
            }
        }
        let lowered = match (after.max_cache_size, before.max_cache_size) {
            (Some(new), Some(old)) => new < old,
            (Some(_), None) => true,
            (None, _) => false,
        };
        evictor.set_policy(crate::evict::Policy {
            max_cache_size: after.max_cache_size,
            pinned: after.pinned.clone(),
        });
        if lowered {
            let evictor = evictor.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = evictor.evict_to_bound() {
                    tracing::error!(error = %e, "eviction pass failed");
                }
            });
        }
        running.max_cache_size = after.max_cache_size;
        running.pinned = after.pinned;
        running.log_filter = after.log_filter;
        running.revalidate = after.revalidate;
        running.access = after.access;
        let restart = running.needs_restart(&new);
        let file = running.config_file.as_deref().map(|p| p.display().to_string());
        tracing::info!(
            file = file.as_deref().unwrap_or("(none)"),
            changed = %changed.join(","),
            "configuration reloaded"
        );
        if !restart.is_empty() {
            tracing::warn!(settings = %restart.join(","), "changed settings need a restart to apply");
        }
    }
}

/// `[[repo]] pull_on_start = true`: download those repos (their `quants`) into the store in
/// the background, one after the other, each by a `modelfs pull` child process: the same code
/// path and progress lines as the command, its own runtime and connection pool, and a crash in
/// it cannot take the mount down. Reads through the mount meanwhile share the store, and with
/// it every chunk the pull has stored. Offline mounts pull nothing.
fn spawn_pulls_on_start(cfg: &MountConfig) {
    let profiles = cfg.profiles().unwrap_or_default();
    let (streamed, repos): (Vec<_>, Vec<_>) =
        cfg.pull_on_start().cloned().partition(|r| r.repo().is_some_and(|id| profiles.streams(id)));
    for repo in streamed {
        tracing::warn!(repo = %repo.id, "profile none stores nothing: pull_on_start ignored");
    }
    if repos.is_empty() {
        return;
    }
    if cfg.offline {
        tracing::warn!(count = repos.len(), "offline: repos marked pull_on_start are not pulled");
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return tracing::error!(error = %e, "cannot find our own binary to pull with"),
    };
    let (store, endpoint, config) =
        (cfg.store.clone(), cfg.endpoint.clone(), cfg.config_file.clone());
    // The mount's tier (from its command line too, which the child does not see), for the
    // repos that share it: what a pull on start fetches is then in the tier for every node.
    let tier = cfg.tier.clone();
    let spawned = std::thread::Builder::new().name("pull-on-start".into()).spawn(move || {
        for repo in repos {
            let target = format!("{}@{}", repo.id, repo.revision);
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("pull").arg(&target).arg("--store").arg(&store);
            for quant in &repo.quants {
                cmd.arg("--quant").arg(quant);
            }
            if let Some(endpoint) = &endpoint {
                cmd.arg("--endpoint").arg(endpoint);
            }
            if let Some(config) = &config {
                cmd.arg("--config").arg(config);
            }
            if let Some(tier) =
                tier.as_ref().filter(|_| repo.repo().is_some_and(|id| profiles.shares(id)))
            {
                cmd.arg("--tier").arg(tier);
            }
            tracing::info!(repo = %target, quants = ?repo.quants, "pulling on start");
            match cmd.stdin(std::process::Stdio::null()).status() {
                Ok(status) if status.success() => tracing::info!(repo = %target, "pulled"),
                Ok(status) => tracing::error!(repo = %target, %status, "pull on start failed"),
                Err(e) => tracing::error!(repo = %target, error = %e, "pull on start did not run"),
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the pull-on-start thread");
    }
}

/// `modelfs unmount`: unmount a modelfs mount (a live one, or one left by a dead daemon).
/// Refuses a path where nothing, or something other than modelfs, is mounted.
pub fn unmount(mountpoint: &Path) -> Result<(), DaemonError> {
    let mp = crate::mounts::canonical(mountpoint);
    let path = mp.display().to_string();
    let top = crate::mounts::top_mount_at(&mp)
        .map_err(|source| DaemonError::Mountpoint { path: path.clone(), source })?;
    match top {
        None => return Err(DaemonError::NotMounted { path }),
        Some(m) if !m.is_modelfs() => {
            return Err(DaemonError::NotModelfs { path, fstype: m.fstype });
        }
        Some(_) => {}
    }
    match umount2(&mp, MntFlags::empty()) {
        Ok(()) => Ok(()),
        // Not ours to unmount directly (non-root): let fusermount3 decide.
        Err(Errno::EPERM) => {
            let status = std::process::Command::new("fusermount3").arg("-u").arg(&mp).status();
            match status {
                Ok(s) if s.success() => Ok(()),
                _ => Err(DaemonError::Unmount { path, reason: "permission denied".into() }),
            }
        }
        Err(Errno::EBUSY) => Err(DaemonError::Unmount {
            path,
            reason: "files are open on it; close them, or stop the daemon (SIGTERM), which \
                     unmounts lazily"
                .into(),
        }),
        Err(e) => Err(DaemonError::Unmount { path, reason: e.desc().to_string() }),
    }
}

/// A daemon killed with SIGKILL leaves its mount behind, and every access to it fails with
/// ENOTCONN ("Transport endpoint is not connected"). Detach it so this start can mount.
///
/// The probe is `statfs`, not `stat`: the kernel answers `stat` of a FUSE root from its
/// attribute cache without asking the daemon, so a mount whose daemon just died can still
/// look alive to it; `statfs` always goes to the daemon, and fails with ENOTCONN.
fn clear_stale_mount(mp: &Path) -> Result<(), DaemonError> {
    match nix::sys::statfs::statfs(mp) {
        Err(Errno::ENOTCONN) => {
            tracing::warn!(mountpoint = %mp.display(), "clearing a stale mount left by a dead daemon");
            umount2(mp, MntFlags::MNT_DETACH).map_err(|e| DaemonError::Unmount {
                path: mp.display().to_string(),
                reason: e.desc().to_string(),
            })
        }
        _ => Ok(()),
    }
}

pub(crate) async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop with `modelfs unmount`");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// STOPPING=1, once, whichever way the shutdown began (a signal, or an unmount from outside).
fn notify_stopping() {
    static STOPPING: Once = Once::new();
    STOPPING.call_once(|| notify_systemd("STOPPING=1"));
}

/// Tell systemd (Type=notify) about the service state, when run under it.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "sd_notify socket"),
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
