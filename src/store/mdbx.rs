//! The real chunk store: one libmdbx environment in a directory, shared by every modelfs
//! process on the machine (the daemon, `modelfs pull`, `modelfs status`).
//!
//! It owns the on-disk format. Five tables:
//!
//! | table       | key                                   | value                                |
//! |-------------|---------------------------------------|--------------------------------------|
//! | `chunks`    | content id (32) ++ index (u64 BE)     | chunk header, then the chunk's bytes |
//! | `files`     | content id (32)                       | format byte ++ rkyv [`FileRecord`]   |
//! | `manifests` | `org/name@commit`                     | [`Manifest::encode`]                 |
//! | `refs`      | `org/name@rev`                        | format byte ++ rkyv [`RefRecord`]    |
//! | `meta`      | `chunk_size`                          | u64 BE, set when the store is made   |
//!
//! The chunk index is big-endian so that one file's chunks are adjacent and in order: a
//! whole file is one cursor range, which is how [`ChunkStore::discard_file`] finds them.
//! The chunk header is a format byte, the data length (u32 LE) and one crc32c (u32 LE) per
//! [`CRC_BLOCK`](super::CRC_BLOCK) of data, so that a read checks only the blocks it
//! touches. Every chunk write and the update of its file's record happen in one write
//! transaction, so `cached_bytes` always equals the bytes of the chunks actually stored,
//! whatever process wrote them and wherever a crash fell.
//!
//! The `format` module (chunk values, record transitions, key layout) is shared with the
//! in-memory double, so both stores behave identically down to what a corrupt chunk does.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use libmdbx::{
    Database, DatabaseOptions, Decodable, Mode, NoWriteMap, ReadWriteOptions, SyncMode, TableFlags,
    Transaction, TransactionKind, WriteFlags, RO, RW,
};

use super::{ChunkStore, FileRecord, FileState, RefRecord, StoreError};
use crate::manifest::{ContentId, Manifest, RepoId};

use self::format::ReadError;

const CHUNKS: &str = "chunks";
const FILES: &str = "files";
const MANIFESTS: &str = "manifests";
const REFS: &str = "refs";
const META: &str = "meta";
const TABLES: [&str; 5] = [CHUNKS, FILES, MANIFESTS, REFS, META];
const META_CHUNK_SIZE: &[u8] = b"chunk_size";

/// Named tables the environment may hold: the five above, with room for a later format to
/// add some without an environment that refuses to open them (a limit set at open time).
const MAX_TABLES: u64 = 16;

/// Reader slots, shared by every process that opens the store. With `MDBX_NOTLS` a slot is
/// held only while a read transaction is open, i.e. for the duration of one store call, so
/// this bounds concurrent store reads machine-wide (FUSE worker threads plus read-ahead in
/// the daemon, plus a `pull` and a `status`): 1024 is far above that, and each slot costs a
/// few dozen bytes of the lock file.
const MAX_READERS: u32 = 1024;

/// Upper bound of the map. libmdbx reserves address space up to this bound when it opens the
/// environment, so growing the file never has to move the map while other threads and
/// processes hold pointers into it; the file itself grows only as chunks arrive. 4 TiB of
/// the 128 TiB a 64-bit Linux process can address costs nothing until touched, and holds the
/// largest models several times over: the store's real bound is `--max-cache-size`, which
/// eviction enforces, not the map. With the default 4 KiB page it is also well inside
/// libmdbx's limit of 2^31 pages.
const MAX_MAP_SIZE: isize = 4 << 40;

/// How much the file grows at a time: 32 default chunks. Small enough not to surprise a user
/// watching `du`, large enough that filling a multi-GiB model does not grow (and fsync the
/// geometry) every few chunks.
const GROWTH_STEP: isize = 256 << 20;

/// Largest chunk size a store may be created with. The chunk header stores the length in
/// 32 bits, libmdbx caps a value at about 2 GiB, and a chunk is fetched in one range request
/// and held in memory while it is written: 1 GiB leaves margin on all three.
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;

/// Turn libmdbx's `MDBX_VALIDATION` (careful checks of every page it loads) on or off.
fn set_validation(db: &Database<NoWriteMap>, on: bool) -> Result<(), StoreError> {
    // SAFETY: the environment pointer is the open environment `db` owns, valid for the call;
    // MDBX_VALIDATION is one of the flags libmdbx allows to change on an open environment.
    let rc = unsafe { mdbx_sys::mdbx_env_set_flags(db.ptr().0, mdbx_sys::MDBX_VALIDATION, on) };
    match rc {
        0 => Ok(()),
        code => Err(libmdbx::Error::from_err_code(code).into()),
    }
}

/// libmdbx errors become store errors here, and only here. A full map, or a full disk under
/// it, is [`StoreError::Full`]: the caller can evict and retry; anything else is `Db`.
impl From<libmdbx::Error> for StoreError {
    fn from(e: libmdbx::Error) -> Self {
        match e {
            libmdbx::Error::MapFull => StoreError::Full,
            libmdbx::Error::Other(code) if code == libc::ENOSPC => StoreError::Full,
            libmdbx::Error::Corrupted
            | libmdbx::Error::PageNotFound
            | libmdbx::Error::Panic
            | libmdbx::Error::Invalid
            | libmdbx::Error::WannaRecovery => StoreError::Damaged(e.to_string()),
            e => StoreError::Db(e.to_string()),
        }
    }
}

/// The libmdbx implementation of [`ChunkStore`]. See the module documentation for the format.
pub struct MdbxStore {
    db: Database<NoWriteMap>,
    /// Serialises this process's write transactions before they reach libmdbx. libmdbx-rs
    /// begins every write transaction on one manager thread; a second begin while one is open
    /// in this process finds the write lock owned by that same thread, gets `MDBX_BUSY`, and
    /// the crate retries after sleeping 250 ms. Waiting on this mutex instead costs nothing.
    /// (Writers in other processes are serialised by libmdbx's own lock.)
    write_lock: Mutex<()>,
    path: PathBuf,
    chunk_size: u64,
    /// The environment's data file, opened again read-only, for warm reads that `pread` chunk
    /// data instead of touching the map ([`direct`]); `None` where that is not possible.
    data_file: Option<direct::DataFile>,
}

impl fmt::Debug for MdbxStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MdbxStore")
            .field("path", &self.path)
            .field("chunk_size", &self.chunk_size)
            .finish()
    }
}

impl MdbxStore {
    /// Open the store in `dir`, creating the directory and the environment if they are absent.
    /// A new store is chunked with `chunk_size_if_new`; an existing one keeps the chunk size it
    /// was created with (every stored chunk depends on it), whatever is asked now.
    pub fn open(dir: &Path, chunk_size_if_new: u64) -> Result<MdbxStore, StoreError> {
        Self::open_with_geometry(dir, chunk_size_if_new, MAX_MAP_SIZE, GROWTH_STEP)
    }

