//! The in-memory double of the chunk store, for kernel-free tests of the layers above it.
//!
//! It is a faithful double, not a simplification: chunks are kept in the very value format
//! of [`super::mdbx::MdbxStore`] (header with per-block crc32c, then the data) and every
//! record transition goes through the same `super::mdbx::format` functions, so a test that
//! corrupts a chunk here (see [`MemoryStore::corrupt_chunk`]) sees it dropped and reported
//! absent exactly as on disk. One mutex over all the maps stands in for libmdbx's
//! transactions: each method is atomic, as each method there is one transaction.
//!
//! The conformance suite both stores must pass lives here too (`conformance`, tests only).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use super::format::{self, ReadError};
use super::{
    ChunkStore, FileRecord, FileState, LocalRecord, RefRecord, StoreError, DEFAULT_CHUNK_SIZE,
};
use crate::manifest::{ContentId, Manifest, RepoId};

/// A [`ChunkStore`] in memory. See the module documentation.
pub struct MemoryStore {
    chunk_size: u64,
    inner: Mutex<Inner>,
    refuse_writes: std::sync::atomic::AtomicBool,
    /// Called before each file eviction, outside the lock: how tests make a write land while
    /// an eviction pass runs.
    before_evict: Mutex<Option<BeforeEvict>>,
}

type BeforeEvict = Box<dyn Fn(&ContentId) + Send + Sync>;

#[derive(Default)]
struct Inner {
    /// Encoded chunk values, as `MdbxStore` stores them; ordered like its keys.
    chunks: BTreeMap<(ContentId, u64), Vec<u8>>,
    files: HashMap<ContentId, FileRecord>,
    /// Encoded manifests (`Manifest::encode`), keyed `org/name@commit`.
    manifests: BTreeMap<String, Vec<u8>>,
    /// Keyed `org/name@rev`.
    refs: BTreeMap<String, RefRecord>,
    local: BTreeMap<RepoId, LocalRecord>,
}

impl Inner {
    fn chunks_of(
        &self,
        content: &ContentId,
    ) -> impl Iterator<Item = (&(ContentId, u64), &Vec<u8>)> {
        self.chunks.range((*content, 0)..=(*content, u64::MAX))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(DEFAULT_CHUNK_SIZE)
    }
}

impl MemoryStore {
    /// An empty store chunked with `chunk_size` bytes.
    ///
    /// # Panics
    /// If `chunk_size` is 0 or above [`super::mdbx::MAX_CHUNK_SIZE`] (a bug in the test).
    pub fn new(chunk_size: u64) -> Self {
        assert!(
            (1..=super::mdbx::MAX_CHUNK_SIZE).contains(&chunk_size),
            "chunk size {chunk_size} out of range"
        );
        Self {
            chunk_size,
            inner: Mutex::new(Inner::default()),
            refuse_writes: false.into(),
            before_evict: Mutex::new(None),
        }
    }

    /// Run `hook` before each file eviction from now on: for tests of what the layers above
    /// do with writes that arrive during an eviction pass.
    pub fn set_before_evict(&self, hook: impl Fn(&ContentId) + Send + Sync + 'static) {
        *crate::lock(&self.before_evict) = Some(Box::new(hook));
    }

    /// While set, every chunk write fails as a damaged store's would: for tests of what the
    /// layers above do with bytes they cannot keep.
    pub fn set_refuse_writes(&self, refuse: bool) {
        self.refuse_writes.store(refuse, std::sync::atomic::Ordering::SeqCst);
    }

    fn inner(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        // A panic while the lock was held may have left the maps half-updated: say so rather
        // than serve them.
        self.inner.lock().map_err(|_| StoreError::Db("memory store lock poisoned".into()))
    }

    /// Flip one bit of the first data byte of a stored chunk, so that the next read touching
    /// its first crc block fails the check. For tests of the layers above that must fetch a
    /// corrupt chunk again. Returns whether there was such a chunk (with at least one byte).
    pub fn corrupt_chunk(&self, content: &ContentId, index: u64) -> bool {
        let Ok(mut inner) = self.inner() else { return false };
        let Some(value) = inner.chunks.get_mut(&(*content, index)) else { return false };
        let Ok(len) = format::data_len(value) else { return false };
        if len == 0 {
            return false;
        }
        value[format::header_len(len)] ^= 1;
        true
    }

    /// Drop a chunk found corrupt by a read of `range`, and fix its file's record; the same
    /// steps as `MdbxStore`'s drop, under the lock the read already holds.
    fn drop_corrupt(
        &self,
        inner: &mut Inner,
        content: &ContentId,
        index: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        let Some(value) = inner.chunks.remove(&(*content, index)) else { return Ok(()) };
        if let Some(record) = inner.files.get(content).copied() {
            let len = format::data_len(&value)
                .map(|l| l as u64)
                .unwrap_or_else(|_| super::chunk_len(record.size, self.chunk_size, index));
            inner.files.insert(*content, format::after_drop(record, len));
        }
        tracing::error!(
            content = %content.to_hex(),
            index,
            reason,
            "chunk failed its integrity check and was dropped"
        );
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn rewrite_raw(
        &self,
        content: &ContentId,
        index: u64,
        f: &mut dyn FnMut(&mut Vec<u8>),
    ) {
        let mut inner = self.inner().unwrap();
        f(inner.chunks.get_mut(&(*content, index)).expect("chunk to rewrite"));
    }

    #[cfg(test)]
    pub(crate) fn put_raw_manifest(&self, key: &str, bytes: &[u8]) {
        self.inner().unwrap().manifests.insert(key.to_owned(), bytes.to_vec());
    }
}

impl ChunkStore for MemoryStore {
    fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    fn read_chunk(
        &self,
        content: &ContentId,
        index: u64,
        range: Range<usize>,
        out: &mut Vec<u8>,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner()?;
        let Some(value) = inner.chunks.get(&(*content, index)) else { return Ok(false) };
        match format::read_range(value, range.clone(), out) {
            Ok(()) => Ok(true),
            Err(ReadError::OutOfChunk { len }) => Err(format::out_of_chunk(&range, len)),
            Err(ReadError::Corrupt(reason)) => {
                self.drop_corrupt(&mut inner, content, index, &reason)?;
                Ok(false)
            }
        }
    }

