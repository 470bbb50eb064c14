//! [`MemoryHub`]: the Hub in memory, so the filesystem core and the fetch layer can be tested
//! without a network, a mock server or a kernel.
//!
//! It keeps the contract of [`HubClient`](super::client::HubClient) where tests depend on it:
//! revisions resolve to 40-hex commits, listings are sorted and skip unsafe paths, hashes are
//! the Hub's (LFS sha256, git blob sha1), ranges are checked. On top, it has the knobs tests
//! need: gating, an offline switch, injected failures, a per-fetch delay to make concurrent
//! fetches overlap, and a log of every fetch so single-flight and read-ahead can be counted.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::{
    HubError, LinkEstimate, RangeFetcher, RemoteFile, RepoSource, RevisionInfo, TreeEntry,
};
use crate::manifest::{FileHash, RepoId};

/// An in-memory Hub. All methods take `&self`, so one `Arc<MemoryHub>` can be handed to the
/// code under test and still be driven by the test.
#[derive(Default)]
pub struct MemoryHub {
    state: Mutex<State>,
    fetches: AtomicU64,
    /// Woken when the Hub is set offline (what [`RepoSource::unreachable`] waits for).
    went_offline: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    repos: HashMap<RepoId, Repo>,
    offline: bool,
    /// Fetches still to fail before fetches succeed again.
    failing_fetches: u64,
    fetch_delay: Duration,
    /// Every `fetch_range` call, in call order.
    log: Vec<(RemoteFile, Range<u64>)>,
    /// What [`RangeFetcher::link`] reports.
    link: Option<LinkEstimate>,
}

#[derive(Default)]
struct Repo {
    /// Branch and tag names → commit.
    refs: HashMap<String, String>,
    commits: HashMap<String, Commit>,
    gated: bool,
    /// Private or gated, but readable with this hub's token: what resolutions report.
    restricted: bool,
}

struct Commit {
    pipeline_tag: Option<String>,
    files: BTreeMap<String, StoredFile>,
}

struct StoredFile {
    data: Bytes,
    hash: FileHash,
}

impl MemoryHub {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has already failed; keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Add `commit` (40 lowercase hex) to `repo`, creating the repo if needed, and point
    /// `branch` at it. Calling again with another commit and the same branch moves the branch,
    /// as a push would; the old commit stays readable. Each file is `(path, bytes, lfs)`.
    ///
    /// # Panics
    /// If `commit` is not 40 lowercase hex digits: a test bug, reported where it is made.
    pub fn add_repo<P, D>(
        &self,
        repo: impl Borrow<RepoId>,
        commit: &str,
        branch: &str,
        pipeline_tag: Option<&str>,
        files: impl IntoIterator<Item = (P, D, bool)>,
    ) where
        P: Into<String>,
        D: Into<Vec<u8>>,
    {
        assert!(
            commit.len() == 40 && commit.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "MemoryHub commits are 40 lowercase hex digits, got {commit:?}"
        );
        let files = files
            .into_iter()
            .map(|(path, data, lfs)| {
                let data: Vec<u8> = data.into();
                let hash = hub_hash(&data, lfs);
                (path.into(), StoredFile { data: data.into(), hash })
            })
            .collect();
        let mut state = self.state();
        let entry = state.repos.entry(repo.borrow().clone()).or_default();
        entry.commits.insert(
            commit.to_owned(),
            Commit { pipeline_tag: pipeline_tag.map(str::to_owned), files },
        );
        entry.refs.insert(branch.to_owned(), commit.to_owned());
    }

    /// Point a branch or tag `name` of an existing repo at an existing commit.
    ///
    /// # Panics
    /// If the repo or the commit was never added.
    pub fn set_ref(&self, repo: impl Borrow<RepoId>, name: &str, commit: &str) {
        let mut state = self.state();
        let entry = state.repos.get_mut(repo.borrow()).expect("set_ref on a repo never added");
        assert!(entry.commits.contains_key(commit), "set_ref to a commit never added: {commit}");
        entry.refs.insert(name.to_owned(), commit.to_owned());
    }

    /// Make every call about `repo` fail with [`HubError::Denied`], as a gated repo does for a
    /// client without an accepted token.
    pub fn set_gated(&self, repo: impl Borrow<RepoId>) {
        self.state().repos.entry(repo.borrow().clone()).or_default().gated = true;
    }

    /// Report `repo` as private or gated whose access this hub's token has
    /// ([`RevisionInfo::restricted`]); calls about it still succeed.
    pub fn set_restricted(&self, repo: impl Borrow<RepoId>) {
        self.state().repos.entry(repo.borrow().clone()).or_default().restricted = true;
    }