    fn open_with_geometry(
        dir: &Path,
        chunk_size_if_new: u64,
        max_size: isize,
        growth_step: isize,
    ) -> Result<MdbxStore, StoreError> {
        let open_err =
            |reason: String| StoreError::Open { path: dir.display().to_string(), reason };
        if !(1..=MAX_CHUNK_SIZE).contains(&chunk_size_if_new) {
            return Err(open_err(format!(
                "chunk size {chunk_size_if_new} is not between 1 and {MAX_CHUNK_SIZE}"
            )));
        }
        if dir.exists() && !dir.is_dir() {
            return Err(open_err("not a directory".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;

        let options = DatabaseOptions {
            max_readers: Some(MAX_READERS),
            max_tables: Some(MAX_TABLES),
            // No `exclusive`: several processes open the store at once (SPEC §4). `accede`
            // lets a process join an environment that another opened with other mode flags
            // (a different modelfs version) instead of failing to open.
            accede: true,
            mode: Mode::ReadWrite(ReadWriteOptions {
                // Each commit's data pages are flushed before `put_chunk` returns; only the
                // meta page flush is deferred to the next commit. A kill -9 loses nothing
                // committed (the page cache has it); a power loss can roll back the last
                // committed transaction, which is one chunk: the store stays consistent and
                // has lost at most the chunks in flight and the one just written (SPEC §4).
                // Measured on a cold 1 GiB stream (doc/DESIGN.md): Durable 5.6 s, this 3.1 s,
                // SafeNoSync 2.5 s (but a power loss could roll back any number of chunks).
                sync_mode: SyncMode::NoMetaSync,
                min_size: None,
                max_size: Some(max_size),
                growth_step: Some(growth_step),
                shrink_threshold: None,
            }),
            // Default `NoWriteMap`: pages are written with pwrite, so a stray write through a
            // pointer into the map cannot corrupt the database.
            ..DatabaseOptions::default()
        };
        let damaged = |detail: String| {
            let p = dir.display();
            open_err(format!(
                "its index is damaged ({detail}), and what it holds cannot be trusted to be found \
                 again. Stop every modelfs using it, move it aside (`mv {p} {p}.damaged`) or \
                 remove it (`rm -r {p}`), and start again: models are fetched again from the Hub"
            ))
        };
        let db = Database::<NoWriteMap>::open_with_options(dir, options).map_err(|e| {
            match StoreError::from(e) {
                StoreError::Damaged(detail) => damaged(detail),
                other => open_err(other.to_string()),
            }
        })?;
        // Careful page checks until the store has been checked whole (below): a damaged page
        // is then an error, not an assertion that aborts the process or a wild read.
        set_validation(&db, true).map_err(|e| open_err(e.to_string()))?;
        let mut store = MdbxStore {
            db,
            write_lock: Mutex::new(()),
            path: dir.to_path_buf(),
            chunk_size: 0,
            data_file: direct::DataFile::open(dir),
        };

        // Creating the tables and recording the chunk size in one write transaction settles
        // races between processes creating the same store: the first to commit wins.
        let stored = store
            .write(|txn| {
                for name in TABLES {
                    txn.create_table(Some(name), TableFlags::empty())?;
                }
                let meta = txn.open_table(Some(META))?;
                match txn.get::<Vec<u8>>(&meta, META_CHUNK_SIZE)? {
                    Some(bytes) => {
                        let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                            StoreError::Db(format!("meta chunk_size has {} bytes", bytes.len()))
                        })?;
                        Ok(u64::from_be_bytes(bytes))
                    }
                    None => {
                        txn.put(
                            &meta,
                            META_CHUNK_SIZE,
                            chunk_size_if_new.to_be_bytes(),
                            WriteFlags::empty(),
                        )?;
                        Ok(chunk_size_if_new)
                    }
                }
            })
            .map_err(|e| match e {
                StoreError::Damaged(detail) => damaged(detail),
                other => open_err(other.to_string()),
            })?;
        if !(1..=MAX_CHUNK_SIZE).contains(&stored) {
            return Err(open_err(format!("stored chunk size {stored} is out of range")));
        }
        if stored != chunk_size_if_new && chunk_size_if_new == super::DEFAULT_CHUNK_SIZE {
            // Nobody asked for another size: every command opening a store made with one
            // would otherwise warn.
            tracing::debug!(path = %dir.display(), stored, "store chunk size");
        } else if stored != chunk_size_if_new {
            tracing::warn!(
                path = %dir.display(),
                stored,
                requested = chunk_size_if_new,
                "store keeps the chunk size it was created with"
            );
        }
        store.chunk_size = stored;
        match store.check_structure() {
            Err(StoreError::Damaged(detail)) => return Err(damaged(detail)),
            Err(e) => return Err(open_err(e.to_string())),
            Ok(()) => {}
        }
        // Checked: the fast path from here on ("a notable performance degradation" otherwise,
        // as libmdbx documents it, on every chunk lookup).
        set_validation(&store.db, false).map_err(|e| open_err(e.to_string()))?;
        Ok(store)
    }

    /// Walk every page of the index once: each table's B-tree from its root to every leaf,
    /// and the header of every chunk value's pages. Cheap next to what a damaged index costs
    /// later (every write failing, every chunk fetched again and again), and it is what
    /// libmdbx itself does to find a damaged page: follow the tree. Chunk bytes are not
    /// read; their crc32c catches damage there, on every read.
    pub fn check_structure(&self) -> Result<(), StoreError> {
        self.read(|txn| {
            for name in TABLES {
                let table = txn.open_table(Some(name))?;
                let mut cursor = txn.cursor(&table)?;
                if name == CHUNKS {
                    for item in cursor.iter_start::<Cow<'_, [u8]>, StoredLen>() {
                        item?;
                    }
                } else {
                    for item in cursor.iter_start::<Cow<'_, [u8]>, Cow<'_, [u8]>>() {
                        item?;
                    }
                }
            }
            Ok(())
        })
    }

    /// A write that failed with a plain I/O error on a filesystem with no room left is a full
    /// store: libmdbx reports `EIO` for a page write into a hole of a full tmpfs, where the
    /// caller can evict and retry, instead of `ENOSPC`.
    fn full_if_out_of_space(&self, e: StoreError) -> StoreError {
        let StoreError::Db(_) = &e else { return e };
        match nix::sys::statvfs::statvfs(&self.path) {
            Ok(fs)
                if fs.blocks_available().saturating_mul(fs.fragment_size())
                    < 2 * self.chunk_size =>
            {
                StoreError::Full
            }
            _ => e,
        }
    }

    /// The directory the environment lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` in one short read transaction. The transaction cannot outlive the call: `T`
    /// cannot borrow from it, so nothing read from the map escapes.
    fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_, RO, NoWriteMap>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_ro_txn()?;
        f(&txn)
    }

    /// Run `f` in one write transaction, committed if `f` succeeds and aborted otherwise.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_, RW, NoWriteMap>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // The mutex guards no data, only the order of transactions: a poisoned one is fine.
        let _serial = self.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let txn = self.db.begin_rw_txn()?;
        let value = f(&txn)?;
        txn.commit()?;
        Ok(value)
    }

    /// Look chunk `index` of `content` up in one read transaction and hand its stored value
    /// to `serve`, which checks and delivers bytes `range` of it while the transaction is
    /// still open: the value's pages (in the map, and in the data file that [`direct`] reads)
    /// cannot be reused by a writer until it ends. A value `serve` finds corrupt is dropped
    /// and reported as absent.
    fn serve_chunk(
        &self,
        content: &ContentId,
        index: u64,
        range: Range<usize>,
        serve: &mut dyn FnMut(&[u8]) -> Result<(), ReadError>,
    ) -> Result<bool, StoreError> {
        let key = format::chunk_key(content, index);
        // The value is borrowed from the map (a read transaction never sees dirty pages).
        let outcome = self.read(|txn| {
            let chunks = txn.open_table(Some(CHUNKS))?;
            let Some(value) = txn.get::<Cow<'_, [u8]>>(&chunks, &key)? else {
                return Ok(None);
            };
            Ok(Some(serve(&value)))
        })?;
        match outcome {
            None => Ok(false),
            Some(Ok(())) => Ok(true),
            Some(Err(ReadError::OutOfChunk { len })) => Err(format::out_of_chunk(&range, len)),
            Some(Err(ReadError::Corrupt(reason))) => {
                self.drop_corrupt(content, index, &range, &reason)?;
                Ok(false)
            }
        }
    }

    /// Drop chunk `index` of `content` after a read found it corrupt, and take its bytes out
    /// of the file's record. The chunk is checked again inside the write transaction: another
    /// thread or process may have dropped it and stored a good copy since our read.
    fn drop_corrupt(
        &self,
        content: &ContentId,
        index: u64,
        range: &Range<usize>,
        reason: &str,
    ) -> Result<(), StoreError> {
        let key = format::chunk_key(content, index);
        let dropped = self.write(|txn| {
            let chunks = txn.open_table(Some(CHUNKS))?;
            let Some(value) = txn.get::<Cow<'_, [u8]>>(&chunks, &key)? else {
                return Ok(false);
            };
            if !matches!(format::check_range(&value, range.clone()), Err(ReadError::Corrupt(_))) {
                return Ok(false);
            }
            let stored_len = format::data_len(&value).ok();
            // The value points into a page that the delete frees.
            drop(value);
            txn.del(&chunks, key, None)?;
            let files = txn.open_table(Some(FILES))?;
            if let Some(record) = get_record(txn, &files, content)? {
                let len = stored_len
                    .map(|l| l as u64)
                    .unwrap_or_else(|| super::chunk_len(record.size, self.chunk_size, index));
                put_record(txn, &files, content, &format::after_drop(record, len))?;
            }
            Ok(true)
        })?;
        if dropped {
            crate::metrics::get().chunk_checksum_failed();
            tracing::error!(
                content = %content.to_hex(),
                index,
                reason,
                "chunk failed its integrity check and was dropped"
            );
        }
        Ok(())
    }

    /// Replace the raw stored value of a chunk: how tests corrupt one.
    #[cfg(test)]
    pub(crate) fn rewrite_raw(
        &self,
        content: &ContentId,
        index: u64,
        f: &mut dyn FnMut(&mut Vec<u8>),
    ) {
        let key = format::chunk_key(content, index);
        self.write(|txn| {
            let chunks = txn.open_table(Some(CHUNKS))?;
            let mut value = txn.get::<Vec<u8>>(&chunks, &key)?.expect("chunk to rewrite");
            f(&mut value);
            txn.put(&chunks, key, value, WriteFlags::empty())?;
            Ok(())
        })
        .unwrap();
    }

    /// Replace the raw file record of `content`: how tests store an unreadable one.
    #[cfg(test)]
    fn put_raw_file_record(&self, content: &ContentId, bytes: &[u8]) {
        self.write(|txn| {
            let files = txn.open_table(Some(FILES))?;
            txn.put(&files, content.0, bytes, WriteFlags::empty())?;
            Ok(())
        })
        .unwrap();
    }

    /// Store raw bytes as the manifest under `key`: how tests store an undecodable one.
    #[cfg(test)]
    pub(crate) fn put_raw_manifest(&self, key: &str, bytes: &[u8]) {
        self.write(|txn| {
            let manifests = txn.open_table(Some(MANIFESTS))?;
            txn.put(&manifests, key, bytes, WriteFlags::empty())?;
            Ok(())
        })
        .unwrap();
    }
}

/// The data length a chunk value's header announces, read without touching (or, in a write
/// transaction, copying) the data: `None` when the header is malformed.
struct StoredLen(Option<usize>);

