//! Where chunk bytes live: one data file per content, `<store>/data/<2 hex>/<64 hex>`, as
//! long as the file it holds (sparse while partial), each chunk written at its offset with
//! one `pwrite` from the network buffer. A verified file's data file holds exactly the file,
//! so the kernel can serve it by FUSE passthrough.
//!
//! A data file's bytes count only where the index (`mdbx.rs`) records a checked chunk: a
//! range the index does not name is a hole or a leftover, and is never read. So the order of
//! a chunk write is data first, index second, and nothing here needs to be durable until a
//! file is verified: after a kill the page cache holds what was written; after a power loss a
//! chunk whose bytes did not reach the disk fails its crc32c and is fetched again (see
//! doc/DESIGN.md, "Store v2").
//!
//! Descriptors are kept open (a bounded cache) so a warm read is one `pread`. Another process
//! may unlink a file (eviction) while this one holds it open; every use checks the link
//! count and reopens, so a write never lands in an unlinked inode nor a read in a stale one.

use crate::lock;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::manifest::ContentId;

/// Descriptors kept open: more than a loader has files open at once (a 400-shard checkpoint
/// is rare), few enough to stay far below any descriptor limit.
const MAX_OPEN: usize = 512;

/// A data file with no record is removed at open only once it is this old: a younger one may
/// belong to a chunk write of another process that has not committed its index entry yet.
const ORPHAN_AGE: Duration = Duration::from_secs(600);

/// The name of the directory of data files in a store.
pub(super) const DATA_DIR: &str = "data";

pub(super) struct DataFiles {
    dir: PathBuf,
    open: Mutex<HashMap<ContentId, Arc<File>>>,
    /// Opened for reading only; nothing is ever created ([`DataFiles::read_only`]).
    read_only: bool,
}

impl DataFiles {
    pub fn new(store_dir: &Path) -> io::Result<DataFiles> {
        let dir = store_dir.join(DATA_DIR);
        std::fs::create_dir_all(&dir)?;
        Ok(DataFiles { dir, open: Mutex::default(), read_only: false })
    }

    /// The data files of a store this process only reads (`--store-ro`), perhaps on a
    /// read-only filesystem: opened for reading only, and never created.
    pub fn read_only(store_dir: &Path) -> DataFiles {
        DataFiles { dir: store_dir.join(DATA_DIR), open: Mutex::default(), read_only: true }
    }

