//! Store format 1 → 2, in place, on first open.
//!
//! Format 1 (modelfs up to this change) kept the index at the store's top level
//! (`<store>/mdbx.dat`) and each chunk's bytes inside its libmdbx value, after its header.
//! Format 2 keeps the same tables in `<store>/index/`, each chunk value reduced to its header,
//! and the bytes in one data file per content (`data.rs`). The file, manifest, ref and meta
//! records are the same bytes in both. So a migration copies every table, splitting each
//! chunk value into its header (to the new index) and its data (to its data file at the
//! chunk's offset), syncs the data files, commits the new index in a staging directory,
//! renames it into place, and only then removes the old files.
//!
//! A crash at any point leaves either the old store (the staging directory is removed and the
//! migration runs again) or the new one (the old files, if still there, are removed). Two
//! processes opening the store at once take `migrate.lock` in turn; the second finds the work
//! done. The old store is read, never changed, until the new one is in place: a migration that
//! fails (a full disk) leaves it as it was, with a message saying how much room is needed.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use libmdbx::{Database, DatabaseOptions, Mode, NoWriteMap, TableFlags, WriteFlags};

use super::data::DataFiles;
use super::format;
use super::mdbx::{
    index_options, CHUNKS, DEFAULT_GEOMETRY, FILES, INDEX_DIR, MDBX_DATA_FILE, META,
    META_CHUNK_SIZE, META_FORMAT, STORE_FORMAT, TABLES, V1_TABLES,
};
use super::StoreError;
use crate::manifest::ContentId;

/// libmdbx's lock file beside its data file.
const MDBX_LOCK_FILE: &str = "mdbx.lck";

/// Where a migration builds the new index before it is renamed into place.
const STAGING_DIR: &str = "index.migrating";

/// What a migration did, for its log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Migrated {
    pub chunks: u64,
    pub files: u64,
    pub bytes: u64,
}

/// If `dir` holds a format-1 store, make it a format-2 store. Nothing to do otherwise.
pub(super) fn from_v1(dir: &Path) -> Result<Option<Migrated>, StoreError> {
    let old = dir.join(MDBX_DATA_FILE);
    if !old.exists() {
        return Ok(None);
    }
    let err = |what: &str, e: &dyn std::fmt::Display| StoreError::Open {
        path: dir.display().to_string(),
        reason: format!("migrating from store format 1: {what}: {e}"),
    };
    let lock = File::create(dir.join("migrate.lock")).map_err(|e| err("lock", &e))?;
    crate::evict::flock(&lock, libc::LOCK_EX).map_err(|e| err("lock", &e))?;
    let index = dir.join(INDEX_DIR);
    if !index.join(MDBX_DATA_FILE).exists() {
        let migrated = copy(dir).map_err(|e| match e {
            StoreError::Full => err(
                "the disk is full",
                &"the migration needs room for a second copy of the store's data; free some, \
                  or move the store aside and start with an empty one",
            ),
            other => err("copying", &other),
        })?;
        tracing::info!(
            store = %dir.display(),
            chunks = migrated.chunks,
            files = migrated.files,
            bytes = migrated.bytes,
            "store migrated from format 1 to format {STORE_FORMAT}"
        );
        remove_old(dir);
        return Ok(Some(migrated));
    }
    // Migrated before, and a crash came before the old files went.
    remove_old(dir);
    Ok(None)
}

fn remove_old(dir: &Path) {
    for name in [MDBX_DATA_FILE, MDBX_LOCK_FILE] {
        if let Err(e) = std::fs::remove_file(dir.join(name)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = name, error = %e, "old store file not removed");
            }
        }
    }
}

