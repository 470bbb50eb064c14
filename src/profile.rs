//! Cache profiles: where a repo's bytes are kept (doc/CONFIGURATION.md, "Cache profiles";
//! the vocabulary is KubeAI's). One for the whole mount (`--profile`, `profile`), and one per
//! `[[repo]]` entry that overrides it:
//!
//! - `none`: nothing on disk. Chunks are served from a bounded memory cache as the Hub (never
//!   the tier) sends them, for nodes without a disk to spare.
//! - `local`: the store only; the tier is neither read nor written for the repo.
//! - `shared`: the store and the shared tier (the default when a tier is configured).
//!
//! This module holds the decision; the fetcher ([`crate::fetch`]) and the revision resolver
//! (`fs/revisions.rs`) ask it per repo.

use std::collections::HashMap;

use serde::Deserialize;

use crate::manifest::RepoId;

#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Stream through a bounded memory cache; store nothing.
    None,
    /// The local store only.
    Local,
    /// The local store and the shared tier.
    Shared,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::None => "none",
            Profile::Local => "local",
            Profile::Shared => "shared",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("profile shared{} needs a tier (--tier or `tier` in the config)", .0.as_ref().map(|r| format!(" for {r}")).unwrap_or_default())]
    SharedWithoutTier(Option<RepoId>),
}

/// Which profile each repo has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profiles {
    default: Profile,
    repos: HashMap<RepoId, Profile>,
}

impl Default for Profiles {
    fn default() -> Self {
        Self { default: Profile::Local, repos: HashMap::new() }
    }
}

impl Profiles {
    /// The mount's profile (`shared` when a tier is configured and none is named, else
    /// `local`) and the repos that override it. `shared` anywhere without a tier is an error.
    pub fn new(
        mount: Option<Profile>,
        repos: impl IntoIterator<Item = (RepoId, Profile)>,
        has_tier: bool,
    ) -> Result<Self, ProfileError> {
        let default = mount.unwrap_or(if has_tier { Profile::Shared } else { Profile::Local });
        if default == Profile::Shared && !has_tier {
            return Err(ProfileError::SharedWithoutTier(None));
        }
        let repos: HashMap<RepoId, Profile> = repos.into_iter().collect();
        if let Some((repo, _)) = repos.iter().find(|(_, p)| **p == Profile::Shared && !has_tier) {
            return Err(ProfileError::SharedWithoutTier(Some(repo.clone())));
        }
        Ok(Self { default, repos })
    }

    pub fn of(&self, repo: &RepoId) -> Profile {
        self.repos.get(repo).copied().unwrap_or(self.default)
    }

    /// Whether the shared tier is read and written for `repo`.
    pub fn shares(&self, repo: &RepoId) -> bool {
        self.of(repo) == Profile::Shared
    }

    /// Whether `repo`'s chunks are kept in memory only.
    pub fn streams(&self, repo: &RepoId) -> bool {
        self.of(repo) == Profile::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_tier_and_repos_override() {
        let (a, b) = (RepoId::new("o", "a"), RepoId::new("o", "b"));
        let p = Profiles::new(None, [(a.clone(), Profile::None)], true).unwrap();
        assert_eq!((p.of(&a), p.of(&b)), (Profile::None, Profile::Shared));
        assert!(p.streams(&a) && !p.shares(&a) && p.shares(&b));
        let p = Profiles::new(None, [], false).unwrap();
        assert_eq!(p.of(&b), Profile::Local);
        assert_eq!(
            Profiles::new(Some(Profile::Shared), [], false),
            Err(ProfileError::SharedWithoutTier(None))
        );
        let err = Profiles::new(None, [(a.clone(), Profile::Shared)], false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "profile shared for o/a needs a tier (--tier or `tier` in the config)"
        );
        let p = Profiles::new(Some(Profile::Local), [(a.clone(), Profile::Shared)], true).unwrap();
        assert_eq!((p.of(&a), p.of(&b)), (Profile::Shared, Profile::Local));
    }
}
