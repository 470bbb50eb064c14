//! Which commit a repo directory shows: resolving a revision against the Hub at most once
//! per revalidation interval (commits never again), recording it in the store so a restart
//! asks nothing, and serving the last known commit when the Hub does not answer
//! (offline-first). doc/DESIGN.md, "Revisions and immutability", says why; doc/SEMANTICS.md
//! what a lookup guarantees.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, FsError, ModelFs, Snapshot, BRANCH_TTL, DEFAULT_REVISION};
use crate::hub::{HubError, RepoSource};
use crate::manifest::{FileEntry, Manifest, RepoId};
use crate::names;
use crate::store::{ChunkStore, RefRecord};

/// A resolved repo revision and when the Hub last confirmed it (`None`: never in this
/// process; served from the store while the Hub did not answer).
pub(super) struct Resolved {
    snap: Arc<Snapshot>,
    checked: Option<Instant>,
}

/// What one (repo, revision) last resolved to, or why it could not be.
#[derive(Default)]
pub(super) struct SlotState {
    resolved: Option<Resolved>,
    /// A failure is remembered for [`FAILED_RESOLVE_TTL`], so that the lookups queued behind a
    /// failing resolution (and a program retrying a name that does not exist) get its answer
    /// instead of each asking the Hub and each waiting out the timeout again.
    failed: Option<(FsError, Instant)>,
    /// A revalidation runs in the background because the Hub did not answer when it came due;
    /// lookups serve `resolved` as it is meanwhile.
    revalidating: bool,
    /// The last background revalidation failed: not before this instant is another tried.
    retry_at: Option<Instant>,
}

/// One resolution slot per (repo, revision). The async mutex makes concurrent lookups of one
/// repo share one resolution instead of each asking the Hub.
pub(super) type Slot = Arc<tokio::sync::Mutex<SlotState>>;

/// How long a failed resolution (unknown repo, Hub down) is the answer before the Hub is
/// asked again.
const FAILED_RESOLVE_TTL: Duration = Duration::from_secs(5);

impl ModelFs {
    /// Below a branch, a name cannot point elsewhere before the branch is re-resolved, so the
    /// kernel may cache it until then; [`BRANCH_TTL`] once that time has come (or while a
    /// resolution is running), so the new commit shows within a second of being resolved.
    pub(super) fn branch_ttl(&self, repo: &RepoId, rev: Option<&str>) -> Duration {
        let rev = rev.unwrap_or(DEFAULT_REVISION);
        let slot = lock(&self.slots).get(&(repo.clone(), rev.to_string())).cloned();
        let remaining = slot.and_then(|slot| {
            let state = slot.try_lock().ok()?;
            let age = state.resolved.as_ref()?.checked?.elapsed();
            self.revalidate().checked_sub(age)
        });
        remaining.unwrap_or_default().max(BRANCH_TTL)
    }

