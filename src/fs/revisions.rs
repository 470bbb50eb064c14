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
use crate::store::{ChunkStore, LocalOrigin, LocalRecord, RefRecord};
use crate::tier::catalog::{TierCatalog, TierManifest};

/// A resolved repo revision and when the Hub last confirmed it (`None`: never in this
/// process; served from the store while the Hub did not answer).
pub(super) struct Resolved {
    snap: Arc<Snapshot>,
    checked: Option<Instant>,
    /// An imported repo (`import.rs`): its ref is read from the store at every lookup (and,
    /// for another node's import, from the tier at most every [`TIER_IMPORT_RECHECK`]), never
    /// from the Hub.
    local: bool,
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

/// How often a node asks the tier where another node's import points: once a second, the
/// kernel's cache time of a name below a branch, so that a re-import on one node shows on
/// every node within about a second without a tier request per lookup.
const TIER_IMPORT_RECHECK: Duration = Duration::from_secs(1);

impl ModelFs {
    /// Below a branch, a name cannot point elsewhere before the branch is re-resolved, so the
    /// kernel may cache it until then; [`BRANCH_TTL`] once that time has come (or while a
    /// resolution is running), so the new commit shows within a second of being resolved.
    pub(super) fn branch_ttl(&self, repo: &RepoId, rev: Option<&str>) -> Duration {
        let rev = rev.unwrap_or(DEFAULT_REVISION);
        let slot = lock(&self.slots).get(&(repo.clone(), rev.to_string())).cloned();
        let remaining = slot.and_then(|slot| {
            let state = slot.try_lock().ok()?;
            if state.resolved.as_ref()?.local {
                // Another process may move an imported branch at any moment.
                return None;
            }
            let age = state.resolved.as_ref()?.checked?.elapsed();
            self.revalidate().checked_sub(age)
        });
        remaining.unwrap_or_default().max(BRANCH_TTL)
    }

