//! The FUSE edge: the only module that knows fuser, its reply types and errno.
//!
//! Each operation is a thin call into [`ModelFs`]. Operations that can touch the network
//! (lookup, readdir, xattrs, reads of chunks that are not stored) are answered from a task on
//! the tokio runtime, so one slow fetch never holds a FUSE worker thread; operations that
//! cannot (getattr, open, release, reads the store can answer) are answered inline, which is
//! the warm path: store → one copy → kernel, no task hop.

use crate::lock;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use tokio::runtime::Handle;

use crate::fs::pages::KernelPages;
use crate::fs::{Attr, DirEntry, Entry, FsError, Kind, ModelFs, XATTR_PREFIX};

/// Read-ahead the kernel may do on its own (from the page cache's point of view): 1 MiB
/// requests of an immutable file are never wasted.
const MAX_READAHEAD: u32 = 1 << 20;

/// How deep the kernel may stack filesystems under a passthrough file: 2 lets the store (the
/// backing files) sit on overlayfs, as in a container whose store is not a volume; the price
/// is that this mount cannot itself be a lower layer of an overlay.
const PASSTHROUGH_STACK_DEPTH: u32 = 2;

/// Background requests (async reads, readahead) the kernel may keep queued: enough that
/// several parallel chunk fetches are in flight for sequential readers.
const MAX_BACKGROUND: u16 = 64;

/// The errno for `e`, counted in `modelfs_fuse_errors_total`: every error the filesystem core
/// answers the kernel with passes here.
pub fn errno(e: &FsError) -> Errno {
    let errno = errno_of(e);
    crate::metrics::get().fuse_error(errno.code());
    errno
}

fn errno_of(e: &FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::Denied(_) => Errno::EACCES,
        FsError::Io(_) | FsError::BadHandle => Errno::EIO,
        FsError::ReadOnly => Errno::EROFS,
        FsError::NoAttr => Errno::ENODATA,
    }
}

pub struct FuseAdapter {
    fs: Arc<ModelFs>,
    rt: Handle,
    passthrough: Arc<Passthrough>,
    /// Backing files handed to the kernel: one per inode while any handle on it is open.
    backing: Arc<Mutex<BackingCache>>,
}

impl FuseAdapter {
    pub fn new(fs: Arc<ModelFs>, rt: Handle) -> Self {
        Self { fs, rt, passthrough: Arc::new(Passthrough::default()), backing: Arc::default() }
    }

    /// The kernel's page cache of this mount's inodes, for `ModelFs::push_planned_chunks`:
    /// `notifier` is the session's, which exists only once the adapter is in a session.
    pub fn kernel_pages(&self) -> impl FnOnce(fuser::Notifier) -> Arc<dyn KernelPages> {
        let backing = self.backing.clone();
        move |notifier| Arc::new(NotifiedPages { notifier, backing })
    }

    /// Whether verified files are served by FUSE passthrough, decided when the kernel's
    /// `INIT` arrives (and turned off for good if the kernel refuses a backing file).
    pub fn passthrough(&self) -> Arc<Passthrough> {
        self.passthrough.clone()
    }
}

/// FUSE passthrough: a verified file is opened with its data file as the kernel's backing
/// file, so reads, splice and mmap of it are served by the kernel from that file, with no
/// request to the daemon and no copy through it (Linux ≥ 6.9, and a daemon allowed to open
/// backing files: root). Where that is not possible, everything goes through the daemon with
/// the page cache kept, and [`Passthrough::describe`] says why.
#[derive(Debug, Default)]
pub struct Passthrough {
    on: AtomicBool,
    why_not: Mutex<Option<String>>,
}

impl Passthrough {
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    fn set(&self, on: bool, why_not: Option<String>) {
        self.on.store(on, Ordering::Relaxed);
        *lock(&self.why_not) = why_not;
        crate::metrics::get().set_passthrough(on);
    }

    /// `on`, or `off: <why>`, as the log and `modelfs status` say it.
    pub fn describe(&self) -> String {
        if self.is_on() {
            "on".into()
        } else {
            format!("off: {}", lock(&self.why_not).as_deref().unwrap_or("not negotiated yet"))
        }
    }
}

