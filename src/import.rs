//! Repos that do not come from the Hub: `modelfs import DIR --as ORG/NAME` puts a directory
//! (a finetuned model, a LoRA adapter a training job just wrote) into the store as a repo of
//! its own, and `modelfs remove ORG/NAME` takes it out (doc/SEMANTICS.md, "Imported repos").
//!
//! An import is checked whole before anything is written, so bad input (a symlink out of the
//! tree, a FIFO, a name the store holds as a Hub repo) leaves the store as it was. Each file
//! is then hashed (sha256), and stored chunk by chunk while it is hashed a second time: the
//! content id is the hash, which is only known at the end of the first pass, and the second
//! pass proves that what was stored is what was hashed (a file still being written fails the
//! import instead of storing a mix). The commit id is derived from the files' paths, sizes and
//! hashes, so re-importing the same tree is the same commit and moves nothing. The manifest is
//! written first and the branch last, in one write: a reader sees the old commit or the new
//! one, never a branch naming a commit it cannot list.
//!
//! Every mount of the store sees the new branch at its next lookup (`fs/revisions.rs` reads an
//! imported repo's ref from the store each time); with a tier, the chunks, the manifest and
//! the ref are written to it before the command ends, so every node of the cluster does too.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::manifest::{ContentId, FileEntry, FileHash, Manifest, RepoId};
use crate::names;
use crate::store::{
    chunk_count, chunk_len, ChunkStore, FileState, LocalOrigin, LocalRecord, RefRecord, StoreError,
};

/// Directories an import leaves out, as `huggingface_hub.upload_folder` does: a git checkout's
/// own metadata is not part of the model.
const SKIPPED_DIRS: [&str; 1] = [".git"];

/// Tag hashed in front of the file list to make a commit id: a change of how commit ids are
/// derived must change every one of them.
const COMMIT_DOMAIN: &[u8] = b"modelfs-import/1\n";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: a symbolic link to {target}, outside the directory imported")]
    LinkOutside { path: PathBuf, target: PathBuf },
    #[error("{0}: a symbolic link to a directory (not followed; copy or move it instead)")]
    LinkToDirectory(PathBuf),
    #[error("{path}: a {kind}, not a regular file")]
    SpecialFile { path: PathBuf, kind: &'static str },
    #[error("{0:?}: not a path a repo can hold (UTF-8, no control characters, components of at most 255 bytes)")]
    BadPath(PathBuf),
    #[error("{0}: nothing to import (no files)")]
    Empty(PathBuf),
    #[error("{0:?} is not a branch name (a git ref name that is not a 40-hex commit)")]
    BadRevision(String),
    #[error("{0} is a repo of the Hub in this store; import under another name")]
    HubRepo(RepoId),
    #[error("{0} is not an imported repo (repos of the Hub are evicted, not removed)")]
    NotImported(RepoId),
    #[error("{0} changed while it was imported; import it again once it is written")]
    Changed(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ImportError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        ImportError::Io { path: path.to_owned(), source }
    }
}

/// One file found by the walk: where it is on disk, where it goes in the repo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    pub disk: PathBuf,
    pub path: String,
    pub size: u64,
    /// What is opened: `disk`, or for a symlink its target, checked to be inside the tree.
    open: PathBuf,
    /// The file the walk checked: what is opened must still be it, so that swapping a file
    /// for a link to something outside (or a FIFO) between the check and the read fails the
    /// import instead of storing what it points at.
    dev: u64,
    ino: u64,
}

/// What an import did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReport {
    pub repo: RepoId,
    pub rev: String,
    pub commit: String,
    /// The commit the branch named before, if any (equal to `commit`: nothing changed).
    pub previous: Option<String>,
    pub files: usize,
    pub bytes: u64,
    /// Bytes written to the store now (the rest it held already, e.g. an unchanged base model).
    pub stored_bytes: u64,
    /// The files of the import, as stored.
    pub manifest: Manifest,
}