    /// Whether `repo@rev` last resolved to an imported repo: its directory may go (`modelfs
    /// remove`) at any moment, so the kernel keeps its entry for [`BRANCH_TTL`] only.
    pub(super) fn shows_local(&self, repo: &RepoId, rev: Option<&str>) -> bool {
        let rev = rev.unwrap_or(DEFAULT_REVISION);
        let slot = lock(&self.slots).get(&(repo.clone(), rev.to_string())).cloned();
        slot.is_some_and(|slot| {
            slot.try_lock().map_or(true, |s| s.resolved.as_ref().is_some_and(|r| r.local))
        })
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
        // A repo of the Hub in the store can never become an imported one (an import under
        // its name is refused), so only a repo not known to be the Hub's is looked up here.
        if state.resolved.as_ref().is_none_or(|r| r.local) {
            match self.store.local(repo)? {
                Some(local) => return self.local_snapshot(&mut state, repo, rev, local).await,
                // Removed since: resolve it afresh, as any other name.
                None if state.resolved.is_some() => *state = SlotState::default(),
                None => {}
            }
        }
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
                () = self.source.unreachable() => match self.fallback(repo, rev, previous).await {
                    Ok(Some(known)) => {
                        tracing::warn!(repo = %repo, rev, commit = %known.manifest.commit,
                            "the Hub does not answer; serving the last known commit, revalidating in the background");
                        let checked = state.resolved.as_ref().and_then(|r| r.checked);
                        state.resolved = Some(Resolved { snap: known.clone(), checked, local: false });
                        state.revalidating = true;
                        self.revalidate_in_background(slot.clone(), repo, rev, known.clone());
                        return Ok(known);
                    }
                    // Nothing to fall back on: the Hub's answer (or the timeout) it is.
                    Ok(None) => resolution.await,
                    Err(e) => Err(e),
                },
            }
        } else {
            resolution.await
        };
        match outcome {
            Ok(snap) => {
                // Found as another node's import in the tier (the Hub has no such repo).
                let local = self.store.local(repo)?.is_some();
                *state = SlotState {
                    resolved: Some(Resolved {
                        snap: snap.clone(),
                        checked: Some(Instant::now()),
                        local,
                    }),
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

    /// Every revision of `repo` resolved in this process, with the snapshot it shows now
    /// (one being resolved at this instant is left out: the store's record stands for it).
    pub(super) fn resolved_revisions(&self, repo: &RepoId) -> Vec<(String, Arc<Snapshot>)> {
        let slots: Vec<(String, Slot)> = lock(&self.slots)
            .iter()
            .filter(|((r, _), _)| r == repo)
            .map(|((_, rev), slot)| (rev.clone(), slot.clone()))
            .collect();
        slots
            .into_iter()
            .filter_map(|(rev, slot)| {
                let snap = slot.try_lock().ok()?.resolved.as_ref()?.snap.clone();
                Some((rev, snap))
            })
            .collect()
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

    /// The snapshot of an imported repo: its ref as the store has it now (another process may
    /// have moved it since the last lookup), after asking the tier, at most every
    /// [`TIER_IMPORT_RECHECK`], where another node's import points. Never the Hub.
    async fn local_snapshot(
        &self,
        state: &mut SlotState,
        repo: &RepoId,
        rev: &str,
        local: LocalRecord,
    ) -> Result<Arc<Snapshot>, FsError> {
        let previous = state.resolved.as_ref().map(|r| r.snap.clone());
        let mut checked = state.resolved.as_ref().and_then(|r| r.checked);
        let catalog = self.catalog.get().filter(|_| self.shares(repo));
        let due = checked.is_none_or(|c| c.elapsed() >= TIER_IMPORT_RECHECK);
        if let (LocalOrigin::Tier, Some(catalog), true) = (local.origin, catalog, due) {
            match catalog.lookup(repo, rev).await {
                Ok(Some(found)) if found.manifest.imported => {
                    self.adopt_import(found.manifest.manifest, rev).await?;
                }
                Ok(None) if !names::is_commit(rev) => {
                    // The tier has no such branch: a name never imported (`@typo`, a `main`
                    // the import never had) is only absent. A branch this node had is gone
                    // where it was imported; the repo goes with its last branch (what is
                    // stored of it is an ordinary cached file now, left to eviction).
                    let store = self.store.clone();
                    let (owner, name) = (repo.clone(), rev.to_owned());
                    let removed = blocking(move || {
                        let refs = store.refs(&owner)?;
                        let last = refs.len() == 1 && refs[0].0 == name;
                        if last {
                            store.remove_repo(&owner)?;
                        }
                        Ok(last)
                    })
                    .await?;
                    if removed {
                        tracing::info!(repo = %repo, rev, "an imported repo was removed from the tier");
                        *state = SlotState::default();
                    }
                    return Err(FsError::NotFound);
                }
                Ok(_) => {}
                // The tier does not answer: what this node holds of it is served meanwhile.
                Err(e) => {
                    tracing::debug!(repo = %repo, rev, error = %e, "imported repo not rechecked in the tier")
                }
            }
            checked = Some(Instant::now());
        }
        if local.origin == LocalOrigin::Imported {
            checked = Some(Instant::now());
        }
        let commit = if names::is_commit(rev) {
            rev.to_owned()
        } else {
            self.store.get_ref(repo, rev)?.ok_or(FsError::NotFound)?.commit
        };
        let manifest = self.store.manifest(repo, &commit)?.ok_or(FsError::NotFound)?;
        // Imported: no one's secret on the Hub (access rules may still restrict it).
        self.note_restricted(repo, false);
        let snap = reuse_or_new(previous, manifest);
        *state = SlotState {
            resolved: Some(Resolved { snap: snap.clone(), checked, local: true }),
            ..SlotState::default()
        };
        Ok(snap)
    }

    /// Keep another node's import, found in the tier, as this node's own copy of it: the
    /// manifest, the ref, and a record that it is the tier's (so the Hub is never asked and
    /// the tier is asked again where it points).
    ///
    /// Never over a repo this store holds from the Hub (an import elsewhere under a name this
    /// node knows as the Hub's): `false`, and nothing is written.
    async fn adopt_import(&self, manifest: Manifest, rev: &str) -> Result<bool, FsError> {
        let store = self.store.clone();
        let rev = rev.to_owned();
        blocking(move || {
            let repo = manifest.repo.clone();
            let hubs = store.local(&repo)?.is_none()
                && (!store.refs(&repo)?.is_empty() || !store.commits(&repo)?.is_empty());
            if hubs {
                tracing::warn!(repo = %repo, "an import in the tier under the name of a Hub repo this node holds: ignored");
                return Ok(false);
            }
            store.put_manifest(&manifest)?;
            if store.local(&repo)?.is_none() {
                let record =
                    LocalRecord { origin: LocalOrigin::Tier, since: crate::store::unix_now() };
                store.put_local(&repo, &record)?;
            }
            if !names::is_commit(&rev) {
                let record = RefRecord {
                    commit: manifest.commit.clone(),
                    resolved_at: crate::store::unix_now(),
                };
                store.put_ref(&repo, &rev, &record)?;
            }
            Ok(true)
        })
        .await
    }

    /// Another node's import of `repo@rev` in the tier, adopted here: asked when the Hub says
    /// it has no such repo.
    async fn imported_in_tier(
        &self,
        repo: &RepoId,
        rev: &str,
    ) -> Result<Option<Manifest>, FsError> {
        let Some(catalog) = self.catalog.get().filter(|_| self.shares(repo)) else {
            return Ok(None);
        };
        match catalog.lookup(repo, rev).await {
            Ok(Some(found)) if found.manifest.imported => {
                let manifest = found.manifest.manifest;
                if !self.adopt_import(manifest.clone(), rev).await? {
                    return Ok(None);
                }
                tracing::info!(repo = %repo, rev, commit = %manifest.commit, "an imported repo, found in the tier");
                Ok(Some(manifest))
            }
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::debug!(repo = %repo, rev, error = %e, "the tier was not asked for an import");
                Ok(None)
            }
        }
    }

    /// What to serve of a branch while the Hub does not answer: its last known commit here,
    /// else what the shared tier holds of it (another node's confirmation).
    async fn fallback(
        &self,
        repo: &RepoId,
        rev: &str,
        previous: Option<Arc<Snapshot>>,
    ) -> Result<Option<Arc<Snapshot>>, FsError> {
        if let Some(known) = self.last_known(repo, rev, previous)? {
            return Ok(Some(known));
        }
        Ok(self.served_by_tier(repo, rev).await?.map(|m| Arc::new(Snapshot::new(m))))
    }

    /// What the shared tier holds of `repo@rev`, for when nothing here does and the Hub
    /// cannot say; kept in the store as this node's own record, but as never confirmed by
    /// the Hub (so the Hub is asked at the next lookup it can answer). A private or gated repo
    /// is served only to a node whose store shows the Hub allowed it before: the tier never
    /// widens access (doc/DESIGN.md, "The shared tier").
    async fn served_by_tier(&self, repo: &RepoId, rev: &str) -> Result<Option<Manifest>, FsError> {
        let Some(catalog) = self.catalog.get().filter(|_| self.shares(repo)) else {
            return Ok(None);
        };
        let found = match catalog.lookup(repo, rev).await {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::debug!(repo = %repo, rev, error = %e, "repo metadata not read from the tier");
                return Ok(None);
            }
        };
        if found.manifest.imported {
            let manifest = found.manifest.manifest;
            return Ok(self.adopt_import(manifest.clone(), rev).await?.then_some(manifest));
        }
        let TierManifest { manifest, restricted, .. } = found.manifest;
        self.note_restricted(repo, restricted);
        let store = self.store.clone();
        let (owner, name) = (repo.clone(), rev.to_owned());
        let kept = manifest.clone();
        let allowed = tokio::task::spawn_blocking(move || -> Result<bool, FsError> {
            let allowed = !store.commits(&owner)?.is_empty() || !store.refs(&owner)?.is_empty();
            if allowed || !restricted {
                store.put_manifest(&kept)?;
                if !names::is_commit(&name) {
                    // Resolved at 0: never confirmed by this node's Hub.
                    let record = RefRecord { commit: kept.commit.clone(), resolved_at: 0 };
                    store.put_ref(&owner, &name, &record)?;
                }
            }
            Ok(allowed)
        })
        .await
        .map_err(|e| FsError::Io(e.to_string()))??;
        if restricted && !allowed {
            tracing::warn!(repo = %repo, rev, "private or gated repo in the tier, never allowed to this node by the Hub: refused");
            return Err(FsError::Denied(format!(
                "{repo} is private or gated, and the Hub has not yet allowed this node's token \
                 for it (the shared tier does not widen access)"
            )));
        }
        crate::metrics::get().tier_revision_served();
        tracing::warn!(repo = %repo, rev, commit = %manifest.commit, "the Hub does not answer; serving the commit the shared tier holds");
        Ok(Some(manifest))
    }

    /// Keep asking the Hub about `repo@rev` without holding up lookups, which serve `known`
    /// meanwhile; on an answer the slot moves to it (a new commit shows at the next lookup).
    fn revalidate_in_background(&self, slot: Slot, repo: &RepoId, rev: &str, known: Arc<Snapshot>) {
        let (store, source) = (self.store.clone(), self.source.clone());
        let catalog = self.catalog.get().filter(|_| self.shares(repo)).cloned();
        let restricted = self.restricted.clone();
        let (repo, rev) = (repo.clone(), rev.to_string());
        tokio::spawn(async move {
            let (store, source) = (store.as_ref(), source.as_ref());
            let answer =
                fetch_manifest(store, source, catalog.as_ref(), &restricted, &repo, &rev).await;
            let mut state = slot.lock().await;
            state.revalidating = false;
            match answer {
                Ok(m) => {
                    record_ref(store, &repo, &rev, &m.commit);
                    tracing::info!(repo = %repo, rev = %rev, commit = %m.commit, "revalidated after the Hub came back");
                    let snap = reuse_or_new(Some(known), m);
                    state.resolved =
                        Some(Resolved { snap, checked: Some(Instant::now()), local: false });
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
        // Under `restrict_gated`, a repo is shown to others only once the Hub has said it is
        // public: a stored ref does not say, so the Hub is asked once per process.
        let said = !self.restrict_gated() || self.restriction_known(repo);
        if let Some(r) = stored_ref.as_ref().filter(|r| self.config.offline || (fresh(r) && said)) {
            if let Some(m) = self.store.manifest(repo, &r.commit)? {
                return Ok(reuse_or_new(previous, m));
            }
        }
        if self.config.offline {
            return match self.served_by_tier(repo, rev).await? {
                Some(m) => Ok(reuse_or_new(previous, m)),
                None => Err(FsError::NotFound),
            };
        }
        let catalog = self.catalog.get().filter(|_| self.shares(repo));
        let (store, source) = (self.store.as_ref(), self.source.as_ref());
        match fetch_manifest(store, source, catalog, &self.restricted, repo, rev).await {
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
                match self.served_by_tier(repo, rev).await? {
                    Some(m) => Ok(Arc::new(Snapshot::new(m))),
                    None => Err(e.into()),
                }
            }
            Err(e @ HubError::NotFound(_)) => match self.imported_in_tier(repo, rev).await? {
                Some(m) => Ok(reuse_or_new(previous, m)),
                None => Err(e.into()),
            },
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
        if let Some(catalog) = self.catalog.get() {
            catalog.set_confirmation_ttl(interval);
        }
    }
}

/// Resolve `rev` on the Hub and get the manifest of its commit: from the store if it is
/// there (a commit's contents never change), else from the tree listing (then stored). What
/// the Hub confirmed is published to the shared tier, if there is one, and whether the repo is
/// restricted noted in `restricted`.
async fn fetch_manifest(
    store: &dyn ChunkStore,
    source: &dyn RepoSource,
    catalog: Option<&Arc<TierCatalog>>,
    restricted: &std::sync::Mutex<std::collections::HashMap<RepoId, bool>>,
    repo: &RepoId,
    rev: &str,
) -> Result<Manifest, HubError> {
    let info = source.resolve(repo, rev).await?;
    // What `restrict_gated` goes by (crate::access).
    lock(restricted).insert(repo.clone(), info.restricted);
    let publish = |m: &Manifest| {
        if let Some(catalog) = catalog {
            catalog.publish(m, rev, info.restricted);
        }
    };
    if let Some(m) =
        store.manifest(repo, &info.commit).map_err(|e| HubError::Unavailable(e.to_string()))?
    {
        publish(&m);
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
    publish(&manifest);
    Ok(manifest)
}

/// Run store writes off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, FsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FsError::Io(e.to_string()))?
        .map_err(Into::into)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::fetch::PrefetchLimits;
    use crate::fs::{FsConfig, ROOT_INO};
    use crate::hub::memory::MemoryHub;
    use crate::store::memory::MemoryStore;
    use crate::tier::{ObjectTier, TierClient};

    const C1: &str = "1111111111111111111111111111111111111111";

    fn repo() -> RepoId {
        RepoId::new("org", "repo")
    }

    fn hub() -> Arc<MemoryHub> {
        let hub = Arc::new(MemoryHub::new());
        let weights: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        hub.add_repo(
            repo(),
            C1,
            "main",
            None,
            vec![("config.json", b"{}".to_vec(), false), ("model.bin", weights, true)],
        );
        hub
    }

    /// A node: its own store, the one Hub, the one tier.
    fn node(hub: &Arc<MemoryHub>, tier: &Arc<object_store::memory::InMemory>) -> Arc<ModelFs> {
        let store = Arc::new(MemoryStore::new(1000));
        let fs = ModelFs::new(
            FsConfig::default(),
            store.clone(),
            hub.clone(),
            hub.clone(),
            Duration::from_secs(5),
            PrefetchLimits::NONE,
        );
        let tier = Arc::new(ObjectTier::new(tier.clone(), "cluster"));
        fs.set_tier(TierClient::new(tier, store));
        Arc::new(fs)
    }

    async fn read(fs: &ModelFs, path: &str) -> Result<Vec<u8>, FsError> {
        let mut ino = ROOT_INO;
        for part in path.split('/') {
            ino = fs.lookup(ino, part).await?.attr.ino;
        }
        let fh = fs.open(ino, false)?;
        let size = fs.getattr(ino)?.attr.size;
        let out = fs.read(fh, 0, size as u32).await;
        fs.release(fh);
        out
    }

    /// Node A's publications run in the background: wait until the tier answers for them.
    async fn published(catalog: &TierCatalog, repo: &RepoId, rev: &str) {
        for _ in 0..500 {
            if catalog.lookup(repo, rev).await.is_ok_and(|f| f.is_some()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("{rev} never published");
    }

    /// Uploads run behind the reads: wait until the tier holds `n` chunk objects.
    async fn chunks_in(tier: &object_store::memory::InMemory, n: usize) {
        use futures::TryStreamExt;
        for _ in 0..500 {
            let all: Vec<_> =
                object_store::ObjectStore::list(tier, None).try_collect().await.unwrap();
            if all.iter().filter(|o| o.location.as_ref().contains("/chunks/")).count() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("the tier never held {n} chunks");
    }

    /// Node A reads model.bin through the tier, which then holds the repo's metadata and
    /// every chunk of it; then the Hub goes offline. Returns node A and the bytes.
    async fn filled_then_offline(
        hub: &Arc<MemoryHub>,
        tier: &Arc<object_store::memory::InMemory>,
    ) -> (Arc<ModelFs>, Vec<u8>) {
        let a = node(hub, tier);
        let want = read(&a, "org/repo/all/model.bin").await.unwrap();
        published(a.catalog.get().unwrap(), &repo(), "main").await;
        chunks_in(tier, 3).await;
        hub.set_offline(true);
        (a, want)
    }

    #[tokio::test]
    async fn a_node_that_never_saw_a_repo_lists_and_reads_it_from_the_tier_with_the_hub_down() {
        let (hub, tier) = (hub(), Arc::new(object_store::memory::InMemory::new()));
        let (_a, want) = filled_then_offline(&hub, &tier).await;
        let b = node(&hub, &tier);
        let got = read(&b, "org/repo/all/model.bin").await.unwrap();
        assert!(got == want, "node B read other bytes");
        // By commit too, and the namespace is the one the Hub listed.
        let snap = b.snapshot(&repo(), Some(C1)).await.unwrap();
        assert_eq!(snap.manifest.files.len(), 2);
        // What B serves is on its own record now, but never confirmed by its Hub: once the
        // Hub is back, the next lookup asks it.
        let stored = b.store.get_ref(&repo(), "main").unwrap().unwrap();
        assert_eq!((stored.commit.as_str(), stored.resolved_at), (C1, 0));
    }

    /// A node restarted during an outage knows a public repo from its store (nothing in this
    /// process said whether it is public): the tier's manifest says so, and the chunks its
    /// store lacks come from the tier.
    #[tokio::test]
    async fn a_node_restarted_during_an_outage_reads_a_public_repo_from_the_tier() {
        let (hub, tier) = (hub(), Arc::new(object_store::memory::InMemory::new()));
        let (a, want) = filled_then_offline(&hub, &tier).await;
        let b = node(&hub, &tier);
        // Its store from an earlier run: the ref, confirmed just now, and the manifest.
        let manifest = a.store.manifest(&repo(), C1).unwrap().unwrap();
        b.store.put_manifest(&manifest).unwrap();
        let now = crate::store::unix_now();
        b.store
            .put_ref(&repo(), "main", &RefRecord { commit: C1.into(), resolved_at: now })
            .unwrap();
        let got = read(&b, "org/repo/all/model.bin").await.expect("from the tier");
        assert!(got == want);
    }

    #[tokio::test]
    async fn the_tier_never_widens_access_to_a_restricted_repo() {
        let (hub, tier) = (hub(), Arc::new(object_store::memory::InMemory::new()));
        hub.set_restricted(repo());
        let a = node(&hub, &tier);
        read(&a, "org/repo/all/config.json").await.unwrap();
        let weights = read(&a, "org/repo/all/model.bin").await.unwrap();
        published(a.catalog.get().unwrap(), &repo(), "main").await;
        chunks_in(&tier, 4).await;
        hub.set_offline(true);

        // Never allowed by the Hub: refused, and nothing of the repo is kept.
        let b = node(&hub, &tier);
        let err = read(&b, "org/repo/all/config.json").await.unwrap_err();
        assert!(matches!(err, FsError::Denied(_)), "{err:?}");
        assert!(b.store.commits(&repo()).unwrap().is_empty(), "a refused repo was recorded");
        assert!(b.store.get_ref(&repo(), "main").unwrap().is_none());

        // Listed before (the store holds a ref of the repo): its metadata is served, but not
        // its bytes, which the Hub never served this process.
        let c = node(&hub, &tier);
        c.store.put_ref(&repo(), "old", &RefRecord { commit: C1.into(), resolved_at: 1 }).unwrap();
        let snap = c.snapshot(&repo(), None).await.unwrap();
        assert_eq!(snap.manifest.commit, C1);
        assert!(matches!(read(&c, "org/repo/all/config.json").await, Err(FsError::Io(_))));

        // Confirmed by the Hub in this process (a byte served with its token): the tier
        // serves it the rest, with the Hub gone.
        hub.set_offline(false);
        let d = node(&hub, &tier);
        let fetched = hub.fetched_ranges().len();
        assert_eq!(read(&d, "org/repo/all/config.json").await.unwrap(), b"{}");
        let log = hub.fetched_ranges();
        assert_eq!(log.len(), fetched + 1, "one byte to confirm access, the rest from the tier");
        assert_eq!(log.last().unwrap().1, 0..1);
        hub.set_offline(true);
        let got = read(&d, "org/repo/all/model.bin").await.expect("confirmed: from the tier");
        assert!(got == weights);

        // A public repo published by A is served to any node.
        let public = RepoId::new("org", "open");
        hub.set_offline(false);
        hub.add_repo(public.clone(), C1, "main", None, vec![("a.txt", b"open".to_vec(), false)]);
        read(&a, "org/open/all/a.txt").await.unwrap();
        chunks_in(&tier, 5).await;
        published(a.catalog.get().unwrap(), &public, "main").await;
        hub.set_offline(true);
        let e = node(&hub, &tier);
        assert_eq!(read(&e, "org/open/all/a.txt").await.unwrap(), b"open");
    }

    /// An imported repo is the store's, not the Hub's: even under a name the Hub also has,
    /// lookups show the import (the Hub is never asked), follow a re-import at the next
    /// lookup, and after a remove the name is the Hub's again.
    #[tokio::test]
    async fn an_imported_repo_is_read_from_the_store_and_never_asked_of_the_hub() {
        let hub = hub();
        let fs = node(&hub, &Arc::new(object_store::memory::InMemory::new()));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), b"{\"imported\": 1}").unwrap();
        let store = fs.store.clone();
        crate::import::import(store.as_ref(), dir.path(), &repo(), "main", &mut |_| {}).unwrap();
        assert_eq!(read(&fs, "org/repo/all/config.json").await.unwrap(), b"{\"imported\": 1}");
        assert!(read(&fs, "org/repo/all/model.bin").await.is_err(), "the Hub's file showed");
        std::fs::write(dir.path().join("config.json"), b"{\"imported\": 2}").unwrap();
        crate::import::import(store.as_ref(), dir.path(), &repo(), "main", &mut |_| {}).unwrap();
        assert_eq!(read(&fs, "org/repo/all/config.json").await.unwrap(), b"{\"imported\": 2}");
        store.remove_repo(&repo()).unwrap();
        assert_eq!(read(&fs, "org/repo/all/config.json").await.unwrap(), b"{}");
    }

    /// Another node's import, known here from the tier: a lookup of a branch it never had
    /// (`main` of an import made as `v1`, a typo) is only `ENOENT`, and forgets nothing.
    #[tokio::test]
    async fn a_branch_the_tier_never_had_does_not_drop_an_import() {
        let (hub, tier) = (hub(), Arc::new(object_store::memory::InMemory::new()));
        let adapter = RepoId::new("team", "adapter");
        // Node A imports as `v1` and writes it to the tier.
        let a_store: Arc<dyn ChunkStore> = Arc::new(MemoryStore::new(1000));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("adapter_config.json"), b"{}").unwrap();
        let report =
            crate::import::import(a_store.as_ref(), dir.path(), &adapter, "v1", &mut |_| {})
                .unwrap();
        let object_tier = Arc::new(ObjectTier::new(tier.clone(), "cluster"));
        let catalog = TierCatalog::new(TierClient::new(object_tier, a_store));
        catalog.publish_import(&report.manifest, "v1").await.unwrap();
        // Node B finds it through the tier (the Hub has no such repo).
        let b = node(&hub, &tier);
        let snap = b.snapshot(&adapter, Some("v1")).await.unwrap();
        assert_eq!(snap.manifest.commit, report.commit);
        assert!(b.store.local(&adapter).unwrap().is_some());
        assert_eq!(b.snapshot(&adapter, None).await.unwrap_err(), FsError::NotFound);
        assert_eq!(b.snapshot(&adapter, Some("typo")).await.unwrap_err(), FsError::NotFound);
        assert!(b.store.local(&adapter).unwrap().is_some(), "the import was dropped");
        assert_eq!(b.store.refs(&adapter).unwrap().len(), 1);
        assert!(b.snapshot(&adapter, Some("v1")).await.is_ok());
    }
}
