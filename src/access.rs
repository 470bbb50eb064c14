//! Who may read what: the owner, group and mode every node of the namespace reports, from the
//! configuration (`uid`, `gid`, `mode` at the top level and in `[[repo]]` entries whose `id`
//! may be a glob, and `restrict_gated`). The kernel enforces them (the mount has
//! `default_permissions`), so a user who may not read a repo gets `EACCES` on open, on
//! listing its directories and on its xattrs, and modelfs never decides per request
//! (doc/OPERATIONS.md, "Who may read what").
//!
//! By default everything is readable by everyone (files `0444`, directories `0555`, owned by
//! the mount's uid and gid): the sidecar case, where the inference container runs as another
//! uid, works with no configuration.

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Deserializer};

use crate::manifest::RepoId;

/// Mode of files when nothing is configured: readable by all.
pub const DEFAULT_FILE_MODE: u16 = 0o444;

/// Mode of files of a restricted repo under `restrict_gated`: the mount's uid alone.
const OWNER_ONLY: u16 = 0o400;

/// The `id` of a `[[repo]]` entry: one repo, or a glob over `org/name` (`myteam/*`; `*` does
/// not cross the `/`).
#[derive(Clone, Debug)]
pub enum RepoSelector {
    Exact(RepoId),
    Glob { pattern: String, matcher: GlobMatcher },
}

impl RepoSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(repo) = RepoId::parse(s) {
            return Ok(RepoSelector::Exact(repo));
        }
        let looks_like_glob = s.contains(['*', '?', '[', '{']);
        let two_parts = s.split('/').count() == 2;
        if !looks_like_glob || !two_parts {
            return Err(format!("{s:?} is not a repo id (org/name) or a glob over one (org/*)"));
        }
        let glob = GlobBuilder::new(s)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("{s:?} is not a valid glob: {}", e.kind()))?;
        Ok(RepoSelector::Glob { pattern: s.to_owned(), matcher: glob.compile_matcher() })
    }

    /// The one repo it names, if it is not a glob.
    pub fn exact(&self) -> Option<&RepoId> {
        match self {
            RepoSelector::Exact(repo) => Some(repo),
            RepoSelector::Glob { .. } => None,
        }
    }

    pub fn matches(&self, repo: &RepoId) -> bool {
        match self {
            RepoSelector::Exact(r) => r == repo,
            RepoSelector::Glob { matcher, .. } => matcher.is_match(repo.to_string()),
        }
    }
}

impl std::fmt::Display for RepoSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepoSelector::Exact(repo) => write!(f, "{repo}"),
            RepoSelector::Glob { pattern, .. } => f.write_str(pattern),
        }
    }
}

impl PartialEq for RepoSelector {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for RepoSelector {}

impl<'de> Deserialize<'de> for RepoSelector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RepoSelector::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A file mode as the configuration gives it (`mode = 0o440`): permission bits only.
pub fn mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let m = u32::deserialize(d)?;
    if m > 0o777 {
        return Err(serde::de::Error::custom(format!(
            "mode {m:#o} is not a permission mode (at most 0o777; write 0o440, not 440)"
        )));
    }
    // Nothing here can be written or executed: only the read bits mean anything.
    Ok(Some((m & 0o444) as u16))
}

/// Owner, group and mode set by one entry (or the top level); `None`: not set there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u16>,
}

impl Grant {
    pub fn is_set(&self) -> bool {
        self.uid.is_some() || self.gid.is_some() || self.mode.is_some()
    }
}

/// What a node reports: its owner, group and permission bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    /// The mode of files; directories get [`dir_mode`] of it.
    pub mode: u16,
}

/// A directory's mode for files of `mode`: each read bit brings its execute bit, so whoever
/// may read the files may list and enter the directories above them, and no one else.
pub fn dir_mode(mode: u16) -> u16 {
    let read = mode & 0o444;
    read | (read >> 2)
}

/// The access rules of a mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    /// The top level's `uid`, `gid`, `mode`.
    pub default: Grant,
    /// `[[repo]]` entries that set any of them: exact ids first (in file order), then globs
    /// (in file order); the first that matches a repo is its rule.
    pub rules: Vec<(RepoSelector, Grant)>,
    /// Gated and private repos that no rule matches are readable by the mount's uid alone.
    pub restrict_gated: bool,
}

impl AccessPolicy {
    pub fn new(default: Grant, rules: Vec<(RepoSelector, Grant)>, restrict_gated: bool) -> Self {
        let (mut exact, globs): (Vec<_>, Vec<_>) =
            rules.into_iter().filter(|(_, g)| g.is_set()).partition(|(s, _)| s.exact().is_some());
        exact.extend(globs);
        Self { default, rules: exact, restrict_gated }
    }

    /// Whether nothing is configured: everything readable by all.
    pub fn is_open(&self) -> bool {
        !self.default.is_set() && self.rules.is_empty() && !self.restrict_gated
    }

