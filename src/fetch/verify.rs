//! Whole-file checks: the hash the Hub gives a file, computed over the stored bytes
//! ([`verify_file`], the background pass and `modelfs verify`), or over the chunks as they
//! are stored, in order ([`InOrder`]), so that a file downloaded front to back is verified
//! the moment its last chunk lands instead of being read back whole afterwards.

use crate::lock;
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
    for index in 0..chunk_count(size, cs) {
        let len = chunk_len(size, cs, index) as usize;
        if hash_chunk(store, &content, index, len, &mut hasher)?.is_some() {
            return Ok(Verdict::Incomplete);
        }
    }
    Ok(if decide(store, &content, hasher)? { Verdict::Match } else { Verdict::Mismatch })
}

/// How much of a chunk a hash reads at a time: the largest read the store's per-thread buffer
/// keeps (a kernel read), so hashing never grows it and allocates no chunk-sized buffer per
/// chunk (new memory is what costs most on a VM whose host backs it lazily, and it showed in
/// the daemon's RSS).
const HASH_PIECE: usize = 1 << 20;

/// Hash the `len` bytes of chunk `index` of `content` into `hasher`, in pieces the store
/// lends. `Some(at)`: the chunk is not stored, or went missing after its first `at` bytes
/// were hashed (dropped for a bad crc), which `hasher` then holds.
fn hash_chunk(
    store: &dyn ChunkStore,
    content: &ContentId,
    index: u64,
    len: usize,
    hasher: &mut FileHasher,
) -> Result<Option<usize>, StoreError> {
    let mut at = 0;
    while at < len {
        let end = len.min(at + HASH_PIECE);
        if !store.visit_chunk(content, index, at..end, &mut |bytes| hasher.update(bytes))? {
            return Ok(Some(at));
        }
        at = end;
    }
    Ok(None)
}

/// Settle a whole file's hash: `Verified` on a match, chunks discarded and `Failed` on a
/// mismatch. Whether it matched.
fn decide(
    store: &dyn ChunkStore,
    content: &ContentId,
    hasher: FileHasher,
) -> Result<bool, StoreError> {
    let matches = hasher.matches();
    crate::metrics::get().file_verified(matches);
    if matches {
        store.set_file_state(content, FileState::Verified)?;
    } else {
        store.discard_file(content, FileState::Failed)?;
    }
    Ok(matches)
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
/// hasher and the next chunk it needs. Hashing runs behind the readers, never on their path:
/// after a chunk is stored and handed to its readers, [`InOrder::advance`] (on a blocking
/// thread, one at a time per file) reads the chunks the prefix has reached back from the
/// store (the page cache: they were just written) and hashes them. Reading back rather than
/// keeping the fetched buffers bounds the memory to one chunk per file being hashed, however
/// far the network runs ahead of the hash. A file whose first chunk was stored elsewhere (by
/// another process, before a restart) has no prefix, and is left to the background pass.
#[derive(Default)]
pub(super) struct InOrder {
    files: Mutex<HashMap<ContentId, Slot>>,
}

#[derive(Default)]
struct Slot {
    /// `None` while an `advance` holds it, hashing.
    prefix: Option<Prefix>,
    /// A chunk was stored while an `advance` held the prefix: it must look again.
    again: bool,
}

struct Prefix {
    hasher: FileHasher,
    next: u64,
}

/// Files hashed in order at once: one per file being downloaded. Past this, a new file's
/// prefix replaces an arbitrary idle other (which then gets the background pass): the bound
/// only limits memory (about 400 bytes a file) if many downloads stop half way.
const MAX_IN_ORDER: usize = 1024;

/// What advancing a file's in-order hash decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Prefixed {
    /// The file is not whole yet, or another call is advancing it: nothing decided.
    Pending,
    /// The last chunk was reached and the in-order hash matched: marked `Verified`.
    Verified,
    /// It did not match: discarded and marked `Failed`.
    Failed,
    /// This file has no prefix (its first chunk was not stored through here).
    Untracked,
}

impl InOrder {
    /// Chunk 0 of `file` was just stored here: its hash can be computed in order.
    pub(super) fn track(&self, file: &FileRef) {
        let content = file.content();
        let mut files = lock(&self.files);
        if files.contains_key(&content) {
            return;
        }
        if files.len() >= MAX_IN_ORDER {
            let idle = files.iter().find(|(_, s)| s.prefix.is_some()).map(|(c, _)| *c);
            if let Some(victim) = idle {
                files.remove(&victim);
            }
        }
        let prefix = Prefix { hasher: FileHasher::new(&file.hash, file.remote.size), next: 0 };
        files.insert(content, Slot { prefix: Some(prefix), again: false });
    }

