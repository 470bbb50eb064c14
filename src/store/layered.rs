//! The local store with read-only stores under it (`--store-ro DIR`, repeatable; see
//! doc/CONFIGURATION.md): a store `modelfs pull` prepared once and many nodes mount
//! read-only (a ReadOnlyMany volume, a shared disk image), consulted after the local store and
//! before the tier and the Hub.
//!
//! Reads fall through: a chunk, a file record, a manifest or a ref missing locally is looked
//! for in each read-only store in turn, and served from there without being copied (the
//! read-only store is as near as the local one; copying would double the disk for nothing).
//! Listings are the union. Everything that writes, and what eviction and `gc` walk
//! (`files`), is the local store's alone: a read-only store is never changed, and what it
//! holds is not the local bound's to count. A file the local store marked `failed` hides the
//! read-only copies of its bytes, as it hides its own.

use std::ops::Range;
use std::sync::Arc;

use super::{ChunkStore, FileRecord, FileState, LocalRecord, RefRecord, StoreError};
use crate::manifest::{ContentId, Manifest, RepoId};

/// Where a chunk was found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Found {
    Local,
    /// In a read-only store.
    Below,
    Nowhere,
}

pub struct LayeredStore {
    local: Arc<dyn ChunkStore>,
    read_only: Vec<Arc<dyn ChunkStore>>,
}

#[derive(Debug, thiserror::Error)]
#[error("its chunks are of {theirs} bytes, the store's of {ours}: they cannot be layered (fill it with `modelfs pull --chunk-size {ours}`, or use a store of its chunk size)")]
pub struct ChunkSizeMismatch {
    /// Which of the read-only stores, in the order given.
    pub index: usize,
    pub theirs: u64,
    pub ours: u64,
}

impl LayeredStore {
    /// `local` over `read_only`, asked in that order. Every store must have one chunk size:
    /// chunk `i` of a file must mean the same bytes in each.
    pub fn new(
        local: Arc<dyn ChunkStore>,
        read_only: Vec<Arc<dyn ChunkStore>>,
    ) -> Result<Self, ChunkSizeMismatch> {
        let ours = local.chunk_size();
        if let Some((index, ro)) =
            read_only.iter().enumerate().find(|(_, s)| s.chunk_size() != ours)
        {
            return Err(ChunkSizeMismatch { index, theirs: ro.chunk_size(), ours });
        }
        Ok(Self { local, read_only })
    }

    /// The read-only stores, unless the local store marked the file failed.
    fn below(&self, content: &ContentId) -> Result<&[Arc<dyn ChunkStore>], StoreError> {
        let failed = self.local.file_record(content)?.is_some_and(|r| r.state == FileState::Failed);
        Ok(if failed { &[] } else { &self.read_only })
    }

    /// Where `ask` (a chunk lookup) first says yes: the local store, else each read-only
    /// store that is not hidden ([`LayeredStore::below`]) in turn.
    fn chunk_in(
        &self,
        content: &ContentId,
        mut ask: impl FnMut(&dyn ChunkStore) -> Result<bool, StoreError>,
    ) -> Result<Found, StoreError> {
        if ask(self.local.as_ref())? {
            return Ok(Found::Local);
        }
        for store in self.below(content)? {
            if ask(store.as_ref())? {
                return Ok(Found::Below);
            }
        }
        Ok(Found::Nowhere)
    }

    /// Whether a read found its chunk, counting `bytes` read from a read-only store.
    fn counted(found: Found, bytes: usize) -> bool {
        if found == Found::Below {
            crate::metrics::get().store_ro_read(bytes);
        }
        found != Found::Nowhere
    }