    /// Give access to a repo that [`set_gated`](Self::set_gated) closed.
    pub fn set_ungated(&self, repo: impl Borrow<RepoId>) {
        if let Some(entry) = self.state().repos.get_mut(repo.borrow()) {
            entry.gated = false;
        }
    }

    /// While set, every call fails with [`HubError::Unavailable`] (the Hub cannot be reached).
    pub fn set_offline(&self, offline: bool) {
        self.state().offline = offline;
        if offline {
            self.went_offline.notify_waiters();
        }
    }

    /// The next `n` calls to `fetch_range` fail with [`HubError::Unavailable`].
    pub fn fail_next_fetches(&self, n: u64) {
        self.state().failing_fetches = n;
    }

    /// Every `fetch_range` call waits this long before answering, so that concurrent fetches
    /// overlap in tests.
    pub fn set_fetch_delay(&self, delay: Duration) {
        self.state().fetch_delay = delay;
    }

    /// Report `link` as the cost of a range request, as a real client measures it.
    pub fn set_link(&self, link: Option<LinkEstimate>) {
        self.state().link = link;
    }

    /// How many times `fetch_range` was called, whether it succeeded or not.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Every `fetch_range` call so far: file path and range, in call order.
    pub fn fetched_ranges(&self) -> Vec<(String, Range<u64>)> {
        self.state().log.iter().map(|(f, r)| (f.path.clone(), r.clone())).collect()
    }

    /// The bytes of `path` in `repo` at `commit`, for comparing with what the code under test
    /// serves.
    pub fn file_bytes(&self, repo: impl Borrow<RepoId>, commit: &str, path: &str) -> Option<Bytes> {
        let state = self.state();
        let file = state.repos.get(repo.borrow())?.commits.get(commit)?.files.get(path)?;
        Some(file.data.clone())
    }

    /// The gate every call passes: offline, unknown repo, gated.
    fn repo<'s>(state: &'s State, repo: &RepoId) -> Result<&'s Repo, HubError> {
        if state.offline {
            return Err(HubError::Unavailable("MemoryHub is set offline".into()));
        }
        let found =
            state.repos.get(repo).ok_or_else(|| HubError::NotFound(format!("repo {repo}")))?;
        if found.gated {
            return Err(HubError::Denied(format!("{repo} is gated")));
        }
        Ok(found)
    }

    fn commit<'s>(found: &'s Repo, repo: &RepoId, commit: &str) -> Result<&'s Commit, HubError> {
        found
            .commits
            .get(commit)
            .ok_or_else(|| HubError::NotFound(format!("revision {commit} of {repo}")))
    }

    fn resolve_now(&self, repo: &RepoId, rev: &str) -> Result<RevisionInfo, HubError> {
        let state = self.state();
        let found = Self::repo(&state, repo)?;
        let commit = match found.refs.get(rev) {
            Some(commit) => commit.as_str(),
            None => rev,
        };
        let info = Self::commit(found, repo, commit)?;
        Ok(RevisionInfo {
            commit: commit.to_owned(),
            pipeline_tag: info.pipeline_tag.clone(),
            restricted: found.restricted,
        })
    }

    fn list_now(&self, repo: &RepoId, commit: &str) -> Result<Vec<TreeEntry>, HubError> {
        let state = self.state();
        let info = Self::commit(Self::repo(&state, repo)?, repo, commit)?;
        // The same rule as the real client: an unsafe path, or a file that is also the
        // directory of another, is never presented. The map is sorted, so the shorter path
        // (the would-be directory) is seen first and kept.
        let mut dirs = HashSet::new();
        let mut kept: Vec<TreeEntry> = Vec::new();
        for (path, file) in &info.files {
            if !crate::names::valid_repo_path(path) {
                tracing::warn!(%repo, path, "skipping unsafe path");
                continue;
            }
            let prefixes: Vec<&str> = path.match_indices('/').map(|(i, _)| &path[..i]).collect();
            if dirs.contains(path.as_str()) || prefixes.iter().any(|p| info.files.contains_key(*p))
            {
                tracing::warn!(%repo, path, "skipping path that conflicts with another");
                continue;
            }
            dirs.extend(prefixes.into_iter().map(str::to_owned));
            kept.push(TreeEntry {
                path: path.clone(),
                size: file.data.len() as u64,
                hash: file.hash,
            });
        }
        Ok(kept)
    }

    fn fetch_now(&self, file: &RemoteFile, range: &Range<u64>) -> Result<Bytes, HubError> {
        let mut state = self.state();
        if state.failing_fetches > 0 && !state.offline {
            state.failing_fetches -= 1;
            return Err(HubError::Unavailable("MemoryHub: injected fetch failure".into()));
        }
        let found = Self::repo(&state, &file.repo)?;
        let stored =
            Self::commit(found, &file.repo, &file.commit)?.files.get(&file.path).ok_or_else(
                || HubError::NotFound(format!("{} in {}@{}", file.path, file.repo, file.commit)),
            )?;
        let size = stored.data.len() as u64;
        if file.size != size {
            return Err(HubError::Protocol(format!(
                "{} is {size} bytes, the caller thinks {}",
                file.path, file.size
            )));
        }
        if range.start >= range.end || range.end > size {
            return Err(HubError::Protocol(format!(
                "range {range:?} is empty or outside {} ({size} bytes)",
                file.path
            )));
        }
        // In bounds of a Vec's length, so both ends fit in usize.
        Ok(stored.data.slice(range.start as usize..range.end as usize))
    }
}

