//! Helpers the kernel-free tests of the filesystem core share: walking a path as the kernel
//! would (one lookup per component), reading a whole file, listing a directory.

use std::sync::Arc;
use std::time::Duration;

use super::{FsConfig, FsError, ModelFs, ROOT_INO};
use crate::fetch::PrefetchLimits;
use crate::store::ChunkStore;

/// A new mount over `store` with no Hub at all: what a restart offline serves.
pub(crate) fn offline(store: Arc<dyn ChunkStore>) -> ModelFs {
    ModelFs::new(
        FsConfig { offline: true, ..FsConfig::default() },
        store,
        Arc::new(crate::hub::OfflineHub),
        Arc::new(crate::hub::OfflineHub),
        Duration::from_secs(1),
        PrefetchLimits::NONE,
    )
}

/// The inode of `path` (relative to the root; empty components skipped).
pub(crate) async fn walk(fs: &ModelFs, path: &str) -> Result<u64, FsError> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = fs.lookup(ino, part).await?.attr.ino;
    }
    Ok(ino)
}

/// Every byte of the file at `path`, asking for more than its size (reads end at the end).
pub(crate) async fn read_all(fs: &ModelFs, path: &str) -> Result<Vec<u8>, FsError> {
    let ino = walk(fs, path).await?;
    let fh = fs.open(ino, false)?;
    let size = fs.getattr(ino)?.attr.size;
    let out = fs.read(fh, 0, size as u32 + 10).await;
    fs.release(fh);
    out
}

/// The names in the directory at `path`, without `.` and `..`, as the kernel would get them
/// (inline where the core answers inline).
pub(crate) async fn names(fs: &ModelFs, path: &str) -> Vec<String> {
    let ino = walk(fs, path).await.unwrap();
    let listing = match fs.readdir_now(ino) {
        Some(listing) => listing,
        None => fs.readdir(ino).await,
    };
    listing.unwrap().into_iter().map(|d| d.name).filter(|n| n != "." && n != "..").collect()
}
