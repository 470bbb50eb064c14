//! The real chunk store: a libmdbx index and one data file per content, in a directory
//! shared by every modelfs process on the machine (the daemon, `modelfs pull`, `modelfs
//! status`). Store format 2; format 1 (chunk bytes inside libmdbx) is migrated on first open
//! (`migrate.rs`).
//!
//! ```text
//! <store>/index/mdbx.dat, mdbx.lck    the index: what is stored, checked, and where
//! <store>/data/ab/abcd…(64 hex)       the bytes of one content, chunk i at i × chunk_size
//! <store>/leases/                     who has what open or in flight (evict.rs)
//! ```
//!
//! libmdbx is the only authority. Six tables:
//!
//! | table       | key                                   | value                                |
//! |-------------|---------------------------------------|--------------------------------------|
//! | `chunks`    | content id (32) ++ index (u64 BE)     | chunk header: format, length, crc32c per 64 KiB block |
//! | `files`     | content id (32)                       | format byte ++ rkyv [`FileRecord`]   |
//! | `manifests` | `org/name@commit`                     | [`Manifest::encode`]                 |
//! | `refs`      | `org/name@rev`                        | format byte ++ rkyv [`RefRecord`]    |
//! | `meta`      | `chunk_size`, `format`                | u64 BE each, set when the store is made |
//! | `local`     | `org/name`                            | format byte ++ rkyv [`LocalRecord`] (imported repos) |
//!
//! A data file's bytes count only where `chunks` has an entry, and are checked against that
//! entry's crcs on every read through the daemon. A chunk write is `pwrite` of the bytes,
//! then one write transaction for its entry and its file's record; so `cached_bytes` always
//! equals the bytes of the chunks recorded, whatever process wrote them and wherever a crash
//! fell, and a recorded chunk whose bytes a power loss took fails its crc and is fetched
//! again. A file is marked verified only after its data file is synced (see
//! [`ChunkStore::set_file_state`]). Eviction deletes the entries, then the data file.
//!
//! The chunk index is big-endian so that one file's chunks are adjacent and in order: a
//! whole file is one cursor range, which is how [`ChunkStore::discard_file`] finds them.
//! `format.rs` (chunk headers, record transitions, key layout) is shared with the in-memory
//! double, so both stores behave identically down to what a corrupt chunk does.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libmdbx::{
    Database, DatabaseOptions, Decodable, Mode, NoWriteMap, ReadWriteOptions, SyncMode, TableFlags,
    Transaction, TransactionKind, WriteFlags, RO, RW,
};

use super::{ChunkStore, FileRecord, FileState, LocalRecord, RefRecord, StoreError};
use crate::manifest::{ContentId, Manifest, RepoId};

use super::data::DataFiles;
use super::format::{self, ReadError};

pub(super) const CHUNKS: &str = "chunks";
pub(super) const FILES: &str = "files";
pub(super) const MANIFESTS: &str = "manifests";
pub(super) const REFS: &str = "refs";
pub(super) const META: &str = "meta";
/// Repos that do not come from the Hub. Added after format 2 was first released: a store
/// made before has no such table until it is opened read-write (which creates it), and reads
/// of it in a read-only store find it empty.
pub(super) const LOCAL: &str = "local";
pub(super) const TABLES: [&str; 6] = [CHUNKS, FILES, MANIFESTS, REFS, META, LOCAL];
/// The tables a format-1 store has (what a migration copies).
pub(super) const V1_TABLES: [&str; 5] = [CHUNKS, FILES, MANIFESTS, REFS, META];
pub(super) const META_CHUNK_SIZE: &[u8] = b"chunk_size";
pub(super) const META_FORMAT: &[u8] = b"format";

/// The store format this build writes and reads. 1: chunk bytes inside libmdbx values (the
/// index at the store's top level); 2: the index in `index/`, chunk bytes in data files.
pub const STORE_FORMAT: u64 = 2;

/// The directory of the libmdbx index in a store.
pub const INDEX_DIR: &str = "index";

