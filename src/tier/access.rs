//! Who may be served what from the shared tier: the rule that keeps a tier from turning one
//! node's access to a private or gated repo into every node's (doc/DESIGN.md, "The shared
//! tier").
//!
//! The tier holds bytes of every repo any node fetched, and says nothing of who may read
//! them. A public repo's chunks may be served to anyone. A restricted one's (private, or
//! gated: the Hub lists a gated repo to anyone and refuses its bytes to tokens that have not
//! accepted its terms, so a listing proves nothing) only after the Hub has served this node,
//! with its own token, a byte of one of the repo's files, at most one revalidation interval
//! ago. With the Hub unreachable, that is the repos confirmed in this process: stricter than
//! "allowed at some time", never wider. A repo whose status nobody told this process (a
//! manifest from the store, read without asking the Hub) counts as restricted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::manifest::RepoId;

/// The access rule's memory, per repo.
#[derive(Default)]
pub struct AccessTable {
    repos: Mutex<HashMap<RepoId, Access>>,
    /// How long a confirmation holds, in seconds: the mount's revalidation interval.
    ttl_secs: AtomicU64,
}

#[derive(Clone, Copy, Default)]
struct Access {
    /// What the Hub (or the tier's manifest) last said: `None` when nothing said.
    restricted: Option<bool>,
    /// When the Hub last served this node a byte of the repo.
    confirmed: Option<Instant>,
}

/// What a read of a repo's chunks from the tier needs first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Served from the tier as it is.
    Serve,
    /// The Hub must first serve this node a byte of the repo (then [`AccessTable::confirmed`]).
    Confirm,
}

impl AccessTable {
    pub fn new(ttl: Duration) -> Self {
        Self { repos: Mutex::default(), ttl_secs: AtomicU64::new(ttl.as_secs()) }
    }

    /// Follow the mount's revalidation interval (config reload).
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_secs.store(ttl.as_secs(), Ordering::Relaxed);
    }

    /// The Hub (or a tier manifest some node listed from it) says whether `repo` is private
    /// or gated.
    pub fn note(&self, repo: &RepoId, restricted: bool) {
        crate::lock(&self.repos).entry(repo.clone()).or_default().restricted = Some(restricted);
    }

    /// The Hub served this node a byte of `repo` with its own token.
    pub fn confirmed(&self, repo: &RepoId) {
        crate::lock(&self.repos).entry(repo.clone()).or_default().confirmed = Some(Instant::now());
    }

    pub fn decide(&self, repo: &RepoId) -> Decision {
        let ttl = Duration::from_secs(self.ttl_secs.load(Ordering::Relaxed));
        let access = crate::lock(&self.repos).get(repo).copied().unwrap_or_default();
        let fresh = access.confirmed.is_some_and(|at| at.elapsed() < ttl);
        if access.restricted == Some(false) || fresh {
            Decision::Serve
        } else {
            Decision::Confirm
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_or_confirmed_repos_are_served() {
        let table = AccessTable::new(Duration::from_secs(600));
        let repo = RepoId::new("o", "r");
        assert_eq!(table.decide(&repo), Decision::Confirm, "unknown counts as restricted");
        table.note(&repo, true);
        assert_eq!(table.decide(&repo), Decision::Confirm);
        table.confirmed(&repo);
        assert_eq!(table.decide(&repo), Decision::Serve);
        table.set_ttl(Duration::ZERO);
        assert_eq!(table.decide(&repo), Decision::Confirm, "a confirmation expires");
        table.note(&repo, false);
        assert_eq!(table.decide(&repo), Decision::Serve, "public");
        assert_eq!(table.decide(&RepoId::new("o", "other")), Decision::Confirm);
    }
}