    fn has_chunk(&self, content: &ContentId, index: u64) -> Result<bool, StoreError> {
        Ok(self.inner()?.chunks.contains_key(&(*content, index)))
    }

    fn put_chunk(
        &self,
        content: &ContentId,
        file_size: u64,
        index: u64,
        data: &[u8],
    ) -> Result<FileRecord, StoreError> {
        format::check_put(content, file_size, self.chunk_size, index, data)?;
        if self.refuse_writes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Damaged("writes refused by the test".into()));
        }
        let now = format::now_secs();
        let mut inner = self.inner()?;
        let existing = inner.files.get(content).copied();
        format::check_size(content, existing.as_ref(), file_size)?;
        let new_chunk = !inner.chunks.contains_key(&(*content, index));
        if new_chunk {
            inner.chunks.insert((*content, index), format::encode_chunk(data));
        }
        let record = match existing {
            Some(record) => format::after_put(record, new_chunk, data.len() as u64, now),
            None => {
                let cached: usize =
                    inner.chunks_of(content).filter_map(|(_, v)| format::data_len(v).ok()).sum();
                format::rebuilt(file_size, cached as u64, now)
            }
        };
        inner.files.insert(*content, record);
        Ok(record)
    }

    fn file_record(&self, content: &ContentId) -> Result<Option<FileRecord>, StoreError> {
        Ok(self.inner()?.files.get(content).copied())
    }

    fn set_file_state(&self, content: &ContentId, state: FileState) -> Result<(), StoreError> {
        if let Some(record) = self.inner()?.files.get_mut(content) {
            *record = format::with_state(*record, state);
        }
        Ok(())
    }

    fn discard_file(&self, content: &ContentId, state: FileState) -> Result<(), StoreError> {
        let mut inner = self.inner()?;
        let keys: Vec<_> = inner.chunks_of(content).map(|(k, _)| *k).collect();
        for key in keys {
            inner.chunks.remove(&key);
        }
        if let Some(record) = inner.files.get(content).copied() {
            inner.files.insert(*content, format::discarded(record, state));
        }
        Ok(())
    }

    fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let key = format::repo_key(&manifest.repo, &manifest.commit);
        let value = manifest.encode();
        self.inner()?.manifests.insert(key, value);
        Ok(())
    }

    fn manifest(&self, repo: &RepoId, commit: &str) -> Result<Option<Manifest>, StoreError> {
        let key = format::repo_key(repo, commit);
        let inner = self.inner()?;
        Ok(inner.manifests.get(&key).and_then(|bytes| format::decode_manifest(&key, bytes)))
    }

    fn put_ref(&self, repo: &RepoId, rev: &str, record: &RefRecord) -> Result<(), StoreError> {
        self.inner()?.refs.insert(format::repo_key(repo, rev), record.clone());
        Ok(())
    }

    fn get_ref(&self, repo: &RepoId, rev: &str) -> Result<Option<RefRecord>, StoreError> {
        Ok(self.inner()?.refs.get(&format::repo_key(repo, rev)).cloned())
    }

    fn repos(&self) -> Result<Vec<RepoId>, StoreError> {
        let inner = self.inner()?;
        let keys = inner.refs.keys().chain(inner.manifests.keys());
        let repos: BTreeSet<RepoId> =
            keys.filter_map(|k| format::repo_of_key(k.as_bytes())).collect();
        Ok(repos.into_iter().collect())
    }

    fn commits(&self, repo: &RepoId) -> Result<Vec<String>, StoreError> {
        let inner = self.inner()?;
        Ok(revs_of(&inner.manifests, repo).map(|(rev, _)| rev).collect())
    }

    fn refs(&self, repo: &RepoId) -> Result<Vec<(String, RefRecord)>, StoreError> {
        let inner = self.inner()?;
        Ok(revs_of(&inner.refs, repo).map(|(rev, record)| (rev, record.clone())).collect())
    }

    fn put_local(&self, repo: &RepoId, record: &LocalRecord) -> Result<(), StoreError> {
        self.inner()?.local.insert(repo.clone(), *record);
        Ok(())
    }

    fn local(&self, repo: &RepoId) -> Result<Option<LocalRecord>, StoreError> {
        Ok(self.inner()?.local.get(repo).copied())
    }

    fn locals(&self) -> Result<Vec<(RepoId, LocalRecord)>, StoreError> {
        Ok(self.inner()?.local.iter().map(|(r, l)| (r.clone(), *l)).collect())
    }

    fn remove_repo(&self, repo: &RepoId) -> Result<Vec<Manifest>, StoreError> {
        let mut inner = self.inner()?;
        let prefix = format::repo_key(repo, "");
        inner.refs.retain(|k, _| !k.starts_with(&prefix));
        let keys: Vec<String> =
            inner.manifests.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
        let removed = keys
            .iter()
            .filter_map(|k| inner.manifests.remove(k).and_then(|b| format::decode_manifest(k, &b)))
            .collect();
        inner.local.remove(repo);
        Ok(removed)
    }

    fn files(&self) -> Result<Vec<(ContentId, FileRecord)>, StoreError> {
        let inner = self.inner()?;
        let mut out: Vec<_> = inner.files.iter().map(|(c, r)| (*c, *r)).collect();
        out.sort_by_key(|(c, _)| *c);
        Ok(out)
    }

    fn touch(&self, content: &ContentId) -> Result<(), StoreError> {
        let now = format::now_secs();
        if let Some(record) = self.inner()?.files.get_mut(content) {
            record.last_access = now;
        }
        Ok(())
    }

    fn evict_file(&self, content: &ContentId) -> Result<u64, StoreError> {
        if let Some(hook) = crate::lock(&self.before_evict).as_ref() {
            hook(content);
        }
        let mut inner = self.inner()?;
        let keys: Vec<_> = inner.chunks_of(content).map(|(k, _)| *k).collect();
        let mut freed = 0u64;
        for key in keys {
            if let Some(value) = inner.chunks.remove(&key) {
                freed += format::data_len(&value).unwrap_or(0) as u64;
            }
        }
        inner.files.remove(content);
        Ok(freed)
    }
}