/// libmdbx's data file, in [`INDEX_DIR`] (and, for format 1, at the store's top level).
pub const MDBX_DATA_FILE: &str = "mdbx.dat";

/// Named tables the environment may hold: the five above, with room for a later format to
/// add some without an environment that refuses to open them (a limit set at open time).
const MAX_TABLES: u64 = 16;

/// Reader slots, shared by every process that opens the store. With `MDBX_NOTLS` a slot is
/// held only while a read transaction is open, i.e. for the duration of one store call, so
/// this bounds concurrent store reads machine-wide (FUSE worker threads plus read-ahead in
/// the daemon, plus a `pull` and a `status`): 1024 is far above that, and each slot costs a
/// few dozen bytes of the lock file.
const MAX_READERS: u32 = 1024;

/// Upper bound of the index's map. libmdbx reserves address space up to this bound when it
/// opens the environment, so growing the file never has to move the map while other threads
/// and processes hold pointers into it. The index holds about 600 bytes per stored 8 MiB
/// chunk (its header and key) plus the manifests: 64 GiB indexes petabytes, and address
/// space costs nothing until touched.
const MAX_MAP_SIZE: isize = 64 << 30;

/// How much the index file grows at a time: a store of a few large models needs a few MiB of
/// index, and growing (which syncs the geometry) a few times over a long download is cheap.
const GROWTH_STEP: isize = 4 << 20;

/// Largest chunk size a store may be created with. The chunk header stores the length in
/// 32 bits, libmdbx caps a value at about 2 GiB, and a chunk is fetched in one range request
/// and held in memory while it is written: 1 GiB leaves margin on all three.
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;

/// How every process opens the index (and the migration its staging copy).
pub(super) fn index_options(max_size: isize, growth_step: isize) -> DatabaseOptions {
    DatabaseOptions {
        max_readers: Some(MAX_READERS),
        max_tables: Some(MAX_TABLES),
        // No `exclusive`: several processes open the store at once (doc/DESIGN.md, "Store format
        // 2"). `accede` lets a process join an environment that another opened with other mode
        // flags (a different modelfs version) instead of failing to open.
        accede: true,
        mode: Mode::ReadWrite(ReadWriteOptions {
            // Each commit's pages are flushed before `put_chunk` returns; only the meta page flush
            // is deferred to the next commit. A kill -9 loses nothing committed (the page cache has
            // it); a power loss can roll back the last committed transaction, which is one chunk:
            // the index stays consistent and has lost at most the chunks in flight and the one just
            // written (doc/DESIGN.md, "Store format 2"). Measured with format 1 on a cold 1 GiB
            // stream (doc/DESIGN.md): Durable 5.6 s, this 3.1 s, SafeNoSync 2.5 s (but a power loss
            // could roll back any number of chunks).
            sync_mode: SyncMode::NoMetaSync,
            min_size: None,
            max_size: Some(max_size),
            growth_step: Some(growth_step),
            shrink_threshold: None,
        }),
        // Default `NoWriteMap`: pages are written with pwrite, so a stray write through a
        // pointer into the map cannot corrupt the database.
        ..DatabaseOptions::default()
    }
}

/// The default geometry, for the migration's staging index.
pub(super) const DEFAULT_GEOMETRY: (isize, isize) = (MAX_MAP_SIZE, GROWTH_STEP);