/// Every regular file under `dir`, sorted by repo path, checked: no special files, no links
/// out of the tree or to directories, every path one a repo can hold. Nothing is read yet.
pub fn walk(dir: &Path) -> Result<Vec<SourceFile>, ImportError> {
    let meta = std::fs::metadata(dir).map_err(|e| ImportError::io(dir, e))?;
    if !meta.is_dir() {
        return Err(ImportError::NotADirectory(dir.to_owned()));
    }
    let root = dir.canonicalize().map_err(|e| ImportError::io(dir, e))?;
    let mut out = Vec::new();
    walk_into(&root, &root, &mut out)?;
    if out.is_empty() {
        return Err(ImportError::Empty(dir.to_owned()));
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk_into(root: &Path, dir: &Path, out: &mut Vec<SourceFile>) -> Result<(), ImportError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ImportError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ImportError::io(dir, e))?;
        let disk = entry.path();
        let meta = std::fs::symlink_metadata(&disk).map_err(|e| ImportError::io(&disk, e))?;
        let kind = meta.file_type();
        use std::os::unix::fs::MetadataExt;
        let (open, checked) = if kind.is_dir() {
            if !SKIPPED_DIRS.iter().any(|d| entry.file_name() == *d) {
                // Still inside the tree (not swapped for a link since it was listed).
                let real = disk.canonicalize().map_err(|e| ImportError::io(&disk, e))?;
                if !real.starts_with(root) {
                    return Err(ImportError::LinkOutside { path: disk, target: real });
                }
                walk_into(root, &real, out)?;
            }
            continue;
        } else if kind.is_symlink() {
            let target = disk.canonicalize().map_err(|e| ImportError::io(&disk, e))?;
            if !target.starts_with(root) {
                return Err(ImportError::LinkOutside { path: disk, target });
            }
            let meta = std::fs::metadata(&target).map_err(|e| ImportError::io(&disk, e))?;
            if meta.is_dir() {
                return Err(ImportError::LinkToDirectory(disk));
            }
            if !meta.is_file() {
                return Err(ImportError::SpecialFile { path: disk, kind: special_kind(&meta) });
            }
            (target, meta)
        } else if kind.is_file() {
            (disk.clone(), meta)
        } else {
            return Err(ImportError::SpecialFile { path: disk, kind: special_kind(&meta) });
        };
        let (size, dev, ino) = (checked.len(), checked.dev(), checked.ino());
        let path = disk
            .strip_prefix(root)
            .ok()
            .and_then(Path::to_str)
            .filter(|p| names::valid_repo_path(p))
            .map(str::to_owned)
            .ok_or_else(|| ImportError::BadPath(disk.clone()))?;
        out.push(SourceFile { disk, path, size, open, dev, ino });
    }
    Ok(())
}

fn special_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "named pipe"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// The commit id of a repo with `files` (sorted by path): 40 hex digits of a sha256 over
/// each file's path, size and sha256. Same files, same commit; any change, another one.
pub fn commit_of(files: &[FileEntry]) -> String {
    let mut h = Sha256::new();
    h.update(COMMIT_DOMAIN);
    for f in files {
        h.update(f.path.as_bytes());
        h.update([0]);
        h.update(f.size.to_string().as_bytes());
        h.update([0]);
        if let FileHash::Lfs(sha) = &f.hash {
            h.update(hex::encode(sha).as_bytes());
        }
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..20])
}

/// Check that `repo` may be imported as `rev` into `store`: a valid branch name, and not a
/// repo the store holds from the Hub.
pub fn check_target(store: &dyn ChunkStore, repo: &RepoId, rev: &str) -> Result<(), ImportError> {
    if !names::valid_revision(rev) || names::is_commit(rev) {
        return Err(ImportError::BadRevision(rev.to_owned()));
    }
    let known = store.repos()?.contains(repo);
    if known && store.local(repo)?.is_none() {
        return Err(ImportError::HubRepo(repo.clone()));
    }
    Ok(())
}