/// The Hub's hash of `data`: the LFS oid (sha256 of the contents) for LFS files, the git blob
/// oid (`sha1("blob <len>\0" + contents)`) for files stored in git.
pub fn hub_hash(data: &[u8], lfs: bool) -> FileHash {
    if lfs {
        FileHash::Lfs(Sha256::digest(data).into())
    } else {
        let mut h = Sha1::new();
        h.update(format!("blob {}\0", data.len()).as_bytes());
        h.update(data);
        FileHash::Git(h.finalize().into())
    }
}

impl RepoSource for MemoryHub {
    fn resolve<'a>(
        &'a self,
        repo: &'a RepoId,
        rev: &'a str,
    ) -> BoxFuture<'a, Result<RevisionInfo, HubError>> {
        Box::pin(async move { self.resolve_now(repo, rev) })
    }

    fn list_files<'a>(
        &'a self,
        repo: &'a RepoId,
        commit: &'a str,
    ) -> BoxFuture<'a, Result<Vec<TreeEntry>, HubError>> {
        Box::pin(async move { self.list_now(repo, commit) })
    }

    /// Offline is this double's "connection refused".
    fn unreachable(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let woken = self.went_offline.notified();
                if self.state().offline {
                    return;
                }
                woken.await;
            }
        })
    }
}

impl RangeFetcher for MemoryHub {
    fn link(&self) -> Option<LinkEstimate> {
        self.state().link
    }

