//! `modelfs verify [ORG/REPO[@REV]]`: hash again every file the store holds whole
//! (`complete` or `verified`) and compare with the Hub's hash from the manifests.
//!
//! Each check is [`verify_file`], the daemon's own: a match leaves the file `verified`, a
//! mismatch discards its chunks and marks it `failed` (the mount then answers `EIO` for it,
//! and the next `pull` fetches it afresh). A chunk that fails its crc32c on the way is dropped
//! by the store as on any read, and the file reported damaged (and the command fails). Files are checked
//! on a few threads at once: hashing is CPU-bound, the store is read through its memory map.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::{human_bytes, open_existing, plural, resolve, short, CommandError, Target};
use crate::cli::VerifyArgs;
use crate::fetch::{verify_file, FileRef, Verdict};
use crate::hub::RemoteFile;
use crate::manifest::{ContentId, RepoId};
use crate::store::{ChunkStore, FileState};

/// What a verification pass found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Files hashed to the end (matched or not).
    pub checked: usize,
    pub bytes_hashed: u64,
    /// `org/repo@commit: path` of every file whose bytes did not match, sorted.
    pub mismatches: Vec<String>,
    /// Files found damaged: a chunk failed its crc32c and was dropped (the file is fetched
    /// again on its next read or pull), sorted. Bit rot, a bad disk, a torn write.
    pub damaged: Vec<String>,
    /// Files evicted while the check ran (nothing wrong), sorted.
    pub evicted: Vec<String>,
    /// Stored files no manifest in scope names (only counted with no target): their hash is
    /// unknown, so they cannot be checked.
    pub unnamed: usize,
}

/// At most this many files are hashed at once: sha256 is CPU-bound, and more threads than
/// cores only add contention on the store's reader slots.
const MAX_THREADS: usize = 4;

pub(super) fn run(args: VerifyArgs) -> Result<(), CommandError> {
    let target = args.repo.as_deref().map(Target::parse).transpose()?;
    let store = open_existing(&resolve(&args.store)?.store)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS);
    let report = verify_store(store, target.as_ref(), threads, &|line| println!("{line}"))?;
    println!("{}", summary(&report));
    // Anything wrong is a failure a cron job or a probe can see: a mismatch, or a chunk that
    // failed its checksum (both were discarded and will be fetched again).
    match (report.mismatches.len(), report.damaged.len()) {
        (0, 0) => Ok(()),
        (mismatches, damaged) => Err(CommandError::Damaged { mismatches, damaged }),
    }
}

/// The last line `verify` prints.
pub fn summary(report: &VerifyReport) -> String {
    let mut out = format!(
        "checked {} ({} hashed): {}, {} with a chunk that failed its checksum",
        plural(report.checked, "file"),
        human_bytes(report.bytes_hashed),
        mismatches(report.mismatches.len()),
        report.damaged.len(),
    );
    if !report.evicted.is_empty() {
        out.push_str(&format!("; {} evicted meanwhile", plural(report.evicted.len(), "file")));
    }
    if report.unnamed > 0 {
        out.push_str(&format!(
            "; {} stored but named by no manifest",
            plural(report.unnamed, "file")
        ));
    }
    out
}

fn mismatches(n: usize) -> String {
    if n == 1 {
        "1 mismatch".into()
    } else {
        format!("{n} mismatches")
    }
}