    /// Where the bytes of `content` are.
    pub fn path(&self, content: &ContentId) -> PathBuf {
        let hex = content.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// An open descriptor of `content`'s data file; `None` when there is none (and `create` is
    /// false).
    fn file(&self, content: &ContentId, create: bool) -> io::Result<Option<Arc<File>>> {
        let cached = lock(&self.open).get(content).cloned();
        if let Some(file) = cached {
            // Unlinked by an eviction (maybe in another process): reopen by name.
            if file.metadata()?.nlink() > 0 {
                return Ok(Some(file));
            }
            lock(&self.open).remove(content);
        }
        let path = self.path(content);
        let opened = match OpenOptions::new().read(true).write(!self.read_only).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create && !self.read_only => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let file = Arc::new(opened);
        let mut open = lock(&self.open);
        if open.len() >= MAX_OPEN {
            // Any one will do: a dropped descriptor costs one `open` at its next use.
            if let Some(victim) = open.keys().next().copied() {
                open.remove(&victim);
            }
        }
        open.insert(*content, file.clone());
        Ok(Some(file))
    }

    /// Write `data` at `offset` of `content`'s data file, creating it `size` bytes long
    /// (sparse) if it is new.
    pub fn write_at(
        &self,
        content: &ContentId,
        size: u64,
        offset: u64,
        data: &[u8],
    ) -> io::Result<()> {
        let file = self.file(content, true)?.ok_or_else(|| io::Error::other("not created"))?;
        if file.metadata()?.len() < size {
            file.set_len(size)?;
        }
        file.write_all_at(data, offset)
    }

    /// Fill `buf` from `offset` of `content`'s data file. `false` when there is no data file
    /// or it ends before `buf` is full (the index names a chunk the file does not have).
    pub fn read_at(&self, content: &ContentId, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        let Some(file) = self.file(content, false)? else { return Ok(false) };
        match file.read_exact_at(buf, offset) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Make `content`'s bytes durable: before a file is marked verified (and may be passed
    /// through to the kernel, which reads them without our crc checks).
    pub fn sync(&self, content: &ContentId) -> io::Result<()> {
        match self.file(content, false)? {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }

    /// A read-only descriptor of `content`'s data file, for the kernel to read from.
    pub fn open_read_only(&self, content: &ContentId) -> io::Result<Option<File>> {
        match File::open(self.path(content)) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Remove `content`'s data file, giving its disk space back (at once, or when the last
    /// descriptor on it closes). Returns the bytes it took on disk.
    pub fn remove(&self, content: &ContentId) -> io::Result<u64> {
        lock(&self.open).remove(content);
        let path = self.path(content);
        let allocated = match std::fs::metadata(&path) {
            Ok(meta) => meta.blocks() * 512,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(allocated),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Remove the data files that no record names (`known` says which do) and that are older
    /// than [`ORPHAN_AGE`]: what a crash between an index commit and an unlink, or between a
    /// data write and its index commit, leaves behind. Returns how many went.
    pub fn sweep(&self, known: &dyn Fn(&ContentId) -> bool) -> io::Result<usize> {
        let mut removed = 0;
        let now = SystemTime::now();
        for shard in std::fs::read_dir(&self.dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name();
                let Some(content) = name.to_str().and_then(parse_hex) else { continue };
                if known(&content) {
                    continue;
                }
                let age = entry
                    .metadata()?
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                if age >= ORPHAN_AGE {
                    let _ = std::fs::remove_file(entry.path());
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

fn parse_hex(name: &str) -> Option<ContentId> {
    let bytes = hex::decode(name).ok()?;
    Some(ContentId(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_land_at_their_offsets_and_holes_cost_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let files = DataFiles::new(dir.path()).unwrap();
        let id = ContentId([4; 32]);
        let size = 64 << 20;
        files.write_at(&id, size, 32 << 20, b"middle").unwrap();
        let meta = std::fs::metadata(files.path(&id)).unwrap();
        assert_eq!(meta.len(), size, "as long as the file");
        assert!(meta.blocks() * 512 < 1 << 20, "sparse: {} bytes allocated", meta.blocks() * 512);
        let mut buf = [0u8; 6];
        assert!(files.read_at(&id, 32 << 20, &mut buf).unwrap());
        assert_eq!(&buf, b"middle");
        assert!(!files.read_at(&id, size - 2, &mut buf).unwrap(), "past the end");
        assert!(!files.read_at(&ContentId([5; 32]), 0, &mut buf).unwrap(), "no file");
        assert!(files.remove(&id).unwrap() > 0);
        assert!(!files.path(&id).exists());
        assert_eq!(files.remove(&id).unwrap(), 0);
    }

    /// Another process unlinks a file this one holds open: the next write creates a new
    /// file instead of writing into the unlinked one, and reads see the new one.
    #[test]
    fn an_unlinked_file_is_reopened_not_written_into() {
        let dir = tempfile::tempdir().unwrap();
        let files = DataFiles::new(dir.path()).unwrap();
        let id = ContentId([6; 32]);
        files.write_at(&id, 10, 0, b"first").unwrap();
        std::fs::remove_file(files.path(&id)).unwrap();
        files.write_at(&id, 10, 5, b"again").unwrap();
        let on_disk = std::fs::read(files.path(&id)).unwrap();
        assert_eq!(&on_disk[5..], b"again");
        assert_eq!(&on_disk[..5], &[0; 5], "the new file has a hole where the old bytes were");
    }

    #[test]
    fn the_sweep_takes_only_old_unknown_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = DataFiles::new(dir.path()).unwrap();
        let (known, young, old) = (ContentId([1; 32]), ContentId([2; 32]), ContentId([3; 32]));
        for id in [known, young, old] {
            files.write_at(&id, 4, 0, b"data").unwrap();
        }
        let long_ago = SystemTime::now() - 2 * ORPHAN_AGE;
        for id in [known, old] {
            File::options()
                .write(true)
                .open(files.path(&id))
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        std::fs::write(files.dir.join("not-a-shard"), b"x").unwrap();
        assert_eq!(files.sweep(&|c| *c == known).unwrap(), 1);
        assert!(files.path(&known).exists() && files.path(&young).exists());
        assert!(!files.path(&old).exists());
    }
}