impl Decodable<'_> for StoredLen {
    fn decode(value: &[u8]) -> Result<Self, libmdbx::Error> {
        Ok(StoredLen(format::data_len(value).ok()))
    }
}

fn get_record<K: TransactionKind>(
    txn: &Transaction<'_, K, NoWriteMap>,
    files: &libmdbx::Table<'_>,
    content: &ContentId,
) -> Result<Option<FileRecord>, StoreError> {
    let Some(bytes) = txn.get::<Cow<'_, [u8]>>(files, &content.0)? else {
        return Ok(None);
    };
    match format::decode_file_record(&bytes) {
        Ok(record) => Ok(Some(record)),
        Err(e) => {
            // Treated as absent; `put_chunk` rebuilds it from the chunks actually stored.
            tracing::warn!(content = %content.to_hex(), error = %e, "unreadable file record");
            Ok(None)
        }
    }
}

fn put_record(
    txn: &Transaction<'_, RW, NoWriteMap>,
    files: &libmdbx::Table<'_>,
    content: &ContentId,
    record: &FileRecord,
) -> Result<(), StoreError> {
    txn.put(files, content.0, format::encode_file_record(record)?, WriteFlags::empty())?;
    Ok(())
}

/// One stored chunk as [`chunks_of`] lists it.
struct ChunkEntry {
    key: Vec<u8>,
    /// The data length its header announces; `None` when the header is malformed.
    len: Option<usize>,
}

/// Every stored chunk of `content`, in index order.
fn chunks_of<K: TransactionKind>(
    txn: &Transaction<'_, K, NoWriteMap>,
    chunks: &libmdbx::Table<'_>,
    content: &ContentId,
) -> Result<Vec<ChunkEntry>, StoreError> {
    let mut cursor = txn.cursor(chunks)?;
    let mut out = Vec::new();
    for item in cursor.iter_from::<Vec<u8>, StoredLen>(&format::chunk_key(content, 0)) {
        let (key, StoredLen(len)) = item?;
        if !key.starts_with(&content.0) {
            break;
        }
        out.push(ChunkEntry { key, len });
    }
    Ok(out)
}

impl ChunkStore for MdbxStore {
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
        self.serve_chunk(content, index, range.clone(), &mut |value| {
            if let Some(file) = &self.data_file {
                if direct::append(file, value, &range, out) {
                    return Ok(());
                }
            }
            format::read_range(value, range.clone(), out)
        })
    }

    fn visit_chunk(
        &self,
        content: &ContentId,
        index: u64,
        range: Range<usize>,
        visit: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, StoreError> {
        self.serve_chunk(content, index, range.clone(), &mut |value| {
            if let Some(file) = &self.data_file {
                if direct::visit(file, value, &range, visit) {
                    return Ok(());
                }
            }
            format::visit_range(value, range.clone(), visit)
        })
    }

    fn has_chunk(&self, content: &ContentId, index: u64) -> Result<bool, StoreError> {
        let key = format::chunk_key(content, index);
        self.read(|txn| {
            let chunks = txn.open_table(Some(CHUNKS))?;
            Ok(txn.get::<()>(&chunks, &key)?.is_some())
        })
    }

    fn put_chunk(
        &self,
        content: &ContentId,
        file_size: u64,
        index: u64,
        data: &[u8],
    ) -> Result<FileRecord, StoreError> {
        format::check_put(content, file_size, self.chunk_size, index, data)?;
        // Checksummed before taking the write lock, so writers do not wait on it.
        let header = format::encode_header(data);
        let key = format::chunk_key(content, index);
        let now = format::now_secs();
        self.write(|txn| {
            let files = txn.open_table(Some(FILES))?;
            let chunks = txn.open_table(Some(CHUNKS))?;
            let existing = get_record(txn, &files, content)?;
            format::check_size(content, existing.as_ref(), file_size)?;
            let new_chunk = txn.get::<()>(&chunks, &key)?.is_none();
            if new_chunk {
                // Written straight into the page: no 8 MiB intermediate buffer.
                let dst =
                    txn.reserve(&chunks, key, header.len() + data.len(), WriteFlags::empty())?;
                let (head, body) = dst.split_at_mut(header.len());
                head.copy_from_slice(&header);
                body.copy_from_slice(data);
            }
            let record = match existing {
                Some(record) => format::after_put(record, new_chunk, data.len() as u64, now),
                None => {
                    // No record (or an unreadable one): count what is really stored.
                    let cached = chunks_of(txn, &chunks, content)?
                        .iter()
                        .filter_map(|c| c.len)
                        .sum::<usize>();
                    format::rebuilt(file_size, cached as u64, now)
                }
            };
            put_record(txn, &files, content, &record)?;
            Ok(record)
        })
        .map_err(|e| self.full_if_out_of_space(e))
    }

    fn file_record(&self, content: &ContentId) -> Result<Option<FileRecord>, StoreError> {
        self.read(|txn| {
            let files = txn.open_table(Some(FILES))?;
            get_record(txn, &files, content)
        })
    }

    fn set_file_state(&self, content: &ContentId, state: FileState) -> Result<(), StoreError> {
        self.write(|txn| {
            let files = txn.open_table(Some(FILES))?;
            // No record: the file was discarded or evicted meanwhile (maybe by another
            // process); there is nothing left to mark.
            if let Some(record) = get_record(txn, &files, content)? {
                put_record(txn, &files, content, &format::with_state(record, state))?;
            }
            Ok(())
        })
    }

    fn discard_file(&self, content: &ContentId, state: FileState) -> Result<(), StoreError> {
        self.write(|txn| {
            let chunks = txn.open_table(Some(CHUNKS))?;
            for chunk in chunks_of(txn, &chunks, content)? {
                txn.del(&chunks, chunk.key, None)?;
            }
            let files = txn.open_table(Some(FILES))?;
            // Without a record the size is unknown, so none is created; the chunks are gone.
            if let Some(record) = get_record(txn, &files, content)? {
                put_record(txn, &files, content, &format::discarded(record, state))?;
            }
            Ok(())
        })
    }

    fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let key = format::repo_key(&manifest.repo, &manifest.commit);
        let value = manifest.encode();
        self.write(|txn| {
            let manifests = txn.open_table(Some(MANIFESTS))?;
            txn.put(&manifests, key, value, WriteFlags::empty())?;
            Ok(())
        })
    }

    fn manifest(&self, repo: &RepoId, commit: &str) -> Result<Option<Manifest>, StoreError> {
        let key = format::repo_key(repo, commit);
        self.read(|txn| {
            let manifests = txn.open_table(Some(MANIFESTS))?;
            let Some(bytes) = txn.get::<Cow<'_, [u8]>>(&manifests, key.as_bytes())? else {
                return Ok(None);
            };
            Ok(format::decode_manifest(&key, &bytes))
        })
    }

    fn put_ref(&self, repo: &RepoId, rev: &str, record: &RefRecord) -> Result<(), StoreError> {
        let key = format::repo_key(repo, rev);
        let value = format::encode_ref_record(record)?;
        self.write(|txn| {
            let refs = txn.open_table(Some(REFS))?;
            txn.put(&refs, key, value, WriteFlags::empty())?;
            Ok(())
        })
    }

    fn get_ref(&self, repo: &RepoId, rev: &str) -> Result<Option<RefRecord>, StoreError> {
        let key = format::repo_key(repo, rev);
        self.read(|txn| {
            let refs = txn.open_table(Some(REFS))?;
            let Some(bytes) = txn.get::<Cow<'_, [u8]>>(&refs, key.as_bytes())? else {
                return Ok(None);
            };
            match format::decode_ref_record(&bytes) {
                Ok(record) => Ok(Some(record)),
                Err(e) => {
                    tracing::warn!(key, error = %e, "unreadable ref record, treated as absent");
                    Ok(None)
                }
            }
        })
    }

    fn repos(&self) -> Result<Vec<RepoId>, StoreError> {
        self.read(|txn| {
            let mut repos = std::collections::BTreeSet::new();
            for name in [REFS, MANIFESTS] {
                let table = txn.open_table(Some(name))?;
                let mut cursor = txn.cursor(&table)?;
                // `()` values: a manifest is not even looked at, let alone copied.
                for item in cursor.iter_start::<Cow<'_, [u8]>, ()>() {
                    let (key, ()) = item?;
                    repos.extend(format::repo_of_key(&key));
                }
            }
            Ok(repos.into_iter().collect())
        })
    }

    fn commits(&self, repo: &RepoId) -> Result<Vec<String>, StoreError> {
        self.read(|txn| keys_of_repo(txn, MANIFESTS, repo))
    }

    fn refs(&self, repo: &RepoId) -> Result<Vec<(String, RefRecord)>, StoreError> {
        let revs = self.read(|txn| keys_of_repo(txn, REFS, repo))?;
        let mut out = Vec::with_capacity(revs.len());
        for rev in revs {
            if let Some(record) = self.get_ref(repo, &rev)? {
                out.push((rev, record));
            }
        }
        Ok(out)
    }

    fn files(&self) -> Result<Vec<(ContentId, FileRecord)>, StoreError> {
        self.read(|txn| {
            let files = txn.open_table(Some(FILES))?;
            let mut cursor = txn.cursor(&files)?;
            let mut out = Vec::new();
            for item in cursor.iter_start::<Cow<'_, [u8]>, Cow<'_, [u8]>>() {
                let (key, value) = item?;
                let Ok(id) = <[u8; 32]>::try_from(key.as_ref()) else {
                    tracing::warn!(len = key.len(), "file record with a malformed key, skipped");
                    continue;
                };
                match format::decode_file_record(&value) {
                    Ok(record) => out.push((ContentId(id), record)),
                    Err(e) => tracing::warn!(content = %hex::encode(id), error = %e, "unreadable file record, skipped"),
                }
            }
            Ok(out)
        })
    }

    fn touch(&self, content: &ContentId) -> Result<(), StoreError> {
        let now = format::now_secs();
        self.write(|txn| {
            let files = txn.open_table(Some(FILES))?;
            if let Some(record) = get_record(txn, &files, content)? {
                put_record(txn, &files, content, &FileRecord { last_access: now, ..record })?;
            }
            Ok(())
        })
    }

    fn evict_file(&self, content: &ContentId) -> Result<u64, StoreError> {
        let freed = self.write(|txn| {
            let chunks = txn.open_table(Some(CHUNKS))?;
            let mut freed = 0u64;
            for chunk in chunks_of(txn, &chunks, content)? {
                freed += chunk.len.unwrap_or(0) as u64;
                txn.del(&chunks, chunk.key, None)?;
            }
            let files = txn.open_table(Some(FILES))?;
            txn.del(&files, content.0, None)?;
            Ok(freed)
        })?;
        // libmdbx reuses the pages a transaction freed only once that transaction is durable
        // (a crash must be able to go back to the last steady commit, which still uses them),
        // and `NoMetaSync` leaves its meta page unsynced until the next commit. Without this
        // sync, a full disk's next chunk write cannot use the room eviction just made, fails
        // again, and evicts another file: a 24 MiB store evicted everything, one file per
        // retry (tests/eviction.rs). One fsync per evicted file is nothing next to a refetch.
        if freed > 0 {
            self.db.sync(true)?;
        }
        Ok(freed)
    }
}

