//! A real `modelfs mount` of the built binary, for integration tests. Requires `/dev/fuse`
//! and root (or fusermount3): a machine without them fails loudly, it never skips.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a mount may take to come up. Generous: CI machines are shared.
const MOUNT_WAIT: Duration = Duration::from_secs(30);

pub struct Mounted {
    pub mountpoint: PathBuf,
    pub store: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// Holds the mountpoint and the log; dropped after the mount is gone.
    _dir: TestDir,
    /// Set by [`Mounted::kill9`]: the dead mount is left for the next daemon to clear.
    leave_mount: bool,
}

/// A fresh directory under the target dir, removed when dropped, unless the test is failing:
/// a failed test's store and daemon log stay behind for inspection.
pub struct TestDir(PathBuf);

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() && !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn temp_dir(name: &str) -> TestDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = base.join(format!("{name}-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    TestDir(dir)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        as u64;
    t ^ (N.fetch_add(1, Ordering::Relaxed) << 48)
}

fn is_mounted(mp: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let mp = mp.to_str().expect("utf-8 mountpoint");
    info.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        fields.get(4) == Some(&mp)
            && (l.contains(" - fuse modelfs ") || l.contains(" - fuse.modelfs "))
    })
}

impl Mounted {
    /// Mount with `modelfs mount MP --store STORE --endpoint ENDPOINT ARGS...`.
    pub fn start(endpoint: &str, store: &Path, args: &[&str]) -> Mounted {
        Self::start_env(endpoint, store, args, &[])
    }

    pub fn start_env(endpoint: &str, store: &Path, args: &[&str], env: &[(&str, &str)]) -> Mounted {
        Self::start_in(temp_dir("mnt"), endpoint, store, args, env)
    }

    /// Like [`Mounted::start_env`], on `dir/models` with the log in `dir`: how a test starts
    /// a daemon on the mountpoint a killed one left behind (see [`Mounted::kill9`]).
    pub fn start_in(
        dir: TestDir,
        endpoint: &str,
        store: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Mounted {
        assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing: these tests need FUSE");
        let mountpoint = dir.join("models");
        let log = dir.join("modelfs.log");
        // Appended to: the log of a daemon started where a killed one ran keeps both.
        let log_file =
            std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelfs"));
        cmd.arg("mount")
            .arg(&mountpoint)
            .arg("--store")
            .arg(store)
            .arg("--endpoint")
            .arg(endpoint)
            .args(args)
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            .env("HF_HOME", dir.join("hf-home"))
            .env("RUST_LOG", "modelfs=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn modelfs");
        let mut m = Mounted {
            mountpoint,
            store: store.to_path_buf(),
            child: Some(child),
            log,
            _dir: dir,
            leave_mount: false,
        };
        let start = Instant::now();
        // A dead mount left by a killed daemon is listed too, but answers ENOTCONN (to statfs:
        // stat may be answered from the kernel's attribute cache).
        while !(is_mounted(&m.mountpoint) && nix::sys::statfs::statfs(&m.mountpoint).is_ok()) {
            if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("modelfs exited with {status} before mounting:\n{}", m.log());
            }
            assert!(start.elapsed() < MOUNT_WAIT, "mount did not come up:\n{}", m.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// The names in the mount's directory `rel`, sorted; a failure panics with the log.
    pub fn names(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(rel))
            .unwrap_or_else(|e| panic!("listing {rel}: {e}\n{}", self.log()))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kill the daemon with SIGKILL, as a crash would: its mount stays behind, dead
    /// (`ENOTCONN`). Returns the directory of the mountpoint, for [`Mounted::start_in`].
    pub fn kill9(mut self) -> TestDir {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        self.leave_mount = true;
        std::mem::replace(&mut self._dir, TestDir(PathBuf::new()))
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Like [`Mounted::stop`], handing back the directory of the mountpoint (and the log)
    /// instead of removing it: for a test that mounted something of its own there.
    pub fn stop_keeping_dir(mut self) -> (ExitStatus, TestDir) {
        let status = self.terminate();
        assert!(!is_mounted(&self.mountpoint), "still mounted after the daemon exited");
        (status, std::mem::replace(&mut self._dir, TestDir(PathBuf::new())))
    }

    /// Stop the daemon with SIGTERM and return how it exited; the mount must be gone.
    pub fn stop(mut self) -> ExitStatus {
        let status = self.terminate();
        assert!(!is_mounted(&self.mountpoint), "still mounted after the daemon exited");
        status
    }

    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
                panic!("modelfs did not exit on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.terminate()));
        }
        if !self.leave_mount && is_mounted(&self.mountpoint) {
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Run a command and return its stdout; panic with its stderr if it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// An xattr's value as text; `Err(errno)` when it has none (`ENODATA`) or cannot be read.
pub fn getfattr(path: &Path, name: &str) -> Result<String, i32> {
    match xattr::get(path, name) {
        Ok(Some(v)) => Ok(String::from_utf8(v).expect("utf-8 xattr")),
        Ok(None) => Err(libc::ENODATA),
        Err(e) => Err(errno(&e)),
    }
}

/// Poll `f` until it holds; fail the test naming `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// How long tests wait for background work (verification, eviction) on a busy CI machine.
pub const SETTLE: Duration = Duration::from_secs(20);

/// The errno of an io::Error, for asserting exact error codes.
pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or_else(|| panic!("not an OS error: {e}"))
}

/// Drop a file's pages from the page cache, so that the next read reaches the daemon (the
/// mount keeps the page cache across opens).
pub fn drop_page_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: a valid descriptor; fadvise only drops clean cached pages.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}