/// Check every whole file in scope on `threads` threads, telling `say` about each problem as
/// it is found.
pub fn verify_store(
    store: Arc<dyn ChunkStore>,
    target: Option<&Target>,
    threads: usize,
    say: &(dyn Fn(String) + Sync),
) -> Result<VerifyReport, CommandError> {
    let named = files_in_scope(store.as_ref(), target)?;
    let records: BTreeMap<ContentId, _> = store.files()?.into_iter().collect();
    let mut report = VerifyReport::default();
    if target.is_none() {
        report.unnamed = records.keys().filter(|c| !named.contains_key(c)).count();
    }
    let todo: Vec<FileRef> = named
        .into_values()
        .filter(|f| {
            f.remote.size > 0
                && records
                    .get(&f.content())
                    .is_some_and(|r| matches!(r.state, FileState::Complete | FileState::Verified))
        })
        .collect();

    let next = AtomicUsize::new(0);
    let found: Mutex<(VerifyReport, Option<CommandError>)> = Mutex::new((report, None));
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                while let Some(file) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let name = format!(
                        "{}@{}: {}",
                        file.remote.repo,
                        short(&file.remote.commit),
                        file.remote.path
                    );
                    let verdict = verify_file(store.as_ref(), file);
                    let mut found = crate::lock(&found);
                    match verdict {
                        Ok(Verdict::Match) => {
                            found.0.checked += 1;
                            found.0.bytes_hashed += file.remote.size;
                        }
                        Ok(Verdict::Mismatch) => {
                            found.0.checked += 1;
                            found.0.bytes_hashed += file.remote.size;
                            say(format!("MISMATCH {name}: discarded and marked failed"));
                            found.0.mismatches.push(name);
                        }
                        // Eviction removes the record; a chunk dropped for a bad
                        // checksum leaves it, partial.
                        Ok(Verdict::Incomplete) => match store.file_record(&file.content()) {
                            Ok(Some(_)) => {
                                say(format!(
                                    "DAMAGED {name}: a chunk failed its checksum and was \
                                     dropped; it is fetched again on the next read"
                                ));
                                found.0.damaged.push(name);
                            }
                            Ok(None) => found.0.evicted.push(name),
                            Err(e) => {
                                found.1.get_or_insert(e.into());
                                break;
                            }
                        },
                        Err(e) => {
                            found.1.get_or_insert(e.into());
                            break;
                        }
                    }
                }
            });
        }
    });
    let (mut report, error) = found.into_inner().unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = error {
        return Err(e);
    }
    report.mismatches.sort();
    report.damaged.sort();
    report.evicted.sort();
    Ok(report)
}