    /// The snapshot a repo directory shows now: from memory if confirmed within
    /// `revalidate` (commits: forever), else from the store's record of the ref if the Hub
    /// confirmed it within `revalidate` (so a restart does not re-ask), else from the Hub.
    ///
    /// Offline-first: when the Hub turns out not to answer at all (connection refused, name
    /// not resolved), a branch's last known commit is served at once, however old, and the
    /// revalidation goes on in the background; a Hub that answers but fails (5xx) is waited
    /// for within the read timeout, and then the last known commit is served too.
    pub async fn snapshot(
        &self,
        repo: &RepoId,
        rev: Option<&str>,
    ) -> Result<Arc<Snapshot>, FsError> {
        let rev = rev.unwrap_or(DEFAULT_REVISION);
        let slot = {
            let mut slots = lock(&self.slots);
            slots.entry((repo.clone(), rev.to_string())).or_default().clone()
        };
        let mut state = slot.lock().await;
        if let Some(r) = state.resolved.as_ref() {
            let fresh = r.checked.is_some_and(|c| c.elapsed() < self.revalidate());
            let waiting_for_hub =
                state.revalidating || state.retry_at.is_some_and(|t| Instant::now() < t);
            if names::is_commit(rev) || fresh || waiting_for_hub {
                return Ok(r.snap.clone());
            }
        }
        if let Some((e, at)) = &state.failed {
            if at.elapsed() < FAILED_RESOLVE_TTL {
                return Err(e.clone());
            }
        }
        let previous = state.resolved.as_ref().map(|r| r.snap.clone());
        let stale_allowed =
            self.config.serve_stale && !self.config.offline && !names::is_commit(rev);
        let mut resolution = std::pin::pin!(self.resolve(repo, rev, previous.clone()));
        let outcome = if stale_allowed {
            tokio::select! {
                biased;
                outcome = &mut resolution => outcome,
                () = self.source.unreachable() => match self.last_known(repo, rev, previous)? {
                    Some(known) => {
                        tracing::warn!(repo = %repo, rev, commit = %known.manifest.commit,
                            "the Hub does not answer; serving the last known commit, revalidating in the background");
                        let checked = state.resolved.as_ref().and_then(|r| r.checked);
                        state.resolved = Some(Resolved { snap: known.clone(), checked });
                        state.revalidating = true;
                        self.revalidate_in_background(slot.clone(), repo, rev, known.clone());
                        return Ok(known);
                    }
                    // Nothing to fall back on: the Hub's answer (or the timeout) it is.
                    None => resolution.await,
                },
            }
        } else {
            resolution.await
        };
        match outcome {
            Ok(snap) => {
                *state = SlotState {
                    resolved: Some(Resolved { snap: snap.clone(), checked: Some(Instant::now()) }),
                    ..SlotState::default()
                };
                Ok(snap)
            }
            Err(e) => {
                state.failed = Some((e.clone(), Instant::now()));
                Err(e)
            }
        }
    }

    /// What a branch last resolved to, in memory or in the store, however old.
    fn last_known(
        &self,
        repo: &RepoId,
        rev: &str,
        previous: Option<Arc<Snapshot>>,
    ) -> Result<Option<Arc<Snapshot>>, FsError> {
        if previous.is_some() {
            return Ok(previous);
        }
        let Some(r) = self.store.get_ref(repo, rev)? else { return Ok(None) };
        Ok(self.store.manifest(repo, &r.commit)?.map(|m| Arc::new(Snapshot::new(m))))
    }

    /// Keep asking the Hub about `repo@rev` without holding up lookups, which serve `known`
    /// meanwhile; on an answer the slot moves to it (a new commit shows at the next lookup).
    fn revalidate_in_background(&self, slot: Slot, repo: &RepoId, rev: &str, known: Arc<Snapshot>) {
        let (store, source) = (self.store.clone(), self.source.clone());
        let (repo, rev) = (repo.clone(), rev.to_string());
        tokio::spawn(async move {
            let answer = fetch_manifest(store.as_ref(), source.as_ref(), &repo, &rev).await;
            let mut state = slot.lock().await;
            state.revalidating = false;
            match answer {
                Ok(m) => {
                    record_ref(store.as_ref(), &repo, &rev, &m.commit);
                    tracing::info!(repo = %repo, rev = %rev, commit = %m.commit, "revalidated after the Hub came back");
                    let snap = reuse_or_new(Some(known), m);
                    state.resolved = Some(Resolved { snap, checked: Some(Instant::now()) });
                    state.retry_at = None;
                }
                Err(e) => {
                    tracing::debug!(repo = %repo, rev = %rev, error = %e, "background revalidation failed");
                    state.retry_at = Some(Instant::now() + FAILED_RESOLVE_TTL);
                }
            }
        });
    }

