//! The mount's life: clear a stale mount, open the store, build the filesystem, mount it,
//! tell systemd it is ready, serve until a signal or an unmount, and leave nothing behind.
//!
//! The FUSE session runs on the calling thread (plus its worker threads); fetches run on a
//! tokio runtime owned here. SIGINT and SIGTERM unmount, which ends the session loop.

use std::io;
use std::path::Path;
use std::sync::Arc;

use fuser::{MountOption, SessionACL};
use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};

use crate::cli::MountConfig;
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
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("mountpoint {path}: {source}")]
    Mountpoint { path: String, source: io::Error },
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("Hub client: {0}")]
    Hub(#[from] crate::hub::HubError),
    #[error("invalid endpoint {0:?}")]
    Endpoint(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
    #[error("mount at {path} failed: {source}")]
    Mount { path: String, source: io::Error },
    #[error("unmount of {path} failed: {reason}")]
    Unmount { path: String, reason: String },
}

pub fn mount(cfg: MountConfig) -> Result<(), DaemonError> {
    let mp = cfg.mountpoint.clone();
    let mp_str = mp.display().to_string();
    clear_stale_mount(&mp)?;
    std::fs::create_dir_all(&mp)
        .map_err(|source| DaemonError::Mountpoint { path: mp_str.clone(), source })?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("modelfs-io")
        .build()
        .map_err(DaemonError::Runtime)?;

    let store: Arc<dyn ChunkStore> = Arc::new(MdbxStore::open(&cfg.store, cfg.chunk_size)?);
    let (source, origin): (Arc<dyn RepoSource>, Arc<dyn RangeFetcher>) = if cfg.offline {
        (Arc::new(OfflineHub), Arc::new(OfflineHub))
    } else {
        let mut hub = HubConfig::from_env();
        if let Some(endpoint) = &cfg.endpoint {
            hub.endpoint = endpoint.parse().map_err(|_| DaemonError::Endpoint(endpoint.clone()))?;
        }
        hub.read_timeout = cfg.read_timeout;
        hub.max_connections = cfg.max_connections;
        let client = Arc::new(HubClient::new(hub)?);
        (client.clone(), client)
    };
    let fs_config = FsConfig {
        offline: cfg.offline,
        revalidate: cfg.revalidate,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    };
    let limits =
        PrefetchLimits::new(store.chunk_size(), cfg.max_inflight_bytes, cfg.max_connections);
    // Built inside the runtime so that read-ahead, triggered from FUSE threads, runs on it.
    let fs = {
        let _rt = rt.enter();
        Arc::new(ModelFs::new(fs_config, store, source, origin, cfg.read_timeout, limits))
    };

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

    let adapter = FuseAdapter::new(fs, rt.handle().clone());
    let session = fuser::Session::new(adapter, &mp, &options)
        .map_err(|source| DaemonError::Mount { path: mp_str.clone(), source })?;
    let signal_mp = mp.clone();
    rt.spawn(async move {
        wait_for_shutdown_signal().await;
        tracing::info!("signal received, unmounting");
        // Detach: the name goes at once, and programs that still have files open keep
        // reading them; the session ends when the last one is closed.
        if let Err(e) = umount2(&signal_mp, MntFlags::MNT_DETACH) {
            tracing::error!(error = %e.desc(), "unmount failed");
        }
        // Do not wait for them forever (a service manager would kill us and leave the
        // connection dead): after a grace period, or at a second signal, exit; the kernel
        // then fails whatever is still open with ENOTCONN.
        tokio::select! {
            _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "files still open after unmount; exiting");
            }
            _ = wait_for_shutdown_signal() => tracing::warn!("second signal; exiting"),
        }
        notify_systemd("STOPPING=1");
        std::process::exit(0);
    });
    tracing::info!(mountpoint = %mp_str, store = %cfg.store.display(), offline = cfg.offline, "mounted");
    notify_systemd("READY=1");
    let served = session.run();
    notify_systemd("STOPPING=1");
    // Replies still owed by tasks are dropped with the runtime; the kernel has already
    // failed them when the mount went away.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    served.map_err(|source| DaemonError::Mount { path: mp_str, source })?;
    tracing::info!("unmounted");
    Ok(())
}

pub fn unmount(mountpoint: &Path) -> Result<(), DaemonError> {
    let path = mountpoint.display().to_string();
    match umount2(mountpoint, MntFlags::empty()) {
        Ok(()) => Ok(()),
        // Busy or not ours to unmount directly (non-root): let fusermount3 decide.
        Err(e) => {
            let status =
                std::process::Command::new("fusermount3").arg("-u").arg(mountpoint).status();
            match status {
                Ok(s) if s.success() => Ok(()),
                _ => Err(DaemonError::Unmount { path, reason: e.desc().to_string() }),
            }
        }
    }
}

/// A daemon killed with SIGKILL leaves its mount behind, and every access to it fails with
/// ENOTCONN ("Transport endpoint is not connected"). Detach it so this start can mount.
fn clear_stale_mount(mp: &Path) -> Result<(), DaemonError> {
    match std::fs::metadata(mp) {
        Err(e) if e.raw_os_error() == Some(Errno::ENOTCONN as i32) => {
            tracing::warn!(mountpoint = %mp.display(), "clearing a stale mount left by a dead daemon");
            umount2(mp, MntFlags::MNT_DETACH).map_err(|e| DaemonError::Unmount {
                path: mp.display().to_string(),
                reason: e.desc().to_string(),
            })
        }
        _ => Ok(()),
    }
}

async fn wait_for_shutdown_signal() {
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