/// Import `dir` into `store` as `repo` at branch `rev`. `progress` is told the bytes read so
/// far (both passes), for a progress line.
pub fn import(
    store: &dyn ChunkStore,
    dir: &Path,
    repo: &RepoId,
    rev: &str,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportReport, ImportError> {
    check_target(store, repo, rev)?;
    let sources = walk(dir)?;
    let mut entries = Vec::with_capacity(sources.len());
    let mut stored_bytes = 0;
    let mut done = 0u64;
    for source in &sources {
        // A failure half-way leaves the files stored so far as unreferenced cache, for
        // eviction: removing them here could remove a file another import, running at the
        // same time, has just named.
        let (hash, wrote) = hash_and_store(store, source, &mut |n| {
            done += n;
            progress(done)
        })?;
        stored_bytes += wrote;
        entries.push(FileEntry { path: source.path.clone(), size: source.size, hash });
    }
    let commit = commit_of(&entries);
    let manifest = Manifest::build(repo.clone(), commit.clone(), None, entries);
    let previous = store.get_ref(repo, rev)?.map(|r| r.commit);
    store.put_manifest(&manifest)?;
    store.put_local(
        repo,
        &LocalRecord { origin: LocalOrigin::Imported, since: crate::store::unix_now() },
    )?;
    store.put_ref(
        repo,
        rev,
        &RefRecord { commit: commit.clone(), resolved_at: crate::store::unix_now() },
    )?;
    Ok(ImportReport {
        repo: repo.clone(),
        rev: rev.to_owned(),
        commit,
        previous,
        files: sources.len(),
        bytes: sources.iter().map(|s| s.size).sum(),
        stored_bytes,
        manifest,
    })
}

/// Hash `source`, then (unless the store has its content verified already) store it while
/// hashing it again. Returns its hash and the bytes written.
fn hash_and_store(
    store: &dyn ChunkStore,
    source: &SourceFile,
    progress: &mut dyn FnMut(u64),
) -> Result<(FileHash, u64), ImportError> {
    let chunk_size = store.chunk_size();
    let hash = FileHash::Lfs(sha256_of(source, chunk_size, &mut |_, _| Ok(()), progress)?);
    let content = hash.content_id();
    let have = store.file_record(&content)?;
    if have.is_some_and(|r| r.state == FileState::Verified && r.size == source.size) {
        return Ok((hash, 0));
    }
    let mut put = |index: u64, data: &[u8]| -> Result<(), ImportError> {
        if data.len() as u64 != chunk_len(source.size, chunk_size, index) {
            return Err(ImportError::Changed(source.disk.clone()));
        }
        store.put_chunk(&content, source.size, index, data)?;
        Ok(())
    };
    let again = sha256_of(source, chunk_size, &mut put, progress);
    match again {
        Ok(sha) if FileHash::Lfs(sha) == hash => {}
        Ok(_) | Err(ImportError::Changed(_)) => {
            store.discard_file(&content, FileState::Partial)?;
            return Err(ImportError::Changed(source.disk.clone()));
        }
        Err(e) => return Err(e),
    }
    store.set_file_state(&content, FileState::Verified)?;
    Ok((hash, source.size))
}

/// What is shown each chunk of a file as it is hashed: its index and bytes.
type ChunkVisitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), ImportError> + 'a;

/// The sha256 of `source`, read a chunk at a time; each chunk is shown to `visit` with its
/// index. A file whose length is not the walk's fails with [`ImportError::Changed`].
fn sha256_of(
    source: &SourceFile,
    chunk_size: u64,
    visit: &mut ChunkVisitor<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<[u8; 32], ImportError> {
    let mut file = open_checked(source)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; chunk_size.min(source.size.max(1)) as usize];
    let mut total = 0u64;
    for index in 0..chunk_count(source.size, chunk_size) {
        let want = chunk_len(source.size, chunk_size, index) as usize;
        let got =
            read_full(&mut file, &mut buf[..want]).map_err(|e| ImportError::io(&source.disk, e))?;
        if got != want {
            return Err(ImportError::Changed(source.disk.clone()));
        }
        h.update(&buf[..want]);
        visit(index, &buf[..want])?;
        total += want as u64;
        progress(want as u64);
    }
    // Grown since the walk: what was stored would not be the whole file.
    let mut probe = [0u8; 1];
    if file.read(&mut probe).map_err(|e| ImportError::io(&source.disk, e))? != 0
        || total != source.size
    {
        return Err(ImportError::Changed(source.disk.clone()));
    }
    Ok(h.finalize().into())
}

