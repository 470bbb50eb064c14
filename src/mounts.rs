//! Which modelfs serves which mountpoint, and mounting so that a daemon only ever unmounts
//! its own mount.
//!
//! Three jobs that all answer "is this mount mine?":
//!
//! - **Reading `/proc/self/mountinfo`** ([`parse_mountinfo`], [`top_mount_at`]): what is
//!   mounted at a path, topmost first, with its device number. A daemon records the device of
//!   its own mount and, at shutdown, unmounts the path only if the mount on top is still that
//!   one. `unmount` of a path with nothing mounted says so instead of passing `EINVAL` on.
//! - **Mounting with `mount(2)` ourselves** ([`mount_fuse`]) when running as root, and handing
//!   the connection to fuser with `Session::from_fd`. fuser's own mount unmounts *the path*
//!   when its session ends, whoever is mounted there by then: after our detach that is the
//!   mount underneath (a second daemon stacked on a first took the first one down with it;
//!   in Kubernetes it would be the `emptyDir` the mount sits on). A session built from a
//!   descriptor unmounts nothing. Unprivileged mounts still go through fuser and
//!   `fusermount3`, which only they may call.
//! - **The registry of live mounts** ([`Registration`], [`live_mounts`]): every daemon
//!   writes `<runtime dir>/modelfs/mounts/<mountpoint>.json` (its pid, mountpoint and store)
//!   and holds an exclusive `flock` on it for as long as it lives. The lock is the mutual
//!   exclusion of a mountpoint between daemons (a second one gets "already mounted by pid N"),
//!   and a record whose lock can be taken belongs to a dead process, so a `kill -9` leaves
//!   nothing that blocks the next start, and pid reuse cannot fake a live mount. The store
//!   commands read it to find the store of the mount that runs (see `crate::cli`).

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::evict::flock;

/// The filesystem type every modelfs mount has (`fuse.` + the subtype), as mountinfo shows it.
pub const FSTYPE: &str = "fuse.modelfs";

/// The source (`fsname`) of every modelfs mount, as `df` and `mount` show it.
pub const FSNAME: &str = "modelfs";

/// One line of `/proc/self/mountinfo` (proc(5)), the fields modelfs needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent: u32,
    /// `st_dev` of files in this mount: (major, minor).
    pub dev: (u32, u32),
    /// The directory of the filesystem mounted here: `/` for a whole mount, the subtree for a
    /// bind mount (what the CSI plugin checks a published volume by).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    pub fn is_modelfs(&self) -> bool {
        self.fstype == FSTYPE
    }

    /// The device number as `stat` reports it (`st_dev`).
    pub fn st_dev(&self) -> u64 {
        libc::makedev(self.dev.0, self.dev.1)
    }
}

