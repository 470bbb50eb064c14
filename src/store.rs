//! The chunk store: where fetched bytes and repo manifests live, across restarts and crashes.
//!
//! [`ChunkStore`] is the seam: [`mdbx::MdbxStore`] is the real one (a libmdbx index and a data
//! file per content; several processes may open it at once), [`memory::MemoryStore`] the
//! in-memory double used
//! by kernel-free tests. Files are stored by content ([`ContentId`]) in fixed-size chunks
//! (chunk `i` holds bytes `[i*chunk_size, min((i+1)*chunk_size, size))`); each chunk carries
//! crc32c checksums that are checked on every read, and a chunk that fails them is dropped
//! and reported as absent, never served.
//!
//! All methods are synchronous and short: callers on the async runtime run the ones that
//! write through `spawn_blocking`. No method holds a transaction after it returns, so no
//! transaction ever spans an `.await` or a network call.

mod data;
mod format;
pub mod layered;
pub mod mdbx;
pub mod memory;
mod migrate;

use std::ops::Range;

use crate::manifest::{ContentId, Manifest, RepoId};

/// Default chunk size: 8 MiB. Large enough that a 1 GiB file is 128 range requests and the
/// per-request latency is amortised; small enough that a random 4 KiB read of a cold file
/// costs one short request, and that libmdbx values stay well inside its limits.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;

/// Granularity of the crc32c checks inside a chunk: a read checks only the blocks it covers,
/// so a 4 KiB read of a cached chunk checksums 64 KiB, not the whole 8 MiB.
pub const CRC_BLOCK: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O: {0}")]
    Db(String),
    #[error("store at {path} cannot be opened: {reason}")]
    Open { path: String, reason: String },
    #[error("chunk {index} of {content} has length {got}, expected {expected}")]
    BadChunkLength { content: ContentId, index: u64, got: usize, expected: usize },
    #[error("the store is full")]
    Full,
    /// The index's pages do not hold together (bit rot, a disk that lost writes, a file
    /// written over): nothing read from it can be trusted to be found again.
    #[error("the store's index is damaged ({0})")]
    Damaged(String),
}

/// Download state of one file's content, as the `status` xattr reports it (with `missing`
/// meaning "no record").
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileState {
    /// Some chunks are stored.
    Partial,
    /// Every chunk is stored; the whole-file hash has not been checked yet.
    Complete,
    /// Every chunk is stored and the whole file matched the Hub's hash.
    Verified,
    /// The whole file did not match the Hub's hash; its chunks were discarded.
    Failed,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Partial => "partial",
            FileState::Complete => "complete",
            FileState::Verified => "verified",
            FileState::Failed => "failed",
        }
    }
}

/// What the store knows about one content.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileRecord {
    pub size: u64,
    pub cached_bytes: u64,
    pub state: FileState,
    /// Unix seconds of the last chunk write or open; drives LRU eviction.
    pub last_access: u64,
}

/// A branch or tag as last resolved. Commits never need a record: they resolve to themselves.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RefRecord {
    pub commit: String,
    /// Unix seconds when the Hub last confirmed this ref.
    pub resolved_at: u64,
}

/// Where a repo that does not come from the Hub came from (doc/SEMANTICS.md, "Imported
/// repos"). A repo with such a record is never looked up on the Hub.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalOrigin {
    /// `modelfs import` wrote it into this store: its bytes may exist nowhere else, so the
    /// files its refs point at are never evicted, and only `modelfs remove` drops it.
    Imported,
    /// Another node imported it into the shared tier, which stays the authority on its refs;
    /// this store holds a copy that may be evicted and fetched from the tier again.
    Tier,
}

/// The record of a repo that does not come from the Hub.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalRecord {
    pub origin: LocalOrigin,
    /// Unix seconds of the import (or of the first sight in the tier).
    pub since: u64,
}

/// Unix seconds now, as records are stamped (`last_access`, `resolved_at`); 0 on a clock
/// before 1970, which only makes everything look old.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Number of bytes chunk `index` of a file of `size` bytes holds (0 past the end).
pub fn chunk_len(size: u64, chunk_size: u64, index: u64) -> u64 {
    let start = index.saturating_mul(chunk_size);
    size.saturating_sub(start).min(chunk_size)
}

/// Number of chunks of a file of `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size)
}