/// The revisions under which `table` (manifests or refs) holds records of `repo`, sorted: its
/// keys are `org/name@rev`, so they are one cursor range starting at `org/name@`.
fn keys_of_repo<K: TransactionKind>(
    txn: &Transaction<'_, K, NoWriteMap>,
    table: &str,
    repo: &RepoId,
) -> Result<Vec<String>, StoreError> {
    let table = txn.open_table(Some(table))?;
    let prefix = format::repo_key(repo, "");
    let mut cursor = txn.cursor(&table)?;
    let mut out = Vec::new();
    for item in cursor.iter_from::<Cow<'_, [u8]>, ()>(prefix.as_bytes()) {
        let (key, ()) = item?;
        let Some(rev) = key.strip_prefix(prefix.as_bytes()) else { break };
        match std::str::from_utf8(rev) {
            Ok(rev) => out.push(rev.to_owned()),
            Err(_) => {
                tracing::warn!(key = ?String::from_utf8_lossy(&key), "record key is not UTF-8, skipped")
            }
        }
    }
    Ok(out)
}

/// Warm reads with `pread` from the environment's data file instead of through libmdbx's map.
///
/// Through the map, a read whose pages were dropped from the page cache takes a page fault
/// per few pages, each a synchronous read-around on the faulting thread, and leaves the pages
/// mapped into the daemon (they count in its RSS and `drop_caches` cannot drop them). A
/// `pread` of the same bytes goes through the file's own read-ahead instead. libmdbx still
/// finds the value (the b-tree pages and the first page of the value's overflow run are
/// touched through the map) and lends it as a slice of the map; the slice's address gives its
/// offset in the file, because this process's mappings of the file are linear: address `a` of
/// a mapping that starts at `start` with file offset `pgoff` shows byte `a - start + pgoff`.
/// A large value's overflow pages are contiguous, so one `pread` reads the data.
///
/// Correctness never rests on the offset being right: the header (length, crcs) is read from
/// the map, the crcs are checked on the bytes `pread` returned, and whatever does not check
/// out (an unknown address, a short read, a crc mismatch, say because the map moved) falls
/// back to the map, which alone decides that a chunk is corrupt. The read transaction is open
/// throughout, so no writer can reuse the value's pages while they are read. With
/// `NoWriteMap` writers `pwrite` the same file, so the map, `pread` and writes all see one
/// page cache.
mod direct {
    use std::cell::RefCell;
    use std::fs::File;
    use std::ops::Range;
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::path::Path;

    use super::format;
    use crate::store::CRC_BLOCK;

    /// libmdbx's name for the data file of an environment in a directory.
    const DATA_FILE: &str = "mdbx.dat";

    /// Largest buffer a thread keeps between reads: a kernel read is at most 1 MiB, plus the
    /// partial crc blocks at either end. Longer reads (none on the warm path) allocate anew.
    const KEPT_BUFFER: usize = (1 << 20) + 2 * CRC_BLOCK;

    thread_local! {
        /// Where [`visit`] reads to: reused, so a warm read allocates nothing.
        static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) struct DataFile {
        file: File,
        /// This process's mappings of the file when the store was opened.
        maps: Vec<Mapping>,
    }

    /// One address range of a mapping of the data file, and the file offset it starts at.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) struct Mapping {
        pub(super) start: usize,
        pub(super) end: usize,
        pub(super) offset: u64,
    }

    impl DataFile {
        /// Open the data file of the environment in `dir`, read-only, and find the map
        /// libmdbx made of it (the environment must be open). `None`, logged, when either
        /// fails: reads then go through the map only.
        pub(super) fn open(dir: &Path) -> Option<DataFile> {
            let opened = (|| {
                let file = File::open(dir.join(DATA_FILE))?;
                let meta = file.metadata()?;
                let maps = std::fs::read_to_string("/proc/self/maps")?;
                let dev = (libc::major(meta.dev()) as u64, libc::minor(meta.dev()) as u64);
                Ok::<_, std::io::Error>((file, mappings_of(&maps, dev, meta.ino())))
            })();
            match opened {
                Ok((file, maps)) if !maps.is_empty() => {
                    // The kernel's read-ahead window for this descriptor: warm reads of a
                    // chunk are sequential in the file, so let it grow to its maximum.
                    // Advice only; nothing depends on it being taken.
                    // SAFETY: a plain syscall on a descriptor that `file` owns and keeps open.
                    let _ = unsafe {
                        libc::posix_fadvise(
                            std::os::fd::AsRawFd::as_raw_fd(&file),
                            0,
                            0,
                            libc::POSIX_FADV_SEQUENTIAL,
                        )
                    };
                    Some(DataFile { file, maps })
                }
                Ok(_) => {
                    tracing::debug!(dir = %dir.display(), "no mapping of the store's data file found; reads go through the map");
                    None
                }
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "store data file not opened for direct reads");
                    None
                }
            }
        }

        /// Pretend the mappings start `by` bytes further into the file: how tests make every
        /// direct read land on the wrong bytes.
        #[cfg(test)]
        pub(super) fn misplace(&mut self, by: u64) {
            for m in &mut self.maps {
                m.offset += by;
            }
        }

        /// Offset in the file of `bytes`, a slice of one of the mappings; `None` otherwise.
        fn offset_of(&self, bytes: &[u8]) -> Option<u64> {
            offset_in(&self.maps, bytes.as_ptr() as usize, bytes.len())
        }
    }

    /// Where `len` bytes at address `at` lie in the file, if one of `maps` holds them all.
    pub(super) fn offset_in(maps: &[Mapping], at: usize, len: usize) -> Option<u64> {
        let end = at.checked_add(len)?;
        let m = maps.iter().find(|m| m.start <= at && end <= m.end)?;
        Some(m.offset + (at - m.start) as u64)
    }

    /// The mappings of the file `(dev, ino)` in a `/proc/PID/maps` listing, adjacent ones
    /// that continue each other (libmdbx's `madvise` calls split one map into several
    /// entries) merged, so that a value spanning a split is still found.
    pub(super) fn mappings_of(listing: &str, dev: (u64, u64), ino: u64) -> Vec<Mapping> {
        let mut maps: Vec<Mapping> = Vec::new();
        for line in listing.lines() {
            let Some(m) = parse_line(line, dev, ino) else { continue };
            match maps.last_mut() {
                Some(last)
                    if last.end == m.start
                        && last.offset + (last.end - last.start) as u64 == m.offset =>
                {
                    last.end = m.end
                }
                _ => maps.push(m),
            }
        }
        maps
    }

    /// `start-end perms offset major:minor inode path`, all numbers but the inode in hex.
    fn parse_line(line: &str, dev: (u64, u64), ino: u64) -> Option<Mapping> {
        let mut fields = line.split_ascii_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let _perms = fields.next()?;
        let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
        let (major, minor) = fields.next()?.split_once(':')?;
        let line_dev = (u64::from_str_radix(major, 16).ok()?, u64::from_str_radix(minor, 16).ok()?);
        let line_ino: u64 = fields.next()?.parse().ok()?;
        if line_dev != dev || line_ino != ino || ino == 0 {
            return None;
        }
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        (start < end).then_some(Mapping { start, end, offset })
    }

    /// What a direct read of `range` of a stored value reads: whole crc blocks.
    struct Covering {
        /// File offset of the first covering block.
        offset: u64,
        /// The covering blocks, in data coordinates.
        blocks: Range<usize>,
        first_block: usize,
    }

    /// `None` when the value is malformed, the range empty or outside it, or the value not in
    /// a known mapping: the map path then answers (and reports what is wrong).
    fn covering(file: &DataFile, value: &[u8], range: &Range<usize>) -> Option<Covering> {
        let len = format::data_len(value).ok()?;
        if range.is_empty() || range.end > len {
            return None;
        }
        let first_block = range.start / CRC_BLOCK;
        let blocks = first_block * CRC_BLOCK..range.end.div_ceil(CRC_BLOCK) * CRC_BLOCK;
        let blocks = blocks.start..blocks.end.min(len);
        let offset = file.offset_of(value)? + (format::header_len(len) + blocks.start) as u64;
        Some(Covering { offset, blocks, first_block })
    }

    /// Read the covering blocks into `dst` (exactly their length) and check their crcs
    /// against the header in `value`.
    fn fill(file: &DataFile, value: &[u8], cov: &Covering, dst: &mut [u8]) -> bool {
        if let Err(e) = file.file.read_exact_at(dst, cov.offset) {
            tracing::debug!(error = %e, "direct read of a chunk failed; reading through the map");
            return false;
        }
        // The crcs follow the fixed header, which is what a header of no data is.
        let crcs = format::header_len(0);
        let good = dst.chunks(CRC_BLOCK).zip(cov.first_block..).all(|(bytes, block)| {
            let at = crcs + 4 * block;
            value
                .get(at..at + 4)
                .and_then(|c| <[u8; 4]>::try_from(c).ok())
                .is_some_and(|c| crc32c::crc32c(bytes) == u32::from_le_bytes(c))
        });
        if !good {
            tracing::debug!("direct read of a chunk failed its crc; reading through the map");
        }
        good
    }

    /// Show bytes `range` of the chunk stored as `value` to `visit`, read from the file and
    /// checked. `false` (and `visit` not called) when they could not be: read through the map.
    pub(super) fn visit(
        file: &DataFile,
        value: &[u8],
        range: &Range<usize>,
        visit: &mut dyn FnMut(&[u8]),
    ) -> bool {
        let Some(cov) = covering(file, value, range) else { return false };
        let wanted = range.start - cov.blocks.start..range.end - cov.blocks.start;
        let mut serve = |buf: &mut Vec<u8>| {
            let n = cov.blocks.len();
            // Grown, never cleared: only the bytes read are looked at.
            if buf.len() < n {
                buf.resize(n, 0);
            }
            let ok = fill(file, value, &cov, &mut buf[..n]);
            if ok {
                visit(&buf[wanted.clone()]);
            }
            ok
        };
        BUFFER.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => {
                let ok = serve(&mut buf);
                if buf.len() > KEPT_BUFFER {
                    *buf = Vec::new();
                }
                ok
            }
            // A visitor that reads the store again: give it a buffer of its own.
            Err(_) => serve(&mut Vec::new()),
        })
    }

    /// Append bytes `range` of the chunk stored as `value` to `out`, read from the file and
    /// checked. `false`, with `out` as it was, when they could not be: read through the map.
    pub(super) fn append(
        file: &DataFile,
        value: &[u8],
        range: &Range<usize>,
        out: &mut Vec<u8>,
    ) -> bool {
        let Some(cov) = covering(file, value, range) else { return false };
        let old = out.len();
        out.resize(old + cov.blocks.len(), 0);
        if !fill(file, value, &cov, &mut out[old..]) {
            out.truncate(old);
            return false;
        }
        // Keep only the range: drop the ends of partial blocks (none for aligned reads).
        out.truncate(old + range.end - cov.blocks.start);
        out.drain(old..old + range.start - cov.blocks.start);
        true
    }
}

