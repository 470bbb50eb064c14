//! What both stores share: the chunk header format (format byte, data length, one crc32c
//! per 64 KiB block), the key layout of chunks and repo records, the record codecs, and how a
//! file record changes on each event. Keeping it in one place is what makes the in-memory
//! double a faithful one. The libmdbx store keeps a chunk's header in its index and the
//! chunk's bytes in the content's data file; the double keeps both in one value
//! ([`encode_chunk`]). A golden-bytes test pins every encoding.

use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::manifest::{ContentId, Manifest, RepoId};
use crate::store::{
    chunk_count, chunk_len, FileRecord, FileState, LocalRecord, RefRecord, StoreError, CRC_BLOCK,
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

/// The header of the value that stores `data`; `data` is at most [`super::mdbx::MAX_CHUNK_SIZE`]
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

/// A chunk header on its own (the libmdbx store's index value): the data length and the
/// crcs, each 4 bytes LE, one per [`CRC_BLOCK`].
pub(in crate::store) struct Header<'a> {
    pub len: usize,
    crcs: &'a [u8],
}

pub(in crate::store) fn parse_header(header: &[u8]) -> Result<Header<'_>, String> {
    let (&format, rest) = header.split_first().ok_or("empty header")?;
    if format != CHUNK_FORMAT {
        return Err(format!("unknown chunk format {format}"));
    }
    let (len, crcs) = rest.split_first_chunk::<4>().ok_or("truncated header")?;
    let len = u32::from_le_bytes(*len) as usize;
    if crcs.len() != 4 * len.div_ceil(CRC_BLOCK) {
        return Err(format!("header for {len} bytes holds {} bytes of crcs", crcs.len()));
    }
    Ok(Header { len, crcs })
}

impl Header<'_> {
    /// The bytes of the chunk a read of `range` must fetch to check it: the whole crc blocks
    /// it touches. `Err` when `range` is not inside the chunk.
    pub fn covering(&self, range: &Range<usize>) -> Result<Range<usize>, ReadError> {
        if range.start > range.end || range.end > self.len {
            return Err(ReadError::OutOfChunk { len: self.len });
        }
        if range.is_empty() {
            return Ok(range.start..range.start);
        }
        let first = range.start / CRC_BLOCK * CRC_BLOCK;
        let end = ((range.end - 1) / CRC_BLOCK + 1) * CRC_BLOCK;
        Ok(first..end.min(self.len))
    }

    /// Check `bytes`, the chunk's bytes `at..at + bytes.len()` with `at` on a block boundary
    /// and the end on one (or the chunk's end), against their crcs.
    pub fn check(&self, at: usize, bytes: &[u8]) -> Result<(), ReadError> {
        for (i, block) in bytes.chunks(CRC_BLOCK).enumerate() {
            let n = at / CRC_BLOCK + i;
            let stored = self
                .crcs
                .get(4 * n..4 * n + 4)
                .ok_or_else(|| ReadError::Corrupt(format!("block {n} is past the chunk")))?;
            let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
            if crc32c::crc32c(block) != stored {
                return Err(ReadError::Corrupt(format!("block {n} fails its crc32c")));
            }
        }
        Ok(())
    }
}

/// Data length of a well-formed value.
pub(in crate::store) fn data_len(value: &[u8]) -> Result<usize, String> {
    parse(value).map(|p| p.data.len())
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

/// Key of a local record: `org/name` (no `@`, so it can never be read as a ref's key).
pub(in crate::store) fn local_key(repo: &RepoId) -> String {
    format!("{}/{}", repo.org, repo.name)
}

/// The repo a local record's key names; `None` for a key of another shape.
pub(in crate::store) fn repo_of_local_key(key: &[u8]) -> Option<RepoId> {
    let key = std::str::from_utf8(key).ok()?;
    let (org, name) = key.split_once('/')?;
    (!name.contains('@')).then(|| RepoId::new(org, name))
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

pub(in crate::store) fn encode_local_record(record: &LocalRecord) -> Result<Vec<u8>, StoreError> {
    encode_record(record)
}

pub(in crate::store) fn decode_local_record(bytes: &[u8]) -> Result<LocalRecord, String> {
    rkyv::from_bytes::<LocalRecord, rkyv::rancor::Error>(&record_body(bytes)?)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes every encoding writes, pinned: a change here is a change of store format
    /// (bump the store format and migrate, `store/migrate.rs`), never an accident.
    #[test]
    fn golden_bytes() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let header = encode_header(&data);
        assert_eq!(hex::encode(&header), GOLDEN_HEADER);
        assert_eq!(header_len(data.len()), header.len());
        let parsed = parse_header(&header).unwrap();
        assert_eq!(parsed.len, 70_000);
        parsed.check(0, &data).unwrap();
        let key = chunk_key(&ContentId([0xab; 32]), 0x0102);
        assert_eq!(hex::encode(key), format!("{}0000000000000102", "ab".repeat(32)));
        let record = FileRecord {
            size: 123_456_789,
            cached_bytes: 8 << 20,
            state: FileState::Partial,
            last_access: 1_764_000_000,
        };
        assert_eq!(hex::encode(encode_file_record(&record).unwrap()), GOLDEN_FILE_RECORD);
        assert_eq!(decode_file_record(&hex::decode(GOLDEN_FILE_RECORD).unwrap()), Ok(record));
        let r = RefRecord { commit: "c".repeat(40), resolved_at: 1_764_000_001 };
        assert_eq!(hex::encode(encode_ref_record(&r).unwrap()), GOLDEN_REF_RECORD);
        assert_eq!(decode_ref_record(&hex::decode(GOLDEN_REF_RECORD).unwrap()), Ok(r));
        assert_eq!(repo_key(&RepoId::new("org", "name"), "main"), "org/name@main");
        let local =
            LocalRecord { origin: crate::store::LocalOrigin::Imported, since: 1_764_000_002 };
        assert_eq!(hex::encode(encode_local_record(&local).unwrap()), GOLDEN_LOCAL_RECORD);
        assert_eq!(decode_local_record(&hex::decode(GOLDEN_LOCAL_RECORD).unwrap()), Ok(local));
        let tier = LocalRecord { origin: crate::store::LocalOrigin::Tier, ..local };
        assert_eq!(hex::encode(encode_local_record(&tier).unwrap()), GOLDEN_TIER_LOCAL_RECORD);
        assert_eq!(local_key(&RepoId::new("org", "name")), "org/name");
        assert_eq!(repo_of_local_key(b"org/name"), Some(RepoId::new("org", "name")));
        assert_eq!(repo_of_local_key(b"org/name@main"), None);
    }

    const GOLDEN_LOCAL_RECORD: &str = "0100000000000000000281246900000000";
    const GOLDEN_TIER_LOCAL_RECORD: &str = "0101000000000000000281246900000000";
    const GOLDEN_HEADER: &str = "0170110100defcaa0dbcc9bdbf";
    const GOLDEN_FILE_RECORD: &str =
        "0115cd5b0700000000000080000000000000000000000000000081246900000000";
    const GOLDEN_REF_RECORD: &str =
        "01636363636363636363636363636363636363636363636363636363636363636363636363636363\
                                      63a8000000d8ffffff0181246900000000";
}