    /// Hash the chunks of `file` the prefix has reached that are stored, and decide once the
    /// last is hashed. Runs on a blocking thread; a concurrent call for the same file returns
    /// `Pending` at once and leaves the work to this one.
    pub(super) fn advance(
        &self,
        store: &dyn ChunkStore,
        file: &FileRef,
    ) -> Result<Prefixed, StoreError> {
        let content = file.content();
        let size = file.remote.size;
        let cs = store.chunk_size();
        let count = chunk_count(size, cs);
        let mut prefix = {
            let mut files = lock(&self.files);
            let Some(slot) = files.get_mut(&content) else { return Ok(Prefixed::Untracked) };
            slot.again = false;
            match slot.prefix.take() {
                Some(prefix) => prefix,
                None => {
                    slot.again = true;
                    return Ok(Prefixed::Pending);
                }
            }
        };
        loop {
            while prefix.next < count {
                let len = chunk_len(size, cs, prefix.next) as usize;
                let missing_at = hash_chunk(store, &content, prefix.next, len, &mut prefix.hasher)?;
                match missing_at {
                    None => prefix.next += 1,
                    // Not stored yet: the prefix waits here (the usual case).
                    Some(0) => break,
                    // Dropped half way (a bad crc): what was hashed of it must not count
                    // twice, so the hash is rebuilt over the chunks before it.
                    Some(_) => {
                        prefix = restart(prefix, file, store)?;
                        break;
                    }
                }
            }
            let mut files = lock(&self.files);
            if prefix.next < count {
                let Some(slot) = files.get_mut(&content) else { return Ok(Prefixed::Pending) };
                if std::mem::take(&mut slot.again) {
                    // More was stored while this call hashed: look again.
                    continue;
                }
                slot.prefix = Some(prefix);
                return Ok(Prefixed::Pending);
            }
            break;
        }
        // The slot stays, its prefix taken, until the verdict is stored: a concurrent call
        // meanwhile returns `Pending`. Removed before it, such a call found no slot, took the
        // file for untracked and, the state still `Complete`, verified it a second time (two
        // verifications counted for one file).
        let verdict = decide(store, &content, prefix.hasher);
        lock(&self.files).remove(&content);
        Ok(if verdict? { Prefixed::Verified } else { Prefixed::Failed })
    }
}

/// A prefix whose current chunk was only partly hashed (it went missing half way): the hash
/// is rebuilt over the chunks before it. Rare (a chunk dropped for a bad crc between two
/// pieces), so it costs a re-read, not bookkeeping on every piece.
fn restart(prefix: Prefix, file: &FileRef, store: &dyn ChunkStore) -> Result<Prefix, StoreError> {
    let content = file.content();
    let size = file.remote.size;
    let cs = store.chunk_size();
    let mut fresh = Prefix { hasher: FileHasher::new(&file.hash, size), next: 0 };
    while fresh.next < prefix.next {
        let len = chunk_len(size, cs, fresh.next) as usize;
        if hash_chunk(store, &content, fresh.next, len, &mut fresh.hasher)?.is_some() {
            // An earlier chunk went too: hash from there when it is back.
            return Ok(Prefix { hasher: FileHasher::new(&file.hash, size), next: 0 });
        }
        fresh.next += 1;
    }
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::RemoteFile;
    use crate::manifest::RepoId;
    use crate::store::memory::MemoryStore;

    /// Three pieces a chunk: room to lose the third after the first two were hashed.
    const CS: u64 = 3 * HASH_PIECE as u64;

    fn file(data: &[u8]) -> FileRef {
        FileRef {
            remote: RemoteFile {
                repo: RepoId::new("o", "r"),
                commit: "c".repeat(40),
                path: "w.bin".into(),
                size: data.len() as u64,
            },
            hash: FileHash::Lfs(Sha256::digest(data).into()),
        }
    }

    /// A chunk that fails its crc half way through being hashed is not hashed twice: the
    /// prefix starts over, and the file is still decided right once the chunk is back.
    #[test]
    fn a_chunk_dropped_half_way_is_hashed_again_from_the_start() {
        let store = MemoryStore::new(CS);
        let data: Vec<u8> = (0..2 * CS + 5).map(|i| (i % 253) as u8).collect();
        let f = file(&data);
        let content = f.content();
        let chunk =
            |i: u64| &data[(i * CS) as usize..((i + 1) * CS).min(data.len() as u64) as usize];
        let order = InOrder::default();
        order.track(&f);
        store.put_chunk(&content, data.len() as u64, 0, chunk(0)).unwrap();
        store.put_chunk(&content, data.len() as u64, 1, chunk(1)).unwrap();
        // Chunk 1's last piece rots before the prefix reaches it.
        // The double's value is the chunk header (format byte, length, a crc per 64 KiB
        // block), then the bytes.
        let header = 1 + 4 + 4 * (CS as usize).div_ceil(crate::store::CRC_BLOCK);
        let at = header + 2 * HASH_PIECE + 7;
        store.rewrite_raw(&content, 1, &mut |v| v[at] ^= 1);
        assert_eq!(order.advance(&store, &f).unwrap(), Prefixed::Pending);
        assert!(!store.has_chunk(&content, 1).unwrap(), "the bad chunk was dropped");
        store.put_chunk(&content, data.len() as u64, 1, chunk(1)).unwrap();
        store.put_chunk(&content, data.len() as u64, 2, chunk(2)).unwrap();
        assert_eq!(order.advance(&store, &f).unwrap(), Prefixed::Verified);
        assert_eq!(store.file_record(&content).unwrap().unwrap().state, FileState::Verified);
        // Untracked files are left to the background pass.
        let other = file(b"other bytes");
        assert_eq!(order.advance(&store, &other).unwrap(), Prefixed::Untracked);
    }

    /// A wrong byte, whichever chunk it is in, fails the file.
    #[test]
    fn a_wrong_byte_fails_the_file() {
        let store = MemoryStore::new(CS);
        let data: Vec<u8> = (0..CS + 9).map(|i| (i % 251) as u8).collect();
        let f = file(&data);
        let content = f.content();
        let order = InOrder::default();
        order.track(&f);
        let mut bad = data.clone();
        bad[(CS + 3) as usize] ^= 0x20;
        store.put_chunk(&content, data.len() as u64, 0, &bad[..CS as usize]).unwrap();
        store.put_chunk(&content, data.len() as u64, 1, &bad[CS as usize..]).unwrap();
        assert_eq!(order.advance(&store, &f).unwrap(), Prefixed::Failed);
        let record = store.file_record(&content).unwrap().unwrap();
        assert_eq!((record.state, record.cached_bytes), (FileState::Failed, 0));
    }
}