    fn fetch_range<'a>(
        &'a self,
        file: &'a RemoteFile,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, HubError>> {
        Box::pin(async move {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let delay = {
                let mut state = self.state();
                state.log.push((file.clone(), range.clone()));
                state.fetch_delay
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.fetch_now(file, &range)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: &str = "1111111111111111111111111111111111111111";
    const C2: &str = "2222222222222222222222222222222222222222";

    fn repo() -> RepoId {
        RepoId::new("org", "model")
    }

    fn hub() -> MemoryHub {
        let hub = MemoryHub::new();
        hub.add_repo(
            repo(),
            C1,
            "main",
            Some("text-generation"),
            vec![
                ("config.json".to_string(), b"{}".to_vec(), false),
                ("onnx/model.onnx".to_string(), (0..=255u8).collect::<Vec<u8>>(), true),
            ],
        );
        hub
    }

    fn remote(path: &str, size: u64) -> RemoteFile {
        RemoteFile { repo: repo(), commit: C1.into(), path: path.into(), size }
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
    }

    #[test]
    fn hashes_are_the_hubs() {
        // `git hash-object` of "hello\n" and `sha256sum` of it.
        assert_eq!(
            hub_hash(b"hello\n", false),
            FileHash::Git(
                hex::decode("ce013625030ba8dba906f756967f9e9ca394464a")
                    .unwrap()
                    .try_into()
                    .unwrap()
            )
        );
        assert_eq!(
            hub_hash(b"hello\n", true),
            FileHash::Lfs(
                hex::decode("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
                    .unwrap()
                    .try_into()
                    .unwrap()
            )
        );
    }

    #[test]
    fn resolves_branches_tags_and_commits() {
        let hub = hub();
        run(async {
            let main = hub.resolve(&repo(), "main").await.unwrap();
            assert_eq!(main.commit, C1);
            assert_eq!(main.pipeline_tag.as_deref(), Some("text-generation"));
            assert_eq!(hub.resolve(&repo(), C1).await.unwrap().commit, C1);
            hub.add_repo(repo(), C2, "main", None, Vec::<(String, Vec<u8>, bool)>::new());
            hub.set_ref(repo(), "v1", C1);
            assert_eq!(hub.resolve(&repo(), "main").await.unwrap().commit, C2);
            assert_eq!(hub.resolve(&repo(), "v1").await.unwrap().commit, C1);
            assert!(matches!(hub.resolve(&repo(), "nope").await, Err(HubError::NotFound(_))));
            assert!(matches!(
                hub.resolve(&RepoId::new("org", "other"), "main").await,
                Err(HubError::NotFound(_))
            ));
        });
    }

    #[test]
    fn lists_files_sorted_with_hashes() {
        let hub = hub();
        let files = run(hub.list_files(&repo(), C1)).unwrap();
        assert_eq!(
            files,
            vec![
                TreeEntry { path: "config.json".into(), size: 2, hash: hub_hash(b"{}", false) },
                TreeEntry {
                    path: "onnx/model.onnx".into(),
                    size: 256,
                    hash: hub_hash(&(0..=255u8).collect::<Vec<_>>(), true),
                },
            ]
        );
        assert!(matches!(run(hub.list_files(&repo(), C2)), Err(HubError::NotFound(_))));
    }

    #[test]
    fn fetches_exact_ranges_and_counts_them() {
        let hub = hub();
        let file = remote("onnx/model.onnx", 256);
        assert_eq!(
            &run(hub.fetch_range(&file, 10..20)).unwrap()[..],
            &(10..20u8).collect::<Vec<_>>()[..]
        );
        assert_eq!(run(hub.fetch_range(&file, 0..256)).unwrap().len(), 256);
        assert!(matches!(run(hub.fetch_range(&file, 250..257)), Err(HubError::Protocol(_))));
        assert!(matches!(run(hub.fetch_range(&file, 5..5)), Err(HubError::Protocol(_))));
        assert!(matches!(
            run(hub.fetch_range(&remote("onnx/model.onnx", 300), 0..1)),
            Err(HubError::Protocol(_))
        ));
        assert!(matches!(
            run(hub.fetch_range(&remote("missing", 1), 0..1)),
            Err(HubError::NotFound(_))
        ));
        assert_eq!(hub.fetch_count(), 6);
        assert_eq!(hub.fetched_ranges()[0], ("onnx/model.onnx".to_string(), 10..20));
    }

    #[test]
    fn gating_offline_and_injected_failures() {
        let hub = hub();
        let file = remote("config.json", 2);
        hub.fail_next_fetches(2);
        for _ in 0..2 {
            assert!(matches!(run(hub.fetch_range(&file, 0..2)), Err(HubError::Unavailable(_))));
        }
        assert_eq!(&run(hub.fetch_range(&file, 0..2)).unwrap()[..], b"{}");

        hub.set_gated(repo());
        assert!(matches!(run(hub.resolve(&repo(), "main")), Err(HubError::Denied(_))));
        assert!(matches!(run(hub.fetch_range(&file, 0..2)), Err(HubError::Denied(_))));
        hub.set_ungated(repo());
        assert!(run(hub.resolve(&repo(), "main")).is_ok());

        hub.set_offline(true);
        assert!(matches!(run(hub.resolve(&repo(), "main")), Err(HubError::Unavailable(_))));
        assert!(matches!(run(hub.list_files(&repo(), C1)), Err(HubError::Unavailable(_))));
        assert!(matches!(run(hub.fetch_range(&file, 0..2)), Err(HubError::Unavailable(_))));
        hub.set_offline(false);
        assert_eq!(hub.file_bytes(repo(), C1, "config.json").as_deref(), Some(&b"{}"[..]));
    }

    #[test]
    fn fetch_delay_lets_fetches_overlap() {
        let hub = std::sync::Arc::new(hub());
        hub.set_fetch_delay(Duration::from_millis(300));
        run(async {
            // A paused clock advances only when every task sleeps: the elapsed time is exact,
            // whatever the machine's load.
            tokio::time::pause();
            let started = tokio::time::Instant::now();
            let file = remote("config.json", 2);
            let (a, b) = tokio::join!(hub.fetch_range(&file, 0..1), hub.fetch_range(&file, 1..2));
            assert_eq!((&a.unwrap()[..], &b.unwrap()[..]), (&b"{"[..], &b"}"[..]));
            // Both slept at once: one delay (to the timer's 1 ms granularity), not two.
            let elapsed = started.elapsed();
            assert!(
                elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(600),
                "{elapsed:?}"
            );
        });
        assert_eq!(hub.fetch_count(), 2);
    }

    #[test]
    #[should_panic(expected = "40 lowercase hex")]
    fn short_commits_are_a_test_bug() {
        MemoryHub::new().add_repo(repo(), "abc", "main", None, vec![("a", vec![1u8], false)]);
    }
}
