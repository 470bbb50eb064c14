//! Whole-file checks: the hash the Hub gives a file, computed over the stored bytes
//! ([`verify_file`], the background pass and `modelfs verify`), or over the chunks as they
//! are stored, in order ([`InOrder`]), so that a file downloaded front to back is verified
//! the moment its last chunk lands instead of being read back whole afterwards.

use std::collections::HashMap;
use std::sync::Mutex;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::FileRef;
use crate::manifest::{ContentId, FileHash};
use crate::store::{chunk_count, chunk_len, ChunkStore, FileState, StoreError};

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Match,
    Mismatch,
    /// A chunk went missing meanwhile (dropped for a bad crc, or evicted): nothing to decide.
    Incomplete,
}

/// Hash every stored chunk of `file` and compare with the Hub's hash: `Verified` on a match,
/// chunks discarded and `Failed` on a mismatch. Synchronous: reads the whole file.
pub fn verify_file(store: &dyn ChunkStore, file: &FileRef) -> Result<Verdict, StoreError> {
    let content = file.content();
    let cs = store.chunk_size();
    let size = file.remote.size;
    let mut hasher = FileHasher::new(&file.hash, size);
    let mut buf = Vec::with_capacity(cs as usize);
    for index in 0..chunk_count(size, cs) {
        buf.clear();
        let len = chunk_len(size, cs, index) as usize;
        if !store.read_chunk(&content, index, 0..len, &mut buf)? {
            return Ok(Verdict::Incomplete);
        }
        hasher.update(&buf);
    }
    let matches = hasher.matches();
    crate::metrics::get().file_verified(matches);
    if matches {
        store.set_file_state(&content, FileState::Verified)?;
        Ok(Verdict::Match)
    } else {
        store.discard_file(&content, FileState::Failed)?;
        Ok(Verdict::Mismatch)
    }
}

/// The hash the Hub gives a file, computed over its bytes in order: sha256 for LFS files, the
/// git blob sha1 (`"blob <size>\0"` then the bytes) for files stored in git.
pub(super) struct FileHasher {
    want: FileHash,
    sha256: Sha256,
    sha1: Sha1,
}

impl FileHasher {
    pub(super) fn new(want: &FileHash, size: u64) -> Self {
        let mut sha1 = Sha1::new();
        if let FileHash::Git(_) = want {
            sha1.update(format!("blob {size}\0").as_bytes());
        }
        Self { want: *want, sha256: Sha256::new(), sha1 }
    }

    pub(super) fn update(&mut self, bytes: &[u8]) {
        match self.want {
            FileHash::Lfs(_) => self.sha256.update(bytes),
            FileHash::Git(_) => self.sha1.update(bytes),
        }
    }

    pub(super) fn matches(self) -> bool {
        match self.want {
            FileHash::Lfs(want) => <[u8; 32]>::from(self.sha256.finalize()) == want,
            FileHash::Git(want) => <[u8; 20]>::from(self.sha1.finalize()) == want,
        }
    }

    /// Whether `bytes`, a whole file, have the hash `want`.
    pub(super) fn digest_matches(want: &FileHash, bytes: &[u8]) -> bool {
        let mut hasher = Self::new(want, bytes.len() as u64);
        hasher.update(bytes);
        hasher.matches()
    }
}

/// Files whose hash is being computed as their chunks are stored, in order: for each, the
/// hasher and the next chunk it needs. A chunk that arrives ahead of the prefix is picked up
/// from the store once the prefix reaches it; a file whose prefix never completes is left to
/// the background pass.
#[derive(Default)]
pub(super) struct InOrder {
    files: Mutex<HashMap<ContentId, Prefix>>,
}

struct Prefix {
    hasher: FileHasher,
    next: u64,
}

/// Files hashed in order at once: one per file being downloaded. Past this, a new file's
/// prefix replaces an arbitrary other (which then gets the background pass): the bound only
/// limits memory (about 400 bytes a file) if many downloads stop half way.
const MAX_IN_ORDER: usize = 1024;

/// What feeding a stored chunk to [`InOrder`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Prefixed {
    /// The file is not whole, or its chunks did not come in order: nothing decided.
    Pending,
    /// The last chunk landed and the in-order hash matched: marked `Verified`.
    Verified,
    /// It did not match: discarded and marked `Failed`.
    Failed,
}

impl InOrder {
    /// Chunk `index` of `file`, `data`, was just stored. Runs on a blocking thread: it hashes
    /// (and may read stored chunks that came ahead of the prefix).
    pub(super) fn stored(
        &self,
        store: &dyn ChunkStore,
        file: &FileRef,
        index: u64,
        data: &[u8],
    ) -> Result<Prefixed, StoreError> {
        let content = file.content();
        let size = file.remote.size;
        let cs = store.chunk_size();
        let count = chunk_count(size, cs);
        let mut files = self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if index == 0 && !files.contains_key(&content) {
            if files.len() >= MAX_IN_ORDER {
                if let Some(victim) = files.keys().next().copied() {
                    files.remove(&victim);
                }
            }
            files.insert(content, Prefix { hasher: FileHasher::new(&file.hash, size), next: 0 });
        }
        let Some(prefix) = files.get_mut(&content) else { return Ok(Prefixed::Pending) };
        if index != prefix.next {
            return Ok(Prefixed::Pending);
        }
        prefix.hasher.update(data);
        prefix.next += 1;
        // Chunks that came ahead of the prefix are in the store.
        let mut buf = Vec::new();
        while prefix.next < count {
            let len = chunk_len(size, cs, prefix.next) as usize;
            buf.clear();
            if !store.read_chunk(&content, prefix.next, 0..len, &mut buf)? {
                return Ok(Prefixed::Pending);
            }
            prefix.hasher.update(&buf);
            prefix.next += 1;
        }
        let Some(prefix) = files.remove(&content) else { return Ok(Prefixed::Pending) };
        drop(files);
        let matches = prefix.hasher.matches();
        crate::metrics::get().file_verified(matches);
        if matches {
            store.set_file_state(&content, FileState::Verified)?;
            Ok(Prefixed::Verified)
        } else {
            store.discard_file(&content, FileState::Failed)?;
            Ok(Prefixed::Failed)
        }
    }
}