    async fn resolve(
        &self,
        repo: &RepoId,
        rev: &str,
        previous: Option<Arc<Snapshot>>,
    ) -> Result<Arc<Snapshot>, FsError> {
        let now = crate::store::unix_now();
        let stored_ref = if names::is_commit(rev) {
            Some(RefRecord { commit: rev.to_string(), resolved_at: now })
        } else {
            self.store.get_ref(repo, rev)?
        };
        let fresh = |r: &RefRecord| now.saturating_sub(r.resolved_at) < self.revalidate().as_secs();
        if let Some(r) = stored_ref.as_ref().filter(|r| self.config.offline || fresh(r)) {
            if let Some(m) = self.store.manifest(repo, &r.commit)? {
                return Ok(reuse_or_new(previous, m));
            }
        }
        if self.config.offline {
            return Err(FsError::NotFound);
        }
        match fetch_manifest(self.store.as_ref(), self.source.as_ref(), repo, rev).await {
            Ok(m) => {
                if !names::is_commit(rev) {
                    record_ref(self.store.as_ref(), repo, rev, &m.commit);
                }
                Ok(reuse_or_new(previous, m))
            }
            Err(e @ (HubError::Unavailable(_) | HubError::Protocol(_)))
                if self.config.serve_stale =>
            {
                // Offline-first: a Hub outage must not take away what is already here.
                if let Some(prev) = previous {
                    tracing::warn!(repo = %repo, rev, error = %e, "Hub unavailable; serving the last known commit");
                    return Ok(prev);
                }
                if let Some(r) = stored_ref {
                    if let Some(m) = self.store.manifest(repo, &r.commit)? {
                        tracing::warn!(repo = %repo, rev, error = %e, "Hub unavailable; serving the stored commit");
                        return Ok(Arc::new(Snapshot::new(m)));
                    }
                }
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// How long a resolved branch is trusted before the Hub is asked again.
    pub(super) fn revalidate(&self) -> Duration {
        Duration::from_secs(self.revalidate_secs.load(Ordering::Relaxed))
    }

    /// Change the revalidation interval of a running mount (config reload). Branches resolved
    /// before are judged by the new interval from their next lookup on.
    pub fn set_revalidate(&self, interval: Duration) {
        self.revalidate_secs.store(interval.as_secs(), Ordering::Relaxed);
    }
}

/// Resolve `rev` on the Hub and get the manifest of its commit: from the store if it is
/// there (a commit's contents never change), else from the tree listing (then stored).
async fn fetch_manifest(
    store: &dyn ChunkStore,
    source: &dyn RepoSource,
    repo: &RepoId,
    rev: &str,
) -> Result<Manifest, HubError> {
    let info = source.resolve(repo, rev).await?;
    if let Some(m) =
        store.manifest(repo, &info.commit).map_err(|e| HubError::Unavailable(e.to_string()))?
    {
        return Ok(m);
    }
    let files = source.list_files(repo, &info.commit).await?;
    let files =
        files.into_iter().map(|t| FileEntry { path: t.path, size: t.size, hash: t.hash }).collect();
    let manifest = Manifest::build(repo.clone(), info.commit, info.pipeline_tag, files);
    if let Err(e) = store.put_manifest(&manifest) {
        // Still servable from memory; it will be listed again after a restart.
        tracing::warn!(repo = %repo, error = %e, "manifest not stored");
    }
    Ok(manifest)
}

/// Record that the Hub said `repo@rev` is `commit`, now.
fn record_ref(store: &dyn ChunkStore, repo: &RepoId, rev: &str, commit: &str) {
    let record = RefRecord { commit: commit.to_string(), resolved_at: crate::store::unix_now() };
    if let Err(e) = store.put_ref(repo, rev, &record) {
        // Served from memory all the same; only a restart asks the Hub again.
        tracing::warn!(repo = %repo, rev, error = %e, "ref not stored");
    }
}

/// Reuse the snapshot already in use when the commit did not change, so its inodes (and the
/// kernel's caches of them) stay valid.
fn reuse_or_new(previous: Option<Arc<Snapshot>>, manifest: Manifest) -> Arc<Snapshot> {
    match previous {
        Some(prev) if prev.manifest.commit == manifest.commit => prev,
        _ => Arc::new(Snapshot::new(manifest)),
    }
}