    /// The first answer of the local store, then each read-only one, that is `Some`.
    fn first<T>(
        &self,
        mut ask: impl FnMut(&dyn ChunkStore) -> Result<Option<T>, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        if let Some(found) = ask(self.local.as_ref())? {
            return Ok(Some(found));
        }
        for store in &self.read_only {
            if let Some(found) = ask(store.as_ref())? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The sorted, deduplicated union of what every store lists.
    fn union<T: Ord>(
        &self,
        mut list: impl FnMut(&dyn ChunkStore) -> Result<Vec<T>, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut all = list(self.local.as_ref())?;
        for store in &self.read_only {
            all.extend(list(store.as_ref())?);
        }
        all.sort();
        all.dedup();
        Ok(all)
    }
}

impl ChunkStore for LayeredStore {
    fn chunk_size(&self) -> u64 {
        self.local.chunk_size()
    }

    fn read_chunk(
        &self,
        content: &ContentId,
        index: u64,
        range: Range<usize>,
        out: &mut Vec<u8>,
    ) -> Result<bool, StoreError> {
        let found = self.chunk_in(content, |s| s.read_chunk(content, index, range.clone(), out))?;
        Ok(Self::counted(found, range.len()))
    }

    fn visit_chunk(
        &self,
        content: &ContentId,
        index: u64,
        range: Range<usize>,
        visit: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, StoreError> {
        let found =
            self.chunk_in(content, |s| s.visit_chunk(content, index, range.clone(), visit))?;
        Ok(Self::counted(found, range.len()))
    }

    fn has_chunk(&self, content: &ContentId, index: u64) -> Result<bool, StoreError> {
        Ok(self.chunk_in(content, |s| s.has_chunk(content, index))? != Found::Nowhere)
    }

    fn put_chunk(
        &self,
        content: &ContentId,
        file_size: u64,
        index: u64,
        data: &[u8],
    ) -> Result<FileRecord, StoreError> {
        self.local.put_chunk(content, file_size, index, data)
    }

    fn file_record(&self, content: &ContentId) -> Result<Option<FileRecord>, StoreError> {
        self.first(|s| s.file_record(content))
    }

    fn set_file_state(&self, content: &ContentId, state: FileState) -> Result<(), StoreError> {
        self.local.set_file_state(content, state)
    }

    fn discard_file(&self, content: &ContentId, state: FileState) -> Result<(), StoreError> {
        // A file only a read-only store holds (found bad there) needs a local record for the
        // verdict to be remembered, and to hide the read-only copy: one is seeded with its
        // first chunk, which the discard then drops.
        if self.local.file_record(content)?.is_none() {
            for store in &self.read_only {
                let Some(record) = store.file_record(content)? else { continue };
                let len = super::chunk_len(record.size, self.chunk_size(), 0) as usize;
                let mut first = Vec::with_capacity(len);
                if len > 0 && store.read_chunk(content, 0, 0..len, &mut first)? {
                    self.local.put_chunk(content, record.size, 0, &first)?;
                    break;
                }
            }
        }
        self.local.discard_file(content, state)
    }

    fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        self.local.put_manifest(manifest)
    }

    fn manifest(&self, repo: &RepoId, commit: &str) -> Result<Option<Manifest>, StoreError> {
        self.first(|s| s.manifest(repo, commit))
    }

    fn put_ref(&self, repo: &RepoId, rev: &str, record: &RefRecord) -> Result<(), StoreError> {
        self.local.put_ref(repo, rev, record)
    }

    fn get_ref(&self, repo: &RepoId, rev: &str) -> Result<Option<RefRecord>, StoreError> {
        self.first(|s| s.get_ref(repo, rev))
    }

    fn repos(&self) -> Result<Vec<RepoId>, StoreError> {
        self.union(|s| s.repos())
    }

    fn commits(&self, repo: &RepoId) -> Result<Vec<String>, StoreError> {
        self.union(|s| s.commits(repo))
    }

    fn refs(&self, repo: &RepoId) -> Result<Vec<(String, RefRecord)>, StoreError> {
        // By name, the local record first: it is the one this node last confirmed.
        let mut all = self.local.refs(repo)?;
        for store in &self.read_only {
            for (name, record) in store.refs(repo)? {
                if !all.iter().any(|(n, _)| *n == name) {
                    all.push((name, record));
                }
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    fn put_local(&self, repo: &RepoId, record: &LocalRecord) -> Result<(), StoreError> {
        self.local.put_local(repo, record)
    }

    fn local(&self, repo: &RepoId) -> Result<Option<LocalRecord>, StoreError> {
        self.first(|s| s.local(repo))
    }

    fn locals(&self) -> Result<Vec<(RepoId, LocalRecord)>, StoreError> {
        let mut all = self.local.locals()?;
        for store in &self.read_only {
            for (repo, record) in store.locals()? {
                if !all.iter().any(|(r, _)| *r == repo) {
                    all.push((repo, record));
                }
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    /// Only this node's own store is changed: a read-only store is another's to change.
    fn remove_repo(&self, repo: &RepoId) -> Result<Vec<Manifest>, StoreError> {
        self.local.remove_repo(repo)
    }

    fn files(&self) -> Result<Vec<(ContentId, FileRecord)>, StoreError> {
        self.local.files()
    }

    fn touch(&self, content: &ContentId) -> Result<(), StoreError> {
        self.local.touch(content)
    }

    fn evict_file(&self, content: &ContentId) -> Result<u64, StoreError> {
        self.local.evict_file(content)
    }

    fn data_file(&self, content: &ContentId) -> Result<Option<std::fs::File>, StoreError> {
        // The data file of the store whose record `file_record` returned: a verified file
        // in a read-only store is passed through to the kernel from there.
        if self.local.file_record(content)?.is_some() {
            return self.local.data_file(content);
        }
        for store in &self.read_only {
            if store.file_record(content)?.is_some() {
                return store.data_file(content);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{FileEntry, FileHash};
    use crate::store::memory::MemoryStore;

    fn id(n: u8) -> ContentId {
        ContentId([n; 32])
    }

    #[test]
    fn reads_fall_through_and_writes_stay_local() {
        let (local, ro) = (Arc::new(MemoryStore::new(4)), Arc::new(MemoryStore::new(4)));
        ro.put_chunk(&id(1), 8, 0, b"abcd").unwrap();
        ro.put_chunk(&id(1), 8, 1, b"efgh").unwrap();
        let m = Manifest::build(
            RepoId::new("o", "r"),
            "c".repeat(40),
            None,
            vec![FileEntry { path: "w".into(), size: 8, hash: FileHash::Lfs([1; 32]) }],
        );
        ro.put_manifest(&m).unwrap();
        ro.put_ref(&m.repo, "main", &RefRecord { commit: m.commit.clone(), resolved_at: 5 })
            .unwrap();
        let layered = LayeredStore::new(local.clone(), vec![ro.clone()]).unwrap();

        let mut out = Vec::new();
        let counted = || crate::metrics::get().traffic().read_from_store_ro;
        let before = counted();
        assert!(layered.read_chunk(&id(1), 1, 1..3, &mut out).unwrap());
        assert_eq!(out, b"fg");
        assert!(counted() >= before + 2, "bytes read from a read-only store are counted");
        assert!(layered.has_chunk(&id(1), 0).unwrap());
        assert_eq!(layered.file_record(&id(1)).unwrap().unwrap().cached_bytes, 8);
        assert_eq!(layered.manifest(&m.repo, &m.commit).unwrap(), Some(m.clone()));
        assert_eq!(layered.repos().unwrap(), vec![m.repo.clone()]);
        assert_eq!(layered.get_ref(&m.repo, "main").unwrap().unwrap().resolved_at, 5);

        // Writes, and what eviction walks, are the local store's.
        layered.put_chunk(&id(2), 4, 0, b"wxyz").unwrap();
        layered
            .put_ref(&m.repo, "main", &RefRecord { commit: m.commit.clone(), resolved_at: 9 })
            .unwrap();
        assert!(!ro.has_chunk(&id(2), 0).unwrap(), "a write reached the read-only store");
        assert_eq!(layered.files().unwrap().len(), 1);
        assert_eq!(layered.evict_file(&id(1)).unwrap(), 0, "nothing local to evict");
        assert!(layered.has_chunk(&id(1), 0).unwrap());
        let refs = layered.refs(&m.repo).unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].1.resolved_at, 9, "the local ref first");

        // Marked failed here: the read-only copy is hidden too.
        layered.discard_file(&id(1), FileState::Failed).unwrap();
        assert!(!layered.has_chunk(&id(1), 0).unwrap());
        assert!(!layered.read_chunk(&id(1), 0, 0..4, &mut Vec::new()).unwrap());
    }

    #[test]
    fn stores_of_other_chunk_sizes_are_refused() {
        let err = LayeredStore::new(
            Arc::new(MemoryStore::new(4)),
            vec![Arc::new(MemoryStore::new(4)), Arc::new(MemoryStore::new(8))],
        )
        .err()
        .unwrap();
        assert_eq!((err.index, err.theirs, err.ours), (1, 8, 4));
    }
}