pub trait ChunkStore: Send + Sync + 'static {
    /// Fixed when the store is created; every content is chunked with it.
    fn chunk_size(&self) -> u64;

    /// Append bytes `range` (relative to the chunk's start) of chunk `index` of `content` to
    /// `out`. `Ok(false)`: the chunk is not stored (or failed its checksum and was dropped;
    /// that is logged). `range` must lie inside the chunk.
    fn read_chunk(
        &self,
        content: &ContentId,
        index: u64,
        range: Range<usize>,
        out: &mut Vec<u8>,
    ) -> Result<bool, StoreError>;

    /// Like [`ChunkStore::read_chunk`], but show the bytes to `visit` instead of copying them
    /// out, so that a store can lend a buffer of its own (libmdbx: a per-thread buffer it
    /// `pread`s into) and the warm read path allocates nothing. `visit` is called at most
    /// once, only with checked bytes.
    fn visit_chunk(
        &self,
        content: &ContentId,
        index: u64,
        range: Range<usize>,
        visit: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, StoreError> {
        let mut buf = Vec::with_capacity(range.len());
        let found = self.read_chunk(content, index, range, &mut buf)?;
        if found {
            visit(&buf);
        }
        Ok(found)
    }

    fn has_chunk(&self, content: &ContentId, index: u64) -> Result<bool, StoreError>;

    /// Store chunk `index` of a file of `file_size` bytes. `data` must be exactly
    /// [`chunk_len`] long. Storing a chunk that is already there changes nothing.
    /// Returns the file's record after the write.
    fn put_chunk(
        &self,
        content: &ContentId,
        file_size: u64,
        index: u64,
        data: &[u8],
    ) -> Result<FileRecord, StoreError>;

    fn file_record(&self, content: &ContentId) -> Result<Option<FileRecord>, StoreError>;

    /// Set the state of a file that has a record (used for `Verified`).
    fn set_file_state(&self, content: &ContentId, state: FileState) -> Result<(), StoreError>;

    /// Drop every chunk of `content` and leave a record with no cached bytes in `state`.
    fn discard_file(&self, content: &ContentId, state: FileState) -> Result<(), StoreError>;

    fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError>;

    fn manifest(&self, repo: &RepoId, commit: &str) -> Result<Option<Manifest>, StoreError>;

    fn put_ref(&self, repo: &RepoId, rev: &str, record: &RefRecord) -> Result<(), StoreError>;

    fn get_ref(&self, repo: &RepoId, rev: &str) -> Result<Option<RefRecord>, StoreError>;

    /// Every repo with a stored ref or manifest, sorted, without duplicates.
    fn repos(&self) -> Result<Vec<RepoId>, StoreError>;

    /// Every commit of `repo` with a stored manifest, sorted.
    fn commits(&self, repo: &RepoId) -> Result<Vec<String>, StoreError>;

    /// Every ref (branch or tag) of `repo` as last resolved, sorted by name.
    fn refs(&self, repo: &RepoId) -> Result<Vec<(String, RefRecord)>, StoreError>;

    /// Record that `repo` does not come from the Hub (an import, or another node's import
    /// seen in the tier). Replaces any record it had.
    fn put_local(&self, repo: &RepoId, record: &LocalRecord) -> Result<(), StoreError>;

    /// The local record of `repo`: `None` for a repo of the Hub (or one never seen).
    fn local(&self, repo: &RepoId) -> Result<Option<LocalRecord>, StoreError>;

    /// Every repo with a local record, sorted.
    fn locals(&self) -> Result<Vec<(RepoId, LocalRecord)>, StoreError>;

    /// Forget `repo` in one write: its refs, its manifests and its local record, so that no
    /// reader sees it half gone. File records and chunks stay (other repos may share them);
    /// the caller decides what of them goes. Returns the manifests removed.
    fn remove_repo(&self, repo: &RepoId) -> Result<Vec<Manifest>, StoreError>;

    /// Every file record, sorted by content id: what `status`, `gc` and eviction walk.
    fn files(&self) -> Result<Vec<(ContentId, FileRecord)>, StoreError>;

    /// Mark `content` as used now (eviction is least-recently-used). No record: nothing to do.
    fn touch(&self, content: &ContentId) -> Result<(), StoreError>;

    /// Remove every chunk of `content` and its record, so it reads as never fetched. Returns
    /// the bytes of data removed. Used by eviction: whole files go, never single chunks, so a
    /// file is either as the Hub has it (once complete) or absent.
    fn evict_file(&self, content: &ContentId) -> Result<u64, StoreError>;

    /// A plain file holding exactly the bytes of `content` at their offsets, for the kernel to
    /// read from directly (FUSE passthrough): only meaningful for a `Verified` content, whose
    /// every byte is there and checked. `None` for a store without such files (the in-memory
    /// double) or a content without one.
    fn data_file(&self, content: &ContentId) -> Result<Option<std::fs::File>, StoreError> {
        let _ = content;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn chunks_tile_the_file(size in 0u64..(1 << 40), cs in 1u64..(1 << 24)) {
            let n = chunk_count(size, cs);
            let mut total = 0u64;
            // Every chunk but the last is full; the last is non-empty; nothing past it.
            for i in [0, n.saturating_sub(2), n.saturating_sub(1)] {
                if i < n {
                    let len = chunk_len(size, cs, i);
                    prop_assert!(len > 0 && len <= cs);
                    if i + 1 < n { prop_assert_eq!(len, cs); }
                }
            }
            if n > 0 { total = (n - 1) * cs + chunk_len(size, cs, n - 1); }
            prop_assert_eq!(total, size);
            prop_assert_eq!(chunk_len(size, cs, n), 0);
        }
    }
}