/// How each inode's open handles are served. The kernel requires one backing file per inode
/// for all its passthrough handles (the id is closed when the last one is released), and
/// refuses (`EIO`) a passthrough open of an inode that still has handles open through the page
/// cache: a file opened before it was verified and still open keeps being served that way
/// until every such handle is closed.
#[derive(Default)]
struct BackingCache {
    by_ino: HashMap<u64, Weak<BackingId>>,
    by_handle: HashMap<u64, Arc<BackingId>>,
    /// Handles served through the daemon, per inode.
    cached: HashMap<u64, usize>,
    /// The inode of each handle served through the daemon.
    cached_handles: HashMap<u64, u64>,
}

impl BackingCache {
    fn opened_cached(&mut self, ino: u64, fh: u64) {
        *self.cached.entry(ino).or_default() += 1;
        self.cached_handles.insert(fh, ino);
    }

    fn released(&mut self, fh: u64) {
        self.by_handle.remove(&fh);
        if let Some(ino) = self.cached_handles.remove(&fh) {
            if let Some(n) = self.cached.get_mut(&ino) {
                *n -= 1;
                if *n == 0 {
                    self.cached.remove(&ino);
                }
            }
        }
    }
}

/// [`KernelPages`] by FUSE notifications: `FUSE_NOTIFY_STORE` fills an inode's page cache,
/// `FUSE_NOTIFY_INVAL_INODE` empties it. Only inodes with handles opened through the page
/// cache take pushes: a passed-through inode's reads never look at its own page cache.
struct NotifiedPages {
    notifier: fuser::Notifier,
    backing: Arc<Mutex<BackingCache>>,
}

impl KernelPages for NotifiedPages {
    fn cached_inodes(&self) -> Vec<u64> {
        lock(&self.backing).cached.keys().copied().collect()
    }

    fn store(&self, ino: u64, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.notifier.store(INodeNo(ino), offset, data)
    }

    fn forget(&self, ino: u64) -> std::io::Result<()> {
        self.notifier.inval_inode(INodeNo(ino), 0, 0)
    }
}

