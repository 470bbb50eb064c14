//! The FUSE edge: the only module that knows fuser, its reply types and errno.
//!
//! Each operation is a thin call into [`ModelFs`]. Operations that can touch the network
//! (lookup, readdir, xattrs, reads of chunks that are not stored) are answered from a task on
//! the tokio runtime, so one slow fetch never holds a FUSE worker thread; operations that
//! cannot (getattr, open, release, reads the store can answer) are answered inline, which is
//! the warm path: store → one copy → kernel, no task hop.

use std::ffi::OsStr;
use std::sync::Arc;

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen,
    ReplyStatfs, ReplyXattr, Request,
};
use tokio::runtime::Handle;

use crate::fs::{Attr, DirEntry, Entry, FsError, Kind, ModelFs, XATTR_PREFIX};

/// Read-ahead the kernel may do on its own (from the page cache's point of view): 1 MiB
/// requests of an immutable file are never wasted.
const MAX_READAHEAD: u32 = 1 << 20;

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
}

impl FuseAdapter {
    pub fn new(fs: Arc<ModelFs>, rt: Handle) -> Self {
        Self { fs, rt }
    }
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
        match self.fs.open(ino.0, write) {
            // Contents at a commit never change: once verified, keep the page cache across
            // opens, so warm reads and mmap page-ins never reach the daemon. Before that, the
            // kernel drops it at each open (see `ModelFs::may_keep_cache`).
            Ok(fh) if self.fs.may_keep_cache(fh) => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => {
                log_error("open", &e);
                reply.error(errno(&e))
            }
        }
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

    // Everything that would change the tree is refused: the mount is read-only (SPEC §3).

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