/// Build the format-2 index in the staging directory from the format-1 one, write the data
/// files, and rename the index into place.
fn copy(dir: &Path) -> Result<Migrated, StoreError> {
    let staging = dir.join(STAGING_DIR);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| StoreError::Db(e.to_string()))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| StoreError::Db(e.to_string()))?;
    let old = Database::<NoWriteMap>::open_with_options(
        dir,
        DatabaseOptions {
            mode: Mode::ReadOnly,
            accede: true,
            max_tables: Some(16),
            ..DatabaseOptions::default()
        },
    )?;
    let (max_size, growth) = DEFAULT_GEOMETRY;
    let new = Database::<NoWriteMap>::open_with_options(&staging, index_options(max_size, growth))?;
    let data = DataFiles::new(dir).map_err(|e| StoreError::Db(e.to_string()))?;
    let mut migrated = Migrated::default();
    let mut written: HashSet<ContentId> = HashSet::new();
    {
        let from = old.begin_ro_txn()?;
        let to = new.begin_rw_txn()?;
        for name in TABLES {
            to.create_table(Some(name), TableFlags::empty())?;
        }
        let meta = from.open_table(Some(META))?;
        let chunk_size = from
            .get::<Vec<u8>>(&meta, META_CHUNK_SIZE)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| StoreError::Db("no chunk size in the old store".into()))?;
        // Every table but the chunks, as it is.
        for name in V1_TABLES.into_iter().filter(|n| *n != CHUNKS) {
            let src = from.open_table(Some(name))?;
            let dst = to.open_table(Some(name))?;
            let mut cursor = from.cursor(&src)?;
            for item in cursor.iter_start::<Cow<'_, [u8]>, Cow<'_, [u8]>>() {
                let (key, value) = item?;
                to.put(&dst, key, value, WriteFlags::empty())?;
                if name == FILES {
                    migrated.files += 1;
                }
            }
        }
        let dst_meta = to.open_table(Some(META))?;
        to.put(&dst_meta, META_FORMAT, STORE_FORMAT.to_be_bytes(), WriteFlags::empty())?;
        let files = from.open_table(Some(FILES))?;
        let src = from.open_table(Some(CHUNKS))?;
        let dst = to.open_table(Some(CHUNKS))?;
        let mut cursor = from.cursor(&src)?;
        for item in cursor.iter_start::<Cow<'_, [u8]>, Cow<'_, [u8]>>() {
            let (key, value) = item?;
            let (Some(content), Some(index)) = (key_content(&key), key_index(&key)) else {
                tracing::warn!(len = key.len(), "chunk with a malformed key, not migrated");
                continue;
            };
            let Ok(len) = format::data_len(&value) else {
                // As a read would have: a malformed chunk is dropped (the record is rebuilt
                // from the chunks that are there at its next write, and it is fetched again).
                tracing::warn!(content = %content.to_hex(), index, "malformed chunk, not migrated");
                continue;
            };
            let (header, bytes) = value.split_at(format::header_len(len));
            let size = from
                .get::<Cow<'_, [u8]>>(&files, &content.0)?
                .and_then(|r| format::decode_file_record(&r).ok())
                .map_or(index * chunk_size + len as u64, |r| r.size);
            data.write_at(&content, size, index * chunk_size, bytes).map_err(|e| {
                match e.raw_os_error() {
                    Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::Full,
                    _ => StoreError::Db(format!("data file of {content}: {e}")),
                }
            })?;
            to.put(&dst, &key, header, WriteFlags::empty())?;
            written.insert(content);
            migrated.chunks += 1;
            migrated.bytes += len as u64;
        }
        // The data durable before the index that names it: the same order as every write,
        // and the old store stays the authority until the rename below.
        for content in &written {
            data.sync(content).map_err(|e| StoreError::Db(format!("syncing {content}: {e}")))?;
        }
        drop(from);
        to.commit()?;
    }
    new.sync(true)?;
    drop(new);
    drop(old);
    std::fs::rename(&staging, dir.join(INDEX_DIR)).map_err(|e| StoreError::Db(e.to_string()))?;
    Ok(migrated)
}

fn key_content(key: &[u8]) -> Option<ContentId> {
    Some(ContentId(key.get(..32)?.try_into().ok()?))
}

fn key_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(32..40)?.try_into().ok()?))
}