/// Drop the kernel's cached pages of every inode that shows a content found bad, so that no
/// byte of it is served again from the page cache (files keep their page cache across opens:
/// see `ModelFs::is_failed`).
///
/// On a thread of its own: the kernel invalidates a page only once it can lock it, and the
/// pages a reader is waiting on stay locked until that read is answered, which may be by the
/// very task that found the file bad (a read of a small file checked whole). Invalidating in
/// that task deadlocked it with the reader; here, the read gets its `EIO` and then its pages
/// go.
pub fn invalidate_failed_files(fs: &Arc<ModelFs>, notifier: fuser::Notifier) {
    let weak = Arc::downgrade(fs);
    let notifier = Arc::new(notifier);
    fs.set_on_failed(Arc::new(move |content| {
        let Some(fs) = weak.upgrade() else { return };
        let inodes = fs.inodes_of(content);
        let notifier = notifier.clone();
        let spawned = std::thread::Builder::new().name("modelfs-inval".into()).spawn(move || {
            for ino in inodes {
                // ENOENT: the kernel has no such inode cached, so nothing to drop.
                if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        tracing::warn!(ino, error = %e, "cached pages of a bad file not invalidated");
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the invalidation of a bad file's pages");
        }
    }));
}

/// When the access rules change (SIGHUP), make the kernel forget the attributes it cached of
/// every inode, so that the next permission check asks for the new owner and mode. An offset
/// of -1 keeps the page cache: the bytes did not change, only who may read them.
pub fn invalidate_on_access_change(fs: &Arc<ModelFs>, notifier: fuser::Notifier) {
    let notifier = Arc::new(notifier);
    fs.set_on_access_change(Arc::new(move |inodes| {
        let notifier = notifier.clone();
        // A thread of its own, as for bad files: the kernel may wait on a request this
        // process has to answer.
        let spawned = std::thread::Builder::new().name("modelfs-inval".into()).spawn(move || {
            for ino in inodes {
                if let Err(e) = notifier.inval_inode(INodeNo(ino), -1, 0) {
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        tracing::warn!(ino, error = %e, "cached attributes not invalidated");
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the invalidation of cached attributes");
        }
    }));
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: a.blksize,
        flags: 0,
    }
}

fn log_error(op: &str, e: &FsError) {
    match e {
        FsError::NotFound | FsError::NoAttr => {}
        FsError::Io(_) | FsError::BadHandle => tracing::warn!(op, error = %e, "failed"),
        _ => tracing::debug!(op, error = %e, "refused"),
    }
}

/// Names that are not UTF-8 cannot exist on the Hub.
fn utf8(name: &OsStr) -> Option<String> {
    name.to_str().map(str::to_string)
}

/// Answer an xattr request: the size when asked with `size == 0`, `ERANGE` when the
/// caller's buffer is too small, else the bytes.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if (size as usize) < data.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl FuseAdapter {
    /// The backing id of inode `ino`, shared by all its open handles, now held by `fh` too.
    fn backing_for(
        &self,
        ino: u64,
        fh: u64,
        reply: &ReplyOpen,
        file: &std::fs::File,
    ) -> std::io::Result<Arc<BackingId>> {
        let mut cache = lock(&self.backing);
        let id = match cache.by_ino.get(&ino).and_then(Weak::upgrade) {
            Some(id) => id,
            None => {
                let id = Arc::new(reply.open_backing(file)?);
                cache.by_ino.insert(ino, Arc::downgrade(&id));
                id
            }
        };
        cache.by_handle.insert(fh, id.clone());
        // Inodes whose last handle closed leave dead entries: drop them now and then.
        if cache.by_ino.len() > 2 * cache.by_handle.len() + 64 {
            cache.by_ino.retain(|_, id| id.strong_count() > 0);
        }
        Ok(id)
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Best effort: each is an optimisation the kernel may not offer. FUSE_POSIX_ACL makes
        // the kernel cache "no ACL" per inode, so `ls -l` stops asking the daemon for
        // system.posix_acl_* on every file, every time.
        let wanted = InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_MAX_PAGES;
        for flag in wanted.iter() {
            if config.add_capabilities(flag).is_err() {
                tracing::debug!(?flag, "kernel does not offer");
            }
        }
        let _ =
            config.set_max_readahead(MAX_READAHEAD).or_else(|max| config.set_max_readahead(max));
        let _ = config.set_max_background(MAX_BACKGROUND);
        let why_not = if !nix::unistd::geteuid().is_root() {
            Some("the daemon is not root (opening backing files needs CAP_SYS_ADMIN)".to_string())
        } else if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_err() {
            Some("the kernel does not offer it (Linux 6.9 or later is needed)".to_string())
        } else if let Err(max) = config.set_max_stack_depth(PASSTHROUGH_STACK_DEPTH) {
            Some(format!("the kernel allows a stack depth of {max} only"))
        } else {
            None
        };
        self.passthrough.set(why_not.is_none(), why_not);
        tracing::info!(passthrough = %self.passthrough.describe(), "FUSE passthrough for verified files");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = utf8(name) else { return reply.error(Errno::ENOENT) };
        let answer = |reply: ReplyEntry, result: Result<Entry, FsError>| match result {
            Ok(e) => reply.entry(&e.ttl, &file_attr(&e.attr), Generation(0)),
            Err(e) => {
                log_error("lookup", &e);
                reply.error(errno(&e))
            }
        };
        // Inside a view (nearly every lookup) the answer is in memory: no task hop.
        if let Some(result) = self.fs.lookup_now(parent.0, &name) {
            return answer(reply, result);
        }
        let fs = self.fs.clone();
        self.rt.spawn(async move { answer(reply, fs.lookup(parent.0, &name).await) });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(e) => reply.attr(&e.ttl, &file_attr(&e.attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY)
            || flags.0 & (libc::O_TRUNC | libc::O_APPEND | libc::O_CREAT) != 0;
        let fh = match self.fs.open(ino.0, write) {
            Ok(fh) => fh,
            Err(e) => {
                log_error("open", &e);
                return reply.error(errno(&e));
            }
        };
        // A `refs/<rev>` file of the huggingface_hub cache view: what a ref names can change,
        // so its reads always come here (doc/SEMANTICS.md, "The huggingface_hub cache view").
        if self.fs.is_ref_handle(fh) {
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
        }
        // A file found bad: its pages go (an open without KEEP_CACHE drops them), and every
        // read of it is EIO.
        if self.fs.is_failed(fh) {
            lock(&self.backing).opened_cached(ino.0, fh);
            return reply.opened(FileHandle(fh), FopenFlags::empty());
        }
        let cached_elsewhere = lock(&self.backing).cached.contains_key(&ino.0);
        if self.passthrough.is_on() && !cached_elsewhere {
            if let Some(file) = self.fs.passthrough_file(fh) {
                match self.backing_for(ino.0, fh, &reply, &file) {
                    Ok(id) => {
                        crate::metrics::get().passthrough_opened();
                        return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                    }
                    Err(e) => {
                        // Once is enough to know: the kernel or our privileges do not allow it.
                        let why = format!("the kernel refused a backing file: {e}");
                        tracing::warn!(error = %e, "FUSE passthrough off; files are served through the daemon");
                        self.passthrough.set(false, Some(why));
                    }
                }
            }
        }
        // Contents at a commit never change: keep the page cache across opens, so warm reads
        // and mmap page-ins never reach the daemon.
        lock(&self.backing).opened_cached(ino.0, fh);
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut pending = Some(reply);
        let warm = self.fs.read_cached(fh.0, offset, size, &mut |data| {
            if let Some(reply) = pending.take() {
                reply.data(data);
            }
        });
        let Some(reply) = pending else { return };
        match warm {
            Ok(_) => {}
            Err(e) => {
                log_error("read", &e);
                return reply.error(errno(&e));
            }
        }
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => {
                    log_error("read", &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The last handle of an inode closes its backing id (the `Arc` held here).
        lock(&self.backing).released(fh.0);
        self.fs.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.getattr(ino.0) {
            // A view's directories belong to one commit and never change: let the kernel
            // keep their listings, so a repeated `ls -R` does not reach the daemon.
            Ok(e) if e.attr.kind == Kind::Dir && self.fs.is_commit_pinned_dir(ino.0) => reply
                .opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE),
            Ok(e) if e.attr.kind == Kind::Dir => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let answer = move |mut reply: ReplyDirectory, listing: Result<Vec<DirEntry>, FsError>| {
            let entries = match listing {
                Ok(entries) => entries,
                Err(e) => {
                    log_error("readdir", &e);
                    return reply.error(errno(&e));
                }
            };
            // The offset handed back with entry i is i+1: where the next call resumes.
            for (i, d) in entries.iter().enumerate().skip(offset as usize) {
                let kind = match d.entry.attr.kind {
                    Kind::Dir => FileType::Directory,
                    Kind::File => FileType::RegularFile,
                };
                if reply.add(INodeNo(d.entry.attr.ino), i as u64 + 1, kind, &d.name) {
                    break;
                }
            }
            reply.ok();
        };
        if let Some(listing) = self.fs.readdir_now(ino.0) {
            return answer(reply, listing);
        }
        let fs = self.fs.clone();
        self.rt.spawn(async move { answer(reply, fs.readdir(ino.0).await) });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let answer = move |mut reply: ReplyDirectoryPlus,
                           listing: Result<Vec<DirEntry>, FsError>| {
            let entries = match listing {
                Ok(entries) => entries,
                Err(e) => {
                    log_error("readdirplus", &e);
                    return reply.error(errno(&e));
                }
            };
            for (i, d) in entries.iter().enumerate().skip(offset as usize) {
                let attr = file_attr(&d.entry.attr);
                if reply.add(attr.ino, i as u64 + 1, &d.name, &d.entry.ttl, &attr, Generation(0)) {
                    break;
                }
            }
            reply.ok();
        };
        if let Some(listing) = self.fs.readdir_now(ino.0) {
            return answer(reply, listing);
        }
        let fs = self.fs.clone();
        self.rt.spawn(async move { answer(reply, fs.readdir(ino.0).await) });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // A read-only view: no free space to report. namelen is what the Hub allows a path
        // component to be.
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(name) = utf8(name) else { return reply.error(Errno::ENODATA) };
        // `ls -l` and `cp -a` ask every file for security.* and system.* names: answer those
        // at once, without a task.
        if !name.starts_with(XATTR_PREFIX) {
            return match self.fs.getattr(ino.0) {
                Ok(_) => reply.error(Errno::ENODATA),
                Err(e) => reply.error(errno(&e)),
            };
        }
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.getxattr(ino.0, &name).await {
                Ok(value) => reply_xattr(reply, size, value.as_bytes()),
                Err(e) => {
                    log_error("getxattr", &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.xattrs(ino.0).await {
                Ok(attrs) => {
                    let mut list = Vec::new();
                    for (name, _) in attrs {
                        list.extend_from_slice(name.as_bytes());
                        list.push(0);
                    }
                    reply_xattr(reply, size, &list)
                }
                Err(e) => {
                    log_error("listxattr", &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.fs.getattr(ino.0) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    // Everything that would change the tree is refused: the mount is read-only (doc/SEMANTICS.md,
    // "Reads").

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    /// No ioctl means anything here. Python's `open()` asks every file whether it is a
    /// terminal (TCGETS) to choose its buffering: "not a typewriter" is the answer a regular
    /// file gives, quietly (fuser's default logs a warning per call).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }
}