/// Turn libmdbx's `MDBX_VALIDATION` (careful checks of every page it loads) on or off.
pub(super) fn set_validation(db: &Database<NoWriteMap>, on: bool) -> Result<(), StoreError> {
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
    /// The chunk bytes.
    data: DataFiles,
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

    /// Open the store in `dir` for reading only (`--store-ro`): a store `modelfs pull` filled,
    /// maybe on a read-only filesystem (a ReadOnlyMany volume), where libmdbx runs without its
    /// lock file. Nothing is created, migrated or swept; a store of another format is refused.
    pub fn open_read_only(dir: &Path) -> Result<MdbxStore, StoreError> {
        let open_err =
            |reason: String| StoreError::Open { path: dir.display().to_string(), reason };
        let index = dir.join(INDEX_DIR);
        if !index.is_dir() {
            return Err(open_err(format!(
                "no store index in it (expected {}; fill it with `modelfs pull --store {}`)",
                index.display(),
                dir.display()
            )));
        }
        let options = DatabaseOptions {
            max_readers: Some(MAX_READERS),
            max_tables: Some(MAX_TABLES),
            accede: true,
            mode: Mode::ReadOnly,
            ..DatabaseOptions::default()
        };
        let db = Database::<NoWriteMap>::open_with_options(&index, options)
            .map_err(|e| open_err(StoreError::from(e).to_string()))?;
        let store = MdbxStore {
            db,
            write_lock: Mutex::new(()),
            path: dir.to_path_buf(),
            chunk_size: 0,
            data: DataFiles::read_only(dir),
        };
        let (format, chunk_size) = store
            .read(|txn| {
                let meta = txn.open_table(Some(META))?;
                let get = |key| -> Result<Option<u64>, StoreError> {
                    let value = txn.get::<Vec<u8>>(&meta, key)?;
                    Ok(value.and_then(|b| b.as_slice().try_into().ok()).map(u64::from_be_bytes))
                };
                Ok((get(META_FORMAT)?, get(META_CHUNK_SIZE)?))
            })
            .map_err(|e| open_err(e.to_string()))?;
        if format != Some(STORE_FORMAT) {
            return Err(open_err(format!(
                "it is of store format {format:?}, and a read-only store must be of format \
                 {STORE_FORMAT} (open it once read-write, e.g. with `modelfs status --store`)"
            )));
        }
        let chunk_size = chunk_size
            .filter(|cs| (1..=MAX_CHUNK_SIZE).contains(cs))
            .ok_or_else(|| open_err("no valid chunk size recorded".into()))?;
        store.check_structure().map_err(|e| open_err(e.to_string()))?;
        Ok(MdbxStore { chunk_size, ..store })
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
        // A store of format 1 becomes format 2 in place, before anything else opens it.
        super::migrate::from_v1(dir)?;
        let index = dir.join(INDEX_DIR);
        std::fs::create_dir_all(&index).map_err(|e| open_err(e.to_string()))?;
        let data = DataFiles::new(dir).map_err(|e| open_err(format!("data files: {e}")))?;

        let options = index_options(max_size, growth_step);
        let damaged = |detail: String| {
            let p = dir.display();
            open_err(format!(
                "its index is damaged ({detail}), and what it holds cannot be trusted to be found \
                 again. Stop every modelfs using it, move it aside (`mv {p} {p}.damaged`) or \
                 remove it (`rm -r {p}`), and start again: models are fetched again from the Hub"
            ))
        };
        let db = Database::<NoWriteMap>::open_with_options(&index, options).map_err(|e| {
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
            data,
        };

        // Creating the tables and recording the chunk size in one write transaction settles
        // races between processes creating the same store: the first to commit wins.
        let stored = store
            .write(|txn| {
                for name in TABLES {
                    txn.create_table(Some(name), TableFlags::empty())?;
                }
                let meta = txn.open_table(Some(META))?;
                match txn.get::<Vec<u8>>(&meta, META_FORMAT)? {
                    Some(bytes) if bytes.as_slice() != STORE_FORMAT.to_be_bytes() => {
                        return Err(StoreError::Db(format!(
                            "it is of store format {}, which this modelfs does not read (it reads \
                             {STORE_FORMAT}): run the modelfs that wrote it, or move it aside",
                            bytes.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0)
                        )));
                    }
                    Some(_) => {}
                    None => txn.put(
                        &meta,
                        META_FORMAT,
                        STORE_FORMAT.to_be_bytes(),
                        WriteFlags::empty(),
                    )?,
                }
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
        store.sweep_orphans();
        Ok(store)
    }

    /// Remove data files no record names (left by a crash between an index commit and an
    /// unlink). Best effort: an orphan only costs disk until the next sweep.
    fn sweep_orphans(&self) {
        let known: std::collections::HashSet<ContentId> = match self.files() {
            Ok(files) => files.into_iter().map(|(c, _)| c).collect(),
            Err(e) => return tracing::warn!(error = %e, "orphan data files not swept"),
        };
        match self.data.sweep(&|c| known.contains(c)) {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "removed data files that no record names"),
            Err(e) => tracing::warn!(error = %e, "orphan data files not swept"),
        }
    }

    /// Walk every page of the index once: each table's B-tree from its root to every leaf,
    /// every value with it (the index holds only small values: about 600 bytes per stored
    /// chunk). Cheap next to what a damaged index costs later (every write failing, every
    /// chunk fetched again and again), and it is what libmdbx itself does to find a damaged
    /// page: follow the tree. Chunk bytes are not read; their crc32c catches damage there,
    /// on every read.
    pub fn check_structure(&self) -> Result<(), StoreError> {
        self.read(|txn| {
            for name in TABLES {
                let table = txn.open_table(Some(name))?;
                let mut cursor = txn.cursor(&table)?;
                for item in cursor.iter_start::<Cow<'_, [u8]>, Cow<'_, [u8]>>() {
                    item?;
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
        let _serial = crate::lock(&self.write_lock);
        let txn = self.db.begin_rw_txn()?;
        let value = f(&txn)?;
        txn.commit()?;
        Ok(value)
    }

    /// Serve bytes `range` of chunk `index` of `content`: its header from the index (one
    /// short read transaction), then the whole crc blocks the range touches from the data
    /// file, checked, shown to `serve`. A chunk whose bytes fail their crcs, or whose data
    /// file does not have them, is dropped and reported as absent.
    fn serve_chunk(
        &self,
        content: &ContentId,
        index: u64,
        range: Range<usize>,
        serve: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, StoreError> {
        let key = format::chunk_key(content, index);
        let header = self.read(|txn| {
            let chunks = txn.open_table(Some(CHUNKS))?;
            Ok(txn.get::<Vec<u8>>(&chunks, &key)?)
        })?;
        let Some(header) = header else { return Ok(false) };
        let outcome = READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let outcome = self.read_checked(content, index, &header, &range, &mut buf).map(|at| {
                serve(&buf[range.start - at..range.end - at]);
            });
            if buf.capacity() > MAX_KEPT_BUFFER {
                // A long read (a whole chunk, not the warm path's): the thread does not keep
                // its buffer. Emptied first, as `shrink_to` never goes below the length.
                buf.clear();
                buf.shrink_to(MAX_KEPT_BUFFER);
            }
            outcome
        });
        match outcome {
            Ok(()) => Ok(true),
            Err(Checked::Store(e)) => Err(e),
            Err(Checked::Read(ReadError::OutOfChunk { len })) => {
                Err(format::out_of_chunk(&range, len))
            }
            Err(Checked::Read(ReadError::Corrupt(reason))) => {
                self.drop_corrupt(content, index, &header, &reason)?;
                Ok(false)
            }
        }
    }

    /// Read into `buf` the crc blocks of chunk `index` that `range` touches, check them, and
    /// return the offset in the chunk where `buf` starts.
    fn read_checked(
        &self,
        content: &ContentId,
        index: u64,
        header: &[u8],
        range: &Range<usize>,
        buf: &mut Vec<u8>,
    ) -> Result<usize, Checked> {
        let header =
            format::parse_header(header).map_err(|e| Checked::Read(ReadError::Corrupt(e)))?;
        let cover = header.covering(range).map_err(Checked::Read)?;
        buf.clear();
        buf.resize(cover.len(), 0);
        let at = index * self.chunk_size + cover.start as u64;
        let present = self
            .data
            .read_at(content, at, buf)
            .map_err(|e| Checked::Store(StoreError::Db(format!("data file of {content}: {e}"))))?;
        if !present {
            return Err(Checked::Read(ReadError::Corrupt("the data file does not hold it".into())));
        }
        header.check(cover.start, buf).map_err(Checked::Read)?;
        Ok(cover.start)
    }

    /// Drop chunk `index` of `content` after a read found it bad, and take its bytes out of
    /// the file's record: only if its entry is still the one the read saw (another thread or
    /// process may have dropped it and stored it again since).
    fn drop_corrupt(
        &self,
        content: &ContentId,
        index: u64,
        seen: &[u8],
        reason: &str,
    ) -> Result<(), StoreError> {
        let key = format::chunk_key(content, index);
        let dropped = self.write(|txn| {
            let chunks = txn.open_table(Some(CHUNKS))?;
            let Some(header) = txn.get::<Vec<u8>>(&chunks, &key)? else { return Ok(false) };
            if header != seen {
                return Ok(false);
            }
            txn.del(&chunks, key, None)?;
            let files = txn.open_table(Some(FILES))?;
            if let Some(record) = get_record(txn, &files, content)? {
                let len = format::parse_header(&header)
                    .map(|h| h.len as u64)
                    .unwrap_or_else(|_| super::chunk_len(record.size, self.chunk_size, index));
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

    /// Where the bytes of `content` are: its data file.
    pub fn data_path(&self, content: &ContentId) -> PathBuf {
        self.data.path(content)
    }

    /// Replace the raw stored chunk (header, then data, as [`format::encode_chunk`] lays it
    /// out): how tests corrupt one. The header goes to the index, the data to the data file.
    #[cfg(test)]
    pub(crate) fn rewrite_raw(
        &self,
        content: &ContentId,
        index: u64,
        f: &mut dyn FnMut(&mut Vec<u8>),
    ) {
        let key = format::chunk_key(content, index);
        let header = self
            .read(|txn| {
                let chunks = txn.open_table(Some(CHUNKS))?;
                Ok(txn.get::<Vec<u8>>(&chunks, &key)?)
            })
            .unwrap()
            .expect("chunk to rewrite");
        let len = format::parse_header(&header).unwrap().len;
        let at = index * self.chunk_size;
        let mut data = vec![0; len];
        assert!(self.data.read_at(content, at, &mut data).unwrap());
        let mut value = header.clone();
        value.extend_from_slice(&data);
        f(&mut value);
        let split = format::header_len(len).min(value.len());
        let (new_header, new_data) = value.split_at(split);
        // A value cut short is, on disk, a chunk whose last bytes were lost: they read back
        // as something else.
        let mut new_data = new_data.to_vec();
        let kept = new_data.len().min(len);
        new_data.truncate(len);
        new_data.extend(data[kept..].iter().map(|b| !b));
        let size = std::fs::metadata(self.data.path(content)).unwrap().len();
        self.data.write_at(content, size, at, &new_data).unwrap();
        self.write(|txn| {
            let chunks = txn.open_table(Some(CHUNKS))?;
            txn.put(&chunks, key, new_header, WriteFlags::empty())?;
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

/// Why a checked read failed: the store could not be read, or what it read is not right.
enum Checked {
    Store(StoreError),
    Read(ReadError),
}

/// Largest read buffer a thread keeps between reads: a kernel read is at most 1 MiB, plus
/// the partial crc blocks at either end.
const MAX_KEPT_BUFFER: usize = (1 << 20) + 2 * super::CRC_BLOCK;

thread_local! {
    /// Each thread's read buffer: the warm path reads into it and lends a slice of it, so it
    /// allocates nothing.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The data length a chunk header announces: `None` when the header is malformed.
struct StoredLen(Option<usize>);

impl Decodable<'_> for StoredLen {
    fn decode(value: &[u8]) -> Result<Self, libmdbx::Error> {
        Ok(StoredLen(format::parse_header(value).ok().map(|h| h.len)))
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
        self.serve_chunk(content, index, range, &mut |bytes| out.extend_from_slice(bytes))
    }

    fn visit_chunk(
        &self,
        content: &ContentId,
        index: u64,
        range: Range<usize>,
        visit: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, StoreError> {
        self.serve_chunk(content, index, range, visit)
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
        // The bytes first, the index entry second: an entry never names bytes not written
        // (see the module documentation). A chunk already recorded keeps its bytes (the first
        // stored copy is the one its crcs describe); only its record is touched below.
        if !self.has_chunk(content, index)? {
            self.data.write_at(content, file_size, index * self.chunk_size, data).map_err(|e| {
                match e.raw_os_error() {
                    Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::Full,
                    _ => StoreError::Db(format!("data file of {content}: {e}")),
                }
            })?;
        }
        self.write(|txn| {
            let files = txn.open_table(Some(FILES))?;
            let chunks = txn.open_table(Some(CHUNKS))?;
            let existing = get_record(txn, &files, content)?;
            format::check_size(content, existing.as_ref(), file_size)?;
            let new_chunk = txn.get::<()>(&chunks, &key)?.is_none();
            if new_chunk {
                txn.put(&chunks, key, &header, WriteFlags::empty())?;
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

    /// `Verified` is recorded only after the data file is synced: a verified file may be
    /// handed to the kernel, which reads it without checking crcs, so its bytes must be the
    /// ones on disk, not ones a power loss could take back.
    fn set_file_state(&self, content: &ContentId, state: FileState) -> Result<(), StoreError> {
        if state == FileState::Verified {
            self.data
                .sync(content)
                .map_err(|e| StoreError::Db(format!("syncing the data file of {content}: {e}")))?;
        }
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
        })?;
        self.remove_data(content);
        Ok(())
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

    fn put_local(&self, repo: &RepoId, record: &LocalRecord) -> Result<(), StoreError> {
        let value = format::encode_local_record(record)?;
        self.write(|txn| {
            let local = txn.open_table(Some(LOCAL))?;
            txn.put(&local, format::local_key(repo), value, WriteFlags::empty())?;
            Ok(())
        })
    }

    fn local(&self, repo: &RepoId) -> Result<Option<LocalRecord>, StoreError> {
        let key = format::local_key(repo);
        self.read(|txn| {
            let Some(local) = open_if_present(txn, LOCAL)? else { return Ok(None) };
            let Some(bytes) = txn.get::<Cow<'_, [u8]>>(&local, key.as_bytes())? else {
                return Ok(None);
            };
            match format::decode_local_record(&bytes) {
                Ok(record) => Ok(Some(record)),
                Err(e) => {
                    // Read as a Hub repo, which at worst asks the Hub about it: never garbage.
                    tracing::warn!(key, error = %e, "unreadable local record, treated as absent");
                    Ok(None)
                }
            }
        })
    }

    fn locals(&self) -> Result<Vec<(RepoId, LocalRecord)>, StoreError> {
        self.read(|txn| {
            let Some(local) = open_if_present(txn, LOCAL)? else { return Ok(Vec::new()) };
            let mut cursor = txn.cursor(&local)?;
            let mut out = Vec::new();
            for item in cursor.iter_start::<Cow<'_, [u8]>, Cow<'_, [u8]>>() {
                let (key, value) = item?;
                match (format::repo_of_local_key(&key), format::decode_local_record(&value)) {
                    (Some(repo), Ok(record)) => out.push((repo, record)),
                    _ => tracing::warn!(key = ?String::from_utf8_lossy(&key), "unreadable local record, skipped"),
                }
            }
            Ok(out)
        })
    }

    fn remove_repo(&self, repo: &RepoId) -> Result<Vec<Manifest>, StoreError> {
        let prefix = format::repo_key(repo, "");
        self.write(|txn| {
            let mut removed = Vec::new();
            for name in [REFS, MANIFESTS] {
                let table = txn.open_table(Some(name))?;
                let keys: Vec<Vec<u8>> = {
                    let mut cursor = txn.cursor(&table)?;
                    let mut keys = Vec::new();
                    for item in cursor.iter_from::<Cow<'_, [u8]>, Cow<'_, [u8]>>(prefix.as_bytes())
                    {
                        let (key, value) = item?;
                        if !key.starts_with(prefix.as_bytes()) {
                            break;
                        }
                        if name == MANIFESTS {
                            let key_str = String::from_utf8_lossy(&key);
                            removed.extend(format::decode_manifest(&key_str, &value));
                        }
                        keys.push(key.into_owned());
                    }
                    keys
                };
                for key in keys {
                    txn.del(&table, key, None)?;
                }
            }
            let local = txn.open_table(Some(LOCAL))?;
            txn.del(&local, format::local_key(repo), None)?;
            Ok(removed)
        })
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
        // After the commit: a crash in between leaves an orphan data file (swept at the next
        // open), never an entry without its bytes.
        self.remove_data(content);
        Ok(freed)
    }

    fn data_file(&self, content: &ContentId) -> Result<Option<File>, StoreError> {
        self.data
            .open_read_only(content)
            .map_err(|e| StoreError::Db(format!("data file of {content}: {e}")))
    }
}

impl MdbxStore {
    /// Give back the disk of `content`'s data file, once its entries are gone.
    fn remove_data(&self, content: &ContentId) {
        if let Err(e) = self.data.remove(content) {
            // Swept at the next open.
            tracing::warn!(content = %content.to_hex(), error = %e, "data file not removed");
        }
    }
}

/// The revisions under which `table` (manifests or refs) holds records of `repo`, sorted: its
/// keys are `org/name@rev`, so they are one cursor range starting at `org/name@`.
/// `name`, or `None` when the store predates it (only a read-only store can: opening one
/// read-write creates every table).
fn open_if_present<'txn, K: TransactionKind>(
    txn: &'txn Transaction<'_, K, NoWriteMap>,
    name: &str,
) -> Result<Option<libmdbx::Table<'txn>>, StoreError> {
    match txn.open_table(Some(name)) {
        Ok(table) => Ok(Some(table)),
        Err(libmdbx::Error::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

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

    /// A read of a whole chunk uses a chunk-sized buffer, and the thread does not keep it: a
    /// FUSE thread that once served a chunk (a plan's push, a `pull`) would otherwise hold
    /// 8 MiB for the daemon's life. A warm-path read keeps its buffer.
    #[test]
    fn a_thread_keeps_no_chunk_sized_read_buffer() {
        let chunk = 4 << 20;
        let (_dir, store) = fresh(chunk);
        let id = content(3);
        let bytes = file_bytes(11, chunk);
        put_file(&store, &id, &bytes);
        let kept = || READ_BUF.with(|b| b.borrow().capacity());
        let mut out = Vec::new();
        assert!(store.read_chunk(&id, 0, 4096..(1 << 20), &mut out).unwrap());
        assert_eq!(out[..], bytes[4096..1 << 20]);
        assert!(kept() >= (1 << 20) - 4096, "the warm path's buffer is kept");
        out.clear();
        assert!(store.read_chunk(&id, 0, 0..chunk as usize, &mut out).unwrap());
        assert_eq!(out[..], bytes[..]);
        assert!(kept() <= MAX_KEPT_BUFFER, "kept {} bytes after a whole-chunk read", kept());
    }

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
        let db = dir.path().join(INDEX_DIR).join(MDBX_DATA_FILE);
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
    fn a_full_index_is_reported_as_full_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // A 1 MiB map and one-byte chunks: room for some thousands of chunk entries.
        let store = MdbxStore::open_with_geometry(dir.path(), 1, 1 << 20, 64 << 10).unwrap();
        let size = 100_000;
        let id = content(5);
        let mut stored = 0;
        let full_at = loop {
            match store.put_chunk(&id, size, stored, &[stored as u8]) {
                Ok(record) => {
                    stored += 1;
                    assert_eq!(record.cached_bytes, stored);
                    assert!(stored < size, "a 1 MiB index took {size} chunks");
                }
                Err(StoreError::Full) => break stored,
                Err(e) => panic!("chunk {stored}: {e}"),
            }
        };
        assert!(full_at > 1000, "full after {full_at} chunks");
        assert!(!store.has_chunk(&id, full_at).unwrap());
        assert_eq!(store.file_record(&id).unwrap().unwrap().cached_bytes, full_at);
        // Room made by discarding is used again.
        store.discard_file(&id, FileState::Failed).unwrap();
        let record = store.put_chunk(&id, size, full_at, &[1]).unwrap();
        assert_eq!(record.cached_bytes, 1);
    }

    /// Format 2 on disk: the index value of a chunk is its header alone; the chunk's bytes are
    /// at their offset in the content's data file, which is as long as the file and sparse
    /// where nothing is stored; evicting gives the disk back.
    #[test]
    fn the_index_holds_headers_and_the_data_file_the_bytes() {
        let (dir, store) = fresh(SMALL_CHUNK);
        let id = content(8);
        let size = 40 * SMALL_CHUNK;
        let bytes = file_bytes(8, size);
        let chunk = conformance::chunk_of(&bytes, SMALL_CHUNK, 30);
        store.put_chunk(&id, size, 30, chunk).unwrap();
        let key = format::chunk_key(&id, 30);
        let value = store
            .read(|txn| {
                let chunks = txn.open_table(Some(CHUNKS))?;
                Ok(txn.get::<Vec<u8>>(&chunks, &key)?)
            })
            .unwrap()
            .unwrap();
        assert_eq!(value, format::encode_header(chunk));
        let path =
            dir.path().join(super::super::data::DATA_DIR).join(&id.to_hex()[..2]).join(id.to_hex());
        assert_eq!(store.data_path(&id), path);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len() as u64, size);
        let at = (30 * SMALL_CHUNK) as usize;
        assert!(on_disk[at..at + chunk.len()] == *chunk);
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated < size / 4, "{allocated} bytes allocated for one chunk of {size}");
        assert!(dir.path().join(INDEX_DIR).join(MDBX_DATA_FILE).is_file());
        assert_eq!(store.evict_file(&id).unwrap(), chunk.len() as u64);
        assert!(!path.exists(), "eviction leaves the data file");
    }

    /// What a crash between a data write and its index entry leaves (bytes no entry names)
    /// is never read; what one between an eviction's commit and its unlink leaves (a data
    /// file no record names) is swept at open once old enough.
    #[test]
    fn leftovers_of_a_crash_are_never_read_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let id = content(2);
        let orphan = content(3);
        {
            let store = MdbxStore::open(dir.path(), SMALL_CHUNK).unwrap();
            let bytes = file_bytes(2, 2 * SMALL_CHUNK);
            store
                .put_chunk(&id, 2 * SMALL_CHUNK, 0, conformance::chunk_of(&bytes, SMALL_CHUNK, 0))
                .unwrap();
            // Bytes of chunk 1 written, entry never committed.
            store.data.write_at(&id, 2 * SMALL_CHUNK, SMALL_CHUNK, b"not an entry").unwrap();
            assert!(!store.has_chunk(&id, 1).unwrap());
            let mut out = Vec::new();
            assert!(!store.read_chunk(&id, 1, 0..12, &mut out).unwrap());
            store.data.write_at(&orphan, 10, 0, b"orphan").unwrap();
        }
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(
                dir.path()
                    .join(super::super::data::DATA_DIR)
                    .join(&orphan.to_hex()[..2])
                    .join(orphan.to_hex()),
            )
            .unwrap()
            .set_modified(old)
            .unwrap();
        let store = MdbxStore::open(dir.path(), SMALL_CHUNK).unwrap();
        assert!(!store.data_path(&orphan).exists(), "the orphan was swept");
        assert!(store.data_path(&id).exists(), "a file with a record stays");
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
        /// Reads of any range of any chunk serve exactly the stored bytes.
        #[test]
        fn reads_of_any_range_serve_the_stored_bytes(index in 0u64..3, a in 0usize..SMALL_CHUNK as usize, b in 0usize..SMALL_CHUNK as usize) {
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