/// The revisions of `repo` among keys `org/name@rev`, in key order, as the mdbx store's
/// cursor range finds them.
fn revs_of<'a, V>(
    map: &'a BTreeMap<String, V>,
    repo: &RepoId,
) -> impl Iterator<Item = (String, &'a V)> + 'a {
    let prefix = format::repo_key(repo, "");
    let n = prefix.len();
    map.range(prefix.clone()..)
        .take_while(move |(k, _)| k.starts_with(&prefix))
        .map(move |(k, v)| (k[n..].to_owned(), v))
}

/// The behaviour every [`ChunkStore`] must have, as functions over a fresh, empty store.
/// `conformance_tests!` turns them into `#[test]`s for a
/// store factory; `MemoryStore` and `MdbxStore` both run the whole list.
#[cfg(test)]
pub(crate) mod conformance {
    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::test_runner::{Config, TestRunner};

    use super::format;
    use crate::manifest::{ContentId, FileEntry, FileHash, Manifest, RepoId};
    use crate::store::{
        chunk_count, chunk_len, ChunkStore, FileRecord, FileState, RefRecord, StoreError, CRC_BLOCK,
    };

    /// Chunk size that makes the last crc block of a full chunk 17 bytes long.
    pub(crate) const SMALL_CHUNK: u64 = CRC_BLOCK as u64 + 17;
    /// Four crc blocks, the last a partial one: room to corrupt one block and read others.
    pub(crate) const FOUR_BLOCK_CHUNK: u64 = 3 * CRC_BLOCK as u64 + 17;

    /// Raw access to stored values, which only tests have.
    pub(crate) trait RawAccess: ChunkStore {
        fn rewrite_raw(&self, content: &ContentId, index: u64, f: &mut dyn FnMut(&mut Vec<u8>));
        fn put_raw_manifest(&self, key: &str, bytes: &[u8]);
    }

    impl RawAccess for super::MemoryStore {
        fn rewrite_raw(&self, content: &ContentId, index: u64, f: &mut dyn FnMut(&mut Vec<u8>)) {
            super::MemoryStore::rewrite_raw(self, content, index, f)
        }
        fn put_raw_manifest(&self, key: &str, bytes: &[u8]) {
            super::MemoryStore::put_raw_manifest(self, key, bytes)
        }
    }

    impl RawAccess for crate::store::mdbx::MdbxStore {
        fn rewrite_raw(&self, content: &ContentId, index: u64, f: &mut dyn FnMut(&mut Vec<u8>)) {
            crate::store::mdbx::MdbxStore::rewrite_raw(self, content, index, f)
        }
        fn put_raw_manifest(&self, key: &str, bytes: &[u8]) {
            crate::store::mdbx::MdbxStore::put_raw_manifest(self, key, bytes)
        }
    }

    /// `#[test]`s running every conformance function, each on a fresh store made by `$make`, a
    /// closure from a chunk size to `(guard, store)` (the guard keeps a temp dir alive).
    macro_rules! conformance_tests {
        ($make:expr) => {
            #[test]
            fn conformance_round_trip_small_chunks() {
                let (_guard, store) = ($make)($crate::store::memory::conformance::SMALL_CHUNK);
                $crate::store::memory::conformance::round_trip(&store);
            }
            #[test]
            fn conformance_round_trip_default_chunks() {
                let (_guard, store) = ($make)($crate::store::DEFAULT_CHUNK_SIZE);
                $crate::store::memory::conformance::round_trip(&store);
            }
            #[test]
            fn conformance_put_is_idempotent() {
                let (_guard, store) = ($make)($crate::store::memory::conformance::SMALL_CHUNK);
                $crate::store::memory::conformance::put_is_idempotent(&store);
            }
            #[test]
            fn conformance_state_transitions() {
                let (_guard, store) = ($make)($crate::store::memory::conformance::SMALL_CHUNK);
                $crate::store::memory::conformance::state_transitions(&store);
            }
            #[test]
            fn conformance_wrong_lengths_rejected() {
                let (_guard, store) = ($make)($crate::store::memory::conformance::SMALL_CHUNK);
                $crate::store::memory::conformance::wrong_lengths_rejected(&store);
            }
            #[test]
            fn conformance_reads_outside_the_chunk_are_errors() {
                let (_guard, store) = ($make)($crate::store::memory::conformance::SMALL_CHUNK);
                $crate::store::memory::conformance::reads_outside_the_chunk_are_errors(&store);
            }
            #[test]
            fn conformance_manifests_round_trip() {
                let (_guard, store) = ($make)($crate::store::memory::conformance::SMALL_CHUNK);
                $crate::store::memory::conformance::manifests_round_trip(&store);
            }
            #[test]
            fn conformance_local_records_and_remove_repo() {
                let (_guard, store) = ($make)($crate::store::memory::conformance::SMALL_CHUNK);
                $crate::store::memory::conformance::local_records_and_remove_repo(&store);
            }
            #[test]
            fn conformance_refs_round_trip() {
                let (_guard, store) = ($make)($crate::store::memory::conformance::SMALL_CHUNK);
                $crate::store::memory::conformance::refs_round_trip(&store);
            }
            #[test]
            fn conformance_repos_sorted_and_deduplicated() {
                let (_guard, store) = ($make)($crate::store::memory::conformance::SMALL_CHUNK);
                $crate::store::memory::conformance::repos_sorted_and_deduplicated(&store);
            }
            #[test]
            fn conformance_listing_and_eviction() {
                let (_guard, store) = ($make)($crate::store::memory::conformance::SMALL_CHUNK);
                $crate::store::memory::conformance::listing_and_eviction(&store);
            }
            #[test]
            fn conformance_corrupt_chunks_are_dropped() {
                let (_guard, store) = ($make)($crate::store::memory::conformance::FOUR_BLOCK_CHUNK);
                $crate::store::memory::conformance::corrupt_chunks_are_dropped(&store);
            }
            #[test]
            fn conformance_undecodable_manifest_is_absent() {
                let (_guard, store) = ($make)($crate::store::memory::conformance::SMALL_CHUNK);
                $crate::store::memory::conformance::undecodable_manifest_is_absent(&store);
            }
        };
    }
    pub(crate) use conformance_tests;

    pub(crate) fn content(seed: u8) -> ContentId {
        ContentId([seed; 32])
    }

    /// `size` reproducible pseudo-random bytes (no runs, no period a chunk size could align
    /// with), different for each `seed`.
    pub(crate) fn file_bytes(seed: u64, size: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut out = Vec::with_capacity(size as usize + 8);
        while (out.len() as u64) < size {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.truncate(size as usize);
        out
    }

    pub(crate) fn chunk_of(bytes: &[u8], cs: u64, index: u64) -> &[u8] {
        let start = (index * cs) as usize;
        &bytes[start..start + chunk_len(bytes.len() as u64, cs, index) as usize]
    }

    /// Put every chunk of `bytes` (last first, so completion does not depend on order).
    pub(crate) fn put_file(store: &dyn ChunkStore, id: &ContentId, bytes: &[u8]) -> FileRecord {
        let cs = store.chunk_size();
        let size = bytes.len() as u64;
        let mut record = None;
        for index in (0..chunk_count(size, cs).max(1)).rev() {
            record = Some(store.put_chunk(id, size, index, chunk_of(bytes, cs, index)).unwrap());
        }
        record.unwrap()
    }

    fn read(
        store: &dyn ChunkStore,
        id: &ContentId,
        index: u64,
        range: std::ops::Range<usize>,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let found = store.read_chunk(id, index, range, &mut out).unwrap();
        assert!(found || out.is_empty(), "a miss appended {} bytes", out.len());
        found.then_some(out)
    }

    fn assert_recent(record: &FileRecord) {
        let now = format::now_secs();
        assert!(record.last_access <= now && record.last_access + 60 >= now, "{record:?}");
    }

    /// Files of sizes around the chunk size round-trip whole and by random sub-ranges, and the
    /// record follows every put.
    pub(crate) fn round_trip(store: &dyn ChunkStore) {
        let cs = store.chunk_size();
        let sizes = [0, 1, 4095, 4096, cs - 1, cs, cs + 1, 2 * cs + CRC_BLOCK as u64 + 3];
        let mut files = Vec::new();
        for (seed, &size) in sizes.iter().enumerate() {
            let id = content(seed as u8 + 1);
            let bytes = file_bytes(seed as u64, size);
            let n = chunk_count(size, cs).max(1);
            let mut cached = 0;
            for index in (0..n).rev() {
                let data = chunk_of(&bytes, cs, index);
                assert!(!store.has_chunk(&id, index).unwrap());
                let record = store.put_chunk(&id, size, index, data).unwrap();
                cached += data.len() as u64;
                let state = if index == 0 { FileState::Complete } else { FileState::Partial };
                assert_eq!(
                    (record.size, record.cached_bytes, record.state),
                    (size, cached, state),
                    "size {size} chunk {index}"
                );
                assert_recent(&record);
                assert_eq!(store.file_record(&id).unwrap(), Some(record));
            }
            for index in 0..n {
                let data = chunk_of(&bytes, cs, index);
                assert!(store.has_chunk(&id, index).unwrap());
                // `out` is appended to, never cleared.
                let mut out = b"prefix".to_vec();
                assert!(store.read_chunk(&id, index, 0..data.len(), &mut out).unwrap());
                assert_eq!(&out[..6], b"prefix");
                assert!(out[6..] == *data, "size {size} chunk {index} differs");
            }
            assert!(!store.has_chunk(&id, n).unwrap());
            assert_eq!(read(store, &id, n, 0..0), None);
            files.push((id, bytes));
        }

        let mut runner =
            TestRunner::new(Config { cases: 200, failure_persistence: None, ..Config::default() });
        let lengths =
            prop_oneof![0usize..=16, 4090usize..=4100, 0usize..=2 * CRC_BLOCK, any::<usize>()];
        runner
            .run(&(any::<Index>(), any::<Index>(), any::<Index>(), lengths), |(f, c, s, len)| {
                let (id, bytes) = &files[f.index(files.len())];
                let size = bytes.len() as u64;
                let index = c.index(chunk_count(size, cs).max(1) as usize) as u64;
                let chunk = chunk_of(bytes, cs, index);
                let start = s.index(chunk.len() + 1);
                let end = start + len.min(chunk.len() - start);
                let got = read(store, id, index, start..end);
                prop_assert!(
                    got.as_deref() == Some(&chunk[start..end]),
                    "{start}..{end} of chunk {index} of a {size}-byte file"
                );
                Ok(())
            })
            .unwrap();
    }

    /// Storing a chunk that is already there changes nothing, not even its bytes.
    pub(crate) fn put_is_idempotent(store: &dyn ChunkStore) {
        let cs = store.chunk_size();
        let id = content(7);
        let bytes = file_bytes(7, cs + 5);
        let first = store.put_chunk(&id, cs + 5, 0, chunk_of(&bytes, cs, 0)).unwrap();
        assert_eq!((first.cached_bytes, first.state), (cs, FileState::Partial));
        let again = store.put_chunk(&id, cs + 5, 0, chunk_of(&bytes, cs, 0)).unwrap();
        assert_eq!((again.size, again.cached_bytes, again.state), (cs + 5, cs, FileState::Partial));
        let other = file_bytes(8, cs);
        let third = store.put_chunk(&id, cs + 5, 0, &other).unwrap();
        assert_eq!(third.cached_bytes, cs);
        assert!(read(store, &id, 0, 0..cs as usize).unwrap() == chunk_of(&bytes, cs, 0));

        // A verified file stays verified when a chunk it has is put again.
        let done = store.put_chunk(&id, cs + 5, 1, chunk_of(&bytes, cs, 1)).unwrap();
        assert_eq!((done.cached_bytes, done.state), (cs + 5, FileState::Complete));
        store.set_file_state(&id, FileState::Verified).unwrap();
        let record = store.put_chunk(&id, cs + 5, 1, chunk_of(&bytes, cs, 1)).unwrap();
        assert_eq!((record.cached_bytes, record.state), (cs + 5, FileState::Verified));
        assert_eq!(store.file_record(&id).unwrap(), Some(record));
    }

    /// Partial → Complete → Verified → discarded as Failed (no bytes, no chunks, neighbours
    /// untouched) → Partial again; state changes on unknown content do nothing.
    pub(crate) fn state_transitions(store: &dyn ChunkStore) {
        let cs = store.chunk_size();
        let size = 2 * cs + 5;
        // Ids one apart on either side: the discard's key range must stop exactly at `id`.
        let mut below = [0x51; 32];
        below[31] = 0x50;
        let mut above = [0x51; 32];
        above[31] = 0x52;
        let (id, below, above) = (content(0x51), ContentId(below), ContentId(above));
        let bytes = file_bytes(0x51, size);
        assert_eq!(store.file_record(&id).unwrap(), None);

        let r = store.put_chunk(&id, size, 1, chunk_of(&bytes, cs, 1)).unwrap();
        assert_eq!((r.cached_bytes, r.state), (cs, FileState::Partial));
        let r = store.put_chunk(&id, size, 0, chunk_of(&bytes, cs, 0)).unwrap();
        assert_eq!((r.cached_bytes, r.state), (2 * cs, FileState::Partial));
        let r = store.put_chunk(&id, size, 2, chunk_of(&bytes, cs, 2)).unwrap();
        assert_eq!((r.cached_bytes, r.state), (size, FileState::Complete));
        store.set_file_state(&id, FileState::Verified).unwrap();
        let verified = store.file_record(&id).unwrap().unwrap();
        assert_eq!(
            (verified.size, verified.cached_bytes, verified.state),
            (size, size, FileState::Verified)
        );

        let neighbour = file_bytes(0x50, cs + 1);
        put_file(store, &below, &neighbour);
        put_file(store, &above, &neighbour);

        store.discard_file(&id, FileState::Failed).unwrap();
        let failed = store.file_record(&id).unwrap().unwrap();
        assert_eq!(failed, FileRecord { cached_bytes: 0, state: FileState::Failed, ..verified });
        for index in 0..3 {
            assert!(!store.has_chunk(&id, index).unwrap());
            assert_eq!(read(store, &id, index, 0..1), None);
        }
        for n in [&below, &above] {
            assert_eq!(store.file_record(n).unwrap().unwrap().cached_bytes, cs + 1);
            assert!(read(store, n, 0, 0..cs as usize).unwrap() == chunk_of(&neighbour, cs, 0));
            assert!(read(store, n, 1, 0..1).unwrap() == chunk_of(&neighbour, cs, 1));
        }

        // Failed sticks: bytes arriving again for a file that failed its hash are counted,
        // but the file is not trusted again by that alone.
        let r = store.put_chunk(&id, size, 2, chunk_of(&bytes, cs, 2)).unwrap();
        assert_eq!((r.cached_bytes, r.state), (5, FileState::Failed));
        // And a file is marked Verified only while all of it is there.
        store.set_file_state(&id, FileState::Verified).unwrap();
        assert_eq!(store.file_record(&id).unwrap().unwrap().state, FileState::Failed);

        // Unknown content: nothing to mark, nothing to discard, and no record appears.
        let unknown = content(0xEE);
        store.set_file_state(&unknown, FileState::Verified).unwrap();
        store.discard_file(&unknown, FileState::Failed).unwrap();
        assert_eq!(store.file_record(&unknown).unwrap(), None);

        // An empty file is complete once its one empty chunk is put.
        let empty = content(0xE0);
        let r = store.put_chunk(&empty, 0, 0, &[]).unwrap();
        assert_eq!((r.size, r.cached_bytes, r.state), (0, 0, FileState::Complete));
        assert_eq!(read(store, &empty, 0, 0..0), Some(vec![]));
    }

    /// Chunks of the wrong length, past the end, or for another size are refused, and
    /// nothing is stored.
    pub(crate) fn wrong_lengths_rejected(store: &dyn ChunkStore) {
        let cs = store.chunk_size();
        let id = content(9);
        let size = cs + 1;
        let bytes = file_bytes(9, 2 * cs);
        let bad = |index: u64, len: usize| store.put_chunk(&id, size, index, &bytes[..len]);
        for (index, len, expected) in [
            (0, cs as usize - 1, cs as usize),
            (0, cs as usize + 1, cs as usize),
            (1, 2, 1),
            (1, 0, 1),
        ] {
            match bad(index, len) {
                Err(StoreError::BadChunkLength { content: c, index: i, got, expected: e }) => {
                    assert_eq!((c, i, got, e), (id, index, len, expected))
                }
                other => panic!("chunk {index} of {len} bytes: {other:?}"),
            }
        }
        assert!(matches!(bad(2, 0), Err(StoreError::Db(m)) if m.contains("past the end")));
        assert!(matches!(bad(2, 1), Err(StoreError::Db(m)) if m.contains("past the end")));
        assert!(matches!(
            store.put_chunk(&id, 0, 0, &bytes[..1]),
            Err(StoreError::BadChunkLength { got: 1, expected: 0, .. })
        ));
        assert!(matches!(store.put_chunk(&id, 0, 1, &[]), Err(StoreError::Db(_))));
        assert_eq!(store.file_record(&id).unwrap(), None);
        for index in 0..3 {
            assert!(!store.has_chunk(&id, index).unwrap());
        }

        // The same content cannot have two sizes.
        let record = store.put_chunk(&id, size, 1, &bytes[..1]).unwrap();
        match store.put_chunk(&id, 2 * cs, 0, &bytes[..cs as usize]) {
            Err(StoreError::Db(m)) => {
                assert!(m.contains(&size.to_string()) && m.contains(&(2 * cs).to_string()), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(!store.has_chunk(&id, 0).unwrap());
        assert_eq!(store.file_record(&id).unwrap(), Some(record));
    }

    pub(crate) fn reads_outside_the_chunk_are_errors(store: &dyn ChunkStore) {
        let cs = store.chunk_size();
        let id = content(10);
        put_file(store, &id, &file_bytes(10, cs + 3));
        let mut out = Vec::new();
        for (index, range) in [(0, 0..cs as usize + 1), (1, 2..4), (1, 4..4)] {
            assert!(matches!(
                store.read_chunk(&id, index, range, &mut out),
                Err(StoreError::Db(_))
            ));
        }
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 2..1;
        assert!(matches!(store.read_chunk(&id, 1, backwards, &mut out), Err(StoreError::Db(_))));
        assert!(out.is_empty());
        // Still stored and intact: a bad range is the caller's bug, not corruption.
        assert_eq!(read(store, &id, 1, 0..3).map(|v| v.len()), Some(3));
        assert_eq!(store.file_record(&id).unwrap().unwrap().cached_bytes, cs + 3);
    }

    pub(crate) fn sample_manifest(org: &str, name: &str, commit_digit: char) -> Manifest {
        Manifest {
            repo: RepoId::new(org, name),
            commit: commit_digit.to_string().repeat(40),
            pipeline_tag: Some("text-generation".into()),
            files: vec![
                FileEntry { path: "config.json".into(), size: 10, hash: FileHash::Git([1; 20]) },
                FileEntry {
                    path: "onnx/model_q4f16.onnx".into(),
                    size: 1 << 33,
                    hash: FileHash::Lfs([2; 32]),
                },
            ],
        }
    }

    pub(crate) fn manifests_round_trip(store: &dyn ChunkStore) {
        let m = sample_manifest("org", "repo", 'a');
        assert_eq!(store.manifest(&m.repo, &m.commit).unwrap(), None);
        store.put_manifest(&m).unwrap();
        assert_eq!(store.manifest(&m.repo, &m.commit).unwrap(), Some(m.clone()));
        assert_eq!(store.manifest(&m.repo, &"b".repeat(40)).unwrap(), None);
        assert_eq!(store.manifest(&RepoId::new("org", "repo2"), &m.commit).unwrap(), None);
        assert_eq!(store.manifest(&RepoId::new("org2", "repo"), &m.commit).unwrap(), None);

        let other = Manifest { pipeline_tag: None, files: vec![], ..m.clone() };
        store.put_manifest(&other).unwrap();
        assert_eq!(store.manifest(&m.repo, &m.commit).unwrap(), Some(other));
        let second = sample_manifest("org", "repo", 'b');
        store.put_manifest(&second).unwrap();
        assert_eq!(store.manifest(&m.repo, &second.commit).unwrap(), Some(second));
    }

    pub(crate) fn undecodable_manifest_is_absent<S: RawAccess>(store: &S) {
        let m = sample_manifest("org", "broken", 'c');
        let key = format!("org/broken@{}", m.commit);
        let mut bytes = m.encode();
        bytes[0] = 99;
        store.put_raw_manifest(&key, &bytes);
        assert_eq!(store.manifest(&m.repo, &m.commit).unwrap(), None);
        store.put_raw_manifest(&key, &m.encode()[..10]);
        assert_eq!(store.manifest(&m.repo, &m.commit).unwrap(), None);
        // The raw key layout is the one `put_manifest` uses.
        store.put_raw_manifest(&key, &m.encode());
        assert_eq!(store.manifest(&m.repo, &m.commit).unwrap(), Some(m));
    }

    pub(crate) fn refs_round_trip(store: &dyn ChunkStore) {
        let repo = RepoId::new("org", "repo");
        let main = RefRecord { commit: "a".repeat(40), resolved_at: 1_700_000_000 };
        assert_eq!(store.get_ref(&repo, "main").unwrap(), None);
        store.put_ref(&repo, "main", &main).unwrap();
        assert_eq!(store.get_ref(&repo, "main").unwrap(), Some(main.clone()));
        assert_eq!(store.get_ref(&repo, "dev").unwrap(), None);
        assert_eq!(store.get_ref(&RepoId::new("org", "other"), "main").unwrap(), None);
        let moved = RefRecord { commit: "b".repeat(40), resolved_at: 1_700_000_600 };
        store.put_ref(&repo, "main", &moved).unwrap();
        assert_eq!(store.get_ref(&repo, "main").unwrap(), Some(moved));
        let tag = RefRecord { commit: "c".repeat(40), resolved_at: 0 };
        store.put_ref(&repo, "v1.0", &tag).unwrap();
        store.put_ref(&repo, "refs/pr/1", &tag).unwrap();
        assert_eq!(store.get_ref(&repo, "v1.0").unwrap(), Some(tag.clone()));
        assert_eq!(store.get_ref(&repo, "refs/pr/1").unwrap(), Some(tag));
    }

    /// Local records round-trip; `remove_repo` forgets one repo's refs, manifests and local
    /// record at once, and nothing of a repo whose name extends it.
    pub(crate) fn local_records_and_remove_repo(store: &dyn ChunkStore) {
        use crate::store::{LocalOrigin, LocalRecord};
        let (repo, other) = (RepoId::new("a", "b"), RepoId::new("a", "b-c"));
        assert_eq!(store.local(&repo).unwrap(), None);
        assert_eq!(store.remove_repo(&repo).unwrap(), vec![]);
        let record = LocalRecord { origin: LocalOrigin::Imported, since: 7 };
        store.put_local(&repo, &record).unwrap();
        store.put_local(&other, &LocalRecord { origin: LocalOrigin::Tier, ..record }).unwrap();
        assert_eq!(store.local(&repo).unwrap(), Some(record));
        let r = RefRecord { commit: "a".repeat(40), resolved_at: 1 };
        for (id, commit) in [(&repo, 'a'), (&repo, 'b'), (&other, 'a')] {
            store.put_manifest(&sample_manifest(&id.org, &id.name, commit)).unwrap();
            store.put_ref(id, "main", &r).unwrap();
        }
        let mut removed = store.remove_repo(&repo).unwrap();
        removed.sort_by(|x, y| x.commit.cmp(&y.commit));
        assert_eq!(removed, vec![sample_manifest("a", "b", 'a'), sample_manifest("a", "b", 'b')]);
        assert_eq!(store.local(&repo).unwrap(), None);
        assert_eq!(store.get_ref(&repo, "main").unwrap(), None);
        assert_eq!(store.commits(&repo).unwrap(), Vec::<String>::new());
        assert_eq!(store.repos().unwrap(), vec![other.clone()]);
        assert_eq!(store.locals().unwrap().len(), 1);
        assert_eq!(store.get_ref(&other, "main").unwrap(), Some(r));
    }

    /// `repos` orders by `RepoId` (org, then name), not by key bytes: `a-b/c@…` sorts before
    /// `a/b@…` as a string, after it as a repo.
    pub(crate) fn repos_sorted_and_deduplicated(store: &dyn ChunkStore) {
        assert_eq!(store.repos().unwrap(), vec![]);
        let r = RefRecord { commit: "a".repeat(40), resolved_at: 1 };
        store.put_ref(&RepoId::new("b", "x"), "main", &r).unwrap();
        store.put_ref(&RepoId::new("a-b", "c"), "main", &r).unwrap();
        store.put_ref(&RepoId::new("a", "b"), "v1.0", &r).unwrap();
        store.put_ref(&RepoId::new("a", "b"), "main", &r).unwrap();
        store.put_manifest(&sample_manifest("a", "b", 'a')).unwrap();
        store.put_manifest(&sample_manifest("b", "x", 'a')).unwrap();
        store.put_manifest(&sample_manifest("a", "b-c", 'd')).unwrap();
        store.put_manifest(&sample_manifest("a", "b-c", 'e')).unwrap();
        assert_eq!(
            store.repos().unwrap(),
            vec![
                RepoId::new("a", "b"),
                RepoId::new("a", "b-c"),
                RepoId::new("a-b", "c"),
                RepoId::new("b", "x"),
            ]
        );
    }

    /// `commits` and `refs` list one repo's records only (not those of a repo whose name
    /// extends it), sorted; `files` lists every record; `evict_file` removes a whole file, so
    /// it reads as never fetched, and frees exactly its stored bytes; `touch` only moves the
    /// access time.
    pub(crate) fn listing_and_eviction(store: &dyn ChunkStore) {
        let repo = RepoId::new("a", "b");
        let r = |c: char, at| RefRecord { commit: c.to_string().repeat(40), resolved_at: at };
        store.put_ref(&repo, "v1.0", &r('a', 1)).unwrap();
        store.put_ref(&repo, "main", &r('b', 2)).unwrap();
        store.put_ref(&RepoId::new("a", "b-c"), "main", &r('c', 3)).unwrap();
        store.put_ref(&RepoId::new("a", "bb"), "main", &r('c', 3)).unwrap();
        store.put_manifest(&sample_manifest("a", "b", 'e')).unwrap();
        store.put_manifest(&sample_manifest("a", "b", 'd')).unwrap();
        store.put_manifest(&sample_manifest("a", "b-c", 'f')).unwrap();
        assert_eq!(store.commits(&repo).unwrap(), vec!["d".repeat(40), "e".repeat(40)]);
        assert_eq!(
            store.refs(&repo).unwrap(),
            vec![("main".to_string(), r('b', 2)), ("v1.0".to_string(), r('a', 1))]
        );
        assert_eq!(store.commits(&RepoId::new("x", "y")).unwrap(), Vec::<String>::new());
        assert_eq!(store.refs(&RepoId::new("a", "")).unwrap(), vec![]);

        let cs = store.chunk_size();
        let (one, two) = (content(0xE1), content(0xE0));
        let big = file_bytes(0xE1, 2 * cs + 5);
        put_file(store, &one, &big);
        store.put_chunk(&two, cs + 1, 1, &[7]).unwrap();
        let listed = store.files().unwrap();
        assert_eq!(
            listed.iter().map(|(c, r)| (*c, r.cached_bytes, r.state)).collect::<Vec<_>>(),
            vec![(two, 1, FileState::Partial), (one, 2 * cs + 5, FileState::Complete)]
        );
        let before = store.file_record(&one).unwrap().unwrap();
        store.touch(&one).unwrap();
        let after = store.file_record(&one).unwrap().unwrap();
        assert!(after.last_access >= before.last_access);
        assert_eq!(FileRecord { last_access: before.last_access, ..after }, before);
        store.touch(&content(0xEE)).unwrap();
        assert_eq!(store.file_record(&content(0xEE)).unwrap(), None);

        assert_eq!(store.evict_file(&one).unwrap(), 2 * cs + 5);
        assert_eq!(store.file_record(&one).unwrap(), None);
        for index in 0..3 {
            assert!(!store.has_chunk(&one, index).unwrap());
            assert!(!store.read_chunk(&one, index, 0..1, &mut Vec::new()).unwrap());
        }
        assert_eq!(store.evict_file(&one).unwrap(), 0);
        assert_eq!(store.files().unwrap().len(), 1);
        // Refetched after eviction, the file is recorded afresh from its chunks.
        assert_eq!(put_file(store, &one, &big).cached_bytes, 2 * cs + 5);
    }

    /// A corrupt chunk is dropped when a read touches the damage (and only then: other blocks
    /// still read), is reported absent, and its bytes leave the file's record.
    pub(crate) fn corrupt_chunks_are_dropped<S: RawAccess>(store: &S) {
        let cs = store.chunk_size();
        assert!(cs > 3 * CRC_BLOCK as u64, "needs four crc blocks");
        let id = content(0xC0);
        let size = cs + 10;
        let bytes = file_bytes(0xC0, size);
        assert_eq!(put_file(store, &id, &bytes).state, FileState::Complete);
        store.set_file_state(&id, FileState::Verified).unwrap();

        // One flipped bit in the third block of chunk 0.
        let at = format::header_len(cs as usize) + 2 * CRC_BLOCK + 7;
        store.rewrite_raw(&id, 0, &mut |v| v[at] ^= 0x10);
        // Reads of other blocks do not look at it.
        assert!(read(store, &id, 0, 0..4096).unwrap() == bytes[..4096]);
        let last = 3 * CRC_BLOCK..cs as usize;
        assert!(read(store, &id, 0, last.clone()).unwrap() == bytes[last]);
        assert!(store.has_chunk(&id, 0).unwrap());
        // A read spanning blocks 1 and 2 does.
        let span = CRC_BLOCK * 2 - 10..CRC_BLOCK * 2 + 10;
        assert_eq!(read(store, &id, 0, span.clone()), None);
        assert!(!store.has_chunk(&id, 0).unwrap());
        assert_eq!(read(store, &id, 0, 0..4096), None);
        let r = store.file_record(&id).unwrap().unwrap();
        assert_eq!((r.size, r.cached_bytes, r.state), (size, 10, FileState::Partial));
        assert!(read(store, &id, 1, 0..10).unwrap() == bytes[cs as usize..]);

        // Fetched again, it is whole again.
        let r = store.put_chunk(&id, size, 0, chunk_of(&bytes, cs, 0)).unwrap();
        assert_eq!((r.cached_bytes, r.state), (size, FileState::Complete));
        assert!(read(store, &id, 0, span.clone()).unwrap() == bytes[span]);

        // A malformed header (unknown format) drops the chunk even for an empty read.
        store.rewrite_raw(&id, 1, &mut |v| v[0] = 99);
        assert_eq!(read(store, &id, 1, 0..0), None);
        assert!(!store.has_chunk(&id, 1).unwrap());
        let r = store.file_record(&id).unwrap().unwrap();
        assert_eq!((r.cached_bytes, r.state), (cs, FileState::Partial));

        // So does a value cut short (bytes lost at the chunk's end), read where it lost them,
        // and a wrong crc in the header.
        store.rewrite_raw(&id, 0, &mut |v| {
            v.pop();
        });
        assert_eq!(read(store, &id, 0, cs as usize - 1..cs as usize), None);
        assert_eq!(store.file_record(&id).unwrap().unwrap().cached_bytes, 0);
        store.put_chunk(&id, size, 1, chunk_of(&bytes, cs, 1)).unwrap();
        store.rewrite_raw(&id, 1, &mut |v| v[5] ^= 1);
        assert_eq!(read(store, &id, 1, 9..10), None);
        let r = store.file_record(&id).unwrap().unwrap();
        assert_eq!((r.cached_bytes, r.state), (0, FileState::Partial));
    }
}

#[cfg(test)]
mod tests {
    use super::conformance::{self, content, file_bytes};
    use super::*;

    conformance::conformance_tests!(|cs| ((), MemoryStore::new(cs)));

    #[test]
    fn corrupt_chunk_makes_the_next_read_miss() {
        let store = MemoryStore::new(conformance::SMALL_CHUNK);
        let id = content(1);
        let bytes = file_bytes(1, 100);
        assert!(!store.corrupt_chunk(&id, 0));
        store.put_chunk(&id, 100, 0, &bytes).unwrap();
        assert!(store.corrupt_chunk(&id, 0));
        let mut out = Vec::new();
        assert!(!store.read_chunk(&id, 0, 50..60, &mut out).unwrap());
        assert!(out.is_empty());
        assert_eq!(store.file_record(&id).unwrap().unwrap().cached_bytes, 0);
        let empty = content(2);
        store.put_chunk(&empty, 0, 0, &[]).unwrap();
        assert!(!store.corrupt_chunk(&empty, 0));
    }

    #[test]
    #[should_panic(expected = "chunk size 0 out of range")]
    fn zero_chunk_size_is_a_bug() {
        MemoryStore::new(0);
    }
}