    /// What a node of `repo` (`None`: the root, an org, the cache view's root) reports, for a
    /// mount run by `mount` (uid, gid). `restricted`: whether the Hub said the repo is gated
    /// or private (`None`: not known in this process, which `restrict_gated` treats as
    /// restricted: unknown is never wider).
    pub fn owner(
        &self,
        repo: Option<&RepoId>,
        restricted: Option<bool>,
        mount: (u32, u32),
    ) -> Owner {
        let base = Owner { uid: mount.0, gid: mount.1, mode: DEFAULT_FILE_MODE };
        let global = |o: Owner| Owner {
            uid: self.default.uid.unwrap_or(o.uid),
            gid: self.default.gid.unwrap_or(o.gid),
            mode: self.default.mode.unwrap_or(o.mode),
        };
        let Some(repo) = repo else { return base };
        match self.rules.iter().find(|(s, _)| s.matches(repo)) {
            Some((_, g)) => {
                let o = global(base);
                Owner {
                    uid: g.uid.unwrap_or(o.uid),
                    gid: g.gid.unwrap_or(o.gid),
                    mode: g.mode.unwrap_or(o.mode),
                }
            }
            None if self.restrict_gated && restricted != Some(false) => {
                Owner { uid: mount.0, gid: mount.1, mode: OWNER_ONLY }
            }
            None => global(base),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sel(s: &str) -> RepoSelector {
        RepoSelector::parse(s).unwrap()
    }

    fn grant(uid: Option<u32>, gid: Option<u32>, mode: Option<u16>) -> Grant {
        Grant { uid, gid, mode }
    }

    const MOUNT: (u32, u32) = (0, 0);

    #[test]
    fn selectors_are_ids_or_globs_over_one_org_and_name() {
        assert_eq!(sel("org/name").exact(), Some(&RepoId::new("org", "name")));
        let team = sel("myteam/*");
        assert!(team.exact().is_none() && team.matches(&RepoId::new("myteam", "lora-1")));
        assert!(!team.matches(&RepoId::new("other", "lora-1")));
        assert!(sel("*/secret-*").matches(&RepoId::new("a", "secret-x")));
        for bad in ["myteam", "a/b/c", "a/*/c", "not a repo", "*", "a/[", ""] {
            assert!(RepoSelector::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_default_is_readable_by_all() {
        let p = AccessPolicy::default();
        assert!(p.is_open());
        let o = p.owner(Some(&RepoId::new("a", "b")), Some(true), (1000, 1000));
        assert_eq!(o, Owner { uid: 1000, gid: 1000, mode: 0o444 });
        assert_eq!(dir_mode(o.mode), 0o555);
        assert_eq!(dir_mode(0o440), 0o550);
        assert_eq!(dir_mode(0o400), 0o500);
        assert_eq!(dir_mode(0o004), 0o005);
    }

    #[test]
    fn exact_entries_win_over_globs_and_both_over_the_top_level() {
        let p = AccessPolicy::new(
            grant(None, Some(50), Some(0o440)),
            vec![
                (sel("team/*"), grant(None, Some(100), None)),
                (sel("team/special"), grant(Some(7), None, Some(0o400))),
                (sel("solo/plain"), Grant::default()),
            ],
            true,
        );
        let of =
            |name: &str, restricted| p.owner(Some(&RepoId::new("team", name)), restricted, MOUNT);
        assert_eq!(of("special", Some(true)), Owner { uid: 7, gid: 50, mode: 0o400 });
        assert_eq!(of("lora", Some(true)), Owner { uid: 0, gid: 100, mode: 0o440 });
        // An entry that sets nothing is no rule: the repo goes by restrict_gated.
        let plain = p.owner(Some(&RepoId::new("solo", "plain")), Some(true), MOUNT);
        assert_eq!(plain, Owner { uid: 0, gid: 0, mode: 0o400 });
        let other = |restricted| p.owner(Some(&RepoId::new("x", "y")), restricted, MOUNT);
        assert_eq!(other(Some(false)), Owner { uid: 0, gid: 50, mode: 0o440 });
        assert_eq!(other(Some(true)).mode, 0o400);
        assert_eq!(other(None).mode, 0o400, "unknown is treated as restricted");
        assert_eq!(p.owner(None, None, MOUNT).mode, 0o444, "the root and orgs stay listable");
    }

    proptest! {
        /// A directory is never wider than its files, and never narrower for who may read.
        #[test]
        fn directories_follow_their_files(mode in 0u16..0o1000) {
            let d = dir_mode(mode);
            prop_assert_eq!(d & 0o444, mode & 0o444);
            prop_assert_eq!((d & 0o111) << 2, mode & 0o444);
            prop_assert_eq!(d & 0o222, 0);
        }
    }
}