/// Parse mountinfo text. Lines that do not have the documented shape are skipped: the file is
/// the kernel's, and one odd line must not hide the others.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let (head, tail) = line.split_once(" - ")?;
    let mut head = head.split(' ');
    let id = head.next()?.parse().ok()?;
    let parent = head.next()?.parse().ok()?;
    let (major, minor) = head.next()?.split_once(':')?;
    let dev = (major.parse().ok()?, minor.parse().ok()?);
    let root = PathBuf::from(unescape(head.next()?));
    let mount_point = PathBuf::from(unescape(head.next()?));
    let mut tail = tail.split(' ');
    let fstype = unescape(tail.next()?);
    let source = unescape(tail.next()?);
    Some(MountEntry { id, parent, dev, root, mount_point, fstype, source })
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo` octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount on top at `path` (the one a lookup of `path` enters), if anything is mounted
/// exactly there. `path` should be absolute and canonical, as mountinfo writes them.
pub fn top_mount_at(path: &Path) -> io::Result<Option<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(top_of(&parse_mountinfo(&text), path))
}

/// Of the mounts at `path`, the one that no other mount at `path` is stacked on.
fn top_of(entries: &[MountEntry], path: &Path) -> Option<MountEntry> {
    let here: Vec<&MountEntry> = entries.iter().filter(|e| e.mount_point == path).collect();
    here.iter()
        .find(|e| !here.iter().any(|other| other.parent == e.id))
        .or(here.last())
        .map(|e| (*e).clone())
}

/// `path` made absolute with symlinks resolved, as mountinfo shows mountpoints; `path` as
/// given when it cannot be (a dead mount answers `ENOTCONN` to everything).
pub fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

// -------------------------------------------------------------------------------------------
// Mounting
// -------------------------------------------------------------------------------------------

/// How a modelfs mount is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuseMount {
    pub allow_other: bool,
    /// The uid and gid the kernel reports as the mount's owner (`user_id`, `group_id`).
    pub uid: u32,
    pub gid: u32,
}

impl FuseMount {
    /// The `data` argument of mount(2) for a connection on descriptor `fd`: the kernel's own
    /// FUSE options (fs/fuse/inode.c). `default_permissions` makes the kernel check modes
    /// itself; `rootmode` must match the root the filesystem reports (a read-only directory).
    fn data(&self, fd: i32) -> String {
        let mut data = format!(
            "fd={fd},rootmode=40555,user_id={},group_id={},default_permissions",
            self.uid, self.gid
        );
        if self.allow_other {
            data.push_str(",allow_other");
        }
        data
    }
}

/// Open `/dev/fuse` and mount a new FUSE connection on it at `mountpoint` (read-only, no
/// devices, no setuid, no atime), as root. Returns the connection's descriptor, from which the
/// session reads the kernel's requests; closing it ends the connection.
pub fn mount_fuse(mountpoint: &Path, how: &FuseMount) -> io::Result<OwnedFd> {
    use nix::mount::{mount, MsFlags};
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
    let fd = OwnedFd::from(dev);
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME;
    mount(Some(FSNAME), mountpoint, Some(FSTYPE), flags, Some(how.data(fd.as_raw_fd()).as_str()))
        .map_err(io::Error::from)?;
    Ok(fd)
}

// -------------------------------------------------------------------------------------------
// The registry of live mounts
// -------------------------------------------------------------------------------------------

/// What a live daemon says about itself in its registry record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveMount {
    pub pid: u32,
    pub mountpoint: PathBuf,
    pub store: PathBuf,
    /// Whether verified files are served by FUSE passthrough (`on`, or `off: why`); absent
    /// until the kernel and the daemon have agreed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<String>,
    /// What the daemon served, from where: its own file beside the record
    /// ([`publish_traffic`]), read with it.
    #[serde(skip)]
    pub traffic: Option<crate::metrics::Traffic>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Another live daemon holds the mountpoint.
    #[error("{} is already mounted by modelfs (pid {pid}, store {}); run `modelfs unmount {}` first, or choose another mountpoint",
            .mount.mountpoint.display(), .mount.store.display(), .mount.mountpoint.display(), pid = .mount.pid)]
    Taken { mount: Box<LiveMount> },
    #[error("mount registry {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// This daemon's record; held (locked) until dropped, then removed.
#[derive(Debug)]
pub struct Registration {
    path: PathBuf,
    /// Holds the exclusive lock; closing it releases it, however the process ends.
    file: File,
    record: LiveMount,
}

impl Registration {
    /// Claim `mountpoint` for this process: fails with [`RegistryError::Taken`] while another
    /// live daemon holds it.
    pub fn claim(mountpoint: &Path, store: &Path) -> Result<Registration, RegistryError> {
        Self::claim_in(&own_registry_dir(), mountpoint, store)
    }

    fn claim_in(
        dir: &Path,
        mountpoint: &Path,
        store: &Path,
    ) -> Result<Registration, RegistryError> {
        let err = |source| RegistryError::Io { path: dir.display().to_string(), source };
        std::fs::create_dir_all(dir).map_err(err)?;
        let path = dir.join(record_name(mountpoint));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(err)?;
        if let Err(e) = flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let mount = serde_json::from_str(&text).unwrap_or(LiveMount {
                    pid: 0,
                    mountpoint: mountpoint.to_path_buf(),
                    store: PathBuf::from("?"),
                    passthrough: None,
                    traffic: None,
                });
                return Err(RegistryError::Taken { mount: Box::new(mount) });
            }
            return Err(err(e));
        }
        let record = LiveMount {
            pid: std::process::id(),
            mountpoint: mountpoint.to_path_buf(),
            store: store.to_path_buf(),
            passthrough: None,
            traffic: None,
        };
        let mut registration = Registration { path, file, record };
        registration.write().map_err(err)?;
        Ok(registration)
    }

    fn write(&mut self) -> io::Result<()> {
        let text = serde_json::to_string(&self.record).map_err(io::Error::other)?;
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(text.as_bytes())
    }

    /// Where what this daemon served is published ([`publish_traffic`]).
    pub fn record_path(&self) -> &Path {
        &self.path
    }

    /// Record whether FUSE passthrough is in effect, for `modelfs status`.
    pub fn note_passthrough(&mut self, state: &str) {
        self.record.passthrough = Some(state.to_string());
        if let Err(e) = self.write() {
            tracing::debug!(error = %e, "mount record not updated");
        }
    }
}

/// The traffic file of the record at `record`.
fn traffic_path(record: &Path) -> PathBuf {
    record.with_extension("traffic")
}

/// Write what the daemon of the record at `record` served, from where, for `modelfs status`:
/// beside the record, replaced whole (written, then renamed), so a reader never sees half.
pub fn publish_traffic(record: &Path, traffic: &crate::metrics::Traffic) -> io::Result<()> {
    let path = traffic_path(record);
    let tmp = path.with_extension("traffic.tmp");
    std::fs::write(&tmp, serde_json::to_vec(traffic).map_err(io::Error::other)?)?;
    std::fs::rename(&tmp, &path)
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(traffic_path(&self.path));
        // Removed while still locked, so no other daemon can have claimed this very file.
        let _ = std::fs::remove_file(&self.path);
        let _ = flock(&self.file, libc::LOCK_UN);
    }
}

/// Every live daemon's record, from this user's registry and the system one (root's daemons
/// register in `/run/modelfs/mounts`, readable by all), by mountpoint.
pub fn live_mounts() -> Vec<LiveMount> {
    let mut dirs = vec![own_registry_dir()];
    let system = PathBuf::from(SYSTEM_REGISTRY);
    if !dirs.contains(&system) {
        dirs.push(system);
    }
    let mut out: Vec<LiveMount> = dirs.iter().flat_map(|d| live_in(d)).collect();
    out.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    out.dedup_by(|a, b| a.mountpoint == b.mountpoint && a.pid == b.pid);
    out
}

/// The live record for `mountpoint`, if a daemon holds it.
pub fn live_mount_at(mountpoint: &Path) -> Option<LiveMount> {
    live_mounts().into_iter().find(|m| m.mountpoint == mountpoint)
}

fn live_in(dir: &Path) -> Vec<LiveMount> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(mut file) = File::open(&path) else { continue };
        // A lock we can take is a dead daemon's: nothing is served there.
        if flock(&file, libc::LOCK_SH | libc::LOCK_NB).is_ok() {
            continue;
        }
        let mut text = String::new();
        if file.read_to_string(&mut text).is_ok() {
            if let Ok(mut record) = serde_json::from_str::<LiveMount>(&text) {
                record.traffic = std::fs::read(traffic_path(&path))
                    .ok()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok());
                out.push(record);
            }
        }
    }
    out
}

/// Where root's daemons register: cleared at boot, readable by every user.
const SYSTEM_REGISTRY: &str = "/run/modelfs/mounts";

/// Where this process's daemons register: the system registry as root, else
/// `$XDG_RUNTIME_DIR/modelfs/mounts`, else a per-user directory under the temporary directory.
fn own_registry_dir() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from(SYSTEM_REGISTRY);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("modelfs/mounts"),
        None => std::env::temp_dir().join(format!("modelfs-{uid}/mounts")),
    }
}

fn record_name(mountpoint: &Path) -> String {
    format!("{}.json", crate::cli::escape_path(mountpoint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
36 28 0:52 / /models rw,nosuid,nodev,relatime shared:1 - tmpfs tmpfs rw
40 36 0:55 / /models ro,nosuid,nodev,noatime - fuse.modelfs modelfs ro,user_id=0,group_id=0
41 40 0:56 / /models ro,nosuid,nodev,noatime - fuse.modelfs modelfs ro,user_id=0,group_id=0
50 28 0:60 / /mnt/my\\040models ro - fuse.modelfs modelfs ro
garbage line
";

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let all = parse_mountinfo(SAMPLE);
        assert_eq!(all.len(), 5, "the garbage line is skipped");
        assert_eq!(all[2].dev, (0, 55));
        assert_eq!(all[2].st_dev(), libc::makedev(0, 55));
        assert!(all[2].is_modelfs() && !all[1].is_modelfs());
        assert_eq!(all[4].mount_point, PathBuf::from("/mnt/my models"));
        assert_eq!(all[4].source, "modelfs");
    }

    #[test]
    fn the_top_of_a_stack_is_the_mount_nothing_sits_on() {
        let all = parse_mountinfo(SAMPLE);
        let top = top_of(&all, Path::new("/models")).unwrap();
        assert_eq!((top.id, top.dev), (41, (0, 56)));
        // Listed out of order, the answer is the same.
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(top_of(&reversed, Path::new("/models")).unwrap().id, 41);
        assert_eq!(top_of(&all, Path::new("/nothing")), None);
    }

    #[test]
    fn a_mountpoint_is_claimed_once_and_released_by_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let mp = Path::new("/models/x");
        let held = Registration::claim_in(dir.path(), mp, Path::new("/s")).unwrap();
        let live = live_in(dir.path());
        assert_eq!(live.len(), 1);
        assert_eq!((live[0].pid, &live[0].store), (std::process::id(), &PathBuf::from("/s")));
        // flock conflicts between open file descriptions, so a second claim in this same
        // process is refused exactly as another process's would be.
        match Registration::claim_in(dir.path(), mp, Path::new("/t")) {
            Err(RegistryError::Taken { mount }) => {
                assert_eq!(mount.pid, std::process::id());
                let message = RegistryError::Taken { mount }.to_string();
                assert!(message.starts_with("/models/x is already mounted by modelfs (pid "));
            }
            other => panic!("second claim: {other:?}"),
        }
        drop(held);
        assert!(live_in(dir.path()).is_empty());
        let _again = Registration::claim_in(dir.path(), mp, Path::new("/t")).unwrap();
    }

    #[test]
    fn a_dead_holders_record_is_not_live() {
        let dir = tempfile::tempdir().unwrap();
        let record = LiveMount {
            pid: 1,
            mountpoint: "/m".into(),
            store: "/s".into(),
            passthrough: None,
            traffic: None,
        };
        let path = dir.path().join(record_name(Path::new("/m")));
        std::fs::write(&path, serde_json::to_string(&record).unwrap()).unwrap();
        assert!(live_in(dir.path()).is_empty(), "nobody holds its lock");
        let _claimed =
            Registration::claim_in(dir.path(), Path::new("/m"), Path::new("/s2")).unwrap();
        assert_eq!(live_in(dir.path())[0].store, PathBuf::from("/s2"));
    }

    #[test]
    fn mount_data_names_the_connection_and_the_owner() {
        let how = FuseMount { allow_other: true, uid: 7, gid: 8 };
        assert_eq!(
            how.data(5),
            "fd=5,rootmode=40555,user_id=7,group_id=8,default_permissions,allow_other"
        );
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,120}") {
            let _ = parse_mountinfo(&s);
        }

        #[test]
        fn escaped_paths_round_trip(name in "[a-z \\t\\\\]{1,12}") {
            let escaped: String = name.chars().map(|c| match c {
                ' ' => "\\040".to_string(),
                '\t' => "\\011".to_string(),
                '\\' => "\\134".to_string(),
                c => c.to_string(),
            }).collect();
            prop_assert_eq!(unescape(&escaped), name);
        }
    }
}