/// Every file of every manifest in scope, once per content (the first path that names it:
/// the same bytes under two names are one check).
fn files_in_scope(
    store: &dyn ChunkStore,
    target: Option<&Target>,
) -> Result<BTreeMap<ContentId, FileRef>, CommandError> {
    let repos: Vec<RepoId> = match target {
        Some(t) => vec![t.repo.clone()],
        None => store.repos()?,
    };
    let mut out = BTreeMap::new();
    for repo in repos {
        let commits = match target.and_then(|t| t.rev.as_deref()) {
            None => store.commits(&repo)?,
            Some(rev) if crate::names::is_commit(rev) => vec![rev.to_string()],
            Some(rev) => match store.get_ref(&repo, rev)? {
                Some(r) => vec![r.commit],
                None => vec![],
            },
        };
        let mut any = false;
        for commit in commits {
            let Some(manifest) = store.manifest(&repo, &commit)? else { continue };
            any = true;
            for entry in manifest.files {
                let file = FileRef {
                    hash: entry.hash,
                    remote: RemoteFile {
                        repo: repo.clone(),
                        commit: commit.clone(),
                        path: entry.path,
                        size: entry.size,
                    },
                };
                out.entry(file.content()).or_insert(file);
            }
        }
        if let (Some(t), false) = (target, any) {
            return Err(CommandError::NotInStore(t.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::memory::{hub_hash, MemoryHub};
    use crate::store::memory::MemoryStore;

    const CS: u64 = 1000;
    const C1: &str = "1111111111111111111111111111111111111111";

    fn data(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()
    }

    async fn pulled() -> Arc<MemoryStore> {
        let hub = Arc::new(MemoryHub::new());
        hub.add_repo(
            crate::manifest::RepoId::new("org", "repo"),
            C1,
            "main",
            None,
            vec![
                ("a.json", data(1, 10), false),
                ("b.bin", data(2, 2500), true),
                ("c.bin", data(3, 1500), true),
            ],
        );
        let store = Arc::new(MemoryStore::new(CS));
        let req = super::super::PullRequest {
            target: Target::parse("org/repo").unwrap(),
            quants: vec![],
            include: vec!["a.json".into(), "b.bin".into()],
            max_connections: 2,
            read_timeout: std::time::Duration::from_secs(5),
            lease: None,
            tier: None,
        };
        let quiet = super::super::pull::Progress::quiet();
        super::super::pull_into(store.clone(), hub.clone(), hub, &req, &quiet).await.unwrap();
        store
    }

    #[tokio::test]
    async fn a_good_store_passes_and_a_corrupted_file_is_failed() {
        let store = pulled().await;
        let said = Mutex::new(Vec::new());
        let say = |l: String| said.lock().unwrap().push(l);
        let report = verify_store(store.clone(), None, 2, &say).unwrap();
        assert_eq!(
            report,
            VerifyReport { checked: 2, bytes_hashed: 2510, ..VerifyReport::default() }
        );
        assert!(said.lock().unwrap().is_empty());

        // Wrong bytes stored with valid checksums (a bad disk that wrote the wrong block, or
        // a bug): only the whole-file hash can tell.
        let content = hub_hash(&data(2, 2500), true).content_id();
        let mut bad = data(2, 2500);
        bad[1500] ^= 1;
        store.evict_file(&content).unwrap();
        for i in 0..3u64 {
            let r = (i * CS) as usize..((i + 1) * CS).min(2500) as usize;
            store.put_chunk(&content, 2500, i, &bad[r]).unwrap();
        }
        let report = verify_store(store.clone(), None, 2, &say).unwrap();
        assert_eq!(report.mismatches, [format!("org/repo@{}: b.bin", &C1[..12])]);
        assert_eq!((report.checked, report.bytes_hashed), (2, 2510));
        assert_eq!(
            *said.lock().unwrap(),
            [format!("MISMATCH org/repo@{}: b.bin: discarded and marked failed", &C1[..12])]
        );
        let rec = store.file_record(&content).unwrap().unwrap();
        assert_eq!((rec.state, rec.cached_bytes), (FileState::Failed, 0));
        // Checked again: the failed file is no longer a whole file to check.
        let report = verify_store(store.clone(), None, 1, &|_| {}).unwrap();
        assert_eq!((report.checked, report.mismatches.len()), (1, 0));
    }

    #[tokio::test]
    async fn a_chunk_that_fails_its_crc_is_reported_damaged() {
        let store = pulled().await;
        let content = hub_hash(&data(2, 2500), true).content_id();
        assert!(store.corrupt_chunk(&content, 1));
        let target = Target::parse("org/repo@main").unwrap();
        let report = verify_store(store.clone(), Some(&target), 1, &|_| {}).unwrap();
        assert_eq!(report.damaged, [format!("org/repo@{}: b.bin", &C1[..12])]);
        assert!(report.evicted.is_empty());
        assert_eq!((report.checked, report.mismatches.len()), (1, 0));
        assert!(!store.has_chunk(&content, 1).unwrap(), "the bad chunk was dropped");
        assert_eq!(
            summary(&report),
            "checked 1 file (10 B hashed): 0 mismatches, 1 with a chunk that failed its checksum"
        );
    }

    #[tokio::test]
    async fn scope_and_unnamed_files() {
        let store = pulled().await;
        store.put_chunk(&ContentId([9; 32]), 5, 0, b"stray").unwrap();
        let report = verify_store(store.clone(), None, 1, &|_| {}).unwrap();
        assert_eq!((report.checked, report.unnamed), (2, 1));
        let report =
            verify_store(store.clone(), Some(&Target::parse("org/repo").unwrap()), 1, &|_| {})
                .unwrap();
        assert_eq!((report.checked, report.unnamed), (2, 0));
        for missing in ["org/repo@dev", "org/other"] {
            let err =
                verify_store(store.clone(), Some(&Target::parse(missing).unwrap()), 1, &|_| {})
                    .unwrap_err();
            assert_eq!(err.to_string(), format!("{missing} is not in the store"));
        }
    }
}