/// What both stores share: the chunk value format, the key layout of repo records, and how
/// a file record changes on each event. Keeping it in one place is what makes the in-memory
/// double a faithful one.
pub(super) mod format {
    use std::ops::Range;
    use std::time::{SystemTime, UNIX_EPOCH};

    use crate::manifest::{ContentId, Manifest, RepoId};
    use crate::store::{
        chunk_count, chunk_len, FileRecord, FileState, RefRecord, StoreError, CRC_BLOCK,
    };

    /// First byte of every chunk value. A value with another one is never served: it is
    /// dropped like a corrupt one and fetched again.
    const CHUNK_FORMAT: u8 = 1;
    /// Format byte, then the data length (u32 LE); the crcs (u32 LE each) follow.
    const FIXED_HEADER: usize = 1 + 4;
    /// First byte of stored file and ref records, for the same reason as the manifest's.
    const RECORD_FORMAT: u8 = 1;

    pub(in crate::store) fn chunk_key(content: &ContentId, index: u64) -> [u8; 40] {
        let mut key = [0; 40];
        key[..32].copy_from_slice(&content.0);
        key[32..].copy_from_slice(&index.to_be_bytes());
        key
    }

    pub(in crate::store) fn header_len(data_len: usize) -> usize {
        FIXED_HEADER + 4 * data_len.div_ceil(CRC_BLOCK)
    }

    /// The header of the value that stores `data`; `data` is at most [`super::MAX_CHUNK_SIZE`]
    /// long (checked by [`check_put`] through the store's chunk size).
    pub(in crate::store) fn encode_header(data: &[u8]) -> Vec<u8> {
        let mut header = Vec::with_capacity(header_len(data.len()));
        header.push(CHUNK_FORMAT);
        header.extend_from_slice(&(data.len() as u32).to_le_bytes());
        for block in data.chunks(CRC_BLOCK) {
            header.extend_from_slice(&crc32c::crc32c(block).to_le_bytes());
        }
        header
    }

    /// The whole value that stores `data`.
    pub(in crate::store) fn encode_chunk(data: &[u8]) -> Vec<u8> {
        let mut value = encode_header(data);
        value.extend_from_slice(data);
        value
    }

    #[derive(Debug, PartialEq, Eq)]
    pub(in crate::store) enum ReadError {
        /// The requested range does not lie inside the chunk's `len` bytes: a caller's bug.
        OutOfChunk { len: usize },
        /// The value is malformed or a block fails its crc: the chunk must be dropped.
        Corrupt(String),
    }