/// Open the file the walk checked: no link followed, no wait on a FIFO, and the same file
/// (device and inode) as then, or [`ImportError::Changed`].
fn open_checked(source: &SourceFile) -> Result<std::fs::File, ImportError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&source.open)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => ImportError::Changed(source.disk.clone()),
            _ => ImportError::io(&source.disk, e),
        })?;
    let meta = file.metadata().map_err(|e| ImportError::io(&source.disk, e))?;
    if !meta.is_file() || meta.dev() != source.dev || meta.ino() != source.ino {
        return Err(ImportError::Changed(source.disk.clone()));
    }
    Ok(file)
}

/// Read until `buf` is full or the file ends; the bytes read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What `remove` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoveReport {
    pub repo: RepoId,
    /// Branches it had (to be removed from a tier too).
    pub refs: Vec<String>,
    pub commits: usize,
    /// Bytes of files that no other repo of the store names, freed now.
    pub freed_bytes: u64,
    /// Files still open somewhere, left to eviction.
    pub kept_open: usize,
}

/// Remove the imported repo `repo` from the store in `store_dir`: its refs, manifests and
/// record go in one write (every mount stops showing it at its next lookup), then the files no
/// other repo names, except those open in a serving process (eviction takes those later).
pub fn remove(
    store_dir: &Path,
    store: &Arc<dyn ChunkStore>,
    repo: &RepoId,
) -> Result<RemoveReport, ImportError> {
    if store.local(repo)?.is_none() {
        return Err(ImportError::NotImported(repo.clone()));
    }
    let refs = store.refs(repo)?.into_iter().map(|(name, _)| name).collect();
    let removed = store.remove_repo(repo)?;
    let mut orphans: std::collections::HashSet<ContentId> =
        removed.iter().flat_map(|m| m.files.iter().map(|f| f.hash.content_id())).collect();
    for other in store.repos()? {
        for commit in store.commits(&other)? {
            if let Some(m) = store.manifest(&other, &commit)? {
                for f in &m.files {
                    orphans.remove(&f.hash.content_id());
                }
            }
        }
    }
    let (freed_bytes, kept_open) =
        crate::evict::evict_unless_open(store_dir, store.as_ref(), &orphans).map_err(
            |e| match e {
                crate::evict::EvictError::Store(e) => ImportError::Store(e),
                other => ImportError::Store(StoreError::Db(other.to_string())),
            },
        )?;
    Ok(RemoveReport { repo: repo.clone(), refs, commits: removed.len(), freed_bytes, kept_open })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use proptest::prelude::*;

    fn tree(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, bytes) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        dir
    }

    fn repo() -> RepoId {
        RepoId::new("team", "adapter")
    }

    #[test]
    fn an_import_stores_every_byte_verified_under_a_content_commit() {
        let store = MemoryStore::new(1000);
        let weights: Vec<u8> = (0..2500u32).map(|i| (i * 7 % 251) as u8).collect();
        let dir = tree(&[("adapter_config.json", b"{\"r\": 8}"), ("sub/w.safetensors", &weights)]);
        let report = import(&store, dir.path(), &repo(), "main", &mut |_| {}).unwrap();
        assert_eq!((report.files, report.bytes, report.stored_bytes), (2, 2508, 2508));
        assert!(names::is_commit(&report.commit));
        let m = store.manifest(&repo(), &report.commit).unwrap().unwrap();
        assert_eq!(
            m.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["adapter_config.json", "sub/w.safetensors"]
        );
        let w = &m.files[1];
        assert_eq!(w.hash, FileHash::Lfs(Sha256::digest(&weights).into()));
        let record = store.file_record(&w.hash.content_id()).unwrap().unwrap();
        assert_eq!((record.state, record.cached_bytes), (FileState::Verified, 2500));
        let mut back = Vec::new();
        for i in 0..3 {
            let len = chunk_len(2500, 1000, i) as usize;
            assert!(store.read_chunk(&w.hash.content_id(), i, 0..len, &mut back).unwrap());
        }
        assert_eq!(back, weights);
        assert_eq!(store.get_ref(&repo(), "main").unwrap().unwrap().commit, report.commit);
        assert_eq!(store.local(&repo()).unwrap().map(|l| l.origin), Some(LocalOrigin::Imported));

        // The same tree again: the same commit, nothing written.
        let again = import(&store, dir.path(), &repo(), "main", &mut |_| {}).unwrap();
        assert_eq!((again.commit.as_str(), again.stored_bytes), (report.commit.as_str(), 0));
        assert_eq!(again.previous.as_deref(), Some(report.commit.as_str()));
        // One byte changed: a new commit, and the branch moves to it.
        std::fs::write(dir.path().join("adapter_config.json"), b"{\"r\": 9}").unwrap();
        let moved = import(&store, dir.path(), &repo(), "main", &mut |_| {}).unwrap();
        assert_ne!(moved.commit, report.commit);
        assert_eq!(moved.stored_bytes, 8);
        assert_eq!(store.get_ref(&repo(), "main").unwrap().unwrap().commit, moved.commit);
    }

    /// Each kind of bad input is refused with its own error before anything is written.
    #[test]
    fn bad_input_is_refused_and_leaves_the_store_unchanged() {
        let store = MemoryStore::new(1000);
        let outside = tree(&[("secret", b"x")]);
        let check = |dir: &Path, want: fn(&ImportError) -> bool| {
            let e = import(&store, dir, &repo(), "main", &mut |_| {}).unwrap_err();
            assert!(want(&e), "{e}");
            assert_eq!(store.repos().unwrap(), vec![]);
            assert_eq!(store.files().unwrap(), vec![]);
        };
        check(Path::new("/nonexistent/modelfs"), |e| matches!(e, ImportError::Io { .. }));
        check(&outside.path().join("secret"), |e| matches!(e, ImportError::NotADirectory(_)));
        let empty = tempfile::tempdir().unwrap();
        std::fs::create_dir(empty.path().join("only-a-dir")).unwrap();
        check(empty.path(), |e| matches!(e, ImportError::Empty(_)));
        let link = tree(&[("a.json", b"{}")]);
        std::os::unix::fs::symlink(outside.path().join("secret"), link.path().join("b")).unwrap();
        check(link.path(), |e| matches!(e, ImportError::LinkOutside { .. }));
        let dirlink = tree(&[("d/a.json", b"{}")]);
        std::os::unix::fs::symlink(dirlink.path().join("d"), dirlink.path().join("e")).unwrap();
        check(dirlink.path(), |e| matches!(e, ImportError::LinkToDirectory(_)));
        let fifo = tree(&[("a.json", b"{}")]);
        let path =
            std::ffi::CString::new(fifo.path().join("pipe").into_os_string().into_encoded_bytes())
                .unwrap();
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        check(fifo.path(), |e| matches!(e, ImportError::SpecialFile { kind: "named pipe", .. }));
        let ctl = tree(&[("bad\u{1}name", b"{}")]);
        check(ctl.path(), |e| matches!(e, ImportError::BadPath(_)));
        let good = tree(&[("a.json", b"{}")]);
        for rev in ["", "a..b", &"0".repeat(40)] {
            let e = import(&store, good.path(), &repo(), rev, &mut |_| {}).unwrap_err();
            assert!(matches!(e, ImportError::BadRevision(_)), "{rev:?}: {e}");
        }
        // A repo of the Hub under the same name.
        store
            .put_ref(&repo(), "main", &RefRecord { commit: "a".repeat(40), resolved_at: 1 })
            .unwrap();
        let e = import(&store, good.path(), &repo(), "main", &mut |_| {}).unwrap_err();
        assert!(matches!(e, ImportError::HubRepo(_)), "{e}");
        assert_eq!(store.files().unwrap(), vec![]);
    }

    #[test]
    fn a_symlink_inside_the_tree_is_imported_as_its_target_and_git_metadata_is_not() {
        let store = MemoryStore::new(1000);
        let dir = tree(&[("real.bin", b"bytes"), (".git/HEAD", b"ref: x")]);
        std::os::unix::fs::symlink("real.bin", dir.path().join("alias.bin")).unwrap();
        let report = import(&store, dir.path(), &repo(), "v1", &mut |_| {}).unwrap();
        let paths: Vec<_> = report.manifest.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["alias.bin", "real.bin"]);
        assert_eq!(report.manifest.files[0].hash, report.manifest.files[1].hash);
        assert_eq!(report.stored_bytes, 5, "one content, stored once");
    }

    /// A file swapped, after the walk checked it, for a link to something outside the tree or
    /// for a FIFO is not read: the import fails instead of storing its bytes (or hanging).
    #[test]
    fn a_file_swapped_after_the_walk_is_not_read() {
        let store = MemoryStore::new(1000);
        let outside = tree(&[("secret", b"not yours")]);
        let dir = tree(&[("a.bin", b"checked bytes")]);
        let sources = walk(dir.path()).unwrap();
        let a = dir.path().join("a.bin");
        std::fs::remove_file(&a).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), &a).unwrap();
        let e = hash_and_store(&store, &sources[0], &mut |_| {}).unwrap_err();
        assert!(matches!(e, ImportError::Changed(_)), "{e}");
        // A FIFO in its place: neither a hang nor a read.
        std::fs::remove_file(&a).unwrap();
        let path = std::ffi::CString::new(a.clone().into_os_string().into_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let e = hash_and_store(&store, &sources[0], &mut |_| {}).unwrap_err();
        assert!(matches!(e, ImportError::Changed(_)), "{e}");
        assert_eq!(store.files().unwrap(), vec![]);
    }

    #[test]
    fn remove_forgets_the_repo_and_frees_what_no_other_repo_names() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ChunkStore> = Arc::new(MemoryStore::new(1000));
        let shared = tree(&[("a.bin", b"shared bytes")]);
        let other = RepoId::new("team", "other");
        import(store.as_ref(), shared.path(), &other, "main", &mut |_| {}).unwrap();
        let own = tree(&[("a.bin", b"shared bytes"), ("b.bin", b"own bytes!")]);
        import(store.as_ref(), own.path(), &repo(), "main", &mut |_| {}).unwrap();
        let e = remove(dir.path(), &store, &RepoId::new("hub", "model")).unwrap_err();
        assert!(matches!(e, ImportError::NotImported(_)), "{e}");
        let report = remove(dir.path(), &store, &repo()).unwrap();
        assert_eq!(
            (report.refs.as_slice(), report.commits, report.freed_bytes),
            (&["main".to_string()][..], 1, 10)
        );
        assert_eq!(store.repos().unwrap(), vec![other]);
        assert_eq!(store.files().unwrap().len(), 1, "the shared file stays");
    }

    proptest! {
        /// The commit names the files exactly: any change of a path, a size or a hash gives
        /// another commit, and the same files give the same one.
        #[test]
        fn commits_follow_the_files(
            files in proptest::collection::btree_map("[a-z]{1,6}(/[a-z]{1,6})?", (0u64..1000, any::<[u8; 32]>()), 1..6),
            which in any::<proptest::sample::Index>(),
            change in 0u8..3,
        ) {
            let entries: Vec<FileEntry> = files.iter().map(|(p, (size, sha))| FileEntry { path: p.clone(), size: *size, hash: FileHash::Lfs(*sha) }).collect();
            let commit = commit_of(&entries);
            prop_assert!(names::is_commit(&commit));
            prop_assert_eq!(&commit, &commit_of(&entries.clone()));
            let mut changed = entries.clone();
            let f = &mut changed[which.index(entries.len())];
            match change {
                0 => f.path.push('x'),
                1 => f.size += 1,
                _ => if let FileHash::Lfs(sha) = &mut f.hash { sha[0] ^= 1 },
            }
            prop_assert_ne!(commit, commit_of(&changed));
        }
    }
}