    struct Parsed<'a> {
        crcs: &'a [u8],
        data: &'a [u8],
    }

    fn parse(value: &[u8]) -> Result<Parsed<'_>, String> {
        let (&format, rest) = value.split_first().ok_or("empty value")?;
        if format != CHUNK_FORMAT {
            return Err(format!("unknown chunk format {format}"));
        }
        let (len, rest) = rest.split_first_chunk::<4>().ok_or("truncated header")?;
        let len = u32::from_le_bytes(*len) as usize;
        let crc_len = 4 * len.div_ceil(CRC_BLOCK);
        if rest.len() != crc_len + len {
            return Err(format!(
                "header announces {len} bytes of data, the value holds {} after the length",
                rest.len()
            ));
        }
        let (crcs, data) = rest.split_at(crc_len);
        Ok(Parsed { crcs, data })
    }

    /// Data length of a well-formed value.
    pub(in crate::store) fn data_len(value: &[u8]) -> Result<usize, String> {
        parse(value).map(|p| p.data.len())
    }

    /// Check the crcs of the blocks `range` touches, and nothing else.
    pub(in crate::store) fn check_range(
        value: &[u8],
        range: Range<usize>,
    ) -> Result<(), ReadError> {
        let chunk = parse(value).map_err(ReadError::Corrupt)?;
        checked(&chunk, range).map(|_| ())
    }

    fn checked<'a>(chunk: &Parsed<'a>, range: Range<usize>) -> Result<&'a [u8], ReadError> {
        let len = chunk.data.len();
        if range.start > range.end || range.end > len {
            return Err(ReadError::OutOfChunk { len });
        }
        if range.is_empty() {
            return Ok(&[]);
        }
        for block in range.start / CRC_BLOCK..=(range.end - 1) / CRC_BLOCK {
            let bytes = &chunk.data[block * CRC_BLOCK..((block + 1) * CRC_BLOCK).min(len)];
            let mut stored = [0; 4];
            stored.copy_from_slice(&chunk.crcs[4 * block..4 * block + 4]);
            if crc32c::crc32c(bytes) != u32::from_le_bytes(stored) {
                return Err(ReadError::Corrupt(format!("block {block} fails its crc32c")));
            }
        }
        Ok(&chunk.data[range])
    }

    /// Append bytes `range` of the chunk stored as `value` to `out`, after checking the crcs
    /// of the blocks the range touches. `out` is untouched on error.
    pub(in crate::store) fn read_range(
        value: &[u8],
        range: Range<usize>,
        out: &mut Vec<u8>,
    ) -> Result<(), ReadError> {
        visit_range(value, range, &mut |bytes| out.extend_from_slice(bytes))
    }

    /// Check the blocks `range` touches, then show those bytes to `visit`.
    pub(in crate::store) fn visit_range(
        value: &[u8],
        range: Range<usize>,
        visit: &mut dyn FnMut(&[u8]),
    ) -> Result<(), ReadError> {
        let chunk = parse(value).map_err(ReadError::Corrupt)?;
        visit(checked(&chunk, range)?);
        Ok(())
    }

    pub(in crate::store) fn out_of_chunk(range: &Range<usize>, len: usize) -> StoreError {
        StoreError::Db(format!("read of {range:?} outside a chunk of {len} bytes"))
    }

    /// Reject a chunk that cannot belong to a file of `file_size` bytes. A file has chunks
    /// `0..chunk_count`, and an empty file one empty chunk 0, whose put records the file as
    /// complete.
    pub(in crate::store) fn check_put(
        content: &ContentId,
        file_size: u64,
        chunk_size: u64,
        index: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        if index >= chunk_count(file_size, chunk_size).max(1) {
            return Err(StoreError::Db(format!(
                "chunk {index} of {content} is past the end of a file of {file_size} bytes"
            )));
        }
        let expected = chunk_len(file_size, chunk_size, index) as usize;
        if data.len() != expected {
            return Err(StoreError::BadChunkLength {
                content: *content,
                index,
                got: data.len(),
                expected,
            });
        }
        Ok(())
    }

    /// Reject a chunk put for a size other than the one the content is recorded with: the
    /// same content id cannot have two sizes, so one of the callers is confused.
    pub(in crate::store) fn check_size(
        content: &ContentId,
        existing: Option<&FileRecord>,
        file_size: u64,
    ) -> Result<(), StoreError> {
        match existing {
            Some(record) if record.size != file_size => Err(StoreError::Db(format!(
                "content {content} is recorded with {} bytes, a chunk was put for {file_size}",
                record.size
            ))),
            _ => Ok(()),
        }
    }

    fn state_for(cached: u64, size: u64) -> FileState {
        if cached >= size {
            FileState::Complete
        } else {
            FileState::Partial
        }
    }

    /// The record after chunk of `len` bytes was put. A chunk that was already stored changes
    /// nothing but the access time (a `Verified` file stays verified).
    pub(in crate::store) fn after_put(
        record: FileRecord,
        new_chunk: bool,
        len: u64,
        now: u64,
    ) -> FileRecord {
        if !new_chunk {
            return FileRecord { last_access: now, ..record };
        }
        let cached = record.cached_bytes.saturating_add(len).min(record.size);
        FileRecord {
            size: record.size,
            cached_bytes: cached,
            // `Failed` sticks: bytes of a file that did not match its hash once are not
            // trusted again because more of them arrived.
            state: if record.state == FileState::Failed {
                FileState::Failed
            } else {
                state_for(cached, record.size)
            },
            last_access: now,
        }
    }

    /// A record made from the chunks actually stored (there was none, or it was unreadable).
    pub(in crate::store) fn rebuilt(size: u64, cached: u64, now: u64) -> FileRecord {
        FileRecord { size, cached_bytes: cached, state: state_for(cached, size), last_access: now }
    }

    /// The record after a corrupt chunk of `len` bytes was dropped: whatever it was, the file
    /// is no longer whole.
    pub(in crate::store) fn after_drop(record: FileRecord, len: u64) -> FileRecord {
        let state = match record.state {
            FileState::Complete | FileState::Verified => FileState::Partial,
            other => other,
        };
        FileRecord { cached_bytes: record.cached_bytes.saturating_sub(len), state, ..record }
    }

    /// The record after `set_file_state`: a file is `Verified` only while every byte is
    /// there (a chunk dropped between hashing and marking leaves it as it was).
    pub(in crate::store) fn with_state(record: FileRecord, state: FileState) -> FileRecord {
        if state == FileState::Verified && record.cached_bytes != record.size {
            return record;
        }
        FileRecord { state, ..record }
    }

    pub(in crate::store) fn discarded(record: FileRecord, state: FileState) -> FileRecord {
        FileRecord { cached_bytes: 0, state, ..record }
    }

    /// Key of a manifest (`rev` a commit) or of a ref: `org/name@rev`. Org and repo names
    /// never contain `@`, so the first `@` always ends the repo.
    pub(in crate::store) fn repo_key(repo: &RepoId, rev: &str) -> String {
        format!("{}/{}@{rev}", repo.org, repo.name)
    }

    /// The repo a manifest or ref key belongs to; `None` for a key of another shape.
    pub(in crate::store) fn repo_of_key(key: &[u8]) -> Option<RepoId> {
        let key = std::str::from_utf8(key).ok()?;
        let (repo, _rev) = key.split_once('@')?;
        let (org, name) = repo.split_once('/')?;
        Some(RepoId::new(org, name))
    }

    /// A stored manifest, or `None` (logged) when it cannot be decoded: it is then fetched
    /// again, never served as garbage.
    pub(in crate::store) fn decode_manifest(key: &str, bytes: &[u8]) -> Option<Manifest> {
        match Manifest::decode(bytes) {
            Ok(manifest) => Some(manifest),
            Err(e) => {
                tracing::warn!(key, error = %e, "unreadable manifest, treated as absent");
                None
            }
        }
    }

    pub(in crate::store) fn now_secs() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }

    fn encode_record<T>(value: &T) -> Result<Vec<u8>, StoreError>
    where
        T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
    {
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(value)
            .map_err(|e| StoreError::Db(format!("serializing a record: {e}")))?;
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(RECORD_FORMAT);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The archive after the format byte, copied to an aligned buffer as rkyv requires (store
    /// values have no alignment). Records are a few dozen bytes.
    fn record_body(bytes: &[u8]) -> Result<rkyv::util::AlignedVec<16>, String> {
        let (&format, body) = bytes.split_first().ok_or("empty record")?;
        if format != RECORD_FORMAT {
            return Err(format!("record format {format}, this build reads {RECORD_FORMAT}"));
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
        aligned.extend_from_slice(body);
        Ok(aligned)
    }

    pub(in crate::store) fn encode_file_record(record: &FileRecord) -> Result<Vec<u8>, StoreError> {
        encode_record(record)
    }

    pub(in crate::store) fn decode_file_record(bytes: &[u8]) -> Result<FileRecord, String> {
        rkyv::from_bytes::<FileRecord, rkyv::rancor::Error>(&record_body(bytes)?)
            .map_err(|e| e.to_string())
    }

    pub(in crate::store) fn encode_ref_record(record: &RefRecord) -> Result<Vec<u8>, StoreError> {
        encode_record(record)
    }

    pub(in crate::store) fn decode_ref_record(bytes: &[u8]) -> Result<RefRecord, String> {
        rkyv::from_bytes::<RefRecord, rkyv::rancor::Error>(&record_body(bytes)?)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::memory::conformance::{self, content, file_bytes, put_file, SMALL_CHUNK};
    use crate::store::{chunk_count, CRC_BLOCK, DEFAULT_CHUNK_SIZE};

    fn fresh(chunk_size: u64) -> (tempfile::TempDir, MdbxStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = MdbxStore::open(dir.path(), chunk_size).unwrap();
        (dir, store)
    }

    conformance::conformance_tests!(fresh);

    /// A damaged leaf deep in a table that opening the environment never reads is found by
    /// the check at open, and the store is refused with what to do; an intact store passes.
    #[test]
    fn a_damaged_page_anywhere_is_found_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let id = ContentId([7; 32]);
        {
            let store = MdbxStore::open(dir.path(), 1024).unwrap();
            for index in 0..400 {
                store.put_chunk(&id, 400 * 1024, index, &[index as u8; 1024]).unwrap();
            }
        }
        assert!(MdbxStore::open(dir.path(), 1024).is_ok(), "an intact store opens");
        let db = dir.path().join("mdbx.dat");
        let mut image = std::fs::read(&db).unwrap();
        let page = 4096;
        let leaf = (3..image.len() / page)
            .rev()
            .find(|&n| {
                let p = &image[n * page..(n + 1) * page];
                let pgno = u32::from_le_bytes([p[16], p[17], p[18], p[19]]) as usize;
                pgno == n && p[10] & 0x07 == 0x02 && p.windows(32).any(|w| w == [7u8; 32])
            })
            .expect("a leaf page of the chunk table");
        image[leaf * page + 16] ^= 0x55;
        std::fs::write(&db, &image).unwrap();
        let err = MdbxStore::open(dir.path(), 1024).unwrap_err().to_string();
        assert!(err.contains("its index is damaged"), "{err}");
        assert!(err.contains(&format!("rm -r {}", dir.path().display())), "{err}");
    }

    fn read_all(store: &MdbxStore, id: &ContentId, size: u64) -> Option<Vec<u8>> {
        let cs = store.chunk_size();
        let mut out = Vec::new();
        for index in 0..chunk_count(size, cs) {
            let len = crate::store::chunk_len(size, cs, index) as usize;
            if !store.read_chunk(id, index, 0..len, &mut out).unwrap() {
                return None;
            }
        }
        Some(out)
    }

    #[test]
    fn data_survives_close_and_reopen_and_the_stored_chunk_size_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("nested/store");
        let id = content(3);
        let bytes = file_bytes(3, 3 * SMALL_CHUNK + 11);
        let manifest = conformance::sample_manifest("org", "repo", 'f');
        let main = RefRecord { commit: manifest.commit.clone(), resolved_at: 42 };
        let record = {
            let store = MdbxStore::open(&store_dir, SMALL_CHUNK).unwrap();
            assert_eq!(store.path(), store_dir);
            let record = put_file(&store, &id, &bytes);
            store.set_file_state(&id, FileState::Verified).unwrap();
            store.put_manifest(&manifest).unwrap();
            store.put_ref(&manifest.repo, "main", &main).unwrap();
            FileRecord { state: FileState::Verified, ..record }
        };
        let store = MdbxStore::open(&store_dir, DEFAULT_CHUNK_SIZE).unwrap();
        assert_eq!(store.chunk_size(), SMALL_CHUNK);
        assert_eq!(store.file_record(&id).unwrap(), Some(record));
        assert!(read_all(&store, &id, bytes.len() as u64).unwrap() == bytes);
        assert_eq!(
            store.manifest(&manifest.repo, &manifest.commit).unwrap(),
            Some(manifest.clone())
        );
        assert_eq!(store.get_ref(&manifest.repo, "main").unwrap(), Some(main));
        assert_eq!(store.repos().unwrap(), vec![manifest.repo]);
    }

    /// An unreadable record reads as absent, and the next put rebuilds it from the chunks
    /// that are really stored.
    #[test]
    fn an_unreadable_file_record_is_rebuilt_from_the_chunks() {
        let (_dir, store) = fresh(SMALL_CHUNK);
        let id = content(0x77);
        let size = 3 * SMALL_CHUNK + 1;
        let bytes = file_bytes(0x77, size);
        for index in [0, 2] {
            store
                .put_chunk(&id, size, index, conformance::chunk_of(&bytes, SMALL_CHUNK, index))
                .unwrap();
        }
        for garbage in [&[][..], &[1, 2, 3], &[9, 0, 0, 0, 0, 0, 0, 0, 0]] {
            store.put_raw_file_record(&id, garbage);
            assert_eq!(store.file_record(&id).unwrap(), None);
        }
        let record =
            store.put_chunk(&id, size, 3, conformance::chunk_of(&bytes, SMALL_CHUNK, 3)).unwrap();
        assert_eq!(
            (record.size, record.cached_bytes, record.state),
            (size, 2 * SMALL_CHUNK + 1, FileState::Partial)
        );
        assert_eq!(store.file_record(&id).unwrap(), Some(record));
        let record =
            store.put_chunk(&id, size, 1, conformance::chunk_of(&bytes, SMALL_CHUNK, 1)).unwrap();
        assert_eq!((record.cached_bytes, record.state), (size, FileState::Complete));
    }

    #[test]
    fn chunk_sizes_out_of_range_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for cs in [0, MAX_CHUNK_SIZE + 1] {
            match MdbxStore::open(dir.path(), cs) {
                Err(StoreError::Open { path, reason }) => {
                    assert_eq!(path, dir.path().display().to_string());
                    assert!(reason.contains(&cs.to_string()), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn an_unusable_directory_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"not a directory").unwrap();
        assert!(matches!(
            MdbxStore::open(&file.join("store"), SMALL_CHUNK),
            Err(StoreError::Open { .. })
        ));
    }

    #[test]
    fn a_full_map_is_reported_as_full_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // A 4 MiB map: room for a few dozen 64 KiB chunks, then no more.
        let store =
            MdbxStore::open_with_geometry(dir.path(), SMALL_CHUNK, 4 << 20, 1 << 20).unwrap();
        let size = 200 * SMALL_CHUNK;
        let bytes = file_bytes(5, SMALL_CHUNK);
        let id = content(5);
        let mut stored = 0;
        let full_at = loop {
            match store.put_chunk(&id, size, stored, &bytes) {
                Ok(record) => {
                    stored += 1;
                    assert_eq!(record.cached_bytes, stored * SMALL_CHUNK);
                    assert!(stored < 200, "a 4 MiB map took 200 chunks of 64 KiB");
                }
                Err(StoreError::Full) => break stored,
                Err(e) => panic!("chunk {stored}: {e}"),
            }
        };
        assert!(full_at > 10, "full after {full_at} chunks");
        assert!(!store.has_chunk(&id, full_at).unwrap());
        assert_eq!(store.file_record(&id).unwrap().unwrap().cached_bytes, full_at * SMALL_CHUNK);
        // Room made by discarding is used again.
        store.discard_file(&id, FileState::Failed).unwrap();
        let record = store.put_chunk(&id, size, full_at, &bytes).unwrap();
        assert_eq!(record.cached_bytes, SMALL_CHUNK);
    }

    /// Set for the re-executed test binary that plays the second process.
    const CHILD_ENV: &str = "MODELFS_TEST_STORE_CHILD";
    const SHARED_CHUNKS: u64 = 24;

    /// The parent writes content A, starts a second process on the same store that checks A
    /// and writes content B chunk by chunk while the parent reads it and writes content C;
    /// both processes end up seeing everything.
    #[test]
    fn several_processes_share_one_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = MdbxStore::open(dir.path(), SMALL_CHUNK).unwrap();
        let size = SHARED_CHUNKS * SMALL_CHUNK - 100;
        let (a, b, c) = (content(0xA), content(0xB), content(0xC));
        put_file(&store, &a, &file_bytes(0xA, size));

        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::mdbx::tests::second_process", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();

        let b_bytes = file_bytes(0xB, size);
        let c_bytes = file_bytes(0xC, size);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = vec![false; SHARED_CHUNKS as usize];
        let mut c_next = 0;
        let mut seen_partial = false;
        while seen.iter().any(|s| !s) {
            assert!(Instant::now() < deadline, "the second process's chunks never all appeared");
            for (index, seen) in seen.iter_mut().enumerate() {
                let chunk = conformance::chunk_of(&b_bytes, SMALL_CHUNK, index as u64);
                let mut out = Vec::new();
                if store.read_chunk(&b, index as u64, 0..chunk.len(), &mut out).unwrap() {
                    assert!(out == chunk, "chunk {index} of B differs");
                    *seen = true;
                }
            }
            if let Some(r) = store.file_record(&b).unwrap() {
                seen_partial |= r.state == FileState::Partial;
            }
            if c_next < SHARED_CHUNKS {
                store
                    .put_chunk(
                        &c,
                        size,
                        c_next,
                        conformance::chunk_of(&c_bytes, SMALL_CHUNK, c_next),
                    )
                    .unwrap();
                c_next += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        while c_next < SHARED_CHUNKS {
            store
                .put_chunk(&c, size, c_next, conformance::chunk_of(&c_bytes, SMALL_CHUNK, c_next))
                .unwrap();
            c_next += 1;
        }
        let output = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "second process failed:\n{log}");
        // The filter really ran the child test (and only it), with the store to work on.
        assert!(log.contains("1 passed"), "{log}");

        let b_record = store.file_record(&b).unwrap().unwrap();
        assert_eq!((b_record.cached_bytes, b_record.state), (size, FileState::Complete));
        assert!(read_all(&store, &b, size).unwrap() == b_bytes);
        assert!(seen_partial, "never saw B while the other process was writing it");
        let c_record = store.file_record(&c).unwrap().unwrap();
        assert_eq!((c_record.cached_bytes, c_record.state), (size, FileState::Complete));
    }

    /// The second process of [`several_processes_share_one_store`]; a no-op when run on its
    /// own.
    #[test]
    fn second_process() {
        let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
        let store = MdbxStore::open(Path::new(&dir), DEFAULT_CHUNK_SIZE).unwrap();
        assert_eq!(store.chunk_size(), SMALL_CHUNK);
        let size = SHARED_CHUNKS * SMALL_CHUNK - 100;
        let a = content(0xA);
        assert_eq!(store.file_record(&a).unwrap().unwrap().state, FileState::Complete);
        assert!(read_all(&store, &a, size).unwrap() == file_bytes(0xA, size));
        let b = content(0xB);
        let bytes = file_bytes(0xB, size);
        for index in 0..SHARED_CHUNKS {
            store
                .put_chunk(&b, size, index, conformance::chunk_of(&bytes, SMALL_CHUNK, index))
                .unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn visit_shows_what_read_copies_and_nothing_of_a_corrupt_chunk() {
        let (_dir, store) = fresh(SMALL_CHUNK);
        let id = content(3);
        let bytes = file_bytes(3, 2 * SMALL_CHUNK + 5);
        put_file(&store, &id, &bytes);
        for (index, range) in
            [(0, 0..10), (0, 100..CRC_BLOCK + 5), (1, 0..SMALL_CHUNK as usize), (2, 0..5)]
        {
            let mut copied = Vec::new();
            assert!(store.read_chunk(&id, index, range.clone(), &mut copied).unwrap());
            let mut seen = Vec::new();
            let mut calls = 0;
            let hit = store
                .visit_chunk(&id, index, range.clone(), &mut |b| {
                    calls += 1;
                    seen.extend_from_slice(b)
                })
                .unwrap();
            assert!(hit);
            assert_eq!((calls, &seen), (1, &copied));
            let start = index as usize * SMALL_CHUNK as usize + range.start;
            assert!(seen == bytes[start..start + range.len()]);
        }
        // Flip a data byte of chunk 1: a visit of that block sees nothing and reports a miss.
        store.rewrite_raw(&id, 1, &mut |v| {
            let last = v.len() - 1;
            v[last] ^= 0xff
        });
        let mut called = false;
        assert!(!store
            .visit_chunk(&id, 1, 0..SMALL_CHUNK as usize, &mut |_| called = true)
            .unwrap());
        assert!(!called);
    }

    /// Reads go to the data file (the store found its map), serve exactly the stored bytes
    /// for ranges that start and end anywhere in a crc block, and leave `out` as it was
    /// before the call's bytes.
    #[test]
    fn direct_reads_serve_the_stored_bytes() {
        // Chunks of three crc blocks and a bit, so that ranges can start and end in each.
        const CHUNK: u64 = 3 * CRC_BLOCK as u64 + 5;
        let (_dir, store) = fresh(CHUNK);
        assert!(store.data_file.is_some(), "the data file or its mapping was not found");
        let id = content(7);
        let size = 3 * CHUNK - 17;
        let bytes = file_bytes(7, size);
        put_file(&store, &id, &bytes);
        let block = CRC_BLOCK;
        let chunk = CHUNK as usize;
        for (index, range) in [
            (0, 0..chunk),
            (1, 1..2),
            (1, block - 1..block + 1),
            (1, block..2 * block),
            (1, 2 * block + 1..chunk),
            (2, 3..chunk - 17),
            (2, chunk - 18..chunk - 17),
        ] {
            let start = index as usize * chunk;
            let expected = &bytes[start + range.start..start + range.end];
            let mut out = vec![0xAA; 3];
            assert!(store.read_chunk(&id, index, range.clone(), &mut out).unwrap());
            assert_eq!(out.len(), 3 + range.len());
            assert!(out[..3] == [0xAA; 3] && out[3..] == *expected, "read {index} {range:?}");
            let mut seen: Vec<u8> = Vec::new();
            assert!(store
                .visit_chunk(&id, index, range.clone(), &mut |b| seen.extend_from_slice(b))
                .unwrap());
            assert!(seen == expected, "visit {index} {range:?}");
        }
    }

    /// A direct read that lands on the wrong bytes (the map moved, say) fails its crcs and is
    /// answered through the map: the right bytes, and the good chunk is not dropped.
    #[test]
    fn misplaced_direct_reads_fall_back_to_the_map() {
        let (_dir, mut store) = fresh(SMALL_CHUNK);
        let id = content(8);
        let bytes = file_bytes(8, 2 * SMALL_CHUNK);
        put_file(&store, &id, &bytes);
        store.data_file.as_mut().expect("direct reads available").misplace(4096);
        let chunk = SMALL_CHUNK as usize;
        let mut out = Vec::new();
        assert!(store.read_chunk(&id, 1, 10..chunk, &mut out).unwrap());
        assert!(out == bytes[chunk + 10..]);
        let mut seen: Vec<u8> = Vec::new();
        assert!(store
            .visit_chunk(&id, 0, 0..CRC_BLOCK + 1, &mut |b| seen.extend_from_slice(b))
            .unwrap());
        assert!(seen == bytes[..CRC_BLOCK + 1]);
        assert!(store.has_chunk(&id, 0).unwrap() && store.has_chunk(&id, 1).unwrap());
        assert_eq!(store.file_record(&id).unwrap().unwrap().cached_bytes, 2 * SMALL_CHUNK);
    }

    #[test]
    fn mappings_of_the_data_file_are_found_and_merged() {
        let listing = "\
7f0000000000-7f0000001000 r--s 00000000 fd:01 1234 /s/mdbx.dat
7f0000001000-7f0000003000 r--s 00001000 fd:01 1234 /s/mdbx.dat
7f0000003000-7f0000004000 r--s 00005000 fd:01 1234 /s/mdbx.dat
7f0000004000-7f0000005000 r--s 00006000 fd:02 1234 /other/mdbx.dat
7f0000005000-7f0000006000 r--s 00000000 fd:01 1235 /s/mdbx.lck
7f0000006000-7f0000007000 rw-p 00000000 00:00 0
garbage line
";
        let maps = direct::mappings_of(listing, (0xfd, 1), 1234);
        let m = |start, end, offset| direct::Mapping { start, end, offset };
        assert_eq!(
            maps,
            [m(0x7f0000000000, 0x7f0000003000, 0), m(0x7f0000003000, 0x7f0000004000, 0x5000)]
        );
        // A value across the merged split is found; one across the discontinuity is not.
        assert_eq!(direct::offset_in(&maps, 0x7f0000000ff0, 0x20), Some(0xff0));
        assert_eq!(direct::offset_in(&maps, 0x7f0000003010, 0x10), Some(0x5010));
        assert_eq!(direct::offset_in(&maps, 0x7f0000002ff0, 0x20), None);
        assert_eq!(direct::offset_in(&maps, 0x7f0000004000, 1), None);
        assert_eq!(direct::offset_in(&maps, usize::MAX, 2), None);
    }

    #[test]
    fn chunk_values_have_the_documented_layout() {
        let data = file_bytes(1, CRC_BLOCK as u64 + 3);
        let value = format::encode_chunk(&data);
        assert_eq!(value.len(), 1 + 4 + 2 * 4 + data.len());
        assert_eq!(value[0], 1);
        assert_eq!(u32::from_le_bytes(value[1..5].try_into().unwrap()) as usize, data.len());
        let crc0 = u32::from_le_bytes(value[5..9].try_into().unwrap());
        let crc1 = u32::from_le_bytes(value[9..13].try_into().unwrap());
        assert_eq!(crc0, crc32c::crc32c(&data[..CRC_BLOCK]));
        assert_eq!(crc1, crc32c::crc32c(&data[CRC_BLOCK..]));
        assert_eq!(&value[13..], &data[..]);
        assert_eq!(format::data_len(&value), Ok(data.len()));
        // Keys: one file's chunks are adjacent and in index order.
        let k = |c: u8, i: u64| format::chunk_key(&content(c), i);
        assert!(k(1, 255) < k(1, 256) && k(1, u64::MAX) < k(2, 0));
    }

    proptest::proptest! {
        /// Direct reads of any range of any chunk serve exactly the stored bytes.
        #[test]
        fn direct_reads_of_any_range(index in 0u64..3, a in 0usize..SMALL_CHUNK as usize, b in 0usize..SMALL_CHUNK as usize) {
            static STORE: std::sync::OnceLock<(tempfile::TempDir, MdbxStore)> = std::sync::OnceLock::new();
            const SIZE: u64 = 3 * SMALL_CHUNK - 1000;
            let (_, store) = STORE.get_or_init(|| {
                let (dir, store) = fresh(SMALL_CHUNK);
                put_file(&store, &content(9), &file_bytes(9, SIZE));
                (dir, store)
            });
            let bytes = file_bytes(9, SIZE);
            let len = crate::store::chunk_len(SIZE, SMALL_CHUNK, index) as usize;
            let range = a.min(b).min(len)..a.max(b).min(len);
            let start = index as usize * SMALL_CHUNK as usize;
            let mut out = Vec::new();
            proptest::prop_assert!(store.read_chunk(&content(9), index, range.clone(), &mut out).unwrap());
            proptest::prop_assert!(out == bytes[start + range.start..start + range.end]);
        }

        /// An address is placed in the file by the mapping that holds all its bytes, or not
        /// at all.
        #[test]
        fn offsets_come_from_the_mapping_that_holds_the_bytes(
            starts in proptest::collection::vec((0usize..1 << 20, 1usize..1 << 16, 0u64..1 << 30), 0..4),
            at in 0usize..1 << 21,
            len in 0usize..1 << 16,
        ) {
            let maps: Vec<direct::Mapping> = starts
                .iter()
                .map(|&(start, size, offset)| direct::Mapping { start, end: start + size, offset })
                .collect();
            match direct::offset_in(&maps, at, len) {
                Some(offset) => {
                    let m = maps.iter().find(|m| m.start <= at && at + len <= m.end);
                    let m = m.expect("an offset without a mapping");
                    proptest::prop_assert_eq!(offset, m.offset + (at - m.start) as u64);
                }
                None => proptest::prop_assert!(maps.iter().all(|m| at < m.start || at + len > m.end)),
            }
        }

        /// Any value, however mangled, is either read correctly or reported: never a panic,
        /// never bytes that are not the stored data.
        #[test]
        fn mangled_values_never_serve_wrong_bytes(
            len in 0usize..3 * CRC_BLOCK,
            cut in proptest::option::of(0usize..4 * CRC_BLOCK),
            flip in proptest::option::of((0usize..4 * CRC_BLOCK, 1u8..)),
            a in 0usize..4 * CRC_BLOCK,
            b in 0usize..4 * CRC_BLOCK,
        ) {
            let data = file_bytes(len as u64, len as u64);
            let mut value = format::encode_chunk(&data);
            let mut damaged = false;
            if let Some(cut) = cut.filter(|&c| c < value.len()) {
                value.truncate(cut);
                damaged = true;
            }
            if let Some((at, x)) = flip.filter(|&(at, _)| at < value.len()) {
                value[at] ^= x;
                damaged = true;
            }
            let range = a.min(b)..a.max(b);
            let mut out = Vec::new();
            match format::read_range(&value, range.clone(), &mut out) {
                Ok(()) => proptest::prop_assert!(out == data[range]),
                Err(format::ReadError::OutOfChunk { len: l }) => {
                    proptest::prop_assert!(range.end > l);
                    proptest::prop_assert!(out.is_empty());
                }
                Err(format::ReadError::Corrupt(_)) => {
                    proptest::prop_assert!(damaged);
                    proptest::prop_assert!(out.is_empty());
                }
            }
        }
    }
}
